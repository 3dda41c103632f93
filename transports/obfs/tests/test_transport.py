"""The obfs transport on real loopback TCP: data flows, and probes all meet the same silence."""

from __future__ import annotations

import os

import pytest
import trio
from zeone_obfs.handshake import ClientHandshake, ServerKeys
from zeone_obfs.transport import ObfsTransport

from zeone.net.transport import Address, DialError, ListenError, parse_address

DELAY = 0.6  # the server's close delay in these tests (min == max makes it exact)


def server_transport(**kwargs) -> ObfsTransport:
    return ObfsTransport(
        keys=ServerKeys.generate(), close_delay_min=DELAY, close_delay_max=DELAY, **kwargs
    )


async def echo(stream: trio.abc.Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def roundtrip(stream: trio.abc.Stream, total: int) -> bytes:
    data = os.urandom(total)
    got = bytearray()

    async def read() -> None:
        while len(got) < total:
            chunk = await stream.receive_some()
            assert chunk
            got.extend(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        for i in range(0, total, 50_000):
            await stream.send_all(data[i : i + 50_000])
    assert bytes(got) == data
    return bytes(got)


@pytest.mark.parametrize("iat", [0, 1, 2])
async def test_echo_over_obfs_in_every_iat_mode(iat: int) -> None:
    server = server_transport(iat_mode=iat)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.listen, parse_address("obfs://127.0.0.1:0"), echo)
        assert f"iat={iat}" in str(bound) and "cert=" in str(bound)
        stream = await ObfsTransport().dial(bound)
        await roundtrip(stream, 300_000 if iat == 0 else 20_000)
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert server.accepted == 1 and server.rejected == 0


async def test_dialing_needs_the_cert() -> None:
    client = ObfsTransport()
    with pytest.raises(DialError, match="bridge line"):
        await client.dial(parse_address("obfs://127.0.0.1:1"))
    with pytest.raises(DialError, match="must decode"):
        await client.dial(parse_address("obfs://127.0.0.1:1?cert=abcd"))


async def test_listening_needs_state_and_refuses_a_foreign_cert() -> None:
    with pytest.raises(ListenError, match="no server state"):
        await ObfsTransport().listen(parse_address("obfs://127.0.0.1:0"), echo)
    other = server_transport().bridge_address("127.0.0.1", 0)
    with pytest.raises(ListenError, match="not this node's"):
        await server_transport().listen(other, echo)


async def test_unpublished_cert_hides_the_bridge_line() -> None:
    server = server_transport(publish_cert=False)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.listen, parse_address("obfs://127.0.0.1:0"), echo)
        assert "cert" not in str(bound)
        with pytest.raises(DialError, match="no \\?cert"):
            await ObfsTransport().dial(bound)
        assert bound.port is not None
        stream = await ObfsTransport().dial(server.bridge_address("127.0.0.1", bound.port))
        await roundtrip(stream, 1000)
        nursery.cancel_scope.cancel()


async def probe(address: Address, payload: bytes | None) -> tuple[bytes, str, float]:
    """Send `payload` raw; return (bytes answered, how it ended, seconds until it ended)."""
    assert address.port is not None
    started = trio.current_time()
    sock = await trio.open_tcp_stream(address.host, address.port)
    if payload:
        await sock.send_all(payload)
    answered = bytearray()
    ended = "eof"
    with trio.fail_after(DELAY + 10):
        try:
            while chunk := await sock.receive_some():
                answered += chunk
        except trio.BrokenResourceError:
            ended = "reset"
    elapsed = trio.current_time() - started
    await sock.aclose()
    return bytes(answered), ended, elapsed


async def test_every_probe_meets_the_same_silence_and_close() -> None:
    server = server_transport()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.listen, parse_address("obfs://127.0.0.1:0"), echo)
        assert server.keys is not None
        identity = server.keys.identity
        # A genuine handshake, recorded as a censor on the path would record it.
        recorded = ClientHandshake(identity).message
        answer, ended, _ = await probe_valid(bound, recorded)
        assert answer and server.accepted == 1
        flipped = bytearray(ClientHandshake(identity).message)
        for position in (0, 40, len(flipped) - 3):
            flipped[position] ^= 0x10
        probes: dict[str, bytes | None] = {
            "connect only": None,
            "1 random byte": os.urandom(1),
            "64 random bytes": os.urandom(64),
            "500 random bytes": os.urandom(500),
            "8192 random bytes": os.urandom(8192),
            "200 KB random bytes": os.urandom(200_000),
            "replayed handshake": recorded,
            "replay with bytes changed": bytes(flipped),
            "handshake for another server": ClientHandshake(ServerKeys.generate().identity).message,
            "valid handshake plus junk": ClientHandshake(identity).message + b"GET / HTTP/1.1",
        }
        outcomes: dict[str, tuple[bytes, str, float]] = {}

        async def run(name: str, payload: bytes | None) -> None:
            outcomes[name] = await probe(bound, payload)

        async with trio.open_nursery() as probes_nursery:
            for name, payload in probes.items():
                probes_nursery.start_soon(run, name, payload)
        for name, (answered, ended, elapsed) in outcomes.items():
            assert answered == b"", name
            assert ended == "eof", name  # a FIN, never an RST
            assert elapsed >= DELAY * 0.99, name  # never earlier than the server's deadline
        assert server.rejected == len(probes)
        # the server keeps serving real clients
        stream = await ObfsTransport().dial(bound)
        await roundtrip(stream, 10_000)
        nursery.cancel_scope.cancel()


async def probe_valid(address: Address, message: bytes) -> tuple[bytes, str, float]:
    assert address.port is not None
    sock = await trio.open_tcp_stream(address.host, address.port)
    await sock.send_all(message)
    with trio.fail_after(10):
        answer = await sock.receive_some()
    await sock.aclose()
    return answer, "answered", 0.0


async def test_a_flood_of_silent_connections_is_bounded() -> None:
    server = server_transport(max_pending=3)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.listen, parse_address("obfs://127.0.0.1:0"), echo)
        assert bound.port is not None
        socks = [await trio.open_tcp_stream("127.0.0.1", bound.port) for _ in range(3)]
        for _ in range(500):  # the accepts happen in the listener's tasks: poll for them
            if server.pending == 3:
                break
            await trio.sleep(0.01)
        assert server.pending == 3
        extra = await trio.open_tcp_stream("127.0.0.1", bound.port)
        with trio.fail_after(5):
            assert await extra.receive_some() == b""  # closed at once, not after the delay
        assert server.overflowed == 1
        for sock in [*socks, extra]:
            await sock.aclose()
        nursery.cancel_scope.cancel()
