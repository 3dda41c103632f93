"""Hook implementations of the forum plugin."""

from __future__ import annotations

from typing import Any

from zeone import PluginInfo, hookimpl
from zeone_forum import __version__
from zeone_forum.config import ForumConfig


@hookimpl
def zeone_plugin_info() -> PluginInfo:
    return PluginInfo(
        name="forum",
        version=__version__,
        api="1.0",
        description="Decentralized forum (seed 004): threads, posts, votes, sync, web UI.",
        config=ForumConfig,
    )


def _forum(node: Any) -> Any:
    from zeone_forum.service import Forum

    forum = node.plugin_state.get("forum")
    if forum is None:
        forum = node.plugin_state["forum"] = Forum(node, node.plugin_config("forum"))
    return forum


@hookimpl
def zeone_register_record_namespaces(register: Any, node: Any) -> None:
    from zeone_forum.service import namespaces

    for namespace in namespaces():
        register(namespace)


@hookimpl
def zeone_register_protocols(register: Any, node: Any) -> None:
    from zeone_forum.service import PROTOCOL

    register(PROTOCOL, _forum(node).handle)


@hookimpl
def zeone_register_routes(register: Any, node: Any) -> None:
    from zeone_forum.api import register_routes

    register_routes(register, _forum(node))


@hookimpl
def zeone_services(node: Any) -> list[Any]:
    return [_forum(node)]


@hookimpl
def zeone_node_status(node: Any) -> dict[str, Any] | None:
    forum = node.plugin_state.get("forum")
    return forum.status() if forum is not None else None


@hookimpl
def zeone_register_commands(cli: Any) -> None:
    from zeone_forum.cli import add_commands

    add_commands(cli)


@hookimpl
def zeone_devnet_configure(index: int, count: int, settings: Any, port: Any) -> None:
    """A devnet syncs every 10 s instead of 30 and knows few identities: anonymous posts use
    rings as large as the devnet has nodes (at least 3) instead of waiting for 8 authors."""
    ring = max(3, min(8, count))
    settings["plugins.forum.sync_interval"] = 10.0
    settings["plugins.forum.maintenance_interval"] = 20.0
    settings["plugins.forum.ring_size"] = ring
    settings["plugins.forum.min_ring_size"] = ring
