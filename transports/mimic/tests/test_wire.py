"""Property tests of every parser: hostile bytes give TlsParseError, never anything else."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zeone_mimic import chrome, fingerprint, wire
from zeone_mimic.wire import TlsParseError


def chrome_hello_message() -> bytes:
    return chrome.build_client_hello(
        server_name="www.example.com",
        random=os.urandom(32),
        session_id=os.urandom(32),
        x25519_public=os.urandom(32),
    ).encode()


HELLO = chrome_hello_message()

PARSERS = [
    wire.parse_client_hello,
    wire.parse_server_hello,
    wire.parse_key_shares,
    wire.parse_alpn,
    wire.parse_server_name,
    wire.parse_supported_versions_client,
    wire.parse_server_key_share,
    lambda b: wire.parse_u16_vector(b, 2, "list"),
    lambda b: wire.parse_record_header(b[:5].ljust(5, b"\0")),
]


@pytest.mark.parametrize("parse", PARSERS)
@given(data=st.binary(max_size=600))
@settings(max_examples=300)
def test_parsers_reject_garbage_cleanly(parse, data: bytes) -> None:
    with contextlib.suppress(TlsParseError):
        parse(data)


@given(st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_hellos_parse_or_fail_cleanly(data) -> None:
    message = bytearray(HELLO)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(message) - 1))
        message[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(message)))
    try:
        hello = wire.parse_client_hello(bytes(message[:cut]))
    except TlsParseError:
        return
    # Whatever parses also fingerprints (or fails cleanly), and re-encodes to the same bytes.
    assert hello.encode() == bytes(message[:cut])
    try:
        fingerprint.ja4(hello)
        fingerprint.ja3(hello)
    except TlsParseError:
        pass


extension = st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40))


@given(
    random=st.binary(min_size=32, max_size=32),
    session_id=st.binary(max_size=32),
    suites=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=20),
    extensions=st.lists(extension, max_size=10, unique_by=lambda e: e[0]),
)
def test_client_hello_round_trips(random, session_id, suites, extensions) -> None:
    hello = wire.ClientHello(0x0303, random, session_id, tuple(suites), b"\x00", tuple(extensions))
    assert wire.parse_client_hello(hello.encode()) == hello


@given(
    random=st.binary(min_size=32, max_size=32),
    session_id=st.binary(max_size=32),
    suite=st.integers(0, 0xFFFF),
    extensions=st.lists(extension, max_size=6, unique_by=lambda e: e[0]),
)
def test_server_hello_round_trips(random, session_id, suite, extensions) -> None:
    hello = wire.ServerHello(random, session_id, suite, tuple(extensions))
    assert wire.parse_server_hello(hello.encode()) == hello


@given(st.data())
def test_handshake_assembler_handles_any_fragmentation(data) -> None:
    # TLS may split the hello into several records, and TCP splits those anywhere.
    cuts = sorted(data.draw(st.lists(st.integers(1, len(HELLO) - 1), max_size=5, unique=True)))
    pieces = [HELLO[a:b] for a, b in zip([0, *cuts], [*cuts, len(HELLO)], strict=True)]
    stream = b"".join(wire.record(wire.HANDSHAKE, p, 0x0301) for p in pieces)
    splits = sorted(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=8, unique=True)))
    assembler = wire.HandshakeAssembler()
    result = None
    for a, b in zip([0, *splits], [*splits, len(stream)], strict=True):
        assert result is None
        result = assembler.feed(stream[a:b])
    assert result == HELLO


@given(st.binary(max_size=300))
def test_handshake_assembler_rejects_or_waits_on_garbage(data: bytes) -> None:
    assembler = wire.HandshakeAssembler(limit=4096)
    with contextlib.suppress(TlsParseError):
        assembler.feed(data)


def test_assembler_refuses_oversized_messages() -> None:
    header = wire.handshake(wire.CLIENT_HELLO, b"")[:1] + (70000).to_bytes(3, "big")
    with pytest.raises(TlsParseError, match="exceeds"):
        wire.HandshakeAssembler(limit=1 << 16).feed(wire.record(wire.HANDSHAKE, header))


def test_record_splitter_rejects_non_tls() -> None:
    splitter = wire.RecordSplitter()
    splitter.feed(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(TlsParseError, match="content type"):
        splitter.next_record()


@given(st.binary(max_size=100), st.integers(1, 40))
def test_record_splitter_reassembles(body: bytes, step: int) -> None:
    encoded = wire.record(wire.APPLICATION_DATA, body) * 3
    splitter = wire.RecordSplitter()
    out = []
    for i in range(0, len(encoded), step):
        splitter.feed(encoded[i : i + step])
        while (rec := splitter.next_record()) is not None:
            out.append(rec)
    assert [r.body for r in out] == [body] * 3
