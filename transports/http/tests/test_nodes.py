"""Two real ZEONE nodes talking through the ws/wss transports on loopback."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
import trio

from zeone import PluginInfo
from zeone.net.transport import parse_address
from zeone.testing import open_network

HELLO = "/zeone/hello/1"
ECHO = "/test/echo/1"


def ws_settings(**extra: object) -> dict[str, object]:
    return {
        "network.listen": ["ws://127.0.0.1:0"],
        "network.transports": ["ws", "wss"],
        **extra,
    }


async def test_two_nodes_ping_and_rpc_over_ws(tmp_path: Path) -> None:
    async with open_network(data_root=tmp_path) as net:
        a = await net.add_node(enable=["http", "hello"], settings=ws_settings())
        b = await net.add_node(enable=["http", "hello"], settings=ws_settings())
        (listen,) = b.network.listen_addresses
        address = parse_address(listen)
        assert address.scheme == "ws" and address.port and len(address.path) > 8
        # The generated secret path is persisted in the data dir (so it survives restarts).
        secret_file = tmp_path / "node1" / "http_secret_path"
        assert secret_file.read_text().strip() == address.path
        assert a.network.listen_addresses[0] != listen  # each node has its own secret

        peer, _rtt = await a.rpc.ping(b.node_id)
        assert peer == b.node_id
        reply = await a.rpc.request(b.node_id, HELLO, {"name": "ws"})
        assert reply["node_id"] == str(b.node_id)
        assert a.peers()[0]["address"] == listen


class EchoStreams:
    """An in-test plugin: a stream protocol that echoes everything back."""

    __name__ = "echo"

    def zeone_plugin_info(self) -> PluginInfo:
        return PluginInfo(name="echo", version="1.0")

    def zeone_register_protocols(self, register, node) -> None:
        async def echo(_peer, stream) -> None:
            while data := await stream.receive_some():
                await stream.send_all(data)
            await stream.send_eof()

        register(ECHO, echo, stream=True)


async def test_a_megabyte_stream_crosses_the_websocket_intact(tmp_path: Path) -> None:
    async with open_network(data_root=tmp_path, plugins=[EchoStreams()]) as net:
        a = await net.add_node(enable=["http", "echo"], settings=ws_settings())
        b = await net.add_node(enable=["http", "echo"], settings=ws_settings())
        payload = os.urandom(1 << 20)
        stream = await a.rpc.open_stream(b.node_id, ECHO)
        received = bytearray()

        async def reader() -> None:
            while data := await stream.receive_some():
                received.extend(data)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                for offset in range(0, len(payload), 100_000):
                    await stream.send_all(payload[offset : offset + 100_000])
                await stream.send_eof()
        assert received == payload
        assert a.peers()[0]["address"].startswith("ws://127.0.0.1:")


async def test_configured_secret_path_and_public_address(tmp_path: Path) -> None:
    async with open_network(data_root=tmp_path) as net:
        b = await net.add_node(
            enable=["http"],
            settings=ws_settings(
                **{
                    "plugins.http.secret_path": "/static/chunk-3f9a2c.js",
                    "plugins.http.public_address": "wss://cdn.example.org/static/chunk-3f9a2c.js",
                }
            ),
        )
        assert b.network.listen_addresses == ["wss://cdn.example.org/static/chunk-3f9a2c.js"]


async def test_two_nodes_over_wss_with_tls(tmp_path: Path, certificate) -> None:
    cert, key = certificate
    tls = {
        "network.listen": ["wss://127.0.0.1:0"],
        "plugins.http.tls_cert": str(cert),
        "plugins.http.tls_key": str(key),
        "plugins.http.tls_ca_file": str(cert),
    }
    async with open_network(data_root=tmp_path) as net:
        a = await net.add_node(enable=["http", "hello"], settings=ws_settings(**tls))
        b = await net.add_node(enable=["http", "hello"], settings=ws_settings(**tls))
        assert b.network.listen_addresses[0].startswith("wss://127.0.0.1:")
        reply = await a.rpc.request(b.node_id, HELLO, {"name": "tls"})
        assert reply["greeting"].endswith("tls")


async def test_wss_dial_refuses_an_untrusted_certificate(tmp_path: Path, certificate) -> None:
    cert, key = certificate
    server = {
        "network.listen": ["wss://127.0.0.1:0"],
        "plugins.http.tls_cert": str(cert),
        "plugins.http.tls_key": str(key),
    }
    async with open_network(data_root=tmp_path) as net:
        a = await net.add_node(enable=["http"], settings=ws_settings())
        b = await net.add_node(enable=["http"], settings=ws_settings(**server))
        with pytest.raises(OSError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify"):
            with trio.fail_after(20):
                await a.rpc.ping(b.node_id)
        assert ssl  # the client uses the standard library's verification
