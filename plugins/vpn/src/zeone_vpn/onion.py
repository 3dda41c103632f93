"""The end-to-end layer of two-hop flows (entry -> relay -> exit).

Every ZEONE link is already Noise-encrypted hop by hop; this adds a layer between the entry and
the exit that the relay cannot read, so the relay learns only its neighbours (entry and exit)
and the exit learns only its neighbour (the relay) and the destination.

Key agreement: the exit publishes an X25519 *onion key* in its signed ``service:vpn_exit``
record (fresh each run). The entry sends a fresh ephemeral public key as the first 32 bytes of
the stream; both sides derive two ChaCha20-Poly1305 keys (one per direction) with BLAKE2b over
the X25519 shared secret and both public keys. A flow is then a sequence of records
``u32 BE length | AEAD(counter nonce, plaintext <= 64 KiB)``. A zero-length plaintext is the
end-of-data marker: the relay can cut a flow but cannot forge a clean end (an EOF without the
marker is a broken stream), reorder, replay or alter records.

`RecordCipher` and `RecordReader` are the sans-IO core; `OnionStream` wraps a stream in them.
"""

from __future__ import annotations

import struct

import nacl.bindings as sodium
import nacl.hash
import nacl.public
import trio

KEY_BYTES = 32
MAX_PLAINTEXT = 64 * 1024
TAG_BYTES = 16
MAX_RECORD = MAX_PLAINTEXT + TAG_BYTES
_U32 = struct.Struct(">I")
_PERSON = b"zeone-vpn-onion"


class OnionError(Exception):
    """A record failed authentication or was malformed: the stream is broken."""


def derive_keys(shared: bytes, entry_public: bytes, exit_public: bytes) -> tuple[bytes, bytes]:
    """(entry -> exit key, exit -> entry key)."""
    material = nacl.hash.blake2b(
        shared + entry_public + exit_public,
        digest_size=64,
        person=_PERSON[:16].ljust(16, b"\0"),
        encoder=nacl.encoding.RawEncoder,
    )
    return material[:32], material[32:]


def entry_handshake(exit_onion_key: bytes) -> tuple[bytes, bytes, bytes]:
    """(ephemeral public key to send, send key, receive key) for the entry."""
    ephemeral = nacl.public.PrivateKey.generate()
    public = bytes(ephemeral.public_key)
    shared = sodium.crypto_scalarmult(bytes(ephemeral), exit_onion_key)
    forward, backward = derive_keys(shared, public, exit_onion_key)
    return public, forward, backward


def exit_handshake(onion_key: nacl.public.PrivateKey, entry_public: bytes) -> tuple[bytes, bytes]:
    """(send key, receive key) for the exit, from the entry's ephemeral key."""
    if len(entry_public) != KEY_BYTES:
        raise OnionError("bad ephemeral key")
    try:
        shared = sodium.crypto_scalarmult(bytes(onion_key), entry_public)
    except Exception as exc:  # libsodium refuses low-order points
        raise OnionError(f"bad ephemeral key: {exc}") from None
    forward, backward = derive_keys(shared, entry_public, bytes(onion_key.public_key))
    return backward, forward


class RecordCipher:
    """Seals plaintext into records with a counter nonce."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.counter = 0

    def seal(self, plaintext: bytes | memoryview) -> bytes:
        nonce = b"\0\0\0\0" + self.counter.to_bytes(8, "big")
        self.counter += 1
        sealed = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(bytes(plaintext), None, nonce,
                                                                  self.key)  # fmt: skip
        return _U32.pack(len(sealed)) + sealed

    def seal_all(self, data: bytes | bytearray | memoryview) -> bytes:
        view = memoryview(data)
        return b"".join(
            self.seal(view[i : i + MAX_PLAINTEXT]) for i in range(0, len(view), MAX_PLAINTEXT)
        )


class RecordReader:
    """Feeds bytes, returns opened plaintexts (b"" is the end marker)."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.counter = 0
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out = []
        buf = self._buffer
        while len(buf) >= 4:
            (length,) = _U32.unpack_from(buf)
            if not TAG_BYTES <= length <= MAX_RECORD:
                raise OnionError(f"record length {length} out of range")
            if len(buf) < 4 + length:
                break
            nonce = b"\0\0\0\0" + self.counter.to_bytes(8, "big")
            try:
                plain = sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
                    bytes(buf[4 : 4 + length]), None, nonce, self.key
                )
            except Exception:
                raise OnionError("record failed authentication") from None
            self.counter += 1
            del buf[: 4 + length]
            out.append(plain)
        return out

    @property
    def pending(self) -> int:
        return len(self._buffer)


class OnionStream(trio.abc.HalfCloseableStream):
    """A HalfCloseableStream of plaintext over a stream of records."""

    def __init__(self, inner: trio.abc.HalfCloseableStream, send_key: bytes, receive_key: bytes):
        self.inner = inner
        self._sealer = RecordCipher(send_key)
        self._reader = RecordReader(receive_key)
        self._ready: list[bytes] = []
        self._eof = False

    @property
    def reset_code(self) -> str | None:
        return getattr(self.inner, "reset_code", None)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(self._sealer.seal_all(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_all(self._sealer.seal(b""))
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while not self._ready:
            if self._eof:
                await trio.lowlevel.checkpoint()
                return b""
            data = await self.inner.receive_some()
            if not data:
                raise trio.BrokenResourceError("the onion stream ended without its end marker")
            try:
                records = self._reader.feed(data)
            except OnionError as exc:
                raise trio.BrokenResourceError(str(exc)) from None
            for record in records:
                if not record:
                    self._eof = True
                    break
                self._ready.append(record)
        data = self._ready[0]
        if max_bytes is not None and len(data) > max_bytes:
            self._ready[0] = data[max_bytes:]
            return data[:max_bytes]
        self._ready.pop(0)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()

    def reset(self, code: str = "reset") -> None:
        reset = getattr(self.inner, "reset", None)
        if reset is not None:
            reset(code)
