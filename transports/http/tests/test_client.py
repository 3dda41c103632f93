"""The dialer: Chrome's upgrade request byte for byte, and refusal of anything but a valid 101."""

from __future__ import annotations

import base64
import functools
import re

import pytest
import trio
from zeone_http.handshake import CHROME_USER_AGENT
from zeone_http.transport import HttpSettings, WsTransport

from zeone.net.transport import Address, DialError

SECRET = "/assets/app-7c1e0b55.js"  # the conftest listener's secret path

CHROME_ORDER = [
    "Host",
    "Connection",
    "Pragma",
    "Cache-Control",
    "User-Agent",
    "Upgrade",
    "Origin",
    "Sec-WebSocket-Version",
    "Accept-Encoding",
    "Accept-Language",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Extensions",
]


async def capture_dial(nursery: trio.Nursery, answer: bytes, **settings) -> tuple[bytes, Exception]:
    """Dial a raw TCP server that records the request and answers `answer`."""
    captured = bytearray()

    async def server(stream: trio.SocketStream) -> None:
        while b"\r\n\r\n" not in captured:
            data = await stream.receive_some(65536)
            if not data:
                return
            captured.extend(data)
        await stream.send_all(answer)
        await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, server, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    transport = WsTransport(HttpSettings(secret_path=lambda: SECRET, **settings))
    with trio.fail_after(10), pytest.raises(DialError) as info:
        await transport.dial(Address.build("ws", "127.0.0.1", port, SECRET))
    return bytes(captured), info.value


async def test_the_upgrade_request_is_chromes_on_the_wire(nursery) -> None:
    wire, error = await capture_dial(
        nursery, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    )
    assert "404" in str(error)
    head = wire.decode("latin-1")
    assert head.endswith("\r\n\r\n") and "\n" not in head.replace("\r\n", "")
    request_line, *lines = head[:-4].split("\r\n")
    assert request_line == f"GET {SECRET} HTTP/1.1"
    names = [line.split(": ", 1)[0] for line in lines]
    assert names == CHROME_ORDER  # exact set, order and casing
    values = dict(line.split(": ", 1) for line in lines)
    port = values["Host"].rsplit(":", 1)[1]
    assert values["Host"] == f"127.0.0.1:{port}"
    assert values["Connection"] == "Upgrade" and values["Upgrade"] == "websocket"
    assert values["Pragma"] == values["Cache-Control"] == "no-cache"
    assert values["User-Agent"] == CHROME_USER_AGENT
    assert values["Origin"] == f"http://127.0.0.1:{port}"
    assert values["Sec-WebSocket-Version"] == "13"
    assert values["Accept-Encoding"] == "gzip, deflate, br, zstd"
    assert values["Accept-Language"] == "en-US,en;q=0.9"
    assert len(base64.b64decode(values["Sec-WebSocket-Key"], validate=True)) == 16
    assert values["Sec-WebSocket-Extensions"] == "permessage-deflate; client_max_window_bits"


async def test_host_origin_and_user_agent_follow_the_config(nursery) -> None:
    wire, _ = await capture_dial(
        nursery,
        b"garbage",
        host_header="cdn.example.org",
        origin="https://www.example.org",
        user_agent="Mozilla/5.0 (X11; Linux x86_64) Custom",
    )
    assert b"\r\nHost: cdn.example.org\r\n" in wire
    assert b"\r\nOrigin: https://www.example.org\r\n" in wire
    assert b"\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Custom\r\n" in wire


async def test_each_dial_uses_a_fresh_key(nursery) -> None:
    first, _ = await capture_dial(nursery, b"")
    second, _ = await capture_dial(nursery, b"")
    key = re.compile(rb"Sec-WebSocket-Key: (\S+)")
    assert key.search(first).group(1) != key.search(second).group(1)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"", "closed the connection"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", "HTTP 200"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
            "wrong Sec-WebSocket-Accept",
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            "without 'Upgrade: websocket'",
        ),
        (b"HTTP/1.1 101 Switching Protocols\r\nX-Big: " + b"a" * 40_000, "malformed HTTP"),
    ],
)
async def test_anything_but_a_valid_101_is_a_dial_error(nursery, answer, reason) -> None:
    _wire, error = await capture_dial(nursery, answer)
    assert reason in str(error)


async def test_an_extension_the_server_turned_on_is_refused() -> None:
    import h11
    from wsproto.utilities import generate_accept_token
    from zeone_http.handshake import HandshakeError, check_acceptance

    key = base64.b64encode(b"0123456789abcdef")
    response = h11.InformationalResponse(
        status_code=101,
        headers=[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", generate_accept_token(key)),
            ("Sec-WebSocket-Extensions", "permessage-deflate"),
        ],
    )
    with pytest.raises(HandshakeError, match="extension"):
        check_acceptance(response, key)


async def test_dial_needs_a_path_and_a_live_server() -> None:
    transport = WsTransport(HttpSettings(secret_path=lambda: SECRET))
    with pytest.raises(DialError, match="secret path"):
        await transport.dial(Address.build("ws", "127.0.0.1", 9))
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with pytest.raises(DialError):
        await transport.dial(Address.build("ws", "127.0.0.1", port, SECRET))


async def test_dial_and_echo_against_our_own_server(listener) -> None:
    transport = WsTransport(HttpSettings(secret_path=lambda: SECRET))
    stream = await transport.dial(listener.address)
    got = 0

    async def read() -> None:
        nonlocal got
        while got < 300_000:
            got += len(await stream.receive_some())

    with trio.fail_after(20):
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await stream.send_all(b"x" * 300_000)
    assert got == 300_000
    wrong = Address.build("ws", "127.0.0.1", listener.port, SECRET + "x")
    with pytest.raises(DialError, match="HTTP 404"):
        await transport.dial(wrong)


async def test_an_independent_websocket_client_interoperates_with_our_server(listener) -> None:
    """The `websockets` library's own client (not our code) upgrades and exchanges binary data."""
    from websockets.sync.client import connect

    url = f"ws://127.0.0.1:{listener.port}{SECRET}"

    def exchange() -> bytes:
        with connect(url, open_timeout=10, close_timeout=5) as ws:  # offers deflate
            ws.send(b"\x00\x01binary payload" * 1000)
            return ws.recv(timeout=10)

    echoed = await trio.to_thread.run_sync(exchange)
    assert echoed == b"\x00\x01binary payload" * 1000
