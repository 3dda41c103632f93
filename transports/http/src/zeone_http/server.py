"""The HTTP/1.1 front: a plain website to everyone, a WebSocket to whoever knows the secret path.

h11 parses each request (bounded head size), the cover `Site` answers it, and only a valid
RFC 6455 upgrade to the secret path is switched to WebSocket (wsproto) and handed to the node.
Everything a probe can vary (method, path, headers, a half-right upgrade, garbage) ends up on the
same code path as an ordinary page request, so the secret path without a proper upgrade looks
exactly like any other missing page.

Slow or hostile clients cost bounded time and memory: the head of each request must arrive within
`header_timeout` of its first byte, an idle keep-alive connection lasts `keepalive_timeout`, heads
are capped at `max_header_bytes`, and at most `max_connections` pre-upgrade connections are served
at once.
"""

from __future__ import annotations

import email.utils
import logging
from collections.abc import Awaitable, Callable

import attrs
import h11
import trio
from attrs import validators as v
from wsproto.connection import SERVER as WS_SERVER
from wsproto.connection import Connection as WsConnection

from zeone_http.handshake import accept_response, upgrade_key
from zeone_http.site import REASONS, Reply, Site, error_page
from zeone_http.wsstream import WebSocketStream

log = logging.getLogger(__name__)

RECEIVE_SIZE = 16 * 1024
FILE_CHUNK = 64 * 1024
#: After answering a request we did not read to the end, read and drop what the client still
#: sends for at most this long / this much, so our close does not reset the connection and wipe
#: the answer from the client's receive buffer (nginx's "lingering close").
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024

WebSocketHandler = Callable[[WebSocketStream], Awaitable[None]]


@attrs.frozen
class ServerLimits:
    """Bounds on what one client can make the server spend."""

    header_timeout: float = attrs.field(default=10.0, validator=v.gt(0))
    keepalive_timeout: float = attrs.field(default=30.0, validator=v.gt(0))
    send_timeout: float = attrs.field(default=30.0, validator=v.gt(0))
    max_header_bytes: int = attrs.field(default=16 * 1024, validator=v.ge(1024))
    max_requests: int = attrs.field(default=1000, validator=v.ge(1))
    max_connections: int = attrs.field(default=256, validator=v.ge(1))


class _Done(Exception):
    """The connection is over (timeout, EOF, error already answered)."""


@attrs.define(eq=False)
class HttpFront:
    """Serves one accepted connection at a time per `serve` call; shared by all of a listener's."""

    site: Site
    secret_path: str
    limits: ServerLimits = attrs.Factory(ServerLimits)
    server_header: str = "nginx"
    active: int = 0

    async def serve(self, stream: trio.abc.Stream, on_websocket: WebSocketHandler) -> None:
        """Serve `stream` until it is done; the caller closes it afterwards.

        On a valid upgrade, `on_websocket` runs with the WebSocket stream (in this task) and
        `serve` returns when it does.
        """
        if self.active >= self.limits.max_connections:
            log.debug("HTTP connection limit reached; dropping a connection")
            return
        self.active += 1
        counted = True
        try:
            ws = await self._http(stream)
            if ws is None:
                return
            self.active -= 1  # from here on the node's own connection limits apply
            counted = False
            await on_websocket(ws)
        except _Done:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("HTTP client went away: %r", exc)
        finally:
            if counted:
                self.active -= 1

    async def _http(self, stream: trio.abc.Stream) -> WebSocketStream | None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        for _ in range(self.limits.max_requests):
            try:
                request = await self._read_request(conn, stream)
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if exc.error_status_hint in REASONS else 400
                await self._send_raw_error(stream, status)
                return None
            if request is None:
                return None
            if request.http_version not in (b"1.0", b"1.1"):
                await self._send_raw_error(stream, 505)
                return None
            key = upgrade_key(request, self.secret_path)
            if key is not None and not _has_body(request):
                return await self._upgrade(conn, stream, key)
            if not await self._answer(conn, stream, request):
                if _has_body(request):
                    await _linger(stream)
                return None
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return None
            conn.start_next_cycle()
        return None

    async def _read_request(
        self, conn: h11.Connection, stream: trio.abc.Stream
    ) -> h11.Request | None:
        """The next request's head, or None at a clean EOF; raises _Done on a timeout."""
        started = bool(conn.trailing_data[0])
        deadline = trio.current_time() + (
            self.limits.header_timeout if started else self.limits.keepalive_timeout
        )
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
            if event is not h11.NEED_DATA:  # PAUSED cannot happen before a request
                raise _Done
            data = None
            with trio.move_on_at(deadline):
                data = await stream.receive_some(RECEIVE_SIZE)
            if data is None:
                log.debug("HTTP client too slow sending its request; closing")
                raise _Done
            if data and not started:
                started = True
                deadline = trio.current_time() + self.limits.header_timeout
            conn.receive_data(data)

    async def _upgrade(
        self, conn: h11.Connection, stream: trio.abc.Stream, key: bytes
    ) -> WebSocketStream:
        event = conn.next_event()
        if not isinstance(event, h11.EndOfMessage):
            raise _Done
        response = accept_response(key, self.server_header, _http_date())
        await self._send(stream, conn.send(response))
        trailing, _closed = conn.trailing_data
        return WebSocketStream(stream, WsConnection(WS_SERVER, trailing_data=trailing))

    async def _answer(
        self, conn: h11.Connection, stream: trio.abc.Stream, request: h11.Request
    ) -> bool:
        """Answer one site request; False if the connection must close afterwards."""
        args = (request.method, request.target, list(request.headers))
        if self.site.root is None:  # the built-in page touches no files: no thread needed
            await trio.lowlevel.checkpoint()
            reply = self.site.respond(*args)
        else:
            reply = await trio.to_thread.run_sync(self.site.respond, *args)
        keep = _keep_alive(request) and not _has_body(request)
        headers = [("Server", self.server_header)] if self.server_header else []
        headers.append(("Date", _http_date()))
        headers += [h for h in reply.headers if h[0] == "Content-Type"]
        if reply.status != 304:
            headers.append(("Content-Length", str(reply.content_length)))
        headers += [h for h in reply.headers if h[0] == "Last-Modified"]
        headers.append(("Connection", "keep-alive" if keep else "close"))
        headers += [h for h in reply.headers if h[0] not in ("Content-Type", "Last-Modified")]
        response = h11.Response(
            status_code=reply.status, headers=headers, reason=REASONS.get(reply.status, "")
        )
        await self._send(stream, conn.send(response))
        if request.method != b"HEAD" and reply.status != 304:
            if reply.file is not None:
                if not await self._send_file(conn, stream, reply):
                    return False
            elif reply.body:
                await self._send(stream, conn.send(h11.Data(data=reply.body)))
        await self._send(stream, conn.send(h11.EndOfMessage()))
        if not keep:
            return False
        # A GET has no body, so the request is complete; anything else closes above.
        while conn.their_state is h11.SEND_BODY:
            if conn.next_event() is h11.NEED_DATA:
                return False
        return True

    async def _send_file(self, conn: h11.Connection, stream: trio.abc.Stream, reply: Reply) -> bool:
        assert reply.file is not None
        remaining = reply.length
        try:
            async with await trio.open_file(reply.file, "rb") as f:
                while remaining > 0:
                    chunk = await f.read(min(FILE_CHUNK, remaining))
                    if not chunk:
                        return False  # the file shrank under us: cut the connection
                    remaining -= len(chunk)
                    await self._send(stream, conn.send(h11.Data(data=chunk)))
        except OSError as exc:
            log.warning("cannot read %s for the cover site: %s", reply.file, exc)
            return False
        return True

    async def _send(self, stream: trio.abc.Stream, data: bytes | None) -> None:
        if not data:
            return
        with trio.move_on_after(self.limits.send_timeout) as scope:
            await stream.send_all(data)
        if scope.cancelled_caught:
            raise _Done

    async def _send_raw_error(self, stream: trio.abc.Stream, status: int) -> None:
        """An error page after h11 gave up on the request (its state machine is unusable now)."""
        reply = error_page(status, self.server_header)
        lines = [f"HTTP/1.1 {status} {REASONS[status]}"]
        if self.server_header:
            lines.append(f"Server: {self.server_header}")
        lines += [
            f"Date: {_http_date()}",
            "Content-Type: text/html",
            f"Content-Length: {len(reply.body)}",
            "Connection: close",
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            await self._send(stream, head + reply.body)
            await _linger(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close, then drain the client's leftovers briefly (bounded) before the full close."""
    try:
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        drained = 0
        with trio.move_on_after(LINGER_SECONDS):
            while drained < LINGER_BYTES:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                drained += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _has_body(request: h11.Request) -> bool:
    for name, value in request.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def _keep_alive(request: h11.Request) -> bool:
    tokens: set[bytes] = set()
    for name, value in request.headers:
        if name == b"connection":
            tokens |= {t.strip().lower() for t in value.split(b",")}
    if request.http_version == b"1.1":
        return b"close" not in tokens
    return False  # h11 speaks HTTP/1.0 without keep-alive


def _http_date() -> str:
    return email.utils.formatdate(usegmt=True)
