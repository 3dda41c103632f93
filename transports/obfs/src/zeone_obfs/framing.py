"""Obfs frames, sans-IO: AEAD-sealed payloads with masked headers and shaped padding.

A frame on the wire is ``H' | C``. H is five bytes, the ciphertext length (3 bytes) and the
padding length (2 bytes), XORed with a mask from a keyed BLAKE2b stream (the role SipHash-OFB
plays in obfs4) and authenticated as the AEAD's associated data. C is AEGIS-128L (libsodium)
over ``payload | zero padding`` with a nonce made of a per-direction prefix and a 64-bit frame
counter. Nothing on the wire is in the clear: an observer sees uniform bytes whose only
structure is the sizes and timing of TCP segments.

Each write (`FrameEncoder.encode`) is padded so that its length modulo the segment size is a
draw from the server's `LengthDistribution`: the size of the last TCP segment of each burst then
follows a per-server, random-looking distribution instead of the sizes of the Noise messages
inside. The padding rides in the last frame of the write.

The data path calls libsodium through pynacl's cffi module (`nacl._sodium`) rather than
`nacl.bindings`, whose functions accept only `bytes` and return new objects: sealing straight
into the outgoing buffer and opening straight from the received one saves two copies a frame.
AEGIS-128L runs at several GB/s with AES instructions, so the extra layer costs little next to
the Noise channel it carries.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random

import attrs
from nacl._sodium import ffi, lib

# libsodium picks its AES-NI implementation of AEGIS in sodium_init (pynacl calls it when
# nacl.bindings is imported); without it AEGIS runs a hundred times slower in software.
if lib.sodium_init() < 0:  # pragma: no cover - libsodium cannot fail here in practice
    raise ImportError("libsodium failed to initialise")
MSS = 1448  # the payload of a full TCP segment on a 1500-byte MTU path with timestamps
TAG_LEN = int(lib.crypto_aead_aegis128l_abytes())
KEY_LEN = int(lib.crypto_aead_aegis128l_keybytes())
NONCE_LEN = int(lib.crypto_aead_aegis128l_npubbytes())
HEADER_LEN = 5  # ciphertext length (3) + padding length (2), masked
MAX_PAYLOAD = 128 * 1024
MAX_CIPHERTEXT = MAX_PAYLOAD + MSS + TAG_LEN
FRAME_OVERHEAD = HEADER_LEN + TAG_LEN
_MASKS_PER_BLOCK = 12
_ZEROS = bytes(MSS)


class FrameError(Exception):
    """The peer sent a frame that does not decrypt or parse: the connection must be dropped."""


class _HeaderMasks:
    """The 40-bit masks of one direction's frame headers: BLAKE2b(key, block number)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._block = 0
        self._masks: list[int] = []
        self._next = 0

    def peek(self) -> int:
        if self._next == len(self._masks):
            digest = hashlib.blake2b(
                self._block.to_bytes(8, "big"),
                key=self._key,
                digest_size=HEADER_LEN * _MASKS_PER_BLOCK,
            ).digest()
            self._masks = [
                int.from_bytes(digest[i : i + HEADER_LEN], "big")
                for i in range(0, len(digest), HEADER_LEN)
            ]
            self._block += 1
            self._next = 0
        return self._masks[self._next]

    def next(self) -> int:
        mask = self.peek()
        self._next += 1
        return mask


@attrs.frozen
class LengthDistribution:
    """A per-server weighted distribution over minimum..maximum-1, derived from a seed.

    As in obfs4, every server shapes its traffic differently (so there is no one length profile
    to fingerprint) but consistently (so its connections look alike). `sample` takes the
    connection's own random generator.
    """

    values: tuple[int, ...]
    cumulative: tuple[float, ...]

    @classmethod
    def from_seed(cls, seed: bytes, maximum: int, *, minimum: int = 0) -> LengthDistribution:
        if maximum <= minimum:
            raise ValueError("the distribution needs maximum > minimum")
        rng = random.Random(hashlib.blake2b(seed, digest_size=32).digest())
        count = rng.randint(1, min(100, maximum - minimum))
        values = sorted(rng.sample(range(minimum, maximum), count))
        weights = [rng.random() + 1e-9 for _ in values]
        return cls(tuple(values), tuple(itertools.accumulate(weights)))

    def sample(self, rng: random.Random) -> int:
        point = rng.random() * self.cumulative[-1]
        return self.values[min(bisect.bisect_right(self.cumulative, point), len(self.values) - 1)]


class _Direction:
    def __init__(self, key: bytes, nonce_prefix: bytes, header_key: bytes) -> None:
        if len(key) != KEY_LEN or len(nonce_prefix) != NONCE_LEN - 8:
            raise ValueError("bad frame key or nonce prefix length")
        self._key = key
        self._prefix = nonce_prefix
        self._counter = 0
        self._masks = _HeaderMasks(header_key)

    def _nonce(self) -> bytes:
        nonce = self._prefix + self._counter.to_bytes(8, "big")
        self._counter += 1
        return nonce


class FrameEncoder(_Direction):
    """Turns writes into padded frames for one direction."""

    def __init__(self, key: bytes, nonce_prefix: bytes, header_key: bytes) -> None:
        super().__init__(key, nonce_prefix, header_key)
        self._scratch = bytearray()

    def encode(
        self,
        data: bytes | bytearray | memoryview,
        target: int | None = None,
        *,
        scratch: bool = False,
    ) -> bytearray | memoryview:
        """Frames carrying `data`; with `target`, padded so that the total is target mod MSS.

        With `scratch`, the frames are built in a buffer this encoder reuses: the result is only
        valid until the next call (the stream sends it before encoding more), saving an
        allocation a write.
        """
        view = memoryview(data).cast("B")
        sizes = [min(MAX_PAYLOAD, len(view) - i) for i in range(0, len(view), MAX_PAYLOAD)]
        if not sizes:
            sizes = [0]
        pad = 0
        if target is not None:
            pad = (target - len(view) - FRAME_OVERHEAD * len(sizes)) % MSS
        length = len(view) + pad + FRAME_OVERHEAD * len(sizes)
        if not scratch:
            wire = bytearray(length)
        else:
            if len(self._scratch) < length:
                self._scratch = bytearray(max(length, 2 * len(self._scratch)))
            wire = self._scratch
        out = ffi.from_buffer(wire)
        position = offset = 0
        last = len(sizes) - 1
        for index, size in enumerate(sizes):
            frame_pad = pad if index == last else 0
            clen = size + frame_pad + TAG_LEN
            header = ((clen << 16) | frame_pad).to_bytes(HEADER_LEN, "big")
            masked = int.from_bytes(header, "big") ^ self._masks.next()
            body = position + HEADER_LEN
            wire[position:body] = masked.to_bytes(HEADER_LEN, "big")
            if frame_pad:
                # payload | zeros assembled in place, then sealed in place (libsodium allows it)
                wire[body : body + size] = view[offset : offset + size]
                wire[body + size : body + size + frame_pad] = _ZEROS[:frame_pad]
                message = out + body
            else:
                message = ffi.from_buffer(view[offset : offset + size])
            lib.crypto_aead_aegis128l_encrypt(
                out + body,
                ffi.NULL,
                message,
                size + frame_pad,
                header,
                HEADER_LEN,
                ffi.NULL,
                self._nonce(),
                self._key,
            )
            position = body + clen
            offset += size
        return memoryview(wire)[:length] if scratch else wire


class FrameDecoder(_Direction):
    """Turns received bytes back into payloads for one direction."""

    def __init__(self, key: bytes, nonce_prefix: bytes, header_key: bytes) -> None:
        super().__init__(key, nonce_prefix, header_key)
        self._buffer = bytearray()  # an incomplete header or frame

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back (nonzero at EOF means a truncated stream)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> list[bytearray]:
        """Payloads completed by `data` (possibly none); raises FrameError on a bad frame."""
        if self._buffer:
            self._buffer += data
            source: bytes | bytearray = self._buffer
        else:
            source = data
        out: list[bytearray] = []
        with memoryview(source) as view:
            size = len(view)
            offset = 0
            while size - offset >= HEADER_LEN:
                header_int = int.from_bytes(view[offset : offset + HEADER_LEN], "big")
                # The mask is only consumed once the whole frame is here.
                header_int ^= self._masks.peek()
                clen, pad = header_int >> 16, header_int & 0xFFFF
                if not TAG_LEN <= clen <= MAX_CIPHERTEXT or pad > clen - TAG_LEN:
                    raise FrameError(f"bad frame header (length {clen}, padding {pad})")
                end = offset + HEADER_LEN + clen
                if end > size:
                    break
                self._masks.next()
                plain = bytearray(clen - TAG_LEN)
                result = lib.crypto_aead_aegis128l_decrypt(
                    ffi.from_buffer(plain),
                    ffi.NULL,
                    ffi.NULL,
                    ffi.from_buffer(view[offset + HEADER_LEN : end]),
                    clen,
                    header_int.to_bytes(HEADER_LEN, "big"),
                    HEADER_LEN,
                    self._nonce(),
                    self._key,
                )
                if result != 0:
                    raise FrameError("a frame failed authentication")
                if pad:
                    del plain[len(plain) - pad :]
                if plain:
                    out.append(plain)
                offset = end
            if source is not self._buffer and offset < size:
                self._buffer = bytearray(view[offset:])
        if source is self._buffer and offset:
            del self._buffer[:offset]  # the view is released: the buffer may shrink now
        return out
