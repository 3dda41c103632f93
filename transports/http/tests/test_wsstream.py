"""The WebSocket stream adapter: trio's stream contract, framing, backpressure, closing."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import CLIENT, SERVER, Connection
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from zeone_http.wsstream import MAX_MESSAGE, WebSocketStream


def ws_pair(
    a: trio.abc.Stream, b: trio.abc.Stream, close_timeout: float = 0.05
) -> tuple[WebSocketStream, WebSocketStream]:
    return (
        WebSocketStream(a, Connection(CLIENT), close_timeout=close_timeout),
        WebSocketStream(b, Connection(SERVER), close_timeout=close_timeout),
    )


async def make_pair() -> tuple[WebSocketStream, WebSocketStream]:
    return ws_pair(*trio.testing.memory_stream_pair())


async def make_clogged_pair() -> tuple[WebSocketStream, WebSocketStream]:
    return ws_pair(*trio.testing.lockstep_stream_pair())


async def test_satisfies_trios_two_way_stream_contract() -> None:
    await trio.testing.check_two_way_stream(make_pair, make_clogged_pair)


@given(
    chunks=st.lists(st.binary(min_size=0, max_size=3000), max_size=20),
    read_sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=10),
)
def test_any_writes_and_reads_deliver_the_same_bytes(chunks, read_sizes) -> None:
    async def main() -> None:
        client, server = await make_pair()
        expected = b"".join(chunks)
        got = bytearray()

        async def write() -> None:
            for chunk in chunks:
                await client.send_all(chunk)
            await client.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            index = 0
            while data := await server.receive_some(read_sizes[index % len(read_sizes)]):
                assert len(data) <= read_sizes[index % len(read_sizes)]
                got += data
                index += 1
        assert got == expected

    trio.run(main)


async def test_a_write_larger_than_one_message_is_split_and_reassembled() -> None:
    raw_client, raw_server = trio.testing.memory_stream_pair()
    client = WebSocketStream(raw_client, Connection(CLIENT))
    peer = Connection(SERVER)
    payload = bytes(range(256)) * (MAX_MESSAGE // 256 * 2 + 3)
    await client.send_all(payload)
    messages, data = 0, bytearray()
    while len(data) < len(payload):
        peer.receive_data(await raw_server.receive_some())
        for event in peer.events():
            assert isinstance(event, BytesMessage)
            data += event.data
            messages += event.message_finished
    assert data == payload and messages == 3


async def test_pings_are_answered_and_pongs_ignored() -> None:
    raw_client, raw_server = trio.testing.memory_stream_pair()
    client = WebSocketStream(raw_client, Connection(CLIENT))
    peer = Connection(SERVER)
    await raw_server.send_all(
        peer.send(Ping(b"are you there"))
        + peer.send(Pong(b"unsolicited"))
        + peer.send(BytesMessage(b"data"))
    )
    assert await client.receive_some() == b"data"
    peer.receive_data(await raw_server.receive_some())
    assert [type(e) for e in peer.events()] == [Pong]


async def test_a_text_message_breaks_the_stream_with_close_code_1003() -> None:
    raw_client, raw_server = trio.testing.memory_stream_pair()
    client = WebSocketStream(raw_client, Connection(CLIENT))
    peer = Connection(SERVER)
    await raw_server.send_all(peer.send(TextMessage("hello")))
    try:
        await client.receive_some()
    except trio.BrokenResourceError as exc:
        assert "text" in str(exc)
    else:
        raise AssertionError("a text message must break the stream")
    peer.receive_data(await raw_server.receive_some())
    (event,) = peer.events()
    assert isinstance(event, CloseConnection) and event.code == 1003


async def test_garbage_frames_break_the_stream_with_a_protocol_error() -> None:
    raw_client, raw_server = trio.testing.memory_stream_pair()
    client = WebSocketStream(raw_client, Connection(CLIENT))
    await raw_server.send_all(b"\x8f\x80" + b"\x00" * 20)  # reserved opcode, masked by server
    try:
        await client.receive_some()
    except trio.BrokenResourceError as exc:
        assert "framing" in str(exc)
    else:
        raise AssertionError("bad framing must break the stream")
    peer = Connection(SERVER)
    peer.receive_data(await raw_server.receive_some())
    (event,) = peer.events()
    assert isinstance(event, CloseConnection) and event.code == 1002
    try:
        await client.receive_some()
    except trio.BrokenResourceError:
        pass
    else:
        raise AssertionError("a broken stream stays broken")


async def test_peer_close_ends_the_stream_after_buffered_data_and_is_echoed() -> None:
    raw_client, raw_server = trio.testing.memory_stream_pair()
    client = WebSocketStream(raw_client, Connection(CLIENT))
    peer = Connection(SERVER)
    await raw_server.send_all(
        peer.send(BytesMessage(b"last words")) + peer.send(CloseConnection(1000))
    )
    assert await client.receive_some() == b"last words"
    assert await client.receive_some() == b""
    assert await client.receive_some() == b""
    peer.receive_data(await raw_server.receive_some())
    (event,) = peer.events()
    assert isinstance(event, CloseConnection) and event.code == 1000
    try:
        await client.send_all(b"too late")
    except trio.BrokenResourceError:
        pass
    else:
        raise AssertionError("sending after the peer's close must fail")


async def test_a_huge_frame_is_delivered_incrementally_without_buffering_it_whole() -> None:
    raw_client, raw_server = trio.testing.memory_stream_pair()
    client = WebSocketStream(raw_client, Connection(CLIENT))
    # A server frame header announcing 2**40 bytes, then only 100 KiB of them.
    await raw_server.send_all(b"\x82\x7f" + (1 << 40).to_bytes(8, "big") + b"z" * 100_000)
    got = 0
    while got < 100_000:
        data = await client.receive_some()
        assert data and set(data) == {ord("z")}
        assert len(client._pending) == 0  # handed out as it arrives
        got += len(data)


async def test_a_reader_that_stops_reading_stalls_the_writer(autojump_clock) -> None:
    raw_client, raw_server = trio.testing.lockstep_stream_pair()
    client, server = ws_pair(raw_client, raw_server)
    with trio.move_on_after(10) as scope:
        await client.send_all(b"x" * 10_000)
    assert scope.cancelled_caught  # nobody read: the write cannot complete
    try:
        await client.send_all(b"more")
    except trio.BrokenResourceError as exc:
        assert "interrupted" in str(exc)  # a half-written frame poisons the stream
    else:
        raise AssertionError("a stream with a half-written frame must refuse more data")
    assert server is not None


async def test_abrupt_eof_without_a_close_frame_is_end_of_stream() -> None:
    raw_client, raw_server = trio.testing.memory_stream_pair()
    client = WebSocketStream(raw_client, Connection(CLIENT))
    peer = Connection(SERVER)
    await raw_server.send_all(peer.send(BytesMessage(b"abc")))
    await raw_server.aclose()
    assert await client.receive_some() == b"abc"
    assert await client.receive_some() == b""
