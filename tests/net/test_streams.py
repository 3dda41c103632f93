"""Multiplexed streams between real nodes: plugin stream handlers, flow control, failures."""

from __future__ import annotations

import hashlib
import os

import pytest
import trio

from zeone import PluginInfo
from zeone.testing import open_network

ECHO = "/zeone/pipe/echo"
SINK = "/zeone/pipe/sink"


class PipePlugin:
    """An echo stream handler, and a sink that reads only when told to."""

    __name__ = "pipe"

    def __init__(self) -> None:
        self.sink_may_read = trio.Event()
        self.sink_received = 0

    def zeone_plugin_info(self) -> PluginInfo:
        return PluginInfo(name="pipe", version="1.0")

    def zeone_register_protocols(self, register) -> None:
        async def echo(peer, stream) -> None:
            while data := await stream.receive_some():
                await stream.send_all(data)
            await stream.send_eof()

        async def sink(peer, stream) -> None:
            await self.sink_may_read.wait()
            while data := await stream.receive_some():
                self.sink_received += len(data)

        register(ECHO, echo, stream=True)
        register(SINK, sink, stream=True)


@pytest.fixture
async def pipes(tmp_path):
    plugin = PipePlugin()
    async with open_network(2, data_root=tmp_path, plugins=[plugin], enable=["pipe"]) as net:
        yield plugin, net


async def test_echo_a_megabyte_with_half_close(pipes, autojump_clock) -> None:
    _, net = pipes
    a, b = net.nodes
    payload = os.urandom(1024 * 1024)
    stream = await a.rpc.open_stream(b.node_id, ECHO)
    received = bytearray()

    async def read_all() -> None:
        while data := await stream.receive_some():
            received.extend(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        await stream.send_all(payload)
        await stream.send_eof()
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    await stream.aclose()
    assert "/zeone/pipe/echo" in b.status()["protocols"]


async def test_many_streams_and_rpcs_share_one_connection(pipes, autojump_clock) -> None:
    _, net = pipes
    a, b = net.nodes
    results = {}

    async def one(index: int) -> None:
        stream = await a.rpc.open_stream(b.node_id, ECHO)
        message = f"stream {index}".encode() * 1000
        await stream.send_all(message)
        await stream.send_eof()
        got = b""
        while data := await stream.receive_some():
            got += data
        results[index] = got == message
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        for index in range(50):
            nursery.start_soon(one, index)
        nursery.start_soon(a.rpc.ping, b.node_id)
    assert all(results.values()) and len(results) == 50
    assert len(a.network.connections) == 1
    conn = a.network.connections[b.node_id]
    assert conn.mux.statistics().open_streams == 0  # nothing leaked


async def test_a_slow_reader_slows_the_writer_and_memory_stays_bounded(
    pipes, autojump_clock
) -> None:
    plugin, net = pipes
    a, b = net.nodes
    stream = await a.rpc.open_stream(b.node_id, SINK)
    sent = 0
    chunk = b"x" * 65536
    with trio.move_on_after(10):
        while True:
            await stream.send_all(chunk)
            sent += len(chunk)
    # the sink never read: the writer stopped after about one window
    window = a.network.limits.stream_window
    assert window <= sent <= window + len(chunk)
    conn = b.network.connections[a.node_id]
    assert conn.mux.statistics().bytes_buffered <= window
    plugin.sink_may_read.set()
    await stream.send_all(chunk)
    await stream.send_eof()
    await trio.sleep(1)
    assert plugin.sink_received == sent + len(chunk)


async def test_unknown_stream_protocol_is_reset(pipes, autojump_clock) -> None:
    _, net = pipes
    a, b = net.nodes
    stream = await a.rpc.open_stream(b.node_id, "/zeone/nothing/1")
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_all(b"hello")
        await stream.receive_some()


async def test_losing_the_connection_breaks_open_streams(pipes, autojump_clock) -> None:
    _, net = pipes
    a, b = net.nodes
    stream = await a.rpc.open_stream(b.node_id, SINK)
    net.memory.disconnect("node1")
    with pytest.raises(trio.BrokenResourceError):
        await stream.receive_some()
