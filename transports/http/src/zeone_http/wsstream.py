"""A `trio.abc.Stream` over the binary messages of an established WebSocket connection.

The Noise channel above needs a byte stream, not messages, so message boundaries carry no meaning
here: each `send_all` becomes one binary message (split only past `MAX_MESSAGE`), and
`receive_some` hands out payload bytes as wsproto delivers them, even mid-frame, so a peer's huge
frame never has to be buffered whole. Backpressure is TCP's: the transport is only read when the
buffer is empty, and writes wait on the socket.

Pings are answered, pongs ignored, a close frame ends the stream like a TCP FIN (after echoing the
close), and anything that is not a binary message (text, bad framing) closes the connection with
the matching status code and breaks the stream.
"""

from __future__ import annotations

import logging
from collections import deque

import trio
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, Pong, TextMessage
from wsproto.frame_protocol import CloseReason

from zeone_http import masking

masking.install()

log = logging.getLogger(__name__)

#: Largest message one `send_all` emits; larger writes become several messages. Big messages keep
#: the per-message cost (a frame header, a masking call) negligible; the Noise channel above writes
#: at most ~256 KiB at a time anyway.
MAX_MESSAGE = 1024 * 1024
#: How much is read from the transport at once; also bounds what one `receive_some` buffers.
#: The Noise channel above writes up to ~256 KiB at a time.
RECEIVE_SIZE = 256 * 1024
#: How long `aclose` tries to deliver the close frame before it just drops the connection.
CLOSE_TIMEOUT = 2.0


class WebSocketStream(trio.abc.Stream):
    """Bytes over binary WebSocket messages; `ws` must already be past the opening handshake."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        ws: Connection,
        *,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        self.transport_stream = transport
        self._ws = ws
        self._close_timeout = close_timeout
        self._pending: deque[bytes] = deque()  # received payload not yet handed out
        self._eof = False
        self._closed = False
        self._broken: str | None = None
        self._write_lock = trio.Lock()  # user data, pongs and close frames share the socket
        self._sending = False
        self._receiving = False
        # Frames that arrived together with the upgrade were already fed to wsproto: apply them
        # now (a ping that early goes unanswered; a bad frame breaks the stream as usual).
        self._broken = self._collect(list(ws.events()), replies=[])

    # -- sending ------------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this WebSocket")
        self._sending = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("the WebSocket stream was closed")
            if self._broken is not None:
                raise trio.BrokenResourceError(self._broken)
            if self._ws.state is not ConnectionState.OPEN:
                await trio.lowlevel.checkpoint()
                raise trio.BrokenResourceError("the peer closed the WebSocket")
            view = memoryview(data).cast("B")
            if not view:
                await trio.lowlevel.checkpoint()
                return
            for start in range(0, len(view), MAX_MESSAGE):
                chunk = view[start : start + MAX_MESSAGE]
                await self._write(masking.encode_binary_frame(chunk, client=self._ws.client))
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this WebSocket")
        self._sending = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("the WebSocket stream was closed")
            await self.transport_stream.wait_send_all_might_not_block()
        finally:
            self._sending = False

    async def _write(self, frame: bytes) -> None:
        done = False
        try:
            async with self._write_lock:
                await self.transport_stream.send_all(frame)
            done = True
        except trio.BrokenResourceError as exc:
            self._broken = f"the connection broke: {exc}"
            raise
        except trio.ClosedResourceError:
            if self._closed:
                raise
            raise trio.BrokenResourceError("the underlying connection was closed") from None
        finally:
            if not done and self._broken is None:
                # Cancelled mid-frame: what follows on the wire would be misframed.
                self._broken = "a send was interrupted in the middle of a frame"

    # -- receiving ----------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            if not isinstance(max_bytes, int):
                raise TypeError("max_bytes must be an integer or None")
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this WebSocket")
        self._receiving = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("the WebSocket stream was closed")
            if self._pending or self._eof:
                await trio.lowlevel.checkpoint()
            while not self._pending and not self._eof:
                if self._broken is not None:
                    raise trio.BrokenResourceError(self._broken)
                try:
                    data = await self.transport_stream.receive_some(RECEIVE_SIZE)
                except trio.ClosedResourceError:
                    if self._closed:
                        raise
                    raise trio.BrokenResourceError("the underlying connection was closed") from None
                if not data:
                    # A TCP close without a close frame (RFC 6455 calls it 1006): end of stream.
                    self._eof = True
                    break
                self._ws.receive_data(data)
                replies: list[bytes] = []
                error = self._collect(self._ws.events(), replies)
                for reply in replies:
                    try:
                        await self._write(reply)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        if error is None and not self._eof:
                            raise
                if error is not None:
                    self._broken = error
                    raise trio.BrokenResourceError(error)
            if not self._pending:
                return b""
            chunk = self._pending.popleft()
            if max_bytes is not None and len(chunk) > max_bytes:
                self._pending.appendleft(chunk[max_bytes:])
                chunk = chunk[:max_bytes]
            return chunk
        finally:
            self._receiving = False

    def _collect(self, events: object, replies: list[bytes]) -> str | None:
        """Apply parsed events; frames to send back go to `replies`; return a fatal error."""
        for event in events:  # type: ignore[attr-defined]
            assert isinstance(event, Event)
            if isinstance(event, BytesMessage):
                if event.data:
                    self._pending.append(bytes(event.data))
            elif isinstance(event, Ping):
                if self._ws.state is ConnectionState.OPEN:
                    replies.append(self._ws.send(event.response()))
            elif isinstance(event, Pong):
                pass
            elif isinstance(event, TextMessage):
                return self._fail(CloseReason.UNSUPPORTED_DATA, "peer sent a text message", replies)
            elif isinstance(event, CloseConnection):
                if self._ws.state is ConnectionState.OPEN:
                    # wsproto reports a framing error as a close it did not receive.
                    return self._fail(event.code, f"bad WebSocket framing: {event.reason}", replies)
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    replies.append(self._ws.send(event.response()))
                self._eof = True
                return None
        return None

    def _fail(self, code: int, why: str, replies: list[bytes]) -> str:
        if self._ws.state is ConnectionState.OPEN:
            replies.append(self._ws.send(CloseConnection(code=code)))
        log.debug("closing a WebSocket: %s", why)
        return why

    # -- closing ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if (
                self._broken is None
                and not self._write_lock.locked()
                and self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)
            ):
                frame = self._ws.send(CloseConnection(code=CloseReason.NORMAL_CLOSURE))
                with trio.move_on_after(self._close_timeout):
                    async with self._write_lock:
                        await self.transport_stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(self.transport_stream)
