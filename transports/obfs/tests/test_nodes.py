"""Real ZEONE nodes talking over obfs on loopback, through the plugin's entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from zeone_obfs.bridge import encode_cert
from zeone_obfs.state import load

from zeone import PluginInfo, Request
from zeone.testing import open_network

SETTINGS = {
    "network.listen": ["obfs://127.0.0.1:0"],
    "network.transports": ["obfs"],
    "plugins.obfs.close_delay_min": 0.5,
    "plugins.obfs.close_delay_max": 0.5,
}


class EchoPlugin:
    """A request and a stream protocol, to carry real traffic between the nodes."""

    __name__ = "obfs-echo"

    def zeone_plugin_info(self) -> PluginInfo:
        return PluginInfo(name="obfs-echo", version="1.0")

    def zeone_register_protocols(self, register, node) -> None:
        async def echo(request: Request) -> object:
            return {"echo": request.payload, "from": str(node.node_id)}

        async def sink(peer, stream) -> None:
            while data := await stream.receive_some():
                await stream.send_all(data)

        register("/obfs-test/echo/1", echo)
        register("/obfs-test/stream/1", sink, stream=True)


@pytest.mark.parametrize(
    ("extra", "size"),
    [
        ({}, 1_000_000),
        ({"plugins.obfs.iat_mode": 1, "plugins.obfs.client_padding": "low-popcount"}, 100_000),
    ],
)
async def test_two_nodes_ping_rpc_and_stream_over_obfs(
    tmp_path: Path, extra: dict, size: int
) -> None:
    settings = {**SETTINGS, **extra}
    async with open_network(data_root=tmp_path, plugins=[EchoPlugin()]) as net:
        a, b = [
            await net.add_node(enable=["obfs", "obfs-echo"], settings=settings) for _ in range(2)
        ]
        (address,) = b.network.listen_addresses
        assert address.startswith("obfs://127.0.0.1:") and "?cert=" in address
        assert address.endswith(f"&iat={extra.get('plugins.obfs.iat_mode', 0)}")
        peer, _rtt = await a.rpc.ping(b.node_id)
        assert peer == b.node_id
        assert a.peers()[0]["address"] == address
        answer = await a.rpc.request(b.node_id, "/obfs-test/echo/1", {"n": 1}, timeout=10)
        assert answer == {"echo": {"n": 1}, "from": str(b.node_id)}
        stream = await a.rpc.open_stream(b.node_id, "/obfs-test/stream/1")
        data = os.urandom(size)
        got = bytearray()

        async def read() -> None:
            while len(got) < len(data):
                got.extend(await stream.receive_some())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            for i in range(0, len(data), 65536):
                await stream.send_all(data[i : i + 65536])
        assert bytes(got) == data
        await stream.aclose()
        padding = extra.get("plugins.obfs.client_padding", "uniform")
        assert a.plugin_state["obfs"].padding.value == padding
        status = b.plugin_state["obfs"]
        assert status.accepted == 1 and status.rejected == 0
        # the state file holds the identity the advertised cert names
        keys = load(tmp_path / "node1" / "obfs_state.json")
        assert keys.identity == status.keys.identity
        assert (tmp_path / "node1" / "obfs_state.json").stat().st_mode & 0o777 == 0o600


async def test_a_node_without_a_published_cert_is_reachable_only_by_bridge_line(
    tmp_path: Path,
) -> None:
    hidden = {**SETTINGS, "plugins.obfs.publish_cert": False}
    async with open_network(data_root=tmp_path) as net:
        a = await net.add_node(enable=["obfs"], settings=SETTINGS)
        b = await net.add_node(enable=["obfs"], settings=hidden)
        (address,) = b.network.listen_addresses
        assert "cert" not in address
        try:
            with trio.fail_after(5):
                await a.rpc.ping(b.node_id, timeout=3)
        except OSError as exc:
            assert "cert" in str(exc)
        else:
            raise AssertionError("a node without the bridge line reached the hidden node")
        transport = b.plugin_state["obfs"]
        port = int(address.rsplit(":", 1)[1])
        bridge = str(transport.bridge_address("127.0.0.1", port))
        with trio.fail_after(20):
            while True:  # the failed dial above put the peer in a short backoff
                try:
                    peer, _ = await a.rpc.ping(f"{b.node_id}@{bridge}")
                    break
                except OSError as exc:
                    assert "backing off" in str(exc)
                    await trio.sleep(0.5)
        assert peer == b.node_id


def test_cli_prints_the_bridge_line(tmp_path: Path) -> None:
    config = tmp_path / "zeone.toml"
    config.write_text(
        '[node]\ndata_dir = "data"\n[network]\nlisten = ["obfs://0.0.0.0:4100"]\n'
        "[plugins.obfs]\niat_mode = 1\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEONE_")}
    env["HOME"] = str(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "zeone", "--config", str(config), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )

    result = run("obfs", "bridge-line", "--host", "203.0.113.5", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["bridge_line"].startswith("obfs://203.0.113.5:4100?cert=")
    assert row["bridge_line"].endswith("&iat=1")
    keys = load(tmp_path / "data" / "obfs_state.json")  # created, and named by the line
    assert f"cert={encode_cert(keys.identity)}&" in row["bridge_line"]
    plugins = run("plugins")
    assert "obfs" in plugins.stdout
    check = run("obfs", "gfw-check", "--count", "50", "--padding", "low-popcount", "--json")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["blocked"] == 0
    config.write_text('[node]\ndata_dir = "data"\n[plugins.obfs]\niat_mode = 7\n')
    bad = run("obfs", "bridge-line")
    assert bad.returncode == 2 and "iat_mode" in bad.stderr
