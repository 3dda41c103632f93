"""The obfs handshake, sans-IO: an obfs4-style ntor exchange in which every byte looks random.

Wire format (all parts uniformly random to anyone without the server's bridge line)::

    client -> server:  X' | P_C | M_C | MAC_C
    server -> client:  Y' | AUTH | P_S | M_S | MAC_S

- X', Y': Elligator 2 representatives of ephemeral X25519 keys (32 bytes each);
- P_C, P_S: random padding of random length (client 85..8128, server 0..8096 bytes), so the
  handshake lengths vary; the client may draw P_C with a low bit density (see `PaddingStyle`);
- M_C = HMAC-SHA256(B | ID, X')[:16] marks where the padding ends; the server finds it by search;
- MAC_C = HMAC-SHA256(B | ID, X' | P_C | M_C | E)[:16] where E is the hour since the Unix epoch
  as decimal ASCII: the server accepts E-1, E and E+1, and remembers each accepted MAC_C for
  the window in its `ReplayFilter`;
- AUTH proves that the server holds the private key of B (ntor, as in Tor and obfs4), so a
  client cannot be served by an impostor that merely knows the bridge line.

The key seed becomes, through HKDF-SHA256, one AEAD key, nonce prefix and length-mask key per
direction (see `framing`). Anything that does not verify is `HandshakeError`; the server side
never says why on the wire (see `transport` for the probe-resistant close).
"""

from __future__ import annotations

import collections
import enum
import hashlib
import hmac
import os
import time
from collections.abc import Callable

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl import bindings
from nacl.exceptions import RuntimeError as NaclRuntimeError

from zeone_obfs.elligator import decode_representative, generate_keypair

PROTO_ID = b"zeone-obfs-1"
REPR_LEN = 32
MARK_LEN = 16
MAC_LEN = 16
AUTH_LEN = 32
MAX_HANDSHAKE = 8192
CLIENT_MIN_PAD = 85
CLIENT_MAX_PAD = MAX_HANDSHAKE - (REPR_LEN + MARK_LEN + MAC_LEN)
SERVER_MIN_PAD = 0
SERVER_MAX_PAD = MAX_HANDSHAKE - (REPR_LEN + AUTH_LEN + MARK_LEN + MAC_LEN)
CLIENT_MIN_LEN = REPR_LEN + CLIENT_MIN_PAD + MARK_LEN + MAC_LEN
SERVER_MIN_LEN = REPR_LEN + AUTH_LEN + SERVER_MIN_PAD + MARK_LEN + MAC_LEN
EPOCH_SECONDS = 3600
#: A MAC is accepted for at most the rest of its hour plus one more hour; remembering it for
#: three hours covers every hour in which it could still be replayed.
REPLAY_TTL = 3 * EPOCH_SECONDS
NODE_ID_LEN = 20
KEY_LEN = 16  # AEGIS-128L
NONCE_PREFIX_LEN = 8  # + a 64-bit frame counter = AEGIS-128L's 128-bit nonce
HEADER_KEY_LEN = 32
SESSION_MATERIAL = 2 * (KEY_LEN + NONCE_PREFIX_LEN + HEADER_KEY_LEN)


class HandshakeError(Exception):
    """The peer's handshake is not valid (wrong bridge line, corrupted, replayed, truncated)."""


class PaddingStyle(enum.Enum):
    """How the client draws its handshake padding P_C (the server never cares: it only MACs it).

    UNIFORM: uniform random bytes, so the whole first packet is uniform (obfs4's choice).
    LOW_POPCOUNT: each padding bit is 1 with probability 1/4, which pulls the first packet's
    average set bits per byte below 3.4, the exemption in the GFW's fully-encrypted-traffic
    rule (Wu et al. 2023). The bytes are still random, with no fixed value anywhere.
    """

    UNIFORM = "uniform"
    LOW_POPCOUNT = "low-popcount"


def random_padding(length: int, style: PaddingStyle = PaddingStyle.UNIFORM) -> bytes:
    if style is PaddingStyle.LOW_POPCOUNT and length:
        a = int.from_bytes(os.urandom(length), "little")
        b = int.from_bytes(os.urandom(length), "little")
        return (a & b).to_bytes(length, "little")
    return os.urandom(length)


@attrs.frozen(repr=False)
class ServerIdentity:
    """What a client must know to reach a server: its node id and static public key (the cert)."""

    node_id: bytes = attrs.field(validator=lambda _s, _a, v: _check_len(v, NODE_ID_LEN, "node id"))
    public_key: bytes = attrs.field(validator=lambda _s, _a, v: _check_len(v, 32, "public key"))

    @property
    def mac_key(self) -> bytes:
        return self.public_key + self.node_id

    def __repr__(self) -> str:
        return f"ServerIdentity(node_id={self.node_id.hex()[:8]}...)"


def _check_len(value: bytes, length: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError(f"the server's {what} must be {length} bytes")


@attrs.frozen(repr=False)
class ServerKeys:
    """The server's long-term secrets (kept in its state file)."""

    identity: ServerIdentity
    private_key: bytes

    @classmethod
    def generate(cls) -> ServerKeys:
        private = os.urandom(32)
        public = bindings.crypto_scalarmult_base(private)
        return cls(ServerIdentity(os.urandom(NODE_ID_LEN), public), private)

    @classmethod
    def from_secrets(cls, node_id: bytes, private_key: bytes) -> ServerKeys:
        _check_len(private_key, 32, "private key")
        public = bindings.crypto_scalarmult_base(private_key)
        return cls(ServerIdentity(node_id, public), private_key)

    def __repr__(self) -> str:
        return f"ServerKeys({self.identity!r})"


@attrs.frozen(repr=False)
class SessionKeys:
    """Per-direction frame keys: AEAD key, nonce prefix and length-mask key."""

    send_key: bytes
    send_nonce: bytes
    send_len_key: bytes
    recv_key: bytes
    recv_nonce: bytes
    recv_len_key: bytes


def _hmac(key: bytes, *parts: bytes) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()


def epoch_hour(now: float) -> int:
    return int(now) // EPOCH_SECONDS


def _x25519(secret: bytes, public: bytes) -> bytes:
    try:
        return bindings.crypto_scalarmult(secret, public)
    except NaclRuntimeError:  # all-zero result: a low-order public key
        raise HandshakeError("degenerate key exchange") from None


def _ntor(
    exp_ephemeral: bytes, exp_static: bytes, server: ServerIdentity, x: bytes, y: bytes
) -> tuple[bytes, bytes]:
    """(key seed, AUTH) of the ntor handshake, as in Tor's proposal 216 and obfs4."""
    secret_input = b"".join(
        (exp_ephemeral, exp_static, server.node_id, server.public_key, x, y, PROTO_ID)
    )
    key_seed = _hmac(PROTO_ID + b":key_extract", secret_input)
    verify = _hmac(PROTO_ID + b":key_verify", secret_input)
    auth_input = b"".join((verify, server.node_id, server.public_key, y, x, PROTO_ID, b"Server"))
    return key_seed, _hmac(PROTO_ID + b":mac", auth_input)


def _session_keys(key_seed: bytes, *, client: bool) -> SessionKeys:
    material = HKDF(
        algorithm=hashes.SHA256(),
        length=SESSION_MATERIAL,
        salt=PROTO_ID + b":salt",
        info=PROTO_ID + b":key_expand",
    ).derive(key_seed)
    half = SESSION_MATERIAL // 2
    parts = []
    for block in (material[:half], material[half:]):  # client->server, then server->client
        parts.append(
            (
                block[:KEY_LEN],
                block[KEY_LEN : KEY_LEN + NONCE_PREFIX_LEN],
                block[KEY_LEN + NONCE_PREFIX_LEN :],
            )
        )
    upstream, downstream = parts
    send, recv = (upstream, downstream) if client else (downstream, upstream)
    return SessionKeys(*send, *recv)


# -- client -------------------------------------------------------------------------------------


class ClientHandshake:
    """Builds the client's message, then consumes the server's reply (`feed`)."""

    def __init__(
        self,
        server: ServerIdentity,
        *,
        now: float | None = None,
        padding: PaddingStyle = PaddingStyle.UNIFORM,
        pad_len: int | None = None,
    ) -> None:
        self.server = server
        self._keypair = generate_keypair()
        self._epoch = str(epoch_hour(time.time() if now is None else now)).encode()
        if pad_len is None:
            pad_len = CLIENT_MIN_PAD + int.from_bytes(os.urandom(4), "big") % (
                CLIENT_MAX_PAD - CLIENT_MIN_PAD + 1
            )
        if not CLIENT_MIN_PAD <= pad_len <= CLIENT_MAX_PAD:
            raise ValueError(f"client padding must be {CLIENT_MIN_PAD}..{CLIENT_MAX_PAD} bytes")
        rep = self._keypair.representative
        mark = _hmac(server.mac_key, rep)[:MARK_LEN]
        body = rep + random_padding(pad_len, padding) + mark
        self.message = body + _hmac(server.mac_key, body, self._epoch)[:MAC_LEN]
        self._buffer = bytearray()
        self.keys: SessionKeys | None = None

    def feed(self, data: bytes) -> bytes | None:
        """Consume server bytes; None while incomplete, else the bytes that follow the reply.

        Raises HandshakeError if the reply cannot be from the server of the bridge line.
        """
        if self.keys is not None:
            raise RuntimeError("the handshake is already complete")
        self._buffer += data
        buf = self._buffer
        if len(buf) < SERVER_MIN_LEN:
            return None
        server = self.server
        y_rep = bytes(buf[:REPR_LEN])
        mark = _hmac(server.mac_key, y_rep)[:MARK_LEN]
        start = REPR_LEN + AUTH_LEN + SERVER_MIN_PAD
        pos = buf.find(mark, start, REPR_LEN + AUTH_LEN + SERVER_MAX_PAD + MARK_LEN)
        if pos < 0:
            if len(buf) >= MAX_HANDSHAKE:
                raise HandshakeError("no server handshake mark within the maximum length")
            return None
        end = pos + MARK_LEN + MAC_LEN
        if len(buf) < end:
            return None
        expected = _hmac(server.mac_key, bytes(buf[: pos + MARK_LEN]), self._epoch)[:MAC_LEN]
        if not hmac.compare_digest(expected, bytes(buf[pos + MARK_LEN : end])):
            raise HandshakeError("the server handshake MAC does not verify")
        y = decode_representative(y_rep)
        key_seed, auth = _ntor(
            _x25519(self._keypair.secret, y),
            _x25519(self._keypair.secret, server.public_key),
            server,
            self._keypair.public,
            y,
        )
        if not hmac.compare_digest(auth, bytes(buf[REPR_LEN : REPR_LEN + AUTH_LEN])):
            raise HandshakeError("the server could not prove it holds the bridge line's key")
        self.keys = _session_keys(key_seed, client=True)
        rest = bytes(buf[end:])
        self._buffer = bytearray()
        return rest


# -- server -------------------------------------------------------------------------------------


class ReplayFilter:
    """Client MACs seen recently, so a recorded handshake cannot be played again.

    Entries live `ttl` seconds (three epoch hours by default: longer than any MAC stays valid)
    and at most `capacity` are kept, evicting the oldest. Only handshakes with a valid MAC are
    recorded, so filling the filter needs the bridge line; the memory bound is about 100 bytes
    an entry (10 MB at the default 100,000).
    """

    def __init__(self, capacity: int = 100_000, ttl: float = REPLAY_TTL) -> None:
        if capacity < 1:
            raise ValueError("the replay filter needs a capacity of at least 1")
        self.capacity = capacity
        self.ttl = ttl
        self._seen: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, mac: bytes, now: float) -> bool:
        """True if `mac` is fresh (and now remembered), False if it is a replay."""
        self._expire(now)
        if mac in self._seen:
            return False
        self._seen[mac] = now + self.ttl
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            mac, expires = next(iter(seen.items()))
            if expires > now:
                break
            del seen[mac]


class ServerHandshake:
    """Consumes a client's message (`feed`) and, if it is valid and fresh, builds the reply."""

    def __init__(
        self,
        keys: ServerKeys,
        replay: ReplayFilter,
        *,
        clock: Callable[[], float] = time.time,
        pad_len: int | None = None,
    ) -> None:
        self._keys = keys
        self._replay = replay
        self._clock = clock
        self._pad_len = pad_len
        self._buffer = bytearray()
        self._mark: bytes | None = None
        self.reply: bytes | None = None
        self.keys: SessionKeys | None = None

    def feed(self, data: bytes) -> bool:
        """Consume client bytes; False while incomplete, True once `reply`/`keys` are set.

        Raises HandshakeError for anything that is not a valid, fresh client handshake. Bytes
        after the client's MAC are invalid too: a client waits for the reply before sending.
        """
        if self.reply is not None:
            raise RuntimeError("the handshake is already complete")
        self._buffer += data
        buf = self._buffer
        if len(buf) > MAX_HANDSHAKE:
            raise HandshakeError("longer than any client handshake")
        if len(buf) < CLIENT_MIN_LEN:
            return False
        server = self._keys.identity
        if self._mark is None:
            self._mark = _hmac(server.mac_key, bytes(buf[:REPR_LEN]))[:MARK_LEN]
        pos = buf.find(self._mark, REPR_LEN + CLIENT_MIN_PAD, REPR_LEN + CLIENT_MAX_PAD + MARK_LEN)
        if pos < 0:
            return False  # the mark may still arrive (or the length check above fails later)
        end = pos + MARK_LEN + MAC_LEN
        if len(buf) < end:
            return False
        if len(buf) > end:
            raise HandshakeError("data after the client handshake")
        mac = bytes(buf[pos + MARK_LEN : end])
        body = bytes(buf[: pos + MARK_LEN])
        now = self._clock()
        hour = epoch_hour(now)
        for epoch in (hour, hour - 1, hour + 1):
            epoch_text = str(epoch).encode()
            if hmac.compare_digest(_hmac(server.mac_key, body, epoch_text)[:MAC_LEN], mac):
                break
        else:
            raise HandshakeError("the client handshake MAC does not verify")
        if not self._replay.check_and_add(mac, now):
            raise HandshakeError("replayed client handshake")
        self._reply(bytes(buf[:REPR_LEN]), epoch_text)
        return True

    def _reply(self, x_rep: bytes, epoch_text: bytes) -> None:
        keys = self._keys
        server = keys.identity
        x = decode_representative(x_rep)
        ephemeral = generate_keypair()
        key_seed, auth = _ntor(
            _x25519(ephemeral.secret, x),
            _x25519(keys.private_key, x),
            server,
            x,
            ephemeral.public,
        )
        pad_len = self._pad_len
        if pad_len is None:
            pad_len = SERVER_MIN_PAD + int.from_bytes(os.urandom(4), "big") % (
                SERVER_MAX_PAD - SERVER_MIN_PAD + 1
            )
        rep = ephemeral.representative
        mark = _hmac(server.mac_key, rep)[:MARK_LEN]
        body = rep + auth + os.urandom(pad_len) + mark
        self.reply = body + _hmac(server.mac_key, body, epoch_text)[:MAC_LEN]
        self.keys = _session_keys(key_seed, client=False)
        self._buffer = bytearray()
