"""The handshake and record layer over in-memory streams: tokens, replay, tampering, framing."""

from __future__ import annotations

import os
import struct

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from zeone_mimic import auth, wire
from zeone_mimic.handshake import (
    HandshakeFailed,
    HelloReader,
    authenticate,
    client_handshake,
    server_respond,
)
from zeone_mimic.profile import ServerProfile
from zeone_mimic.records import MimicStream, RecordError, RecordProtection

SNI = "www.example.com"


async def handshake_pair(key: auth.ServerKey | None = None, profile: ServerProfile | None = None):
    """A connected (client, server) MimicStream pair over a memory stream pair."""
    key = key or auth.ServerKey.generate()
    profile = profile or ServerProfile.default(key.public)
    client_raw, server_raw = trio.testing.memory_stream_pair()
    replay = auth.ReplayFilter()
    out = {}

    async def server_side() -> None:
        read = await HelloReader().read(server_raw)
        verdict = authenticate(read, key, replay, None)
        assert verdict.accepted, verdict.reason
        out["server"] = await server_respond(server_raw, read, key, profile)

    async def client_side() -> None:
        out["client"] = await client_handshake(client_raw, key.public, SNI)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_side)
        nursery.start_soon(client_side)
    return out["client"], out["server"]


@pytest.mark.parametrize(
    "suite, group",
    [(0x1301, 0x001D), (0x1302, 0x11EC), (0x1303, 0x001D), (0x1301, 0x11EC)],
)
async def test_handshake_then_data_both_ways(suite: int, group: int) -> None:
    key = auth.ServerKey.generate()
    profile = attrs.evolve(ServerProfile.default(key.public), cipher_suite=suite, group=group)
    client, server = await handshake_pair(key, profile)
    await client.send_all(b"hello server")
    assert await server.receive_some() == b"hello server"
    await server.send_all(b"hello client")
    # The fake NewSessionTickets before it are skipped.
    assert await client.receive_some() == b"hello client"
    big = os.urandom(100_000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, big)
        got = bytearray()
        while len(got) < len(big):
            got += await server.receive_some(7000)
    assert got == big
    await client.send_eof()
    assert await server.receive_some() == b""
    with pytest.raises(trio.ClosedResourceError):
        await client.send_all(b"after eof")


async def test_records_on_the_wire_look_like_tls_application_data() -> None:
    send = RecordProtection(b"k" * 16, b"i" * 12)
    receive = RecordProtection(b"k" * 16, b"i" * 12)
    a, b = trio.testing.memory_stream_pair()
    writer = MimicStream(a, send, RecordProtection(b"x" * 16, b"y" * 12))
    payload = os.urandom(40_000)
    await writer.send_all(payload)
    wire_bytes = b""
    while len(wire_bytes) < 40_000 + 3 * 22:
        wire_bytes += await b.receive_some()
    sizes, pos = [], 0
    while pos < len(wire_bytes):
        ctype, version, length = struct.unpack_from(">BHH", wire_bytes, pos)
        assert (ctype, version) == (23, 0x0303)
        sizes.append(length)
        inner_type, _plain = receive.open(
            wire_bytes[pos : pos + 5], wire_bytes[pos + 5 : pos + 5 + length]
        )
        assert inner_type == 23
        pos += 5 + length
    assert sizes == [16384 + 17, 16384 + 17, 40_000 - 32768 + 17]
    assert payload[:100] not in wire_bytes


class Snoop(trio.abc.Stream):
    """Keeps every byte received through it: what a censor sees from the server."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.received = bytearray()

    async def send_all(self, data) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        self.received += data
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_server_flight_has_tls13_shape() -> None:
    key = auth.ServerKey.generate()
    profile = ServerProfile.default(key.public)
    client_raw, server_raw = trio.testing.memory_stream_pair()
    snoop = Snoop(client_raw)

    async def server_side() -> None:
        read = await HelloReader().read(server_raw)
        assert authenticate(read, key, auth.ReplayFilter(), None).accepted
        stream = await server_respond(server_raw, read, key, profile)
        await stream.send_all(b"data")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_side)
        client = await client_handshake(snoop, key.public, SNI)
        assert await client.receive_some() == b"data"
    records, pos, raw = [], 0, bytes(snoop.received)
    while pos < len(raw):
        ctype, version, length = struct.unpack_from(">BHH", raw, pos)
        records.append((ctype, version, length))
        pos += 5 + length
    sh = wire.parse_server_hello(raw[5 : 5 + records[0][2]])
    assert records[0][:2] == (22, 0x0303) and sh.cipher_suite == 0x1301
    assert [t for t, _ in sh.extensions] == [43, 51]
    assert records[1] == (20, 0x0303, 1)
    sizes = [r[2] for r in records[2:]]
    n = len(profile.flight)
    assert sizes[:n] == list(profile.flight)  # EE, Certificate, CertificateVerify, Finished
    assert sizes[n : n + 2] == list(profile.tickets)  # NewSessionTickets
    assert sizes[n + 2] == 4 + 17  # the application data
    assert all(r[:2] == (23, 0x0303) for r in records[2:])


@given(st.binary(min_size=1, max_size=2000))
@settings(max_examples=200, deadline=None)
def test_stream_rejects_garbage_records(garbage: bytes) -> None:
    async def main() -> None:
        a, b = trio.testing.memory_stream_pair()
        stream = MimicStream(
            b, RecordProtection(b"k" * 16, b"i" * 12), RecordProtection(b"k" * 16, b"i" * 12)
        )
        await a.send_all(garbage)
        await a.send_eof()
        try:
            data = await stream.receive_some()
        except RecordError:
            return
        assert data == b""  # only a truncated header / body can end without an error

    trio.run(main)


async def test_tampered_record_breaks_the_stream() -> None:
    a, b = trio.testing.memory_stream_pair()
    send = RecordProtection(b"k" * 16, b"i" * 12)
    stream = MimicStream(
        b, RecordProtection(b"x" * 16, b"y" * 12), RecordProtection(b"k" * 16, b"i" * 12)
    )
    rec = bytearray(send.seal(wire.APPLICATION_DATA, b"important"))
    rec[10] ^= 0x40
    await a.send_all(bytes(rec))
    with pytest.raises(RecordError, match="authentication"):
        await stream.receive_some()


async def test_reordered_records_are_refused() -> None:
    a, b = trio.testing.memory_stream_pair()
    send = RecordProtection(b"k" * 16, b"i" * 12)
    stream = MimicStream(
        b, RecordProtection(b"x" * 16, b"y" * 12), RecordProtection(b"k" * 16, b"i" * 12)
    )
    first, second = send.seal(23, b"one"), send.seal(23, b"two")
    await a.send_all(second + first)
    with pytest.raises(RecordError):
        await stream.receive_some()


# -- tokens and replay ---------------------------------------------------------------------------


async def captured_hello(key: auth.ServerKey) -> bytes:
    """The first flight bytes of a real client for `key` (server never answers)."""
    a, b = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_handshake, a, key.public, SNI)
        read = await HelloReader().read(b)
        nursery.cancel_scope.cancel()
    return read.raw


async def read_of(raw: bytes):
    a, b = trio.testing.memory_stream_pair()
    await a.send_all(raw)
    await a.send_eof()
    return await HelloReader().read(b)


async def test_token_accepts_once_then_refuses_the_replay() -> None:
    key = auth.ServerKey.generate()
    raw = await captured_hello(key)
    replay = auth.ReplayFilter()
    assert authenticate(await read_of(raw), key, replay, None).accepted
    assert authenticate(await read_of(raw), key, replay, None).reason == "token replay"


async def test_token_is_bound_to_the_server_key_and_every_byte() -> None:
    key = auth.ServerKey.generate()
    raw = await captured_hello(key)
    assert (
        authenticate(
            await read_of(raw), auth.ServerKey.generate(), auth.ReplayFilter(), None
        ).reason
        == "no valid token"
    )
    for offset in (5 + 4 + 2, 5 + 40, 5 + 200, len(raw) - 1):  # random, session id, exts, tail
        tampered = bytearray(raw)
        tampered[offset] ^= 0x01
        verdict = authenticate(await read_of(bytes(tampered)), key, auth.ReplayFilter(), None)
        assert not verdict.accepted


async def test_stale_and_future_tokens_are_refused() -> None:
    key = auth.ServerKey.generate()
    raw = await captured_hello(key)
    import time

    for skew in (-500, 500):
        verdict = authenticate(
            await read_of(raw), key, auth.ReplayFilter(window=120), time.time() + skew
        )
        assert verdict.reason == "token stale"


async def test_tokens_older_than_the_filter_are_refused() -> None:
    # A restarted server has forgotten what it accepted, so it refuses tokens minted before.
    key = auth.ServerKey.generate()
    raw = await captured_hello(key)
    import time

    later = auth.ReplayFilter(not_before=time.time() + 5)
    assert authenticate(await read_of(raw), key, later, time.time() + 5).reason == "token stale"


def test_replay_filter_expires_and_bounds() -> None:
    f = auth.ReplayFilter(window=10, capacity=2, not_before=0)
    assert f.check_and_add(b"a", 100, now=100) is None
    assert f.check_and_add(b"a", 100, now=105) == "replay"
    assert f.check_and_add(b"b", 100, now=105) is None
    assert f.check_and_add(b"c", 100, now=105) == "full"
    # After 2 x window the entries age out; a's token would be stale by then anyway.
    assert f.check_and_add(b"a", 100, now=126) == "stale"
    assert len(f) == 0
    assert f.check_and_add(b"c", 126, now=126) is None


def test_public_key_text_round_trips_and_rejects_junk() -> None:
    key = auth.ServerKey.generate()
    assert auth.decode_public_key(key.public_text) == key.public
    with pytest.raises(auth.KeyFormatError):
        auth.decode_public_key("not-a-key")


def test_key_file_is_created_private_and_reloaded(tmp_path) -> None:
    path = tmp_path / "sub" / "mimic.key"
    key = auth.ServerKey.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert auth.ServerKey.load_or_create(path).public == key.public
    path.write_bytes(b"short")
    with pytest.raises(auth.KeyFormatError, match="32 raw bytes"):
        auth.ServerKey.load_or_create(path)


async def test_client_refuses_a_server_without_the_key() -> None:
    # A server that answers like TLS but with garbage records: the client must not accept it.
    a, b = trio.testing.memory_stream_pair()
    key = auth.ServerKey.generate()

    async def impostor() -> None:
        read = await HelloReader().read(b)
        assert read.hello is not None
        hello = wire.ServerHello(
            os.urandom(32), read.hello.session_id, 0x1301,
            ((43, b"\x03\x04"), (51, struct.pack(">H", 0x1D) + wire.vec(2, os.urandom(32)))),
        ).encode()  # fmt: skip
        await b.send_all(wire.record(22, hello) + wire.record(23, os.urandom(60)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(impostor)
        with pytest.raises(HandshakeFailed, match="wrong server key"):
            await client_handshake(a, key.public, SNI)


def sealed(protection: RecordProtection, inner_type: int, payload: bytes, pad: int) -> bytes:
    """A record as any TLS 1.3 stack may send it, zero padding included (RFC 8446 §5.4)."""
    length = len(payload) + 1 + pad + 16
    header = struct.pack(">BHH", 23, 0x0303, length)
    inner = payload + bytes([inner_type]) + bytes(pad)
    return header + protection._aead.encrypt(protection._nonce(), inner, header)


record_plan = st.lists(
    st.tuples(
        st.sampled_from(["data", "data", "data", "ticket", "ccs"]),
        st.binary(max_size=3000),
        st.sampled_from([0, 0, 0, 5]),
    ),
    max_size=12,
)


@given(plan=record_plan, step=st.integers(1, 9000), read_size=st.integers(1, 70000))
@settings(max_examples=150, deadline=None)
def test_stream_reassembles_any_record_sequence(plan, step: int, read_size: int) -> None:
    key, iv = os.urandom(16), os.urandom(12)
    writer = RecordProtection(key, iv)
    wire_bytes = b""
    expected = b""
    for kind, payload, pad in plan:
        if kind == "ccs":
            wire_bytes += wire.record(wire.CHANGE_CIPHER_SPEC, b"\x01")
        elif kind == "ticket":
            wire_bytes += sealed(writer, wire.HANDSHAKE, payload or b"\x04", pad)
        else:
            wire_bytes += sealed(writer, wire.APPLICATION_DATA, payload, pad)
            expected += payload
    wire_bytes += sealed(writer, wire.ALERT, b"\x01\x00", 0)
    wire_bytes += b"ignored after close_notify"

    async def main() -> bytes:
        a, b = trio.testing.memory_stream_pair()
        stream = MimicStream(b, RecordProtection(b"x" * 16, b"y" * 12), RecordProtection(key, iv))
        got = bytearray()
        async with trio.open_nursery() as nursery:

            async def feed() -> None:
                for i in range(0, len(wire_bytes), step):
                    await a.send_all(wire_bytes[i : i + step])

            nursery.start_soon(feed)
            while data := await stream.receive_some(read_size):
                assert len(data) <= read_size
                got += data
            nursery.cancel_scope.cancel()
        return bytes(got)

    assert trio.run(main) == expected


FUZZ_KEY = auth.ServerKey.generate()
FUZZ_HELLO = trio.run(captured_hello, FUZZ_KEY)


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_any_mutation_of_a_valid_hello_is_refused_cleanly(data) -> None:
    raw = bytearray(FUZZ_HELLO)
    # Bytes of the handshake message (the record header is not authenticated, as in TLS).
    changes = data.draw(
        st.lists(
            st.tuples(st.integers(5, len(raw) - 1), st.integers(1, 255)),
            min_size=1,
            max_size=6,
            unique_by=lambda change: change[0],
        )
    )
    for index, flip in changes:
        raw[index] ^= flip
    cut = data.draw(st.integers(1, len(raw)))

    async def judge():
        return authenticate(await read_of(bytes(raw[:cut])), FUZZ_KEY, auth.ReplayFilter(), None)

    verdict = trio.run(judge)
    assert not verdict.accepted
    assert verdict.reason in {"not a ClientHello", "no valid token"}


async def test_a_hello_fragmented_over_records_and_writes_is_accepted() -> None:
    key = auth.ServerKey.generate()
    raw = await captured_hello(key)
    message = raw[5:]
    records = wire.record(22, message[:700], 0x0301) + wire.record(22, message[700:], 0x0301)
    a, b = trio.testing.memory_stream_pair()
    for i in range(0, len(records), 333):
        await a.send_all(records[i : i + 333])
    await a.send_all(b"next bytes")  # what follows the hello must stay unread
    read = await HelloReader().read(b)
    assert read.raw == records
    assert authenticate(read, key, auth.ReplayFilter(), None).accepted
    assert await b.receive_some() == b"next bytes"
