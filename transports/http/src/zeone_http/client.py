"""The dialing side: a browser-like WebSocket upgrade over an already connected stream."""

from __future__ import annotations

import h11
import trio
from wsproto.connection import CLIENT as WS_CLIENT
from wsproto.connection import Connection as WsConnection

from zeone_http.handshake import ClientHello, HandshakeError, check_acceptance, client_request
from zeone_http.wsstream import WebSocketStream

RECEIVE_SIZE = 16 * 1024
#: A 101 response is a few hundred bytes; this bounds what a hostile server can make us buffer.
MAX_RESPONSE_HEAD = 16 * 1024


async def open_websocket(stream: trio.abc.Stream, hello: ClientHello) -> WebSocketStream:
    """Upgrade `stream` to a WebSocket; raises HandshakeError if the server does not accept.

    Bound the time with a cancel scope at the call site. The caller keeps ownership of `stream`
    on failure.
    """
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
    request = client_request(hello)
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise HandshakeError(f"malformed HTTP response: {exc}") from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise HandshakeError("server closed the connection during the WebSocket upgrade")
            conn.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse):
            if event.status_code != 101:
                continue  # 1xx hints (103 Early Hints) precede the real answer
            check_acceptance(event, hello.key)
            trailing, _closed = conn.trailing_data
            return WebSocketStream(stream, WsConnection(WS_CLIENT, trailing_data=trailing))
        if isinstance(event, h11.Response):
            check_acceptance(event, hello.key)  # always raises: not a 101
        raise HandshakeError(f"unexpected HTTP event {type(event).__name__} during the upgrade")
