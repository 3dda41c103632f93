"""Fast WebSocket masking and data-frame encoding, the hot path of the `ws` transport.

Every client frame is XOR-masked with a fresh 4-byte key (RFC 6455 section 5.3); browsers do it,
so we must too or the frames stand out. wsproto masks with four strided `bytes.translate` passes
and copies a message five times on the way out, which caps a Noise channel at about a third of
plain TCP. Here a binary frame is built with one copy, and masking uses the SIMD `apply_mask` of
the `websockets` package (C, ~10 GB/s) with the strided-translate trick as a pure-Python fallback.
`install()` gives wsproto's frame decoder the same masker, so a server also unmasks fast.
"""

from __future__ import annotations

import os
import struct

import wsproto.frame_protocol as _frames

#: wsproto's own masker, kept for comparison (benchmarks, tests) after `install()`.
WSPROTO_MASKER = _frames.XorMaskerSimple

_XOR_TABLES = [bytes(b ^ k for b in range(256)) for k in range(256)]


def _apply_mask_python(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    out = bytearray(data)
    for offset in range(4):
        out[offset::4] = out[offset::4].translate(_XOR_TABLES[mask[offset]])
    return bytes(out)


try:  # the C implementation ships in websockets' binary wheels
    from websockets.speedups import apply_mask as _apply_mask_c
except ImportError:  # pragma: no cover - a source build without a compiler
    _apply_mask_c = None


def apply_mask(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """`data` XOR the repeated 4-byte `mask`."""
    if _apply_mask_c is not None:
        return _apply_mask_c(data, mask)
    return _apply_mask_python(data, mask)


ACCELERATED = _apply_mask_c is not None


def encode_binary_frame(payload: bytes | bytearray | memoryview, *, client: bool) -> bytes:
    """One final binary frame (FIN, opcode 2); masked with a fresh random key for a client."""
    length = len(payload)
    if length <= 125:
        header = struct.pack("!BB", 0x82, length | (0x80 if client else 0))
    elif length <= 0xFFFF:
        header = struct.pack("!BBH", 0x82, 126 | (0x80 if client else 0), length)
    else:
        header = struct.pack("!BBQ", 0x82, 127 | (0x80 if client else 0), length)
    if not client:
        return b"".join((header, payload))
    key = os.urandom(4)
    return b"".join((header, key, apply_mask(payload, key)))


class FastXorMasker(_frames.XorMaskerSimple):
    """wsproto's masker interface (`process` continues the key across calls), accelerated."""

    def __init__(self, masking_key: bytes | bytearray) -> None:
        self._masking_key = bytes(masking_key)

    def process(self, data: bytes | bytearray) -> bytes:  # type: ignore[override]
        # bytes, not bytearray: wsproto only concatenates and calls bytes() on it, and bytes()
        # of a bytes object is free.
        if not data:
            return b""
        out = apply_mask(data, self._masking_key)
        rotation = len(data) % 4
        self._masking_key = self._masking_key[rotation:] + self._masking_key[:rotation]
        return out


def install() -> None:
    """Make wsproto's decoder use FastXorMasker (same results; only if it is accelerated).

    wsproto looks the masker class up by module-level name when it meets a masked frame, so this
    is the one hook it offers; it changes speed, not behaviour, for every wsproto user in the
    process (hypercorn's WebSocket support included).
    """
    if ACCELERATED and _frames.XorMaskerSimple.__module__ == "wsproto.frame_protocol":
        _frames.XorMaskerSimple = FastXorMasker  # type: ignore[misc]
