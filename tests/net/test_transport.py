"""Addresses, the Transport contract on real TCP, and the registry's dispatch by scheme."""

from __future__ import annotations

import logging
import pickle
import socket

import pytest
import trio

from zeone.net.memory import MemoryNetwork, MemoryTransport
from zeone.net.transport import (
    Address,
    DialError,
    ListenError,
    TcpTransport,
    TransportRegistry,
    UnknownSchemeError,
    parse_address,
)

# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "scheme", "host", "port", "canonical"),
    [
        ("tcp://127.0.0.1:4001", "tcp", "127.0.0.1", 4001, "tcp://127.0.0.1:4001"),
        ("  TCP://127.0.0.1:0/ ", "tcp", "127.0.0.1", 0, "tcp://127.0.0.1:0"),
        ("tcp://[::1]:4001", "tcp", "::1", 4001, "tcp://[::1]:4001"),
        ("tcp://[0:0:0::1]:4001", "tcp", "::1", 4001, "tcp://[::1]:4001"),
        ("tcp://[2001:DB8::1]:65535", "tcp", "2001:db8::1", 65535, "tcp://[2001:db8::1]:65535"),
        ("tcp://Seed-1.Example.ORG:4001", "tcp", "seed-1.example.org", 4001, None),
        ("tcp://localhost:4001", "tcp", "localhost", 4001, None),
        ("memory://node-7", "memory", "node-7", None, "memory://node-7"),
        ("memory://", "memory", "", None, "memory://"),
        ("obfs://Host.example:443", "obfs", "host.example", 443, None),
        ("ws://example.com:80/zeone?v=1", "ws", "example.com", 80, None),
        ("wss://[::1]/p", "wss", "::1", None, "wss://[::1]/p"),
    ],
)
def test_parse_valid(
    text: str, scheme: str, host: str, port: int | None, canonical: str | None
) -> None:
    address = parse_address(text)
    assert (address.scheme, address.host, address.port) == (scheme, host, port)
    assert address.raw == text.strip()
    if canonical is not None:
        assert str(address) == canonical
    # the canonical text parses back to an equal address
    assert parse_address(str(address)) == address


def test_address_equality_ignores_spelling() -> None:
    assert parse_address("tcp://[0::1]:1") == parse_address("tcp://[::1]:1")
    assert hash(parse_address("TCP://LOCALHOST:1")) == hash(parse_address("tcp://localhost:1"))
    assert parse_address("memory://A") != parse_address("memory://a")  # names are case-sensitive


def test_address_build_and_with_port() -> None:
    assert str(Address.build("tcp", "::1", 9)) == "tcp://[::1]:9"
    assert Address.build("tcp", "127.0.0.1", 0).with_port(80) == parse_address("tcp://127.0.0.1:80")
    assert parse_address("ws://h:1/x?y").path == "/x?y"
    with pytest.raises(ValueError, match="port"):
        Address.build("tcp", "127.0.0.1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo", "address 'foo' has no scheme; expected e.g. tcp://127.0.0.1:4001"),
        ("127.0.0.1:4001", "has no scheme"),
        ("tcp://127.0.0.1", "tcp address 'tcp://127.0.0.1' needs a port"),
        ("tcp://127.0.0.1:65536", "port 65536 is out of range 0-65535"),
        ("tcp://127.0.0.1:99999999999", "out of range"),
        ("tcp://127.0.0.1:-1", "is not a number"),
        ("tcp://127.0.0.1:http", "is not a number"),
        ("tcp://127.0.0.1:", "empty port"),
        ("tcp://:4001", "needs a host"),
        ("tcp://::1:4001", "brackets"),
        ("tcp://[::1:4001", "'['"),
        ("tcp://[::g]:4001", "not an IPv6 address"),
        ("tcp://[::1]x:4001", "junk after"),
        ("tcp://999.1.1.1:4001", "not an IP address or hostname"),
        ("tcp://bad_-.host!:4001", "not an IP address or hostname"),
        ("tcp://user@host:4001", "user information"),
        ("tcp://host:4001/path", "takes no path"),
        ("tcp://ho st:4001", "whitespace"),
        ("1tcp://host:4001", "malformed scheme"),
        ("memory://a:1", "takes a name, not a port"),
        ("memory://a/b", "takes no path"),
        ("memory://a%20b", "a name is letters"),
    ],
)
def test_parse_invalid(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_address(text)
    assert message in str(info.value)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        parse_address(b"tcp://127.0.0.1:1")  # type: ignore[arg-type]


def test_dial_error_is_an_oserror_that_names_the_address() -> None:
    address = parse_address("tcp://127.0.0.1:9")
    error = DialError(address, "connection refused")
    assert isinstance(error, OSError)
    assert str(error) == "cannot dial tcp://127.0.0.1:9: connection refused"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.address, copy.reason, str(copy)) == (address, error.reason, str(error))


# -- TCP ----------------------------------------------------------------------------------------


async def echo(stream: trio.abc.Stream) -> None:
    async for data in stream:
        await stream.send_all(data)


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    "listen_on",
    [
        "tcp://127.0.0.1:0",
        pytest.param(
            "tcp://[::1]:0",
            marks=pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback"),
        ),
    ],
)
async def test_tcp_dial_listen_echo(listen_on: str, nursery: trio.Nursery) -> None:
    transport = TcpTransport()
    requested = parse_address(listen_on)
    bound = await nursery.start(transport.listen, requested, echo)
    assert bound.scheme == "tcp" and bound.host == requested.host
    assert bound.port not in (None, 0)

    with trio.fail_after(10):
        stream = await transport.dial(bound)
        assert isinstance(stream, trio.SocketStream)
        assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        async with stream:
            await stream.send_all(b"hello over tcp")
            received = b""
            while len(received) < 14:
                received += await stream.receive_some()
            assert received == b"hello over tcp"


async def test_tcp_accepted_streams_have_nodelay_and_are_closed(nursery: trio.Nursery) -> None:
    seen: list[int] = []

    async def handler(stream: trio.abc.Stream) -> None:
        assert isinstance(stream, trio.SocketStream)
        seen.append(stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        await stream.send_all(b"bye")  # returning closes the stream

    transport = TcpTransport()
    bound = await nursery.start(transport.listen, parse_address("tcp://127.0.0.1:0"), handler)
    with trio.fail_after(10):
        async with await transport.dial(bound) as stream:
            received = b""
            async for data in stream:
                received += data
    assert received == b"bye"
    assert seen and seen[0]


async def test_tcp_handler_exception_does_not_kill_listener(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def handler(stream: trio.abc.Stream) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        await stream.send_all(b"ok")

    transport = TcpTransport()
    bound = await nursery.start(transport.listen, parse_address("tcp://127.0.0.1:0"), handler)
    with trio.fail_after(10), caplog.at_level(logging.ERROR, logger="zeone.net.transport"):
        async with await transport.dial(bound) as first:
            assert await first.receive_some() == b""  # closed by the listener after the error
        async with await transport.dial(bound) as second:
            assert await second.receive_some() == b"ok"
    assert calls == 2
    assert "handler bug" in caplog.text


async def test_tcp_dial_refused_raises_dial_error() -> None:
    transport = TcpTransport()
    async with trio.open_nursery() as listener:  # find a port, then stop listening on it
        bound = await listener.start(transport.listen, parse_address("tcp://127.0.0.1:0"), echo)
        listener.cancel_scope.cancel()
    with trio.fail_after(10), pytest.raises(DialError) as info:
        await transport.dial(bound)
    assert str(info.value).startswith(f"cannot dial {bound}: ")


async def test_tcp_dial_port_zero_and_wrong_scheme() -> None:
    transport = TcpTransport()
    with pytest.raises(DialError, match="port 0"):
        await transport.dial(parse_address("tcp://127.0.0.1:0"))
    with pytest.raises(DialError, match="memory"):
        await transport.dial(parse_address("memory://x"))


async def test_tcp_listen_on_used_port_raises_listen_error(nursery: trio.Nursery) -> None:
    transport = TcpTransport()
    bound = await nursery.start(transport.listen, parse_address("tcp://127.0.0.1:0"), echo)
    with pytest.raises(ListenError, match=str(bound)):
        await transport.listen(bound, echo)


# -- registry -----------------------------------------------------------------------------------


async def test_registry_dispatches_by_scheme(nursery: trio.Nursery) -> None:
    network = MemoryNetwork()
    registry = TransportRegistry([TcpTransport(), MemoryTransport(network, name="a")])
    assert registry.schemes() == ["memory", "tcp"]
    assert "tcp" in registry and "TCP" in registry and "obfs" not in registry
    assert isinstance(registry.get("memory"), MemoryTransport)

    bound = await nursery.start(registry.listen, "memory://b", echo)
    assert bound == parse_address("memory://b")
    async with await registry.dial("memory://b") as stream:
        await stream.send_all(b"ping")
        assert await stream.receive_some() == b"ping"


async def test_registry_unknown_scheme_lists_known_ones() -> None:
    registry = TransportRegistry([TcpTransport()])
    with pytest.raises(UnknownSchemeError) as info:
        await registry.dial("obfs://host:1")
    assert isinstance(info.value, DialError)
    assert "no transport for scheme 'obfs'; known: tcp" in str(info.value)
    assert "obfs://host:1" in str(info.value)
    with pytest.raises(UnknownSchemeError, match="known: tcp"):
        registry.get("ws")
    with pytest.raises(ListenError, match="known: tcp"):
        await registry.listen("ws://host:1", echo)
    with pytest.raises(UnknownSchemeError, match=r"known: \(none\)"):
        await TransportRegistry().dial("tcp://127.0.0.1:1")


def test_registry_refuses_duplicate_scheme() -> None:
    registry = TransportRegistry([TcpTransport()])
    with pytest.raises(ValueError, match="'tcp' is already handled by TcpTransport"):
        registry.register(TcpTransport())
