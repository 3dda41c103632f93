"""Stream multiplexing: two Muxes back to back through an in-test pump that round-trips every
message through its wire form (so validation runs), plus hand-crafted hostile messages.

Every test runs on the autojump clock under a `fail_after`: a deadlock fails at once instead of
hanging, and no test depends on time.
"""

from __future__ import annotations

import array
import itertools
import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zeone.errors import ProtocolError
from zeone.net.mux import DEFAULT_WINDOW, MAX_WINDOW, Mux, MuxStream, TooManyStreams
from zeone.wire.frame import MessageType, decode_cbor, encode_cbor
from zeone.wire.messages import WireMessage
from zeone.wire.stream_messages import (
    MAX_STREAM_CHUNK,
    STREAM_MESSAGES,
    StreamClose,
    StreamData,
    StreamOpen,
    StreamReset,
    StreamWindow,
    parse_stream_message,
)

PROTO = "/zeone/test/1"
GUARD = 600  # virtual seconds: only reached on a deadlock


class Side:
    """One end: its Mux and the inbound streams it accepted."""

    def __init__(self, name: str, mux_kwargs: dict, outbound: bool) -> None:
        self.name = name
        self.sent: list[WireMessage] = []
        self.wire_send, self.wire_receive = trio.open_memory_channel[WireMessage](4)
        self.accept_send, self.accept_receive = trio.open_memory_channel[MuxStream](math.inf)
        kwargs = {"max_streams": 64, "on_stream": self.accept_send.send_nowait, **mux_kwargs}
        self.mux = Mux(self._send, outbound=outbound, **kwargs)

    async def _send(self, message: WireMessage) -> None:
        self.sent.append(message)
        await self.wire_send.send(message)

    async def accept(self) -> MuxStream:
        return await self.accept_receive.receive()


class Pair:
    def __init__(self, a: Side, b: Side) -> None:
        self.a, self.b = a, b

    async def open(self, protocol: str = PROTO) -> tuple[MuxStream, MuxStream]:
        """A stream opened by a, and b's end of it."""
        stream = await self.a.mux.open_stream(protocol)
        return stream, await self.b.accept()

    async def open_from_b(self, protocol: str = PROTO) -> tuple[MuxStream, MuxStream]:
        stream = await self.b.mux.open_stream(protocol)
        return stream, await self.a.accept()


async def pump(receive: trio.MemoryReceiveChannel[WireMessage], mux: Mux) -> None:
    async for message in receive:
        payload = decode_cbor(encode_cbor(message.to_wire()))
        await mux.handle(parse_stream_message(message.TYPE, payload))


@asynccontextmanager
async def mux_pair(
    a_kwargs: dict | None = None, b_kwargs: dict | None = None
) -> AsyncIterator[Pair]:
    a = Side("a", a_kwargs or {}, outbound=True)
    b = Side("b", b_kwargs or {}, outbound=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, a.wire_receive, b.mux)
        nursery.start_soon(pump, b.wire_receive, a.mux)
        await nursery.start(a.mux.run)
        await nursery.start(b.mux.run)
        with trio.fail_after(GUARD):
            yield Pair(a, b)
        nursery.cancel_scope.cancel()


async def receive_all(stream: MuxStream, max_bytes: int | None = None) -> bytes:
    got = bytearray()
    while chunk := await stream.receive_some(max_bytes):
        got += chunk
    return bytes(got)


def assert_clean(*muxes: Mux) -> None:
    for mux in muxes:
        stats = mux.statistics()
        assert (stats.open_streams, stats.inbound_streams, stats.outbound_streams) == (0, 0, 0)
        assert stats.bytes_buffered == 0


# -- basics -----------------------------------------------------------------------------------


async def test_open_accept_echo_and_ids(autojump_clock) -> None:
    async with mux_pair() as pair:
        ours, theirs = await pair.open("/zeone/echo/1")
        assert (ours.protocol, theirs.protocol) == ("/zeone/echo/1", "/zeone/echo/1")
        assert ours.stream_id == theirs.stream_id == 1
        assert ours.outbound and not theirs.outbound

        async def echo(stream: MuxStream) -> None:
            async with stream:
                while data := await stream.receive_some():
                    await stream.send_all(data)
                await stream.send_eof()

        payload = random.Random(1).randbytes(700_000)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo, theirs)

            async def write() -> None:
                await ours.send_all(payload)
                await ours.send_eof()

            nursery.start_soon(write)
            assert await receive_all(ours) == payload
        await ours.aclose()

        second, _ = await pair.open()
        from_b, _ = await pair.open_from_b()
        assert second.stream_id == 3
        assert from_b.stream_id == 2  # the listener's ids are even
        await trio.testing.wait_all_tasks_blocked()
        assert pair.a.mux.statistics().open_streams == 2


async def test_many_concurrent_streams_interleave_intact(autojump_clock) -> None:
    count = 40
    async with mux_pair(a_kwargs={"max_chunk": 1000}, b_kwargs={"max_chunk": 777}) as pair:
        payloads = {
            i: random.Random(i).randbytes(random.Random(-i).randrange(1, 60_000))
            for i in range(count)
        }
        results: dict[int, bytes] = {}

        async def reverse_server(stream: MuxStream) -> None:
            data = await receive_all(stream, 5000)
            await stream.send_all(data[::-1])
            await stream.aclose()

        async def client(i: int) -> None:
            stream = await pair.a.mux.open_stream(f"/zeone/test/{i}")
            server = await pair.b.accept()  # any of them: the servers do not care which
            nursery.start_soon(reverse_server, server)
            rng = random.Random(i)
            data = payloads[i]
            position = 0
            while position < len(data):
                size = rng.randrange(1, 9000)
                await stream.send_all(data[position : position + size])
                position += size
            await stream.send_eof()
            results[i] = await receive_all(stream)
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(client, i)
        assert results == {i: data[::-1] for i, data in payloads.items()}
        await trio.testing.wait_all_tasks_blocked()
        assert_clean(pair.a.mux, pair.b.mux)
        # frames of different streams did interleave on the wire
        ids = [m.stream_id for m in pair.a.sent if isinstance(m, StreamData)]
        assert any(x != y for x, y in itertools.pairwise(ids))
        assert len(set(ids)) == count


# -- flow control -----------------------------------------------------------------------------


@pytest.mark.parametrize("opener_writes", [True, False])
async def test_writer_blocks_at_the_window_and_resumes(autojump_clock, opener_writes) -> None:
    window = DEFAULT_WINDOW if opener_writes else 10_000  # the opener's OPEN grants a's window
    fixed_windows = (  # auto-tuning off: this test is about the window as a hard bound
        {"initial_window": 10_000, "max_window": 10_000},
        {"max_window": DEFAULT_WINDOW},
    )
    async with mux_pair(*fixed_windows) as pair:
        ours, theirs = await pair.open()
        writer, reader = (ours, theirs) if opener_writes else (theirs, ours)
        reader_mux = (pair.b if opener_writes else pair.a).mux
        payload = random.Random(7).randbytes(3 * window + 123)
        written = 0

        async def write() -> None:
            nonlocal written
            for start in range(0, len(payload), 100):
                await writer.send_all(payload[start : start + 100])
                written = min(len(payload), start + 100)
            await writer.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            await trio.testing.wait_all_tasks_blocked()
            # the reader never read: exactly one window arrived and the writer is stuck in the
            # send_all that crossed it
            assert reader_mux.statistics().bytes_buffered == window
            assert written == window - window % 100
            await trio.testing.wait_all_tasks_blocked()
            assert written == window - window % 100
            got = bytearray()
            while chunk := await reader.receive_some(3333):
                got += chunk
                assert reader_mux.statistics().bytes_buffered <= window
                await trio.testing.wait_all_tasks_blocked()
                assert reader_mux.statistics().bytes_buffered <= window
        assert bytes(got) == payload
        # window updates were batched: about two per window of data, not one per read
        updates = [m for m in (pair.a.sent + pair.b.sent) if isinstance(m, StreamWindow)]
        assert len(updates) <= 2 * len(payload) // window + 2


async def test_a_reader_that_keeps_up_gets_a_growing_window_within_the_budget(
    autojump_clock,
) -> None:
    budget = 2 * DEFAULT_WINDOW
    async with mux_pair(
        b_kwargs={"max_window": 4 * DEFAULT_WINDOW, "tuning_budget": budget}
    ) as pair:
        fast_writer, fast_reader = await pair.open()
        slow_writer, slow_reader = await pair.open()
        payload = bytes(16 * DEFAULT_WINDOW)

        async def write(stream: MuxStream) -> None:
            await stream.send_all(payload)
            await stream.send_eof()

        async def read_slowly(stream: MuxStream) -> bytes:
            got = bytearray()
            while chunk := await stream.receive_some(DEFAULT_WINDOW // 4):
                got += chunk
                await trio.sleep(1)  # far slower than FAST_GRANT: the window must not grow
            return bytes(got)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, fast_writer)
            nursery.start_soon(write, slow_writer)
            assert await receive_all(fast_reader) == payload  # reads at once: fast re-grants
            # doubled to 512 KiB (256 KiB of growth); doubling again would need 768 KiB of
            # growth, more than the 512 KiB budget
            assert fast_reader._window == 2 * DEFAULT_WINDOW
            assert pair.b.mux._tuned == DEFAULT_WINDOW
            assert await read_slowly(slow_reader) == payload
            assert slow_reader._window == DEFAULT_WINDOW
        await fast_reader.aclose()
        assert pair.b.mux._tuned == 0  # a closed stream returns its growth to the budget
        await slow_reader.aclose()


async def test_larger_window_is_granted_to_the_opener(autojump_clock) -> None:
    big = 4 * DEFAULT_WINDOW
    async with mux_pair(b_kwargs={"initial_window": big}) as pair:
        ours, theirs = await pair.open()
        with trio.move_on_after(1) as scope:  # virtual time: only "is it blocked?"
            await ours.send_all(b"x" * big)
        assert not scope.cancelled_caught
        await trio.testing.wait_all_tasks_blocked()
        assert pair.b.mux.statistics().bytes_buffered == big
        assert await receive_all_available(theirs) == big


async def receive_all_available(stream: MuxStream) -> int:
    total = 0
    while stream._buffered:
        total += len(await stream.receive_some())
    return total


async def test_wait_send_all_might_not_block(autojump_clock) -> None:
    async with mux_pair(a_kwargs={"initial_window": 100}) as pair:
        ours, theirs = await pair.open()
        await theirs.send_all(b"y" * 100)  # uses up the opener's grant of 100
        woke = trio.Event()

        async def waiter() -> None:
            await theirs.wait_send_all_might_not_block()
            woke.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not woke.is_set()
            assert await ours.receive_some(49) == b"y" * 49
            await trio.testing.wait_all_tasks_blocked()
            assert not woke.is_set()  # under half the window consumed: no update yet
            assert await ours.receive_some(1) == b"y"
            await woke.wait()


async def test_send_all_takes_any_buffer_and_releases_it(autojump_clock) -> None:
    async with mux_pair(a_kwargs={"max_chunk": 3}) as pair:
        ours, theirs = await pair.open()
        buffer = bytearray(b"resizable")
        await ours.send_all(buffer)
        del buffer[:4]  # no view of it is left behind
        await ours.send_all(memoryview(array.array("H", [1, 2])))
        await ours.send_eof()
        assert await receive_all(theirs) == b"resizable" + array.array("H", [1, 2]).tobytes()


# -- closing ----------------------------------------------------------------------------------


async def test_half_close_both_ways(autojump_clock) -> None:
    async with mux_pair() as pair:
        ours, theirs = await pair.open()
        await ours.send_all(b"request")
        await ours.send_eof()
        assert await receive_all(theirs) == b"request"
        with pytest.raises(trio.ClosedResourceError):
            await ours.send_all(b"more")
        await ours.send_eof()  # idempotent
        # the other direction still works after the half-close
        await theirs.send_all(b"response")
        assert await ours.receive_some() == b"response"
        await theirs.send_eof()
        assert await ours.receive_some() == b""
        await trio.testing.wait_all_tasks_blocked()
        assert_clean(pair.a.mux, pair.b.mux)  # both directions closed: gone from the tables
        await ours.aclose()
        await theirs.aclose()
        assert [type(m) for m in pair.a.sent + pair.b.sent].count(StreamReset) == 0


async def test_graceful_aclose_keeps_sent_data_readable(autojump_clock) -> None:
    async with mux_pair() as pair:
        ours, theirs = await pair.open()
        await ours.send_all(b"all of it")
        await ours.aclose()  # the peer was still open: CLOSE, then RESET
        await trio.testing.wait_all_tasks_blocked()
        assert await receive_all(theirs) == b"all of it"
        with pytest.raises(trio.BrokenResourceError):
            await theirs.send_all(b"nobody reads this")
        assert theirs.reset_code == "closed"
        await theirs.aclose()
        assert_clean(pair.a.mux, pair.b.mux)


async def test_aclose_with_unread_data_unblocks_the_writer(autojump_clock) -> None:
    async with mux_pair() as pair:
        ours, theirs = await pair.open()

        async def flood() -> None:
            with pytest.raises(trio.BrokenResourceError):
                await ours.send_all(b"z" * (3 * DEFAULT_WINDOW))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            await trio.testing.wait_all_tasks_blocked()
            assert pair.b.mux.statistics().bytes_buffered == DEFAULT_WINDOW
            await theirs.aclose()
        assert pair.b.mux.statistics().bytes_buffered == 0
        with pytest.raises(trio.ClosedResourceError):
            await theirs.receive_some()
        await ours.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert_clean(pair.a.mux, pair.b.mux)


async def test_reset_propagates(autojump_clock) -> None:
    async with mux_pair() as pair:
        ours, theirs = await pair.open()
        await theirs.send_all(b"discarded")
        await trio.testing.wait_all_tasks_blocked()

        broken = trio.Event()

        async def blocked_receive() -> None:
            with pytest.raises(trio.BrokenResourceError, match="reset by the peer \\(boom\\)"):
                await theirs.receive_some()
            broken.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_receive)
            await trio.testing.wait_all_tasks_blocked()
            ours.reset("boom")
        assert broken.is_set()
        assert theirs.reset_code == "boom"
        with pytest.raises(trio.BrokenResourceError):
            await theirs.send_all(b"x")
        with pytest.raises(trio.BrokenResourceError):
            await theirs.receive_some()
        with pytest.raises(trio.ClosedResourceError):
            await ours.receive_some()  # our unread data went with the reset
        with pytest.raises(ValueError, match="reset code"):
            ours.reset("x" * 65)
        await theirs.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert_clean(pair.a.mux, pair.b.mux)


async def test_busy_and_closed_errors(autojump_clock) -> None:
    async with mux_pair() as pair:
        ours, _theirs = await pair.open()
        with pytest.raises(ValueError):
            await ours.receive_some(0)
        with pytest.RaisesGroup(trio.BusyResourceError):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ours.receive_some)
                nursery.start_soon(ours.receive_some)
        await ours.aclose()
        await ours.aclose()
        for operation in (ours.send_all(b"x"), ours.receive_some(), ours.send_eof()):
            with pytest.raises(trio.ClosedResourceError):
                await operation


# -- limits and connection loss ---------------------------------------------------------------


async def test_max_streams_limits_our_opens(autojump_clock) -> None:
    async with mux_pair(a_kwargs={"max_streams": 2}) as pair:
        first, first_b = await pair.open()
        await pair.open()
        with pytest.raises(TooManyStreams, match="max_streams 2"):
            await pair.a.mux.open_stream(PROTO)
        await first.aclose()  # closing one frees a slot on both sides
        await first_b.aclose()
        _third, third_b = await pair.open()
        assert third_b.stream_id == 5


async def test_max_streams_refuses_inbound_opens(autojump_clock) -> None:
    async with mux_pair(b_kwargs={"max_streams": 1}) as pair:
        first, first_b = await pair.open()
        second = await pair.a.mux.open_stream(PROTO)  # b is full: refused
        with pytest.raises(trio.BrokenResourceError, match="refused"):
            await second.receive_some()
        assert second.reset_code == "refused"
        assert pair.b.mux.statistics().inbound_streams == 1
        assert pair.a.mux.statistics().outbound_streams == 1
        await first.aclose()
        await first_b.aclose()
        _third, third_b = await pair.open()
        assert third_b.stream_id == 5


async def test_inbound_streams_without_a_handler_are_refused(autojump_clock) -> None:
    async with mux_pair(b_kwargs={"on_stream": None}) as pair:
        stream = await pair.a.mux.open_stream(PROTO)
        with pytest.raises(trio.BrokenResourceError, match="refused"):
            await stream.receive_some()


async def test_close_all_breaks_pending_and_later_operations(autojump_clock) -> None:
    async with mux_pair(a_kwargs={"initial_window": 1000}) as pair:
        receiving, _ = await pair.open()
        sending_b, sending = await pair.open_from_b()
        finished, finished_b = await pair.open()
        await finished_b.send_all(b"complete")
        await finished_b.send_eof()
        await sending.send_all(b"s" * DEFAULT_WINDOW)  # b's grant is used up
        await trio.testing.wait_all_tasks_blocked()
        failures: list[str] = []

        async def expect_broken(name: str, operation: Callable) -> None:
            with pytest.raises(trio.BrokenResourceError, match="connection lost"):
                await operation()
            failures.append(name)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(expect_broken, "receive", receiving.receive_some)
            nursery.start_soon(expect_broken, "send", lambda: sending.send_all(b"more"))
            await trio.testing.wait_all_tasks_blocked()
            pair.a.mux.close_all(ConnectionResetError("gone"))
        assert sorted(failures) == ["receive", "send"]
        with pytest.raises(trio.BrokenResourceError):
            await receiving.send_all(b"x")
        with pytest.raises(trio.BrokenResourceError):
            await pair.a.mux.open_stream(PROTO)
        # data that arrived complete (the peer's CLOSE came first) is still readable
        assert await receive_all(finished) == b"complete"
        assert_clean(pair.a.mux)
        await pair.a.mux.handle(StreamData(99, b"late"))  # ignored once closed
        del sending_b


async def test_run_failure_breaks_everything(autojump_clock) -> None:
    async def broken_send(_message: WireMessage) -> None:
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError("socket gone")

    mux = Mux(broken_send, outbound=True, max_streams=4)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mux.run)
            with pytest.raises(trio.BrokenResourceError, match="socket gone"):
                await mux.open_stream(PROTO)
    assert_clean(mux)


async def test_cancelled_open_resets_the_stream(autojump_clock) -> None:
    stuck = trio.Event()

    async def slow_send(_message: WireMessage) -> None:
        await stuck.wait()

    mux = Mux(slow_send, outbound=True, max_streams=4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mux.run)
        with trio.move_on_after(1):
            await mux.open_stream(PROTO)
        assert mux.statistics().open_streams == 0
        # the OPEN was already being sent; the RESET follows it
        assert mux.statistics().queued_frames == 1
        assert isinstance(mux._control[0][0], StreamReset)
        nursery.cancel_scope.cancel()


async def test_cancelled_and_closed_streams_leave_nothing_behind(autojump_clock) -> None:
    async with mux_pair() as pair:
        for how in range(5):
            ours, theirs = await pair.open()
            await ours.send_all(b"a" * 1000)
            await theirs.send_all(b"b" * 1000)
            if how == 0:
                await ours.aclose()
                await theirs.aclose()
            elif how == 1:
                theirs.reset()
            elif how == 2:
                await ours.send_eof()
                await theirs.send_eof()
                await ours.aclose()
                await trio.testing.wait_all_tasks_blocked()
                await theirs.aclose()
            elif how == 3:
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await ours.aclose()  # cancelled aclose still closes
                await theirs.aclose()
            else:
                await trio.aclose_forcefully(theirs)
                await trio.aclose_forcefully(ours)
            await trio.testing.wait_all_tasks_blocked()
            assert_clean(pair.a.mux, pair.b.mux)


# -- hostile peers ----------------------------------------------------------------------------


def lone_mux(outbound: bool = False, **kwargs) -> tuple[Mux, list[WireMessage]]:
    sent: list[WireMessage] = []
    accepted: list[MuxStream] = []

    async def send(message: WireMessage) -> None:
        sent.append(message)

    kwargs.setdefault("max_streams", 8)
    return Mux(send, outbound=outbound, on_stream=accepted.append, **kwargs), sent


async def test_window_overrun_is_a_protocol_error() -> None:
    mux, _ = lone_mux()
    await mux.handle(StreamOpen(1, PROTO, 1000))
    await mux.handle(StreamData(1, b"x" * (DEFAULT_WINDOW - 10)))
    with pytest.raises(ProtocolError, match="exceeds the 10 bytes left in its window"):
        await mux.handle(StreamData(1, b"x" * 11))


async def test_opener_window_overrun_is_a_protocol_error(autojump_clock) -> None:
    mux, _ = lone_mux(outbound=True, initial_window=100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mux.run)
        stream = await mux.open_stream(PROTO)
        await mux.handle(StreamData(stream.stream_id, b"x" * 100))
        with pytest.raises(ProtocolError, match="window"):
            await mux.handle(StreamData(stream.stream_id, b"x"))
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("outbound", "messages", "error"),
    [
        (False, [StreamOpen(2, PROTO, 10)], "dialer opens odd ids only"),
        (True, [StreamOpen(1, PROTO, 10)], "listener opens even ids only"),
        (False, [StreamOpen(1, PROTO, 10), StreamOpen(1, PROTO, 10)], "reuses a live stream"),
        (False, [StreamOpen(5, PROTO, 10), StreamOpen(3, PROTO, 10)], "ids must increase"),
        (False, [StreamOpen(1, PROTO, 10), StreamReset(1, "x"), StreamOpen(1, PROTO, 1)], "used"),
        (False, [StreamOpen(1, PROTO, 2**31)], "maximum"),
        (False, [StreamOpen(1, PROTO, 1), StreamClose(1), StreamData(1, b"x")], "after its CLOSE"),
        (False, [StreamOpen(1, PROTO, 1), StreamClose(1), StreamClose(1)], "after its CLOSE"),
        (False, [StreamData(7, b"x")], "peer never opened"),
        (False, [StreamOpen(3, PROTO, 1), StreamWindow(5, 1)], "peer never opened"),
        (False, [StreamReset(2, "x")], "we never opened"),
        (True, [StreamClose(1)], "we never opened"),
        (False, [StreamOpen(1, PROTO, 1), StreamWindow(1, MAX_WINDOW)], "grows the window"),
        (False, [StreamOpen(1, PROTO, MAX_WINDOW), StreamWindow(1, 1)], "grows the window"),
    ],
)
async def test_protocol_violations(outbound, messages, error) -> None:
    mux, _ = lone_mux(outbound=outbound)
    *before, last = messages
    for message in before:
        await mux.handle(message)
    with pytest.raises(ProtocolError, match=error):
        await mux.handle(last)


async def test_frames_for_closed_streams_are_ignored() -> None:
    mux, sent = lone_mux(max_streams=1)
    await mux.handle(StreamOpen(1, PROTO, 10))
    await mux.handle(StreamReset(1, "gone"))
    await mux.handle(StreamOpen(3, PROTO, 10))
    await mux.handle(StreamOpen(5, PROTO, 10))  # over the limit: refused
    assert sent == []  # nothing runs mux.run() here: the refusal waits in the queue
    assert [message for message, _ in mux._control] == [StreamReset(5, "refused")]
    for stream_id in (1, 5):  # reset by the peer, refused by us: both race harmlessly
        await mux.handle(StreamData(stream_id, b"late"))
        await mux.handle(StreamWindow(stream_id, 5))
        await mux.handle(StreamClose(stream_id))
        await mux.handle(StreamReset(stream_id, "late"))
    assert mux.statistics().open_streams == 1
    assert mux.statistics().bytes_buffered == 0


async def test_refusal_flood_is_a_protocol_error() -> None:
    mux, _ = lone_mux(max_streams=0)  # nothing sends the refusals: they pile up
    with pytest.raises(ProtocolError, match="beyond the limit"):
        for stream_id in range(1, 1000, 2):
            await mux.handle(StreamOpen(stream_id, PROTO, 10))
    assert mux.statistics().queued_frames == 16


@pytest.mark.parametrize(
    ("kind", "payload", "error"),
    [
        (MessageType.STREAM_DATA, [1, b""], "malformed STREAM_DATA: 'data' must be 1-"),
        (MessageType.STREAM_DATA, [1, b"x" * (MAX_STREAM_CHUNK + 1)], "STREAM_DATA"),
        (MessageType.STREAM_DATA, [1, "text"], "STREAM_DATA: 'data' must be"),
        (MessageType.STREAM_DATA, [0, b"x"], "'stream_id' must be an integer 1-"),
        (MessageType.STREAM_DATA, [True, b"x"], "'stream_id'"),
        (MessageType.STREAM_DATA, [2**32, b"x"], "'stream_id'"),
        (MessageType.STREAM_OPEN, [1, "p" * 129, 10], "malformed STREAM_OPEN"),
        (MessageType.STREAM_OPEN, [1, PROTO, -1], "'initial_window' must be"),
        (MessageType.STREAM_OPEN, [1, PROTO], "expected an array of 3 items"),
        (MessageType.STREAM_WINDOW, [1, 0], "'increment' must be an integer 1-"),
        (MessageType.STREAM_CLOSE, {"id": 1}, "got dict"),
        (MessageType.STREAM_RESET, [1, "c" * 65], "malformed STREAM_RESET"),
        (MessageType.PING, [], "not a stream frame"),
    ],
)
def test_malformed_payloads(kind, payload, error) -> None:
    with pytest.raises(ProtocolError, match=error):
        parse_stream_message(kind, payload)


def test_wire_roundtrip() -> None:
    messages = [
        StreamOpen(1, PROTO, 2**32 - 1),
        StreamData(2**32 - 1, b"\x00" * 10),
        StreamWindow(3, 1),
        StreamClose(4),
        StreamReset(5, "refused"),
    ]
    for message in messages:
        assert STREAM_MESSAGES[message.TYPE] is type(message)
        wire = decode_cbor(encode_cbor(message.to_wire()))
        assert parse_stream_message(message.TYPE, wire) == message
    assert "10 bytes" in repr(messages[1])


def test_constructor_limits() -> None:
    async def send(_message: WireMessage) -> None:
        pass

    with pytest.raises(ValueError, match="max_chunk"):
        Mux(send, outbound=True, max_streams=1, max_chunk=MAX_STREAM_CHUNK + 1)
    with pytest.raises(ValueError, match="initial_window"):
        Mux(send, outbound=True, max_streams=1, initial_window=0)


# -- conformance with trio's stream contract --------------------------------------------------


async def test_trio_half_closeable_stream_conformance(autojump_clock) -> None:
    async with mux_pair() as pair:

        async def maker() -> tuple[MuxStream, MuxStream]:
            return await pair.open()

        async def clogged_maker() -> tuple[MuxStream, MuxStream]:
            ours, theirs = await pair.open()
            await ours.send_all(b"c" * DEFAULT_WINDOW)  # use up both directions' grants
            await theirs.send_all(b"c" * DEFAULT_WINDOW)
            return ours, theirs

        await trio.testing.check_half_closeable_stream(maker, clogged_maker)
        await trio.testing.wait_all_tasks_blocked()
        assert_clean(pair.a.mux, pair.b.mux)


# -- property: any interleaving of writes and reads delivers the same bytes -------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(min_size=0, max_size=20_000),
    writes=st.lists(st.integers(1, 5000), min_size=1, max_size=20),
    reads=st.lists(st.one_of(st.none(), st.integers(1, 5000)), min_size=1, max_size=20),
    window=st.integers(1, 4000),
    max_chunk=st.integers(1, 3000),
    opener_writes=st.booleans(),
    pauses=st.lists(st.booleans(), max_size=20),
)
def test_any_interleaving_delivers_identical_bytes(
    data, writes, reads, window, max_chunk, opener_writes, pauses
) -> None:
    async def scenario() -> None:
        # Auto-tuning may double each side's window up to 4x (the acceptor's window is at least
        # DEFAULT_WINDOW), and never beyond: that is the bound on buffered bytes.
        a_kwargs = {"initial_window": window, "max_chunk": max_chunk, "max_window": 4 * window}
        b_limit = 4 * max(window, DEFAULT_WINDOW)
        b_kwargs = {"initial_window": window, "max_chunk": max_chunk, "max_window": b_limit}
        async with mux_pair(a_kwargs=a_kwargs, b_kwargs=b_kwargs) as pair:
            ours, theirs = await pair.open()
            writer, reader = (ours, theirs) if opener_writes else (theirs, ours)
            reader_mux = (pair.b if opener_writes else pair.a).mux
            limit = b_limit if opener_writes else 4 * window

            async def write() -> None:
                position, i = 0, 0
                while position < len(data):
                    size = writes[i % len(writes)]
                    await writer.send_all(data[position : position + size])
                    position += size
                    i += 1
                await writer.send_eof()

            got = bytearray()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                i = 0
                while True:
                    if pauses and pauses[i % len(pauses)]:
                        await trio.testing.wait_all_tasks_blocked()
                    assert reader_mux.statistics().bytes_buffered <= limit
                    chunk = await reader.receive_some(reads[i % len(reads)])
                    if not chunk:
                        break
                    got += chunk
                    i += 1
            assert bytes(got) == data
            await reader.aclose()
            await writer.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert_clean(pair.a.mux, pair.b.mux)

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
