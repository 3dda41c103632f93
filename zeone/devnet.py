"""``zeone devnet``: a local network of real node processes on loopback, watched live.

Each node gets its own directory (config, key, logs) under the devnet directory; node 0 is a seed
and the others bootstrap from it. The nodes are ordinary ``zeone run`` processes, so what works
here works on real machines. Ctrl-C (or ``--duration``) stops them all with SIGTERM, waits for their
graceful shutdown, and reports how each one exited.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import trio
from rich.console import Console
from rich.live import Live
from rich.table import Table

from zeone.config import CONFIG_FILE_NAME, load_config
from zeone.errors import ZeoneError
from zeone.initdir import init_node_dir
from zeone.plugins import Catalog, PluginHost

STOP_TIMEOUT = 20.0
POLL_INTERVAL = 1.0


@attrs.define(eq=False)
class DevnetNode:
    index: int
    directory: Path
    node_id: str
    listen: str
    api_url: str
    token: str = ""
    process: trio.Process | None = None
    status: dict[str, Any] | None = None
    peers: int | None = None
    rtt_ms: float | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def config_path(self) -> Path:
        return self.directory / CONFIG_FILE_NAME


@attrs.define
class Devnet:
    directory: Path
    nodes: int
    enable: list[str]
    base_port: int
    api_base_port: int
    catalog: Catalog
    members: list[DevnetNode] = attrs.Factory(list)
    _port_names: dict[str, int] = attrs.Factory(dict)
    console: Console = attrs.Factory(Console)

    def wipe(self) -> None:
        if self.directory.exists():
            shutil.rmtree(self.directory)

    def prepare(self) -> None:
        """Create (or reuse) each node's directory and config; identities persist across runs.

        Enabled plugins adjust each node's settings through ``zeone_devnet_configure`` (a VPN
        exit on one node, a transport-only node...), with ports from `plugin_port`.
        """
        self.members.clear()
        host = PluginHost(self.catalog, self.enable)
        seed: DevnetNode | None = None
        for index in range(self.nodes):
            directory = self.directory / f"node{index}"
            listen = f"tcp://127.0.0.1:{self.base_port + index}"
            api_bind = f"127.0.0.1:{self.api_base_port + index}"
            settings: dict[str, Any] = {
                "network.listen": [listen],
                "api.bind": api_bind,
                "plugins.enable": list(self.enable),
                "node.log_format": "json",
            }
            if seed is not None:
                settings["network.bootstrap"] = [f"{seed.node_id}@{seed.listen}"]
            host.call(
                "zeone_devnet_configure",
                index=index,
                count=self.nodes,
                settings=settings,
                port=functools.partial(self.plugin_port, index),
            )
            listen = settings["network.listen"][0]  # a plugin may have replaced it
            result = init_node_dir(
                directory,
                role="seed" if index == 0 else "full",
                catalog=self.catalog,
                settings=settings,
                force=True,
            )
            member = DevnetNode(
                index, directory, str(result.identity.node_id), listen, f"http://{api_bind}"
            )
            self.members.append(member)
            seed = seed or member

    def plugin_port(self, index: int, name: str) -> int:
        """Node `index`'s port for `name`: a block of `nodes` ports per name, after the P2P
        ports, in the order names are first asked for (stable for the same plugins)."""
        slot = self._port_names.setdefault(name, len(self._port_names))
        return self.base_port + self.nodes * (1 + slot) + index

    async def run(self, duration: float | None = None) -> int:
        """Start every node, show the live table, stop them all; returns an exit code.

        Signals are caught before the first process starts, so Ctrl-C at any moment -- even while
        nodes are still starting -- stops every node that was started.
        """
        with (
            trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
            Live(self._table(), console=self.console, refresh_per_second=2) as live,
        ):
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._until_signal, signals, nursery.cancel_scope)
                    if duration is not None:
                        nursery.cancel_scope.deadline = trio.current_time() + duration
                    for member in self.members:
                        await self._start(member)
                        if member.index == 0:
                            await self._wait_ready(member)
                    nursery.start_soon(self._poll)
                    nursery.start_soon(self._refresh, live)
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop_all()
                live.update(self._table())
        failed = [m for m in self.members if m.process and m.process.returncode not in (0, None)]
        for member in failed:
            self.console.print(
                f"[red]{member.name} exited with {member.process.returncode}[/]; "
                f"see {member.directory / 'node.log'}"
            )
        return 1 if failed else 0

    @staticmethod
    async def _until_signal(signals: Any, scope: trio.CancelScope) -> None:
        async for _ in signals:
            scope.cancel()
            return

    async def _start(self, member: DevnetNode) -> None:
        log_file = (member.directory / "node.log").open("ab")
        member.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "zeone", "--config", str(member.config_path), "run"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # The node's config file is the whole truth: the user's ZEONE_* variables would
            # make every node bind the same ports while the monitor looks elsewhere.
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("ZEONE_")},
                "PYTHONUNBUFFERED": "1",
            },
            start_new_session=True,  # Ctrl-C reaches us only; we stop the nodes in order
        )
        log_file.close()

    async def _wait_ready(self, member: DevnetNode, timeout: float = 15.0) -> None:
        """Let the seed come up first, so the others find it on their first dial."""
        with trio.move_on_after(timeout):
            while not (member.directory / "node.json").exists():
                if member.process is not None and member.process.returncode is not None:
                    return
                await trio.sleep(0.05)

    async def _poll(self) -> None:
        from zeone.client import ApiClient

        while True:
            for member in self.members:
                if member.process is not None and member.process.returncode is not None:
                    member.error = f"exited ({member.process.returncode})"
                    continue
                try:
                    client = ApiClient.from_config(load_config(member.config_path, environ={}))
                    client.timeout = 0.5
                    member.status = await trio.to_thread.run_sync(client.get_json, "/status")
                    peers = (await trio.to_thread.run_sync(client.get_json, "/peers"))["peers"]
                    member.peers = len(peers)
                    member.error = None
                    if peers:  # show the network working: a real ping to a random peer
                        target = random.choice(peers)["node_id"]
                        pong = await trio.to_thread.run_sync(
                            client.post_json, "/peers/ping", {"peer": target}
                        )
                        member.rtt_ms = pong["rtt_ms"]
                except (ZeoneError, OSError, ValueError) as exc:
                    member.error = "starting" if member.status is None else str(exc)
            await trio.sleep(POLL_INTERVAL)

    async def _refresh(self, live: Live) -> None:
        while True:
            live.update(self._table())
            await trio.sleep(0.5)

    def _table(self) -> Table:
        table = Table(title=f"ZEONE devnet: {len(self.members)} nodes in {self.directory}")
        for column in (
            "node",
            "id",
            "role",
            "listen",
            "state",
            "peers",
            "ping ms",
            "dht",
            "plugins",
            "uptime",
        ):
            table.add_column(column)
        for m in self.members:
            s = m.status or {}
            state = m.error or ("up" if s else "starting")
            table.add_row(
                m.name,
                m.node_id[:8],
                s.get("role", "?"),
                m.listen.removeprefix("tcp://"),
                f"[green]{state}[/]" if state == "up" else f"[yellow]{state}[/]",
                "" if m.peers is None else str(m.peers),
                "" if m.rtt_ms is None else f"{m.rtt_ms:.2f}",
                str(s.get("dht", {}).get("routing", {}).get("contacts", "")) if s else "",
                ", ".join(s.get("plugins", [])),
                f"{s.get('uptime', 0):.0f}s" if s else "",
            )
        return table

    async def _stop_all(self) -> None:
        running = [m for m in self.members if m.process and m.process.returncode is None]
        for member in running:
            member.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            for member in running:
                await member.process.wait()
        for member in running:
            if member.process.returncode is None:
                member.process.kill()
                await member.process.wait()
                member.error = "killed (did not stop in time)"
            else:
                member.error = f"stopped ({member.process.returncode})"
