"""Hook implementations: wires `Storage` into the node (protocols, routes, service, CLI)."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import click

from zeone import PluginInfo, hookimpl
from zeone.content import register_content_protocol
from zeone_storage import __version__
from zeone_storage.config import StorageConfig
from zeone_storage.service import PROTOCOL, Storage, StorageService


def storage_of(node: Any) -> Storage:
    """The node's `Storage` (per node: in-process test networks run many nodes)."""
    state = node.plugin_state.get("storage")
    if state is None:
        state = node.plugin_state["storage"] = Storage(node, node.plugin_config("storage"))
    return state


@hookimpl
def zeone_plugin_info() -> PluginInfo:
    return PluginInfo(
        name="storage",
        version=__version__,
        api="1.0",
        description="Erasure-coded storage: k+m fragments on distinct nodes, audits, repair.",
        config=StorageConfig,
    )


@hookimpl
def zeone_register_protocols(register: Any, node: Any) -> None:
    storage = storage_of(node)
    register(PROTOCOL, storage.handle)
    register_content_protocol(register, node, storage.content)


@hookimpl
def zeone_services(node: Any) -> list[StorageService]:
    return [StorageService(storage_of(node))]


@hookimpl
def zeone_register_routes(register: Any, node: Any) -> None:
    from zeone_storage.api import routes

    for path, endpoint, methods in routes(storage_of(node)):
        register(path, endpoint, methods=methods)


@hookimpl
def zeone_node_status(node: Any) -> dict[str, Any] | None:
    storage = node.plugin_state.get("storage")
    if storage is None:
        return None
    return {
        **storage.stats,
        "fragments_held": storage.fragments.count(),
        "bytes_held": storage.fragments.used,
        "quota": storage.config.quota,
    }


@hookimpl
def zeone_register_commands(cli: click.Group) -> None:
    from zeone_storage.cli import store

    cli.add_command(store)


@hookimpl
def zeone_devnet_configure(
    index: int, count: int, settings: MutableMapping[str, Any], port: Callable[[str], int]
) -> None:
    # A devnet is small: audit every 30 s so departures are noticed and repaired while you watch,
    # and use k+m that fits the network (n distinct nodes other than the publisher).
    settings["plugins.storage.audit_interval"] = 30.0
    if count - 1 < 6:
        k = max(1, count - 2)
        settings["plugins.storage.k"] = k
        settings["plugins.storage.m"] = 1
        settings["plugins.storage.repair_threshold"] = k
