"""The Noise secure channel: an authenticated, encrypted byte stream to a peer we can name.

Protocol `Noise_XX_25519_ChaChaPoly_BLAKE2b` with prologue `PROLOGUE`. Every Noise message, in the
handshake and after it, is sent as `u16 big-endian length | ciphertext` (at most 65535 bytes).

    -> e                                  (message 1: exactly 32 bytes, empty payload)
    <- e, ee, s, es, payload(responder)   (message 2)
    -> s, se, payload(initiator)          (message 3)

The Noise static key is fresh for every connection; the payload binds it to the node's long-term
Ed25519 identity. It is the canonical CBOR map

    {"v": 1, "key": <32-byte Ed25519 public key>, "sig": <64-byte signature>, "hello": {...}}

where `sig` signs `STATIC_KEY_CONTEXT + <the sender's 32-byte Noise static public key>` and `hello`
is a `Hello`. Each side checks the signature against the static key Noise authenticated, so a peer
can only claim the NodeId of a key it holds. XX lets the initiator see the responder's identity
before revealing its own: `secure_dial(..., expected_peer=...)` aborts before message 3 when
someone else answers. The version spoken afterwards is the highest one both hellos list.

Hostile peers: each handshake message is bounded (payload at most `MAX_HANDSHAKE_PAYLOAD` bytes,
length checked before the message is read) and every malformed, forged or tampered input raises
`ProtocolError`. Time is the caller's to bound, since only it knows the deadline it works to:

    with trio.fail_after(10):
        channel = await secure_dial(stream, identity, hello, expected_peer=peer_id)

A failed or cancelled handshake closes `stream`.
"""

from __future__ import annotations

import operator
from typing import Any

import attrs
import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from noise.connection import Keypair, NoiseConnection

from zeone.errors import ProtocolError
from zeone.identity import Identity, NodeId, verify_signature
from zeone.wire.frame import WIRE_VERSION, decode_cbor, encode_cbor

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"
PROLOGUE = b"zeone-noise-v1"
"""Mixed into the handshake hash: both sides must agree they are speaking ZEONE's handshake."""
STATIC_KEY_CONTEXT = b"zeone-noise-static-v1:"
"""Prefix of the signed message, so the signature cannot be replayed in another context."""
PAYLOAD_VERSION = 1

MAX_NOISE_MESSAGE = 65535
TAG_SIZE = 16
MAX_PLAINTEXT = MAX_NOISE_MESSAGE - TAG_SIZE
MAX_HANDSHAKE_PAYLOAD = 8 * 1024
# Message 2 is the largest: e (32) + encrypted s (32 + 16) + the payload's tag (16).
_MAX_HANDSHAKE_MESSAGE = MAX_HANDSHAKE_PAYLOAD + 96
_DH_LEN = 32

MAX_HELLO_ITEMS = 256
"""At most this many versions, capabilities or listen addresses in a Hello."""
MAX_HELLO_STRING = 256
"""Longest capability or listen address, in characters."""

# Encrypt this much before one write to the transport: fewer, larger writes without holding a
# copy of an arbitrarily large send_all argument.
_SEND_BATCH = 4 * MAX_PLAINTEXT
_RECEIVE_SIZE = 128 * 1024


# -- Hello ----------------------------------------------------------------------------------------


def _check_versions(_instance: Hello, _attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
    if not 0 < len(value) <= MAX_HELLO_ITEMS:
        raise ValueError(f"versions must list 1-{MAX_HELLO_ITEMS} versions, got {len(value)}")
    for version in value:
        if type(version) is not int or not 1 <= version <= 0xFF:
            raise ValueError(f"a protocol version is an integer 1-255, got {_short(version)}")


def _check_strings(_instance: Hello, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    if len(value) > MAX_HELLO_ITEMS:
        raise ValueError(f"{attribute.name} has {len(value)} entries; at most {MAX_HELLO_ITEMS}")
    for item in value:
        if not isinstance(item, str) or not 0 < len(item) <= MAX_HELLO_STRING:
            raise ValueError(
                f"{attribute.name} entries are strings of 1-{MAX_HELLO_STRING} characters, "
                f"got {_short(item)}"
            )


@attrs.frozen
class Hello:
    """What a node says about itself in the handshake.

    `versions` are the wire protocol versions it speaks and `preferred` the one it would choose
    (informational: the channel uses the highest common version). `capabilities` are the protocol
    ids of its enabled plugins, `listen` the addresses it can be dialed at.
    """

    versions: tuple[int, ...] = attrs.field(
        default=(WIRE_VERSION,), converter=tuple, validator=_check_versions
    )
    preferred: int = attrs.field(
        default=attrs.Factory(
            lambda self: max(self.versions, default=WIRE_VERSION), takes_self=True
        )
    )
    capabilities: tuple[str, ...] = attrs.field(
        default=(), converter=tuple, validator=_check_strings
    )
    listen: tuple[str, ...] = attrs.field(default=(), converter=tuple, validator=_check_strings)

    @preferred.validator
    def _check_preferred(self, _attribute: attrs.Attribute, value: int) -> None:
        if value not in self.versions or type(value) is not int:
            raise ValueError(
                f"preferred version {_short(value)} is not in versions {self.versions}"
            )

    def to_wire(self) -> dict[str, Any]:
        return {
            "versions": list(self.versions),
            "preferred": self.preferred,
            "capabilities": list(self.capabilities),
            "listen": list(self.listen),
        }

    @classmethod
    def from_wire(cls, value: Any) -> Hello:
        """Validate a peer's hello; unknown keys are ignored so later versions can add some."""
        if not isinstance(value, dict):
            raise ProtocolError(f"hello is not a map: {_short(value)}")
        fields = {}
        for name in ("versions", "capabilities", "listen"):
            items = value.get(name)
            if not isinstance(items, list):
                raise ProtocolError(f"hello field {name!r} is not a list: {_short(items)}")
            fields[name] = items
        try:
            return cls(preferred=value.get("preferred"), **fields)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"invalid hello: {exc}") from None


def negotiate_version(ours: Hello, theirs: Hello) -> int:
    """The highest version both sides speak."""
    common = set(ours.versions) & set(theirs.versions)
    if not common:
        raise ProtocolError(
            f"no common protocol version: ours {sorted(set(ours.versions))}, "
            f"theirs {sorted(set(theirs.versions))}"
        )
    return max(common)


def _short(value: object, limit: int = 60) -> str:
    """repr() cut short: error messages quote peer data, which can be large."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- handshake ------------------------------------------------------------------------------------


class _RecordStream:
    """Length-prefixed Noise messages over a byte stream; buffers what arrives past a message."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    async def send(self, message: bytes) -> None:
        await self.stream.send_all(len(message).to_bytes(2, "big") + message)

    async def receive(self, limit: int, what: str) -> bytes | None:
        """The next message, or None at a clean end of stream (between messages)."""
        buffer = self._buffer
        while len(buffer) < 2:
            if not await self._fill():
                if buffer:
                    raise ProtocolError(f"connection closed in the middle of {what}")
                return None
        length = (buffer[0] << 8) | buffer[1]
        if length > limit:
            raise ProtocolError(f"{what} of {length} bytes exceeds the {limit}-byte limit")
        end = 2 + length
        while len(buffer) < end:
            if not await self._fill():
                raise ProtocolError(f"connection closed in the middle of {what}")
        with memoryview(buffer) as view:
            message = bytes(view[2:end])
        del buffer[:end]
        return message

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(_RECEIVE_SIZE)
        if not data:
            return False
        self._buffer += data
        return True


def _new_noise(initiator: bool) -> tuple[NoiseConnection, bytes]:
    """A fresh handshake with a fresh static key; returns it and the static public key."""
    static = X25519PrivateKey.generate()
    noise = NoiseConnection.from_name(PROTOCOL_NAME)
    if initiator:
        noise.set_as_initiator()
    else:
        noise.set_as_responder()
    noise.set_prologue(PROLOGUE)
    noise.set_keypair_from_private_bytes(Keypair.STATIC, static.private_bytes_raw())
    noise.start_handshake()
    return noise, static.public_key().public_bytes_raw()


def _seal_payload(identity: Identity, static_public: bytes, hello: Hello) -> bytes:
    payload = encode_cbor(
        {
            "v": PAYLOAD_VERSION,
            "key": identity.public_key,
            "sig": identity.sign(STATIC_KEY_CONTEXT + static_public),
            "hello": hello.to_wire(),
        }
    )
    if len(payload) > MAX_HANDSHAKE_PAYLOAD:
        raise ValueError(
            f"our handshake payload is {len(payload)} bytes, over the {MAX_HANDSHAKE_PAYLOAD}-byte "
            "limit: too many capabilities or listen addresses"
        )
    return payload


@attrs.frozen
class _Peer:
    public_key: bytes
    node_id: NodeId
    hello: Hello


def _open_payload(payload: bytes, remote_static: bytes) -> _Peer:
    """Check a peer's handshake payload against the static key Noise authenticated."""
    if len(payload) > MAX_HANDSHAKE_PAYLOAD:
        raise ProtocolError(
            f"handshake payload of {len(payload)} bytes exceeds the {MAX_HANDSHAKE_PAYLOAD}-byte "
            "limit"
        )
    value = decode_cbor(payload, max_depth=3)
    if not isinstance(value, dict):
        raise ProtocolError(f"handshake payload is not a map: {_short(value)}")
    version = value.get("v")
    if type(version) is not int or version != PAYLOAD_VERSION:
        raise ProtocolError(f"unsupported handshake payload version {_short(version)}")
    key, signature = value.get("key"), value.get("sig")
    if not isinstance(key, bytes) or len(key) != 32:
        raise ProtocolError(f"handshake payload 'key' is not a 32-byte Ed25519 key: {_short(key)}")
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise ProtocolError(
            f"handshake payload 'sig' is not a 64-byte signature: {_short(signature)}"
        )
    if not verify_signature(key, STATIC_KEY_CONTEXT + remote_static, signature):
        raise ProtocolError("handshake signature does not match the peer's Noise static key")
    return _Peer(key, NodeId.from_public_key(key), Hello.from_wire(value.get("hello")))


def _write(noise: NoiseConnection, payload: bytes, number: int) -> bytes:
    try:
        return bytes(noise.write_message(payload))
    except Exception as exc:  # e.g. a low-order ephemeral key from the peer makes DH fail
        raise ProtocolError(f"cannot write handshake message {number}: {exc!r}") from None


def _read(noise: NoiseConnection, message: bytes, number: int) -> tuple[bytes, bytes | None]:
    """Process a handshake message; return its payload and the peer's static key, if known yet."""
    # noiseprotocol drops its handshake state once the handshake completes, taking the remote
    # static key with it, so hold on to the state object across the call.
    state = noise.noise_protocol.handshake_state
    try:
        payload = bytes(noise.read_message(message))
    except Exception as exc:  # noise, cryptography and ValueError for malformed keys
        raise ProtocolError(f"invalid handshake message {number}: {exc!r}") from None
    remote = getattr(getattr(state, "rs", None), "public_bytes", None)
    if remote is not None and (not isinstance(remote, bytes) or len(remote) != _DH_LEN):
        raise RuntimeError("unexpected noiseprotocol internals: remote static key not found")
    return payload, remote


def _lost_during_handshake(exc: trio.BrokenResourceError) -> ProtocolError:
    # A peer that hangs up mid-handshake breaks our next send; to the caller that is the same
    # failed handshake as the end of stream we see when receiving.
    return ProtocolError(f"connection lost during the handshake: {exc or type(exc).__name__}")


async def _receive_handshake(records: _RecordStream, number: int) -> bytes:
    message = await records.receive(_MAX_HANDSHAKE_MESSAGE, f"handshake message {number}")
    if message is None:
        raise ProtocolError(f"connection closed before handshake message {number}")
    return message


async def secure_dial(
    stream: trio.abc.Stream,
    identity: Identity,
    hello: Hello,
    expected_peer: NodeId | None = None,
) -> SecureChannel:
    """Run the initiator's side of the handshake over `stream` (see the module docstring).

    With `expected_peer`, a responder with another NodeId is rejected before we reveal who we are.
    Raises ProtocolError for anything the peer got wrong; closes `stream` on any failure.
    """
    try:
        records = _RecordStream(stream)
        noise, static_public = _new_noise(initiator=True)
        payload = _seal_payload(identity, static_public, hello)
        await records.send(_write(noise, b"", 1))
        peer_payload, remote_static = _read(noise, await _receive_handshake(records, 2), 2)
        if remote_static is None:
            raise RuntimeError("unexpected noiseprotocol internals: no static key after message 2")
        peer = _open_payload(peer_payload, remote_static)
        if expected_peer is not None and peer.node_id != expected_peer:
            raise ProtocolError(f"dialed node {expected_peer} but node {peer.node_id} answered")
        version = negotiate_version(hello, peer.hello)
        await records.send(_write(noise, payload, 3))
        return SecureChannel._after_handshake(records, noise, peer, version)
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        raise _lost_during_handshake(exc) from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def secure_accept(stream: trio.abc.Stream, identity: Identity, hello: Hello) -> SecureChannel:
    """Run the responder's side of the handshake over an accepted `stream`.

    Raises ProtocolError for anything the peer got wrong; closes `stream` on any failure.
    """
    try:
        records = _RecordStream(stream)
        noise, static_public = _new_noise(initiator=False)
        payload = _seal_payload(identity, static_public, hello)
        message = await _receive_handshake(records, 1)
        if len(message) != _DH_LEN:
            raise ProtocolError(f"handshake message 1 must be {_DH_LEN} bytes, got {len(message)}")
        _read(noise, message, 1)
        await records.send(_write(noise, payload, 2))
        peer_payload, remote_static = _read(noise, await _receive_handshake(records, 3), 3)
        if remote_static is None:
            raise RuntimeError("unexpected noiseprotocol internals: no static key after message 3")
        peer = _open_payload(peer_payload, remote_static)
        version = negotiate_version(hello, peer.hello)
        return SecureChannel._after_handshake(records, noise, peer, version)
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        raise _lost_during_handshake(exc) from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


# -- the channel ----------------------------------------------------------------------------------


@attrs.define(eq=False)
class SecureChannel(trio.abc.Stream):
    """An encrypted, authenticated byte stream to `peer_id`, made by `secure_dial`/`secure_accept`.

    It is a `trio.abc.Stream`, so frames (`zeone.wire`) run over it as over any other stream.
    `send_all` splits data into Noise messages of at most `MAX_PLAINTEXT` bytes; concurrent senders
    are serialised (each call's bytes stay contiguous) rather than refused, so several tasks can
    write whole frames. Reassembly is the frame decoder's job: `receive_some` returns whatever
    plaintext is available. A message that fails to decrypt (tampered, reordered, garbage) raises
    ProtocolError, now and on every later receive.

    End of stream is the transport's: Noise has no authenticated close, so a truncated stream is
    detected by the frame layer (a partial frame) rather than here.
    """

    transport_stream: trio.abc.Stream
    peer_public_key: bytes
    peer_id: NodeId
    peer_hello: Hello
    version: int
    handshake_hash: bytes = attrs.field(repr=False)
    """Unique to this session: sign it to bind a higher-level statement to the channel."""
    _records: _RecordStream = attrs.field(repr=False, alias="records")
    _encrypt: Any = attrs.field(repr=False, alias="encrypt")
    _decrypt: Any = attrs.field(repr=False, alias="decrypt")
    _send_lock: trio.Lock = attrs.field(factory=trio.Lock, init=False, repr=False)
    _send_broken: bool = attrs.field(default=False, init=False, repr=False)
    _receiving: bool = attrs.field(default=False, init=False, repr=False)
    _receive_error: ProtocolError | None = attrs.field(default=None, init=False, repr=False)
    _plaintext: bytes = attrs.field(default=b"", init=False, repr=False)
    _offset: int = attrs.field(default=0, init=False, repr=False)
    _closed: bool = attrs.field(default=False, init=False, repr=False)

    @classmethod
    def _after_handshake(
        cls, records: _RecordStream, noise: NoiseConnection, peer: _Peer, version: int
    ) -> SecureChannel:
        protocol = noise.noise_protocol
        # CipherState directly: it takes any buffer, where NoiseConnection.encrypt wants bytes.
        return cls(
            transport_stream=records.stream,
            peer_public_key=peer.public_key,
            peer_id=peer.node_id,
            peer_hello=peer.hello,
            version=version,
            handshake_hash=bytes(noise.get_handshake_hash()),
            records=records,
            encrypt=protocol.cipher_state_encrypt.encrypt_with_ad,
            decrypt=protocol.cipher_state_decrypt.decrypt_with_ad,
        )

    # -- sending --------------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._send_lock:
            self._check_can_send()
            view = memoryview(data)
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
            encrypt = self._encrypt
            try:
                for start in range(0, len(view), _SEND_BATCH):
                    parts = []
                    for offset in range(start, min(start + _SEND_BATCH, len(view)), MAX_PLAINTEXT):
                        ciphertext = encrypt(None, view[offset : offset + MAX_PLAINTEXT])
                        parts.append(len(ciphertext).to_bytes(2, "big"))
                        parts.append(ciphertext)
                    await self.transport_stream.send_all(b"".join(parts))
            except BaseException:
                # Part of the data (and nonces) may be gone: later messages would not decrypt.
                self._send_broken = True
                raise

    send = send_all

    async def wait_send_all_might_not_block(self) -> None:
        async with self._send_lock:
            self._check_can_send()
            await self.transport_stream.wait_send_all_might_not_block()

    def _check_can_send(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the secure channel is closed")
        if self._send_broken:
            raise trio.BrokenResourceError("an earlier send on this channel was interrupted")

    # -- receiving ------------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this channel")
        self._receiving = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("the secure channel is closed")
            if self._receive_error is not None:
                raise self._receive_error
            if self._offset < len(self._plaintext):
                await trio.lowlevel.checkpoint()
            elif not await self._receive_message():
                return b""
            return self._take(max_bytes)
        finally:
            self._receiving = False

    async def _receive_message(self) -> bool:
        """Decrypt the next non-empty message into the plaintext buffer; False at end of stream."""
        while True:
            message = await self._records.receive(MAX_NOISE_MESSAGE, "a Noise message")
            if message is None:
                return False
            try:
                plaintext = self._decrypt(None, message)
            except Exception:
                self._receive_error = ProtocolError(
                    f"Noise message of {len(message)} bytes failed to decrypt: "
                    "tampered with, reordered or not from this session"
                )
                raise self._receive_error from None
            if plaintext:
                self._plaintext, self._offset = plaintext, 0
                return True

    def _take(self, max_bytes: int | None) -> bytes:
        plaintext, offset = self._plaintext, self._offset
        end = len(plaintext) if max_bytes is None else min(len(plaintext), offset + max_bytes)
        self._offset = end
        if offset == 0 and end == len(plaintext):
            return plaintext
        with memoryview(plaintext) as view:
            return bytes(view[offset:end])

    # -- closing --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        self._closed = True
        self._plaintext, self._offset = b"", 0
        await self.transport_stream.aclose()
