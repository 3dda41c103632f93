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


@hookimpl
def zeone_node_status(node: Node) -> dict[str, Any]:
    return {"protocols": len(node.router.protocols()), "api_url": node.api_url}
