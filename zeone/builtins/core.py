"""The ``core`` default plugin: the kernel's own status section and metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge

from zeone import __version__
from zeone.hookspecs import hookimpl
from zeone.net.manager import KEEPALIVE_PROTOCOL
from zeone.plugins import KERNEL_API_VERSION, PluginInfo

if TYPE_CHECKING:
    from zeone.node import Node


@hookimpl
def zeone_plugin_info() -> PluginInfo:
    return PluginInfo(
        name="core",
        version=__version__,
        api=KERNEL_API_VERSION,
        required=True,
        description="Kernel services: local API, status, metrics.",
    )


@hookimpl
def zeone_register_protocols(register: Any) -> None:
    async def keepalive(_request: Any) -> None:
        return None

    register(KEEPALIVE_PROTOCOL, keepalive)


@hookimpl
def zeone_register_metrics(registry: CollectorRegistry, node: Node) -> None:
    Gauge(
        "zeone_plugins_enabled", "Number of enabled plugins (core excluded).", registry=registry
    ).set_function(lambda: len(node.plugins.names) - 1)
    for name, doc, read in [
        (
            "zeone_peers_connected",
            "Peers with an open connection.",
            lambda: len(node.network.connections),
        ),
        (
            "zeone_connections_open",
            "Connections, including draining ones.",
            lambda: node.network.open_connections,
        ),
        (
            "zeone_handshake_failures",
            "Inbound handshakes that failed since start.",
            lambda: node.network.handshake_failures,
        ),
        (
            "zeone_connections_refused",
            "Inbound connections refused by the limit.",
            lambda: node.network.refused,
        ),
        (
            "zeone_dht_routing_contacts",
            "Contacts in the DHT routing table.",
            lambda: len(node.dht.table),
        ),
        ("zeone_dht_records", "Records in the DHT store.", lambda: len(node.dht.store)),
    ]:
        Gauge(name, doc, registry=registry).set_function(read)


@hookimpl
def zeone_node_status(node: Node) -> dict[str, Any]:
    return {"protocols": len(node.router.protocols()), "api_url": node.api_url}
