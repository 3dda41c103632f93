"""The Noise channel: identity binding, negotiation, and peers that break the rules."""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

import cbor2
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from noise.connection import Keypair, NoiseConnection

from zeone.errors import ProtocolError
from zeone.identity import Identity
from zeone.net.noise import (
    MAX_HANDSHAKE_PAYLOAD,
    MAX_NOISE_MESSAGE,
    MAX_PLAINTEXT,
    PROLOGUE,
    PROTOCOL_NAME,
    STATIC_KEY_CONTEXT,
    Hello,
    SecureChannel,
    negotiate_version,
    secure_accept,
    secure_dial,
)

DEFAULT_HELLO = Hello()
ALICE = Identity.from_seed(b"a" * 32)  # dials
BOB = Identity.from_seed(b"b" * 32)  # accepts
MALLORY = Identity.from_seed(b"m" * 32)


async def both(
    dial: Callable[[], Awaitable[Any]], accept: Callable[[], Awaitable[Any]]
) -> tuple[Any, Any]:
    """Run both sides concurrently; each result is a value or the exception it raised."""
    results: dict[str, Any] = {}

    async def side(name: str, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            results[name] = await fn()
        except Exception as exc:
            results[name] = exc

    with trio.fail_after(10):  # a hang is a failure, not a stuck test run
        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, "accept", accept)
            nursery.start_soon(side, "dial", dial)
    return results["dial"], results["accept"]


async def connect(
    dial_hello: Hello = DEFAULT_HELLO,
    accept_hello: Hello = DEFAULT_HELLO,
    expected_peer=None,
    streams: tuple[trio.abc.Stream, trio.abc.Stream] | None = None,
) -> tuple[Any, Any]:
    left, right = streams or trio.testing.memory_stream_pair()
    return await both(
        lambda: secure_dial(left, ALICE, dial_hello, expected_peer),
        lambda: secure_accept(right, BOB, accept_hello),
    )


async def channel_pair(
    streams: tuple[trio.abc.Stream, trio.abc.Stream] | None = None,
) -> tuple[SecureChannel, SecureChannel]:
    dial, accept = await connect(streams=streams)
    assert isinstance(dial, SecureChannel), dial
    assert isinstance(accept, SecureChannel), accept
    return dial, accept


async def receive_exactly(channel: trio.abc.ReceiveStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await channel.receive_some()
        assert chunk, "unexpected end of stream"
        data += chunk
    return bytes(data)


def split_records(data: bytes) -> list[bytes]:
    records = []
    while data:
        length = int.from_bytes(data[:2], "big")
        records.append(data[2 : 2 + length])
        data = data[2 + length :]
    return records


class RawPeer:
    """One end of the handshake written from the spec with noiseprotocol, free to break rules."""

    def __init__(self, stream: trio.abc.Stream, *, initiator: bool) -> None:
        self.stream = stream
        self.buffer = bytearray()
        static = X25519PrivateKey.generate()
        self.static_public = static.public_key().public_bytes_raw()
        self.noise = NoiseConnection.from_name(PROTOCOL_NAME)
        if initiator:
            self.noise.set_as_initiator()
        else:
            self.noise.set_as_responder()
        self.noise.set_prologue(PROLOGUE)
        self.noise.set_keypair_from_private_bytes(Keypair.STATIC, static.private_bytes_raw())
        self.noise.start_handshake()

    async def send_record(self, data: bytes) -> None:
        await self.stream.send_all(len(data).to_bytes(2, "big") + data)

    async def receive_record(self) -> bytes | None:
        while len(self.buffer) < 2 or len(self.buffer) < 2 + int.from_bytes(self.buffer[:2]):
            chunk = await self.stream.receive_some()
            if not chunk:
                return None
            self.buffer += chunk
        length = int.from_bytes(self.buffer[:2])
        record = bytes(self.buffer[2 : 2 + length])
        del self.buffer[: 2 + length]
        return record

    def message(self, payload: bytes = b"") -> bytes:
        return bytes(self.noise.write_message(payload))

    async def write(self, payload: bytes = b"") -> None:
        await self.send_record(self.message(payload))

    async def read(self) -> bytes:
        record = await self.receive_record()
        assert record is not None
        return bytes(self.noise.read_message(record))

    def payload(
        self,
        identity: Identity = BOB,
        *,
        signer: Identity | None = None,
        static: bytes | None = None,
        hello: Hello = DEFAULT_HELLO,
        overrides: dict[str, Any] | None = None,
    ) -> bytes:
        """A handshake payload; `overrides` replaces or adds keys (None removes one)."""
        body = {
            "v": 1,
            "key": identity.public_key,
            "sig": (signer or identity).sign(STATIC_KEY_CONTEXT + (static or self.static_public)),
            "hello": hello.to_wire(),
        }
        body.update(overrides or {})
        return cbor2.dumps({k: v for k, v in body.items() if v is not None}, canonical=True)


async def dial_raw_responder(
    respond: Callable[[RawPeer], Awaitable[Any]], **dial_kwargs: Any
) -> tuple[Any, Any]:
    """secure_dial against a RawPeer responder running `respond`."""
    left, right = trio.testing.memory_stream_pair()
    peer = RawPeer(right, initiator=False)
    return await both(
        lambda: secure_dial(left, ALICE, Hello(), **dial_kwargs), lambda: respond(peer)
    )


async def accept_raw_initiator(initiate: Callable[[RawPeer], Awaitable[Any]]) -> tuple[Any, Any]:
    """secure_accept against a RawPeer initiator running `initiate`; returns (accept, initiate)."""
    left, right = trio.testing.memory_stream_pair()
    peer = RawPeer(left, initiator=True)
    initiated, accepted = await both(
        lambda: initiate(peer), lambda: secure_accept(right, BOB, Hello())
    )
    return accepted, initiated


class Relay:
    """A wire between dialer and acceptor that records and can rewrite what the dialer sends."""

    def __init__(self) -> None:
        self.dial_end, self._left = trio.testing.memory_stream_pair()
        self._right, self.accept_end = trio.testing.memory_stream_pair()
        self.forwarded = bytearray()
        self.rewrite: Callable[[bytes], bytes] | None = None

    def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._pump, self._left, self._right, True)
        nursery.start_soon(self._pump, self._right, self._left, False)

    async def _pump(self, source: trio.abc.Stream, sink: trio.abc.Stream, forward: bool) -> None:
        try:
            while data := await source.receive_some():
                if forward:
                    data = self.rewrite(data) if self.rewrite else data
                    self.forwarded += data
                await sink.send_all(data)
            await sink.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


# -- the happy path -------------------------------------------------------------------------------


async def test_handshake_binds_node_ids_on_both_sides():
    dial_hello = Hello(capabilities=("/zeone/forum/1",))
    accept_hello = Hello(listen=("tcp://192.0.2.1:4001",))
    dial, accept = await connect(dial_hello, accept_hello, expected_peer=BOB.node_id)
    assert dial.peer_id == BOB.node_id and dial.peer_public_key == BOB.public_key
    assert accept.peer_id == ALICE.node_id and accept.peer_public_key == ALICE.public_key
    assert dial.peer_hello == accept_hello and accept.peer_hello == dial_hello
    assert dial.version == accept.version == 1
    assert dial.handshake_hash == accept.handshake_hash and len(dial.handshake_hash) == 64

    await dial.send_all(b"ping")
    assert await receive_exactly(accept, 4) == b"ping"
    await accept.send(b"pong")
    assert await receive_exactly(dial, 4) == b"pong"
    await dial.aclose()
    assert await accept.receive_some() == b""


async def test_highest_common_version_wins():
    dial, accept = await connect(Hello(versions=(1, 2, 3), preferred=1), Hello(versions=(2, 3, 4)))
    assert dial.version == accept.version == 3


async def test_no_common_version():
    dial, accept = await connect(Hello(versions=(1,)), Hello(versions=(7,)))
    assert isinstance(dial, ProtocolError)
    assert str(dial) == "no common protocol version: ours [1], theirs [7]"
    assert isinstance(accept, ProtocolError)  # the dialer hung up before message 3


def test_negotiate_version_directly():
    assert negotiate_version(Hello(versions=(1, 5)), Hello(versions=(5, 1))) == 5
    with pytest.raises(ProtocolError, match=r"ours \[1, 2\], theirs \[3\]"):
        negotiate_version(Hello(versions=(2, 1)), Hello(versions=(3,)))


async def test_large_send_is_split_into_noise_messages():
    relay = Relay()
    data = os.urandom(1 << 20)
    async with trio.open_nursery() as nursery:
        relay.start(nursery)
        dial, accept = await channel_pair((relay.dial_end, relay.accept_end))
        handshake_bytes = len(relay.forwarded)
        nursery.start_soon(dial.send_all, data)
        assert await receive_exactly(accept, len(data)) == data
        nursery.cancel_scope.cancel()
    records = split_records(bytes(relay.forwarded[handshake_bytes:]))
    assert len(records) == -(-len(data) // MAX_PLAINTEXT)
    assert all(len(r) <= MAX_NOISE_MESSAGE for r in records)
    assert max(len(r) for r in records) == MAX_NOISE_MESSAGE


@pytest.mark.parametrize("size", [1, MAX_PLAINTEXT - 1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 3 << 20])
async def test_sizes_around_the_message_limit(size):
    dial, accept = await channel_pair()
    data = os.urandom(size)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dial.send_all, memoryview(data))
        assert await receive_exactly(accept, size) == data


async def test_receive_some_respects_max_bytes():
    dial, accept = await channel_pair()
    await dial.send_all(b"abcdef")
    assert await accept.receive_some(4) == b"abcd"
    assert await accept.receive_some(4) == b"ef"


async def test_concurrent_senders_do_not_interleave():
    dial, accept = await channel_pair()
    a, b = b"A" * (300 * 1024), b"B" * (300 * 1024)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dial.send_all, a)
        nursery.start_soon(dial.send_all, b)
        received = await receive_exactly(accept, len(a) + len(b))
    assert received in (a + b, b + a)


async def test_concurrent_receive_is_refused():
    _dial, accept = await channel_pair()
    with pytest.raises(ExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept.receive_some)
            nursery.start_soon(accept.receive_some)
    assert info.group_contains(trio.BusyResourceError)


@pytest.mark.parametrize(
    "make_streams", [trio.testing.memory_stream_pair, trio.testing.lockstep_stream_pair]
)
async def test_is_a_conforming_trio_stream(make_streams):
    # No clogged-stream check: concurrent send_all calls are serialised on purpose, where that
    # check expects BusyResourceError.
    await trio.testing.check_two_way_stream(lambda: channel_pair(make_streams()), None)


# -- identity -------------------------------------------------------------------------------------


async def test_expected_peer_mismatch_aborts_before_message_3():
    seen_after_message_2 = []

    async def respond(peer: RawPeer) -> None:
        await peer.read()
        await peer.write(peer.payload(BOB))
        seen_after_message_2.append(await peer.receive_record())

    dial, _ = await dial_raw_responder(respond, expected_peer=MALLORY.node_id)
    assert isinstance(dial, ProtocolError)
    assert f"dialed node {MALLORY.node_id} but node {BOB.node_id} answered" in str(dial)
    assert seen_after_message_2 == [None]  # closed without revealing the dialer's identity


async def test_expected_peer_mismatch_against_a_real_responder():
    dial, accept = await connect(expected_peer=MALLORY.node_id)
    assert isinstance(dial, ProtocolError) and isinstance(accept, ProtocolError)


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda p: p.payload(BOB, signer=MALLORY), id="signed-by-another-key"),
        pytest.param(
            lambda p: p.payload(BOB, static=os.urandom(32)), id="signature-for-another-static-key"
        ),
        pytest.param(lambda p: p.payload(BOB, overrides={"sig": bytes(64)}), id="zero-signature"),
    ],
)
async def test_forged_signature_rejected_by_dialer(forge):
    async def respond(peer: RawPeer) -> None:
        await peer.read()
        await peer.write(forge(peer))

    dial, _ = await dial_raw_responder(respond)
    assert isinstance(dial, ProtocolError)
    assert "signature does not match" in str(dial)


async def test_forged_signature_rejected_by_acceptor():
    async def initiate(peer: RawPeer) -> None:
        await peer.write()
        await peer.read()
        await peer.write(peer.payload(ALICE, signer=MALLORY))

    accept, _ = await accept_raw_initiator(initiate)
    assert isinstance(accept, ProtocolError)
    assert "signature does not match" in str(accept)


async def test_spec_conforming_raw_initiator_is_accepted():
    async def initiate(peer: RawPeer) -> bytes:
        await peer.write()
        payload = cbor2.loads(await peer.read())
        await peer.write(peer.payload(ALICE, hello=Hello(capabilities=("/x/1",))))
        return payload

    accept, responder_payload = await accept_raw_initiator(initiate)
    assert isinstance(accept, SecureChannel), accept
    assert accept.peer_id == ALICE.node_id
    assert accept.peer_hello.capabilities == ("/x/1",)
    assert responder_payload["key"] == BOB.public_key
    assert responder_payload["hello"] == Hello().to_wire()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"v": 2}, "payload version 2"),
        ({"v": True}, "payload version True"),
        ({"key": b"short"}, "32-byte Ed25519 key"),
        ({"sig": "not bytes"}, "64-byte signature"),
        ({"sig": None}, "64-byte signature"),
        ({"hello": None}, "hello is not a map"),
        ({"hello": [1]}, "hello is not a map"),
        (
            {"hello": {"versions": "1", "capabilities": [], "listen": []}},
            "'versions' is not a list",
        ),
        (
            {"hello": {"versions": [1], "preferred": 2, "capabilities": [], "listen": []}},
            "preferred version 2",
        ),
        (
            {"hello": {"versions": [1], "preferred": 1, "capabilities": [7], "listen": []}},
            "capabilities entries are strings",
        ),
        (
            {"hello": {"versions": [0], "preferred": 0, "capabilities": [], "listen": []}},
            "integer 1-255",
        ),
        ({"extra": cbor2.CBORTag(1, 0)}, "tag"),
    ],
)
async def test_malformed_payload_rejected(overrides, message):
    async def respond(peer: RawPeer) -> None:
        await peer.read()
        await peer.write(peer.payload(BOB, overrides=overrides))

    dial, _ = await dial_raw_responder(respond)
    assert isinstance(dial, ProtocolError)
    assert message in str(dial)


@pytest.mark.parametrize(
    ("payload", "message"),
    [(b"\xff\x00", "undecodable CBOR"), (cbor2.dumps([1, 2]), "not a map"), (b"", "undecodable")],
)
async def test_payload_that_is_not_a_map_rejected(payload, message):
    async def respond(peer: RawPeer) -> None:
        await peer.read()
        await peer.write(payload)

    dial, _ = await dial_raw_responder(respond)
    assert isinstance(dial, ProtocolError) and message in str(dial)


async def test_unknown_payload_and_hello_keys_are_ignored():
    hello = {**Hello().to_wire(), "future": {"x": 1}}

    async def respond_extended(peer: RawPeer) -> None:
        await peer.read()
        body = cbor2.loads(peer.payload(BOB))
        body["hello"] = hello
        body["future"] = [1, 2]
        await peer.write(cbor2.dumps(body, canonical=True))
        await peer.read()

    dial, _ = await dial_raw_responder(respond_extended)
    assert isinstance(dial, SecureChannel), dial


# -- hostile sizes, garbage and truncation --------------------------------------------------------


async def test_oversized_handshake_payload_rejected():
    async def respond(peer: RawPeer) -> None:
        await peer.read()
        await peer.write(peer.payload(BOB, overrides={"padding": b"x" * MAX_HANDSHAKE_PAYLOAD}))

    dial, _ = await dial_raw_responder(respond)
    assert isinstance(dial, ProtocolError)
    assert "handshake message 2 of" in str(dial) and "exceeds" in str(dial)


async def test_own_oversized_hello_is_a_local_error():
    hello = Hello(listen=tuple(f"tcp://192.0.2.{i}:{'1' * 200}" for i in range(60)))
    left, right = trio.testing.memory_stream_pair()
    with pytest.raises(
        ValueError, match=r"handshake payload is \d+ bytes, over the 8192-byte limit"
    ):
        await secure_dial(left, ALICE, hello)
    assert await right.receive_some() == b""  # nothing sent; the stream is closed


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n",
        b"\x00\x05hello",  # a short message 1
        b"\x00\x40" + bytes(64),  # a long message 1
        b"\x00\x20" + bytes(32),  # a low-order ephemeral key (all zeros)
        b"\xff",
    ],
)
async def test_garbage_instead_of_a_handshake(garbage):
    left, right = trio.testing.memory_stream_pair()

    async def send_garbage() -> None:
        await left.send_all(garbage)
        await left.aclose()

    _, accept = await both(send_garbage, lambda: secure_accept(right, BOB, Hello()))
    assert isinstance(accept, ProtocolError), accept


async def test_garbage_message_2():
    async def respond(peer: RawPeer) -> None:
        await peer.receive_record()
        await peer.send_record(os.urandom(200))

    dial, _ = await dial_raw_responder(respond)
    assert isinstance(dial, ProtocolError)
    assert "invalid handshake message 2" in str(dial)


async def test_peer_closing_mid_message_2():
    async def respond(peer: RawPeer) -> None:
        await peer.read()
        record = peer.message(peer.payload(BOB))
        await peer.stream.send_all((len(record)).to_bytes(2, "big") + record[:20])
        await peer.stream.aclose()

    dial, _ = await dial_raw_responder(respond)
    assert isinstance(dial, ProtocolError)
    assert "closed in the middle of handshake message 2" in str(dial)


@pytest.mark.parametrize("messages_before_close", [0, 1])
async def test_initiator_closing_mid_handshake(messages_before_close):
    async def initiate(peer: RawPeer) -> None:
        if messages_before_close:
            await peer.write()
        await peer.stream.aclose()

    accept, _ = await accept_raw_initiator(initiate)
    assert isinstance(accept, ProtocolError)
    # Either we notice when receiving, or our message 2 finds the connection gone.
    assert re.search("closed before handshake message 1|lost during the handshake", str(accept))


async def test_failed_handshake_closes_the_stream():
    left, right = trio.testing.memory_stream_pair()
    await right.send_all(b"\x00\x01x")
    await right.aclose()
    with pytest.raises(ProtocolError):
        await secure_accept(left, BOB, Hello())
    with pytest.raises(trio.ClosedResourceError):
        await left.send_all(b"x")


async def test_cancelled_handshake_closes_the_stream():
    left, _right = trio.testing.memory_stream_pair()
    with trio.move_on_after(0.01):
        await secure_dial(left, ALICE, Hello())  # nobody answers
    with pytest.raises(trio.ClosedResourceError):
        await left.send_all(b"x")


# -- after the handshake --------------------------------------------------------------------------


async def test_tampered_ciphertext_is_a_protocol_error():
    relay = Relay()
    async with trio.open_nursery() as nursery:
        relay.start(nursery)
        dial, accept = await channel_pair((relay.dial_end, relay.accept_end))
        relay.rewrite = lambda data: data[:-1] + bytes([data[-1] ^ 1])
        await dial.send_all(b"hello")
        with pytest.raises(ProtocolError, match="failed to decrypt"):
            await accept.receive_some()
        with pytest.raises(ProtocolError):  # and it stays failed
            await accept.receive_some()
        nursery.cancel_scope.cancel()


async def test_replayed_message_is_a_protocol_error():
    relay = Relay()
    async with trio.open_nursery() as nursery:
        relay.start(nursery)
        dial, accept = await channel_pair((relay.dial_end, relay.accept_end))
        relay.rewrite = lambda data: data + data
        await dial.send_all(b"hello")
        assert await accept.receive_some() == b"hello"
        with pytest.raises(ProtocolError, match="failed to decrypt"):
            await accept.receive_some()
        nursery.cancel_scope.cancel()


async def test_injected_garbage_record_is_a_protocol_error():
    dial, accept = await channel_pair()
    await dial.transport_stream.send_all(b"\x00\x20" + os.urandom(32))
    with pytest.raises(ProtocolError):
        await accept.receive_some()


async def test_stream_ending_mid_record_is_a_protocol_error():
    dial, accept = await channel_pair()
    await dial.transport_stream.send_all(b"\x01\x00" + bytes(10))
    await dial.transport_stream.aclose()
    with pytest.raises(ProtocolError, match="closed in the middle of a Noise message"):
        await accept.receive_some()


async def test_empty_messages_are_skipped_not_mistaken_for_eof():
    relay = Relay()
    async with trio.open_nursery() as nursery:
        relay.start(nursery)
        dial, accept = await channel_pair((relay.dial_end, relay.accept_end))
        await dial.send_all(b"")  # sends nothing at all
        await dial.send_all(b"x")
        assert await accept.receive_some() == b"x"
        nursery.cancel_scope.cancel()


async def test_closed_channel():
    dial, accept = await channel_pair()
    await dial.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await dial.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await dial.receive_some()
    assert await accept.receive_some() == b""


# -- Hello ----------------------------------------------------------------------------------------


def test_hello_defaults_and_validation():
    assert Hello() == Hello(versions=(1,), preferred=1, capabilities=(), listen=())
    assert Hello(versions=[1, 3]).preferred == 3
    for bad in [
        {"versions": ()},
        {"versions": (0,)},
        {"versions": (256,)},
        {"versions": (True,)},
        {"versions": (1,), "preferred": 2},
        {"capabilities": ("",)},
        {"capabilities": ("x" * 257,)},
        {"listen": tuple(str(i) for i in range(257))},
    ]:
        with pytest.raises(ValueError):
            Hello(**bad)


def test_hello_wire_roundtrip():
    hello = Hello(versions=(1, 2), preferred=1, capabilities=("/a/1",), listen=("tcp://[::1]:1",))
    assert Hello.from_wire(hello.to_wire()) == hello
    with pytest.raises(ProtocolError, match="'listen' is not a list"):
        Hello.from_wire({"versions": [1], "preferred": 1, "capabilities": [], "listen": "abc"})
