"""ObfsStream over in-memory streams: partial reads, tampering, truncation, iat pacing."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from zeone_obfs.handshake import ClientHandshake, ReplayFilter, ServerHandshake, ServerKeys
from zeone_obfs.stream import ObfsStream

KEYS = ServerKeys.generate()


def session_keys():
    client, server = ClientHandshake(KEYS.identity), ServerHandshake(KEYS, ReplayFilter())
    assert server.feed(client.message) and server.reply is not None
    assert client.feed(server.reply) == b""
    return client.keys, server.keys


def pair(iat_mode: int = 0):
    (a_raw, b_raw), (ka, kb) = trio.testing.memory_stream_pair(), session_keys()
    return a_raw, b_raw, ObfsStream(a_raw, ka, b"seed", iat_mode=iat_mode), kb


async def test_partial_reads_respect_max_bytes() -> None:
    _a_raw, b_raw, a, kb = pair()
    b = ObfsStream(b_raw, kb, b"seed")
    await a.send_all(b"0123456789")
    assert await b.receive_some(4) == b"0123"
    assert await b.receive_some(100) == b"456789"
    await a.aclose()
    assert await b.receive_some() == b""


async def test_a_tampered_byte_breaks_the_stream() -> None:
    _a_raw, b_raw, a, kb = pair()
    await a.send_all(b"x" * 100)
    wire = bytearray(await b_raw.receive_some())
    wire[10] ^= 1
    left, right = trio.testing.memory_stream_pair()
    b = ObfsStream(right, kb, b"seed")
    await left.send_all(bytes(wire))
    with pytest.raises(trio.BrokenResourceError, match="authentication"):
        await b.receive_some()


async def test_eof_inside_a_frame_is_an_error_not_a_clean_close() -> None:
    _a_raw, b_raw, a, kb = pair()
    await a.send_all(b"y" * 100)
    wire = await b_raw.receive_some()
    left, right = trio.testing.memory_stream_pair()
    b = ObfsStream(right, kb, b"seed")
    await left.send_all(wire[:-1])
    await left.aclose()
    with pytest.raises(trio.BrokenResourceError, match="inside a frame"):
        await b.receive_some()


@pytest.mark.parametrize("iat_mode", [1, 2])
async def test_iat_modes_split_writes_into_paced_segments(iat_mode: int, autojump_clock) -> None:
    _a_raw, b_raw, a, kb = pair(iat_mode)
    b = ObfsStream(b_raw, kb, b"seed")
    data = bytes(range(256)) * 40
    got = bytearray()

    async def read() -> None:
        while len(got) < len(data):
            got.extend(await b.receive_some())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        started = trio.current_time()
        await a.send_all(data)
        assert trio.current_time() > started  # it slept between segments
    assert bytes(got) == data


async def test_concurrent_sends_are_refused() -> None:
    _a_raw, _b_raw, a, _kb = pair(iat_mode=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, b"z" * 20000)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await a.send_all(b"more")
        nursery.cancel_scope.cancel()
