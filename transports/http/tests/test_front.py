"""The HTTP front over in-memory streams with a virtual clock: timeouts and memory bounds."""

from __future__ import annotations

import trio
import trio.testing
from zeone_http.client import open_websocket
from zeone_http.handshake import ClientHello
from zeone_http.server import LINGER_BYTES, RECEIVE_SIZE, HttpFront, ServerLimits
from zeone_http.site import Site
from zeone_http.wsstream import WebSocketStream

SECRET = "/live/feed-2b7d90"


class Counting(trio.abc.Stream):
    """Wraps the server's side and counts what the server pulled from it."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.received = 0
        self.closed = trio.Event()

    async def send_all(self, data) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def aclose(self) -> None:
        self.closed.set()
        await self.inner.aclose()


def front(**limits: float) -> HttpFront:
    return HttpFront(Site(), SECRET, ServerLimits(**limits))  # type: ignore[arg-type]


async def serve_in_background(nursery: trio.Nursery, http: HttpFront, on_ws=None):
    client, server = trio.testing.memory_stream_pair()
    counting = Counting(server)
    finished = trio.Event()

    async def run() -> None:
        async def refuse(ws: WebSocketStream) -> None:
            raise AssertionError("no upgrade expected")

        try:
            await http.serve(counting, on_ws or refuse)
        finally:
            await counting.aclose()
            finished.set()

    nursery.start_soon(run)
    return client, counting, finished


async def test_slowloris_is_cut_off_after_the_header_timeout(nursery, autojump_clock) -> None:
    http = front(header_timeout=10, keepalive_timeout=60)
    client, counting, finished = await serve_in_background(nursery, http)
    start = trio.current_time()
    await client.send_all(b"GET / HTTP/1.1\r\n")
    with trio.move_on_after(3600):
        try:
            while True:
                await client.send_all(b"X")  # one byte a second, forever
                await trio.sleep(1)
        except trio.BrokenResourceError:
            pass
    assert trio.current_time() - start <= 10 + 1  # the head had 10 s from its first byte
    with trio.fail_after(1):  # the server's task may resume after our send saw the close
        await finished.wait()
    assert counting.received < 100


async def test_an_idle_keep_alive_connection_is_closed(nursery, autojump_clock) -> None:
    http = front(keepalive_timeout=30)
    client, _counting, finished = await serve_in_background(nursery, http)
    await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    start = trio.current_time()
    response = await client.receive_some()
    assert response.startswith(b"HTTP/1.1 200 OK")
    with trio.fail_after(3600):
        await finished.wait()
    assert trio.current_time() - start <= 30 + 1


async def test_an_endless_header_stream_is_bounded_in_memory(nursery, autojump_clock) -> None:
    http = front(max_header_bytes=4096, header_timeout=1000)
    client, counting, finished = await serve_in_background(nursery, http)
    await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Filler: ")
    reply = bytearray()

    async def read() -> None:
        while data := await client.receive_some():
            reply.extend(data)

    nursery.start_soon(read)
    with trio.move_on_after(100):
        try:
            while True:
                await client.send_all(b"a" * 1000)
                await trio.sleep(0.01)
        except trio.BrokenResourceError:
            pass
    with trio.fail_after(10):
        await finished.wait()
    assert finished.is_set()
    # The server read at most one receive buffer past the limit, then answered and dropped us
    # (the lingering drain is bounded separately).
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert counting.received <= 4096 + RECEIVE_SIZE + LINGER_BYTES
    assert http.active == 0


async def test_upgrade_over_memory_streams_hands_over_a_working_stream(nursery) -> None:
    got: list[bytes] = []

    async def on_ws(ws: WebSocketStream) -> None:
        got.append(await ws.receive_some())
        await ws.send_all(b"pong")

    http = front()
    client, _counting, _finished = await serve_in_background(nursery, http, on_ws)
    ws = await open_websocket(client, ClientHello(path=SECRET, host="example.org", origin="x"))
    await ws.send_all(b"ping")
    assert await ws.receive_some() == b"pong"
    assert got == [b"ping"]
    assert http.active == 0  # an upgraded connection no longer counts against the HTTP limit


async def test_data_pipelined_right_after_the_upgrade_is_not_lost(nursery) -> None:
    got = bytearray()

    async def on_ws(ws: WebSocketStream) -> None:
        while data := await ws.receive_some():
            got.extend(data)

    import h11
    from wsproto.connection import CLIENT, Connection
    from wsproto.events import BytesMessage
    from zeone_http.handshake import client_request

    http = front()
    client, _counting, finished = await serve_in_background(nursery, http, on_ws)
    conn = h11.Connection(h11.CLIENT)
    hello = ClientHello(path=SECRET, host="example.org", origin="x")
    ws = Connection(CLIENT)
    frames = ws.send(BytesMessage(b"early bird"))
    await client.send_all(conn.send(client_request(hello)) + conn.send(h11.EndOfMessage()) + frames)
    head = await client.receive_some()
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    await client.aclose()
    with trio.fail_after(5):
        await finished.wait()
    assert got == b"early bird"
