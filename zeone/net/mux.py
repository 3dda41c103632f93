"""Multiplexed streams with per-stream flow control over one secure connection.

`Mux` is the sans-IO core: the connection feeds it every inbound STREAM_* message with `handle()`
and gives it a `send` coroutine for outbound ones. Each stream is a `MuxStream`, a
`trio.abc.HalfCloseableStream`, so protocol code uses it like a TCP connection.

Wire rules (STREAM_OPEN ... STREAM_RESET, see `zeone.wire.stream_messages`):

- Ids: the dialer opens odd ids, the listener even ones, each side in increasing order.
- Flow control, per stream and direction: a side may only send as many DATA bytes as the receiver
  granted. The opener's OPEN grants the acceptor ``initial_window`` bytes; the acceptor grants the
  opener `DEFAULT_WINDOW` implicitly (no round trip before the first byte), and STREAM_WINDOW adds
  to a grant (an acceptor with a larger window tops the grant up at once; one with a smaller
  window cannot take the implicit grant back and only converges). A receiver re-grants what the
  application consumed, batched: once the outstanding grant plus unread data falls to half its
  window. Unread data never exceeds the window, and a slow reader stops its writer. Grants above
  2**31-1 are a protocol error.
- CLOSE is a half-close (no more DATA from its sender). RESET aborts: the sender neither sends nor
  reads any more. Data received before the peer's CLOSE stays readable after a RESET or the
  connection's loss; without that CLOSE the stream is broken.
- Violations (DATA beyond the window, DATA/CLOSE after CLOSE, an OPEN of the wrong parity or not
  above the peer's previous id, frames for ids never opened) raise ProtocolError, which closes
  the connection. Frames for closed streams are ignored: they race with a RESET.

Writes of DATA happen in the writer's task (so the connection's send backpressure reaches the
writer); OPEN, CLOSE, RESET and WINDOW go through a FIFO flushed by `Mux.run()`, so neither the
connection's read loop (`handle`) nor a cancelled `aclose` ever waits on the network. Memory is
bounded: unread data by the windows, the FIFO by the streams plus ``max_streams`` refusals.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Awaitable, Callable

import attrs
import trio

from zeone.errors import ProtocolError, ZeoneError
from zeone.wire.messages import WireMessage
from zeone.wire.stream_messages import (
    MAX_RESET_CODE,
    MAX_STREAM_CHUNK,
    U32_MAX,
    StreamClose,
    StreamData,
    StreamOpen,
    StreamReset,
    StreamWindow,
)

DEFAULT_WINDOW = 256 * 1024
"""The receive window of a stream, and (fixed by the protocol) the opener's initial grant."""
DEFAULT_CHUNK = 64 * 1024
MAX_TUNED_WINDOW = 4 * 1024 * 1024
"""Receive-window auto-tuning grows a stream's window up to this (doubling each time)."""
TUNING_BUDGET = 32 * 1024 * 1024
"""Bytes of window growth all streams of one connection may hold at once: with the per-stream
windows, the bound on what a peer can make us buffer."""
FAST_GRANT = 0.005
"""A re-grant this soon after the previous one (or within two round trips) means the reader keeps
up and the window, not the reader, limits the flow: the window doubles."""
MAX_WINDOW = 2**31 - 1
_JOIN_LIMIT = 64 * 1024  # receive_some() without max_bytes joins small chunks up to this

# Direction states.
_OPEN, _EOF, _RESET = 0, 1, 2

Send = Callable[[WireMessage], Awaitable[None]]
# Errors that mean the connection below us is gone (the Connection raises ConnectionClosed, a
# ZeoneError; raw streams raise trio's).
_SEND_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ZeoneError)


class TooManyStreams(ZeoneError):
    """Opening another stream would exceed the connection's ``max_streams``."""


@attrs.frozen
class MuxStatistics:
    open_streams: int
    inbound_streams: int
    outbound_streams: int
    bytes_buffered: int
    """Received, not yet read, in every stream (including closed ones with unread data)."""
    queued_frames: int
    """Control frames waiting for `Mux.run()` to send them."""


class _Conflict:
    """Raise BusyResourceError when two tasks use one direction of a stream at once."""

    __slots__ = ("held", "message")

    def __init__(self, message: str) -> None:
        self.message = message
        self.held = False

    def __enter__(self) -> None:
        if self.held:
            raise trio.BusyResourceError(self.message)
        self.held = True

    def __exit__(self, *_exc: object) -> None:
        self.held = False


class Mux:
    """The streams of one connection.

    ``send`` writes one message on the connection (it encodes and serialises frames) and must be
    a checkpoint, raise trio.BrokenResourceError/ClosedResourceError or a ZeoneError once the
    connection is gone, and keep the order of calls that do not overlap. ``run()`` must run for
    the connection's lifetime. ``on_stream`` gets every accepted inbound stream; without it,
    inbound streams are refused. ``max_streams`` limits inbound and outbound streams separately.
    """

    def __init__(
        self,
        send: Send,
        *,
        outbound: bool,
        max_streams: int,
        initial_window: int = DEFAULT_WINDOW,
        max_chunk: int = DEFAULT_CHUNK,
        on_stream: Callable[[MuxStream], None] | None = None,
        rtt: Callable[[], float | None] | None = None,
        max_window: int = MAX_TUNED_WINDOW,
        tuning_budget: int = TUNING_BUDGET,
    ) -> None:
        if max_streams < 0:
            raise ValueError(f"max_streams must be at least 0, got {max_streams}")
        if not 0 < initial_window <= MAX_WINDOW:
            raise ValueError(f"initial_window must be 1-{MAX_WINDOW}, got {initial_window}")
        if not 0 < max_chunk <= MAX_STREAM_CHUNK:
            raise ValueError(f"max_chunk must be 1-{MAX_STREAM_CHUNK}, got {max_chunk}")
        self._send = send
        self.outbound = outbound
        self.max_streams = max_streams
        self.initial_window = initial_window
        self.max_chunk = max_chunk
        self.on_stream = on_stream
        self.rtt = rtt
        self.max_window = max_window
        self.tuning_budget = tuning_budget
        self._tuned = 0  # window growth held by open streams
        self._streams: dict[int, MuxStream] = {}
        self._inbound = 0
        self._outbound = 0
        self._next_id = 1 if outbound else 2
        self._peer_parity = 0 if outbound else 1
        self._peer_highest = 0
        self._control: deque[tuple[WireMessage, Callable[[], None] | None]] = deque()
        self._control_lot = trio.lowlevel.ParkingLot()
        self._refusing = 0
        self._buffered = 0
        self._error: trio.BrokenResourceError | None = None
        self._handlers = {
            StreamData: self._on_data,
            StreamWindow: self._on_window,
            StreamOpen: self._on_open,
            StreamClose: self._on_close,
            StreamReset: self._on_reset,
        }

    def __repr__(self) -> str:
        side = "dialer" if self.outbound else "listener"
        return f"<Mux {side} streams={len(self._streams)}>"

    # -- the connection's side --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send queued control frames until `close_all` (or the connection fails)."""
        control = self._control
        task_status.started()
        while self._error is None:
            while control and self._error is None:
                message, sent = control.popleft()
                try:
                    await self._send(message)
                except _SEND_ERRORS as exc:
                    self.close_all(exc)
                    if sent is not None:
                        sent()
                    return
                except BaseException:
                    control.appendleft((message, sent))  # close_all() will still see it
                    raise
                if sent is not None:
                    sent()
            if self._error is None:
                await self._control_lot.park()

    async def handle(self, message: WireMessage) -> None:
        """Process one inbound STREAM_* message; ProtocolError if the peer broke a rule."""
        if self._error is not None:
            return
        handler = self._handlers.get(type(message))
        if handler is None:
            raise TypeError(f"not a stream message: {message!r}")
        handler(message)

    def close_all(self, exc: BaseException | None = None) -> None:
        """The connection is gone: every stream's pending and later operations fail."""
        if self._error is not None:
            return
        reason = f"connection lost: {exc}" if exc else "connection lost"
        self._error = error = trio.BrokenResourceError(reason)
        error.__cause__ = exc
        streams = list(self._streams.values())
        self._streams.clear()
        self._inbound = self._outbound = 0
        for stream in streams:
            stream._break(error)
        pending = list(self._control)
        self._control.clear()
        for _message, sent in pending:
            if sent is not None:
                sent()
        self._control_lot.unpark_all()

    def statistics(self) -> MuxStatistics:
        return MuxStatistics(
            open_streams=len(self._streams),
            inbound_streams=self._inbound,
            outbound_streams=self._outbound,
            bytes_buffered=self._buffered,
            queued_frames=len(self._control),
        )

    # -- opening ----------------------------------------------------------------------------

    async def open_stream(self, protocol: str) -> MuxStream:
        """Open a stream to the peer's ``protocol`` handler; usable at once (no round trip).

        Raises TooManyStreams at ``max_streams`` outbound streams and BrokenResourceError once
        the connection is gone. A peer that refuses the stream resets it: the first operation on
        it raises BrokenResourceError (``reset_code`` says why, e.g. "refused").
        """
        if self._error is not None:
            raise trio.BrokenResourceError(*self._error.args) from self._error.__cause__
        if self._outbound >= self.max_streams:
            raise TooManyStreams(
                f"{self._outbound} streams already open to this peer (max_streams "
                f"{self.max_streams}); close one or raise the limit"
            )
        stream_id = self._next_id
        if stream_id > U32_MAX:
            raise TooManyStreams("stream ids exhausted on this connection; open a new one")
        message = StreamOpen(stream_id, protocol, self.initial_window)  # validates protocol
        self._next_id = stream_id + 2
        stream = MuxStream(
            self, stream_id, protocol, True, send_credit=DEFAULT_WINDOW, window=self.initial_window
        )
        self._streams[stream_id] = stream
        self._outbound += 1
        flushed = trio.Event()
        self._queue(message, flushed.set)
        try:
            await flushed.wait()
        except BaseException:
            stream.reset("cancelled")  # queued after the OPEN, so the peer sees both
            raise
        if stream._error is not None:
            raise trio.BrokenResourceError(*stream._error.args) from stream._error.__cause__
        return stream

    # -- inbound messages -------------------------------------------------------------------

    def _on_data(self, message: StreamData) -> None:
        stream = self._streams.get(message.stream_id)
        if stream is None:
            self._check_closed_id(message.stream_id, "STREAM_DATA")
        else:
            stream._on_data(message.data)

    def _on_window(self, message: StreamWindow) -> None:
        stream = self._streams.get(message.stream_id)
        if stream is None:
            self._check_closed_id(message.stream_id, "STREAM_WINDOW")
            return
        credit = stream._send_credit + message.increment
        if credit > MAX_WINDOW:
            raise ProtocolError(
                f"STREAM_WINDOW on stream {message.stream_id} grows the window to {credit} "
                f"bytes (the maximum is {MAX_WINDOW})"
            )
        stream._send_credit = credit
        if stream._writable:
            stream._writable.unpark_all()

    def _on_open(self, message: StreamOpen) -> None:
        stream_id = message.stream_id
        if stream_id & 1 != self._peer_parity:
            opener = "listener" if self.outbound else "dialer"
            parity = "even" if self._peer_parity == 0 else "odd"
            raise ProtocolError(f"STREAM_OPEN {stream_id}: the {opener} opens {parity} ids only")
        if stream_id <= self._peer_highest:
            state = "a live stream" if stream_id in self._streams else "a used id"
            raise ProtocolError(
                f"STREAM_OPEN {stream_id} reuses {state} (the peer's ids must increase; "
                f"last was {self._peer_highest})"
            )
        if message.initial_window > MAX_WINDOW:
            raise ProtocolError(
                f"STREAM_OPEN {stream_id} grants {message.initial_window} bytes "
                f"(the maximum is {MAX_WINDOW})"
            )
        self._peer_highest = stream_id
        if self.on_stream is None or self._inbound >= self.max_streams:
            self._refuse(stream_id)
            return
        window = max(self.initial_window, DEFAULT_WINDOW)
        stream = MuxStream(
            self,
            stream_id,
            message.protocol,
            False,
            send_credit=message.initial_window,
            window=window,
            receive_credit=DEFAULT_WINDOW,
        )
        self._streams[stream_id] = stream
        self._inbound += 1
        stream._maybe_grant()  # a window larger than the default
        self.on_stream(stream)

    def _refuse(self, stream_id: int) -> None:
        if self._refusing >= max(self.max_streams, 16):
            raise ProtocolError("peer keeps opening streams beyond the limit without reading")
        self._refusing += 1
        self._queue(StreamReset(stream_id, "refused"), self._refused)

    def _refused(self) -> None:
        self._refusing -= 1

    def _on_close(self, message: StreamClose) -> None:
        stream = self._streams.get(message.stream_id)
        if stream is None:
            self._check_closed_id(message.stream_id, "STREAM_CLOSE")
        else:
            stream._on_close()

    def _on_reset(self, message: StreamReset) -> None:
        stream = self._streams.get(message.stream_id)
        if stream is None:
            self._check_closed_id(message.stream_id, "STREAM_RESET")
        else:
            stream._on_reset(message.code)

    def _check_closed_id(self, stream_id: int, what: str) -> None:
        """A frame for a stream not in the table: fine if it was closed, an error if never open."""
        if stream_id & 1 == self._peer_parity:
            if stream_id > self._peer_highest:
                raise ProtocolError(f"{what} for stream {stream_id}, which the peer never opened")
        elif stream_id >= self._next_id:
            raise ProtocolError(f"{what} for stream {stream_id}, which we never opened")

    # -- bookkeeping ------------------------------------------------------------------------

    def _queue(self, message: WireMessage, sent: Callable[[], None] | None = None) -> None:
        if self._error is not None:
            if sent is not None:
                sent()
            return
        self._control.append((message, sent))
        if self._control_lot:
            self._control_lot.unpark_all()

    def _remove(self, stream: MuxStream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            self._tuned -= stream._tuned
            stream._tuned = 0
            if stream.outbound:
                self._outbound -= 1
            else:
                self._inbound -= 1


class MuxStream(trio.abc.HalfCloseableStream):
    """One multiplexed stream; made by `Mux.open_stream` or handed to `Mux.on_stream`.

    ``send_all`` blocks while the peer's window is used up. ``receive_some`` returns b"" after
    the peer's CLOSE and raises BrokenResourceError after its RESET or the connection's loss.
    ``send_eof`` half-closes; ``aclose`` closes (and resets if the peer may still be sending);
    ``reset(code)`` aborts both directions.
    """

    def __init__(
        self,
        mux: Mux,
        stream_id: int,
        protocol: str,
        outbound: bool,
        *,
        send_credit: int,
        window: int,
        receive_credit: int | None = None,
    ) -> None:
        self._mux = mux
        self.stream_id = stream_id
        self.protocol = protocol
        self.outbound = outbound
        """True if we opened the stream."""
        self.reset_code: str | None = None
        """The code of the peer's RESET, if it sent one."""
        self._send_credit = send_credit
        self._window = window
        self._tuned = 0  # growth of the window by auto-tuning
        self._last_grant: float | None = None
        self._receive_credit = window if receive_credit is None else receive_credit
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # into _chunks[0]
        self._buffered = 0
        self._send_state = _OPEN
        self._receive_state = _OPEN
        self._closed = False
        self._in_send = False
        self._error: trio.BrokenResourceError | None = None
        self._readable = trio.lowlevel.ParkingLot()
        self._writable = trio.lowlevel.ParkingLot()
        self._send_conflict = _Conflict("another task is already sending on this stream")
        self._receive_conflict = _Conflict("another task is already receiving on this stream")

    def __repr__(self) -> str:
        return f"<MuxStream {self.stream_id} {self.protocol}>"

    # -- sending ----------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_conflict:
            self._check_send()
            if not data:
                await trio.lowlevel.checkpoint()
                return
            # Views are released on the way out, so a bytearray can be resized afterwards.
            with memoryview(data) as view:
                if view.ndim != 1 or view.itemsize != 1:
                    with view.cast("B") as flat:
                        await self._send_view(data, flat)
                else:
                    await self._send_view(data, view)

    async def _send_view(self, data: bytes | bytearray | memoryview, view: memoryview) -> None:
        whole = type(data) is bytes
        total = len(view)
        mux = self._mux
        send = mux._send
        max_chunk = mux.max_chunk
        stream_id = self.stream_id
        position = 0
        while position < total:
            self._check_send()
            credit = self._send_credit
            if credit <= 0:
                await self._writable.park()
                continue
            size = min(credit, max_chunk, total - position)
            chunk = data if whole and size == total else bytes(view[position : position + size])
            self._send_credit = credit - size
            self._in_send = True
            try:
                await send(StreamData(stream_id, chunk))  # type: ignore[arg-type]
            except _SEND_ERRORS as exc:
                broken = trio.BrokenResourceError(f"connection lost: {exc}")
                broken.__cause__ = exc
                self._break(broken)
                raise self._broken() from exc
            finally:
                self._in_send = False
            position += size

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            self._check_send()
            if self._send_credit > 0:
                await trio.lowlevel.checkpoint()
                return
            await self._writable.park()
            self._check_send()

    async def send_eof(self) -> None:
        with self._send_conflict:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            if self._error is not None:
                raise self._broken()
            if self._send_state == _OPEN:
                self._send_state = _EOF
                self._mux._queue(StreamClose(self.stream_id))
                self._maybe_remove()

    def _check_send(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._send_state == _EOF:
            raise trio.ClosedResourceError("send_eof() was called on this stream")
        if self._error is not None:
            raise self._broken()
        if self._send_state == _RESET:
            raise trio.BrokenResourceError(
                f"stream {self.stream_id} was reset by the peer ({self.reset_code})"
            )

    # -- receiving --------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be at least 1")
        with self._receive_conflict:
            waited = False
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("the stream is closed")
                if self._chunks:
                    if not waited:
                        await trio.lowlevel.checkpoint()
                        waited = True
                        continue  # the stream may have been closed meanwhile
                    return self._take(max_bytes)
                if self._receive_state == _EOF:
                    if not waited:
                        await trio.lowlevel.checkpoint()
                    return b""
                if self._error is not None:
                    raise self._broken()
                if self._receive_state == _RESET:
                    raise trio.BrokenResourceError(
                        f"stream {self.stream_id} was reset by the peer ({self.reset_code})"
                    )
                await self._readable.park()
                waited = True

    def _take(self, max_bytes: int | None) -> bytes:
        chunks = self._chunks
        head = chunks[0]
        offset = self._offset
        size = len(head) - offset
        limit = max(size, _JOIN_LIMIT) if max_bytes is None else max_bytes
        if size > limit:
            data = head[offset : offset + limit]
            self._offset = offset + limit
        elif size == limit or len(chunks) == 1:
            chunks.popleft()
            data = head[offset:] if offset else head
            self._offset = 0
        else:
            chunks.popleft()
            parts = [head[offset:] if offset else head]
            total = size
            self._offset = 0
            while chunks and total < limit:
                chunk = chunks[0]
                if len(chunk) <= limit - total:
                    parts.append(chunks.popleft())
                    total += len(chunk)
                else:
                    self._offset = limit - total
                    parts.append(chunk[: self._offset])
                    total = limit
            data = b"".join(parts)
        size = len(data)
        self._buffered -= size
        self._mux._buffered -= size
        if self._receive_state == _OPEN:
            self._maybe_grant()
        return data

    def _maybe_grant(self) -> None:
        """Re-grant consumed space once at least half the window is free.

        Auto-tuning (as yamux does): when re-grants come faster than `FAST_GRANT` or two round
        trips, the reader keeps up and the window is what limits the flow, so it doubles, up to
        the mux's `max_window` and within its `tuning_budget`. A slow reader never grows it.
        """
        increment = self._window - self._receive_credit - self._buffered
        if increment >= (self._window + 1) // 2:
            mux = self._mux
            now = trio.current_time()
            if self._last_grant is not None and self._window < mux.max_window:
                rtt = mux.rtt() if mux.rtt is not None else None
                if now - self._last_grant < max(FAST_GRANT, 2 * (rtt or 0.0)):
                    growth = min(self._window, mux.max_window - self._window)
                    if mux._tuned + growth <= mux.tuning_budget:
                        self._window += growth
                        self._tuned += growth
                        mux._tuned += growth
                        increment += growth
            self._last_grant = now
            self._receive_credit += increment
            mux._queue(StreamWindow(self.stream_id, increment))

    # -- closing ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._discard()
            mux = self._mux
            if mux._streams.get(self.stream_id) is self:
                if self._send_state == _OPEN and not self._in_send:
                    self._send_state = _EOF
                    mux._queue(StreamClose(self.stream_id))
                if self._send_state == _OPEN or self._receive_state == _OPEN:
                    # The peer may still be sending (or our data got cut off mid-frame).
                    mux._queue(StreamReset(self.stream_id, "closed"))
                mux._remove(self)
            self._wake()
        await trio.lowlevel.checkpoint()

    def reset(self, code: str = "reset") -> None:
        """Abort both directions at once, discarding unread data; the peer sees BrokenResource."""
        if not isinstance(code, str) or len(code) > MAX_RESET_CODE:
            raise ValueError(f"a reset code is a string of at most {MAX_RESET_CODE} characters")
        if self._closed:
            return
        self._closed = True
        self._discard()
        mux = self._mux
        if mux._streams.get(self.stream_id) is self:
            mux._queue(StreamReset(self.stream_id, code))
            mux._remove(self)
        self._wake()

    def _discard(self) -> None:
        self._mux._buffered -= self._buffered
        self._buffered = 0
        self._chunks.clear()
        self._offset = 0

    def _wake(self) -> None:
        self._readable.unpark_all()
        self._writable.unpark_all()

    def _maybe_remove(self) -> None:
        if self._send_state != _OPEN and self._receive_state != _OPEN:
            self._mux._remove(self)

    def _broken(self) -> trio.BrokenResourceError:
        error = self._error
        assert error is not None
        broken = trio.BrokenResourceError(f"stream {self.stream_id}: {error}")
        broken.__cause__ = error.__cause__
        return broken

    # -- called by the Mux ------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        if self._receive_state != _OPEN:
            raise ProtocolError(f"STREAM_DATA on stream {self.stream_id} after its CLOSE")
        size = len(data)
        if size > self._receive_credit:
            raise ProtocolError(
                f"STREAM_DATA of {size} bytes on stream {self.stream_id} exceeds the "
                f"{self._receive_credit} bytes left in its window"
            )
        self._receive_credit -= size
        self._chunks.append(data)
        self._buffered += size
        self._mux._buffered += size
        if self._readable:
            self._readable.unpark_all()

    def _on_close(self) -> None:
        if self._receive_state != _OPEN:
            raise ProtocolError(f"STREAM_CLOSE on stream {self.stream_id} after its CLOSE")
        self._receive_state = _EOF
        self._readable.unpark_all()
        self._maybe_remove()

    def _on_reset(self, code: str) -> None:
        self.reset_code = code
        if self._receive_state == _OPEN:
            self._receive_state = _RESET
            self._discard()
        if self._send_state == _OPEN:
            self._send_state = _RESET
        self._mux._remove(self)
        self._wake()

    def _break(self, error: trio.BrokenResourceError) -> None:
        self._error = error
        if self._receive_state == _OPEN:
            self._receive_state = _RESET
            self._discard()
        if self._send_state == _OPEN:
            self._send_state = _RESET
        self._wake()


__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_WINDOW",
    "MAX_WINDOW",
    "Mux",
    "MuxStatistics",
    "MuxStream",
    "TooManyStreams",
]
