"""Client authentication hidden in the ClientHello, replay filtering and the session key schedule.

The client's x25519 key share is a real ephemeral key E. With the server's static key S (known
out of band, like a bridge line) both sides compute K = HKDF(X25519(e, S), salt = random[0:20]).
The 32-byte legacy_session_id -- random in every TLS 1.3 hello -- becomes
AES-128-GCM(K, nonce = random[20:32], version|time|8 random bytes, aad = the whole hello with the
session id zeroed): 16 bytes of ciphertext + 16 of tag, indistinguishable from random to anyone
without S, and binding every other byte of the hello. A fresh, unseen token is the only way to
reach ZEONE; everything else is forwarded to the cover site.

The session keys mix the server's ephemeral share F from the ServerHello with S, so only the holder
of S can produce records the client accepts:
  keys = HKDF(X25519(f, E) || X25519(s, E), salt = SHA-256(ClientHello || ServerHello)).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import os
import secrets
import struct
import time
from pathlib import Path

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from zeone_mimic import wire

TOKEN_VERSION = 1
AUTH_INFO = b"zeone-mimic v1 client token"
KEYS_INFO = b"zeone-mimic v1 record keys"
DEFAULT_WINDOW = 120.0


class KeyFormatError(ValueError):
    """A server key (file or address parameter) that is not what it should be."""


def encode_public_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode()


def decode_public_key(text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise KeyFormatError(f"server key {text!r} is not base64url") from None
    if len(raw) != 32:
        raise KeyFormatError(f"server key {text!r} decodes to {len(raw)} bytes, expected 32")
    return raw


@attrs.frozen
class ServerKey:
    """The server's static x25519 key; its public half goes in `mimic://...?pk=`."""

    private: X25519PrivateKey = attrs.field(repr=False)

    @classmethod
    def generate(cls) -> ServerKey:
        return cls(X25519PrivateKey.generate())

    @property
    def public(self) -> bytes:
        return self.private.public_key().public_bytes_raw()

    @property
    def public_text(self) -> str:
        return encode_public_key(self.public)

    @classmethod
    def load_or_create(cls, path: Path) -> ServerKey:
        """Read a 32-byte raw private key, or create one (mode 0600) if the file is missing."""
        if path.exists():
            raw = path.read_bytes()
            if len(raw) != 32:
                raise KeyFormatError(f"{path}: a mimic server key is 32 raw bytes, got {len(raw)}")
            return cls(X25519PrivateKey.from_private_bytes(raw))
        key = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private.private_bytes_raw())
        return key


def _hkdf(secret: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def _aad(hello_message: bytes) -> bytes:
    start = wire.SESSION_ID_OFFSET
    return hello_message[:start] + bytes(32) + hello_message[start + 32 :]


def seal_token(
    hello_message: bytes, shared: bytes, random: bytes, now: float | None = None
) -> bytes:
    """The 32-byte session id for a hello whose session id bytes are (still) placeholders."""
    key = _hkdf(shared, random[:20], AUTH_INFO, 16)
    plaintext = struct.pack(">B3xI", TOKEN_VERSION, int(time.time() if now is None else now))
    plaintext += secrets.token_bytes(8)
    return AESGCM(key).encrypt(random[20:32], plaintext, _aad(hello_message))


@attrs.frozen
class Token:
    timestamp: int


def open_token(hello_message: bytes, hello: wire.ClientHello, server: ServerKey) -> Token | None:
    """The token in `hello`, or None if it carries none for this server (no reason given)."""
    if len(hello.session_id) != 32:
        return None
    shares = hello.extension(wire.EXT_KEY_SHARE)
    if shares is None:
        return None
    try:
        x25519 = [k for g, k in wire.parse_key_shares(shares) if g == wire.GROUP_X25519]
    except wire.TlsParseError:
        return None
    if len(x25519) != 1 or len(x25519[0]) != 32:
        return None
    try:
        shared = server.private.exchange(X25519PublicKey.from_public_bytes(x25519[0]))
    except ValueError:  # low-order point: all-zero shared secret
        return None
    key = _hkdf(shared, hello.random[:20], AUTH_INFO, 16)
    try:
        plaintext = AESGCM(key).decrypt(hello.random[20:32], hello.session_id, _aad(hello_message))
    except InvalidTag:
        return None
    version, timestamp = struct.unpack(">B3xI", plaintext[:8])
    if version != TOKEN_VERSION:
        return None
    return Token(timestamp)


class ReplayFilter:
    """Remembers accepted hellos for as long as their timestamps stay acceptable.

    A token is accepted only if its timestamp is within `window` seconds of our clock, not older
    than the filter itself, and its ClientHello.random was not seen before; entries expire after
    they can no longer pass the time check (2 x window), so memory is bounded by the accept rate
    x 2 x window. At `capacity` entries, new hellos are refused (sent to the cover site) rather
    than old ones forgotten: forgetting early would reopen replays.
    """

    def __init__(
        self,
        window: float = DEFAULT_WINDOW,
        capacity: int = 1_000_000,
        not_before: float | None = None,
    ) -> None:
        self.window = window
        self.capacity = capacity
        # The filter lives in memory: tokens minted before it existed might have been accepted
        # by a previous process, so they are refused (clients retry with a fresh one).
        self.not_before = int(time.time() if not_before is None else not_before)
        self._seen: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(
        self, random: bytes, timestamp: float, now: float | None = None
    ) -> str | None:
        """None if fresh (and now remembered), else why it was refused."""
        now = time.time() if now is None else now
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[oldest]
        if abs(now - timestamp) > self.window or timestamp < self.not_before:
            return "stale"
        digest = hashlib.sha256(random).digest()[:16]
        if digest in self._seen:
            return "replay"
        if len(self._seen) >= self.capacity:
            return "full"
        self._seen[digest] = now + 2 * self.window
        return None


#: Key length per TLS 1.3 suite; all three use 12-byte IVs and 16-byte tags.
KEY_LENGTHS = {0x1301: 16, 0x1302: 32, 0x1303: 32}


@attrs.frozen
class SessionKeys:
    cipher_suite: int
    client_key: bytes = attrs.field(repr=False)
    client_iv: bytes = attrs.field(repr=False)
    server_key: bytes = attrs.field(repr=False)
    server_iv: bytes = attrs.field(repr=False)


def session_keys(
    ephemeral_shared: bytes, static_shared: bytes, transcript: bytes, cipher_suite: int = 0x1301
) -> SessionKeys:
    n = KEY_LENGTHS[cipher_suite]
    okm = _hkdf(
        ephemeral_shared + static_shared,
        hashlib.sha256(transcript).digest(),
        KEYS_INFO + cipher_suite.to_bytes(2, "big"),
        2 * n + 24,
    )
    return SessionKeys(
        cipher_suite, okm[:n], okm[n : n + 12], okm[n + 12 : 2 * n + 12], okm[2 * n + 12 :]
    )
