"""The ``vpn`` plugin's hooks: protocols, services, routes, metrics, status, CLI.

The CLI loads this module on every start, so the relay machinery is imported inside the hooks
that run only when the plugin is enabled.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from zeone import PluginInfo, hookimpl
from zeone_vpn import __version__
from zeone_vpn.config import VpnConfig
from zeone_vpn.state import state

MAX_STATUS_PEERS = 16


@hookimpl
def zeone_plugin_info() -> PluginInfo:
    return PluginInfo(
        name="vpn",
        version=__version__,
        api="1.0",
        description="SOCKS5 proxy whose traffic leaves the network at DHT-discovered exit nodes.",
        config=VpnConfig,
    )


@hookimpl
def zeone_register_protocols(register: Any, node: Any) -> None:
    config: VpnConfig = node.plugin_config("vpn")
    from zeone_vpn.exit import ExitNode, Relay
    from zeone_vpn.wire import (
        CONNECT_PROTOCOL,
        INFO_PROTOCOL,
        ONION_PROTOCOL,
        RELAY_PROTOCOL,
        UDP_PROTOCOL,
    )

    vpn = state(node)
    if config.relay:
        vpn.relay = Relay(node, config, vpn.meter)
        register(RELAY_PROTOCOL, vpn.relay.handle, stream=True)
    if not config.exit:
        return  # only exits serve flows (and so only they advertise these capabilities)
    vpn.exit = exit = ExitNode(node, config, vpn.meter)

    async def info(request: Any) -> dict[str, Any]:
        return exit.info()

    register(CONNECT_PROTOCOL, exit.handle_connect, stream=True)
    register(UDP_PROTOCOL, exit.handle_udp, stream=True)
    register(ONION_PROTOCOL, exit.handle_onion, stream=True)
    register(INFO_PROTOCOL, info)


@hookimpl
def zeone_register_metrics(registry: Any, node: Any) -> None:
    registry.register(state(node).meter)


@hookimpl
def zeone_register_routes(register: Any, node: Any) -> None:
    from starlette.responses import JSONResponse

    async def status(request: Any) -> JSONResponse:
        return JSONResponse(full_status(node))

    register("/vpn/status", status)


@attrs.define(eq=False)
class Advertiser:
    node: Any
    key: bytes
    meta: dict[str, Any]
    interval: float
    name: str = "advertise"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from zeone_vpn.exit import advertise

        task_status.started()
        await advertise(self.node, self.key, self.meta, self.interval)


@attrs.define(eq=False)
class Directory:
    directory: Any
    name: str = "exits"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.directory.run(task_status=task_status)


@attrs.define(eq=False)
class Metering:
    """Samples throughput every second and hands interim usage records to the sinks."""

    node: Any
    usage_interval: float
    name: str = "metering"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        meter = state(self.node).meter
        task_status.started()
        next_flush = trio.current_time() + self.usage_interval
        while True:
            meter.sample()
            if trio.current_time() >= next_flush:
                meter.flush()
                next_flush = trio.current_time() + self.usage_interval
            await trio.sleep(min(1.0, self.usage_interval))


@hookimpl
def zeone_services(node: Any) -> list[Any]:
    config: VpnConfig = node.plugin_config("vpn")
    vpn = state(node)
    services: list[Any] = [Metering(node, config.usage_interval)]
    if vpn.exit is not None:
        from zeone_vpn.exit import EXIT_KEY

        meta = {k: v for k, v in vpn.exit.info().items() if k != "flows"}  # load: via probes
        services.append(Advertiser(node, EXIT_KEY, meta, config.advertise_interval))
    if vpn.relay is not None:
        from zeone_vpn.exit import RELAY_KEY

        services.append(
            Advertiser(node, RELAY_KEY, {"v": 1}, config.advertise_interval, name="advertise-relay")
        )
    if config.entry:
        from zeone_vpn.directory import ExitDirectory
        from zeone_vpn.entry import SocksServer

        vpn.directory = ExitDirectory(node, config.exits, config.probe_interval, config.hops)
        vpn.socks = SocksServer(node, config, vpn.directory, vpn.meter)
        services += [Directory(vpn.directory), vpn.socks]
    return services


def _exit_info(exit: Any) -> dict[str, Any] | None:
    if exit is None:
        return None
    info = exit.info()
    info["onion_key"] = info["onion_key"].hex()
    return info


def full_status(node: Any) -> dict[str, Any]:
    vpn = state(node)
    meter = vpn.meter
    sent, received = meter.totals()
    return {
        "entry": vpn.socks.snapshot() if vpn.socks is not None else None,
        "exit": _exit_info(vpn.exit),
        "relay": vpn.relay is not None,
        "hops": vpn.directory.hops if vpn.directory is not None else None,
        "relays": vpn.directory.relay_snapshot() if vpn.directory is not None else [],
        "exits": vpn.directory.snapshot() if vpn.directory is not None else [],
        "flows": [flow.snapshot() for flow in meter.flows.values()],
        "peers": meter.peer_rows(),
        "bytes_sent": sent,
        "bytes_received": received,
        "throughput": meter.throughput(),
        "refused": dict(meter.refused),
    }


@hookimpl
def zeone_node_status(node: Any) -> dict[str, Any]:
    vpn = state(node)
    meter = vpn.meter
    sent, received = meter.totals()
    section: dict[str, Any] = {
        "roles": ",".join(
            r
            for r, on in (
                ("entry", vpn.socks is not None),
                ("relay", vpn.relay is not None),
                ("exit", vpn.exit is not None),
            )
            if on
        ),
        "active_flows": len(meter.flows),
        "bytes_sent": sent,
        "bytes_received": received,
    }
    # Flat keys so `zeone status` shows them as rows; the full list is at /vpn/status.
    for row in meter.peer_rows()[:MAX_STATUS_PEERS]:
        key = f"{row['role']} {row['peer'][:8]} sent/received"
        section[key] = f"{row['sent']}/{row['received']}"
    if vpn.socks is not None and vpn.socks.address is not None:
        section["socks"] = "{}:{}".format(*vpn.socks.address)
    if vpn.directory is not None:
        section["exits_known"] = len(vpn.directory.exits)
    return section


@hookimpl
def zeone_register_commands(cli: Any) -> None:
    from zeone_vpn.cli import add_commands

    add_commands(cli)


@hookimpl
def zeone_devnet_configure(index: int, count: int, settings: Any, port: Any) -> None:
    """Every devnet node gets a SOCKS entry on its own port; the last node (of two or more) is
    an exit that may also reach loopback, so the demo can fetch a page served on this machine."""
    settings["plugins.vpn.socks_bind"] = f"127.0.0.1:{port('socks')}"
    if count > 1 and index == count - 1:
        settings["plugins.vpn.exit"] = True
        settings["plugins.vpn.policy"] = ["allow 127.0.0.1/32:*", "allow *:*"]
