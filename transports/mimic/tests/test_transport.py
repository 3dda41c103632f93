"""Real loopback connections: ZEONE clients get in, everyone else gets the cover site's TLS."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import ssl

import pytest
import trio
from mimic_cover import COVER_NAME, COVER_PAGE
from zeone_mimic import auth, wire
from zeone_mimic.fallback import FallbackTarget
from zeone_mimic.transport import MimicTransport

from zeone.net.transport import Address, DialError, parse_address


async def echo(stream: trio.abc.Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def start(nursery: trio.Nursery, transport: MimicTransport) -> Address:
    return await nursery.start(transport.listen, parse_address("mimic://127.0.0.1:0"), echo)


def server_for(cover_site, learn: bool = False) -> MimicTransport:
    return MimicTransport(
        server_name=COVER_NAME,
        fallback=FallbackTarget("127.0.0.1", cover_site.port),
        learn_profile=learn,
    )


async def test_dial_listen_and_bulk_echo(nursery) -> None:
    server = MimicTransport()
    address = await start(nursery, server)
    assert f"pk={server.server_key.public_text}" in str(address)
    stream = await MimicTransport().dial(address)
    payload = os.urandom(300_000)
    async with trio.open_nursery() as inner:
        inner.start_soon(stream.send_all, payload)
        got = bytearray()
        while len(got) < len(payload):
            got += await stream.receive_some()
    assert bytes(got) == payload
    await stream.send_eof()
    assert await stream.receive_some() == b""
    await stream.aclose()
    assert server.stats.accepted == 1 and server.stats.fallback == 0


class Recorder(trio.abc.Stream):
    """Wraps a TCP stream and keeps every byte the client sent (a censor's capture)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sent = bytearray()

    async def send_all(self, data) -> None:
        self.sent += data
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data` as a prober would and collect the answer until the server stops talking."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    got = b""
    with trio.move_on_after(2):
        while len(got) < 5 or len(got) < 5 + int.from_bytes(got[3:5], "big"):
            chunk = await stream.receive_some()
            if not chunk:
                break
            got += chunk
    await stream.aclose()
    return got


async def test_replayed_hello_gets_the_cover_site(nursery, cover_site) -> None:
    from zeone_mimic.handshake import client_handshake

    server = server_for(cover_site)
    address = await start(nursery, server)
    tcp = await trio.open_tcp_stream("127.0.0.1", address.port)
    recorder = Recorder(tcp)
    stream = await client_handshake(recorder, server.server_key.public, COVER_NAME)
    await stream.send_all(b"ping")
    assert await stream.receive_some() == b"ping"
    first_record = bytes(recorder.sent[: 5 + int.from_bytes(recorder.sent[3:5], "big")])
    await stream.aclose()
    assert server.stats.accepted == 1

    # The censor replays the captured ClientHello: the answer is the cover site's ServerHello.
    answer = await raw_exchange(address.port, first_record)
    assert server.stats.reasons == {"token replay": 1}
    assert cover_site.connections == 1
    assert answer[:1] == bytes([wire.HANDSHAKE])
    server_hello = wire.parse_server_hello(answer[5 : 5 + int.from_bytes(answer[3:5], "big")])
    assert server_hello.extension(wire.EXT_SUPPORTED_VERSIONS) == b"\x03\x04"

    # ...and the same with one byte of the hello changed (the token binds the whole hello).
    tampered = bytearray(first_record)
    tampered[-1] ^= 1
    await raw_exchange(address.port, bytes(tampered))
    assert server.stats.reasons["no valid token"] == 1
    assert cover_site.connections == 2


def python_tls_get(port: int) -> tuple[str, bytes]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=COVER_NAME) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {COVER_NAME}\r\n\r\n".encode())
        body = b""
        while chunk := tls.recv(65536):
            body += chunk
        return tls.version() or "", body


async def test_python_tls_client_gets_the_cover_site(nursery, cover_site) -> None:
    server = server_for(cover_site)
    address = await start(nursery, server)
    version, body = await trio.to_thread.run_sync(python_tls_get, address.port)
    assert version == "TLSv1.3"
    assert body.startswith(b"HTTP/1.1 200 OK") and body.endswith(COVER_PAGE)
    assert cover_site.handshakes == 1
    assert server.stats.accepted == 0 and server.stats.reasons == {"no valid token": 1}


async def test_curl_gets_the_cover_site(nursery, cover_site) -> None:
    curl = shutil.which("curl")
    if curl is None:
        if os.environ.get("CI"):
            pytest.fail("curl is required in CI")
        pytest.skip("curl is not installed")
    server = server_for(cover_site)
    address = await start(nursery, server)
    result = await trio.run_process(
        [
            curl, "-sS", "-k", "--max-time", "20", "--tlsv1.3",
            "--resolve", f"{COVER_NAME}:{address.port}:127.0.0.1",
            f"https://{COVER_NAME}:{address.port}/",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == COVER_PAGE
    assert server.stats.accepted == 0 and server.stats.fallback == 1


@pytest.mark.parametrize(
    "probe",
    [
        b"",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        os.urandom(3000),
        wire.record(wire.HANDSHAKE, b"\x01\x00\x00\x05hello"),
    ],
    ids=["nothing", "http", "random", "short-hello"],
)
async def test_probes_are_forwarded_byte_for_byte(nursery, probe) -> None:
    # A plain TCP "cover site" that records what it receives shows the bytes arrive unchanged.
    received = bytearray()
    got_all = trio.Event()

    async def sink(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some():
            received.extend(data)
            if len(received) >= len(probe):
                await stream.send_all(b"cover says hi")
                got_all.set()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, sink, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    server = MimicTransport(
        fallback=FallbackTarget("127.0.0.1", port), handshake_timeout=1, learn_profile=False
    )
    address = await start(nursery, server)
    stream = await trio.open_tcp_stream("127.0.0.1", address.port)
    await stream.send_all(probe)
    if not probe:
        # A stalled partial header: after the handshake timeout it goes to the cover site too.
        await stream.send_all(b"late")
        probe = b"late"
    with trio.fail_after(10):
        await got_all.wait()
        answer = await stream.receive_some()
    assert bytes(received) == probe
    assert answer == b"cover says hi"
    assert server.stats.reasons == {"not a ClientHello": 1}  # a fixed category: safe to count
    await stream.aclose()


async def test_without_a_cover_site_probes_are_closed(nursery) -> None:
    server = MimicTransport()
    address = await start(nursery, server)
    stream = await trio.open_tcp_stream("127.0.0.1", address.port)
    await stream.send_all(b"GET / HTTP/1.1\r\n\r\n")
    # The server reads the first bytes, sees no hello and closes: EOF, or a reset because the
    # rest of the request was never read. Either way, not one byte comes back.
    with trio.fail_after(10):
        with contextlib.suppress(trio.BrokenResourceError):
            assert await stream.receive_some() == b""
    assert server.stats.fallback == 1


async def test_wrong_server_key_is_a_dial_error(nursery, cover_site) -> None:
    server = server_for(cover_site)
    address = await start(nursery, server)
    other = auth.ServerKey.generate().public_text
    wrong = parse_address(str(address).replace(server.server_key.public_text, other))
    with pytest.raises(DialError, match=r"wrong|not a mimic|ServerHello"):
        await MimicTransport().dial(wrong)
    # The server saw a hello without a valid token for its key and forwarded it.
    assert server.stats.reasons == {"no valid token": 1}


@pytest.mark.parametrize(
    "text, match",
    [
        ("mimic://127.0.0.1:1", "needs the server's key"),
        ("mimic://127.0.0.1:1?pk=abc", "decodes to"),
        ("mimic://127.0.0.1:1?pk=AAAA&x=1", "unknown mimic parameter"),
        ("mimic://127.0.0.1/path?pk=AAAA", "needs host and port"),
        ("mimic://127.0.0.1:1/path?pk=AAAA", "no path"),
    ],
)
async def test_bad_addresses_name_the_problem(text: str, match: str) -> None:
    with pytest.raises(DialError, match=match):
        await MimicTransport().dial(parse_address(text))


async def test_unreachable_server_is_a_dial_error() -> None:
    key = auth.ServerKey.generate().public_text
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(DialError):
        await MimicTransport().dial(parse_address(f"mimic://127.0.0.1:{port}?pk={key}"))


async def test_a_flood_of_stalled_connections_is_capped_and_zeone_still_works(nursery) -> None:
    server = MimicTransport(max_pending=3, handshake_timeout=60)
    address = await start(nursery, server)
    stalled = [await trio.open_tcp_stream("127.0.0.1", address.port) for _ in range(3)]
    for s in stalled:
        await s.send_all(b"\x16\x03")  # a partial record header, then silence
    extra = await trio.open_tcp_stream("127.0.0.1", address.port)
    with trio.fail_after(10):
        with contextlib.suppress(trio.BrokenResourceError):
            assert await extra.receive_some() == b""  # closed at once, nothing sent
    assert server.stats.refused_busy == 1
    for s in stalled:
        await s.aclose()
    # Once the stalled ones are gone, ZEONE clients get in again.
    with trio.fail_after(10):
        while True:
            try:
                stream = await MimicTransport().dial(address)
                break
            except DialError:
                await trio.sleep(0.05)
    await stream.send_all(b"still here")
    assert await stream.receive_some() == b"still here"
    await stream.aclose()
