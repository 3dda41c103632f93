"""The wire protocol: frame codec, message types and safe decoding of untrusted CBOR.

Frames travel inside the Noise channel (`zeone.net.noise`); this package never does I/O.
"""

from zeone.wire.frame import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    MAGIC,
    MAX_NESTING_DEPTH,
    WIRE_VERSION,
    Frame,
    FrameDecoder,
    MessageType,
    decode_cbor,
    encode_cbor,
    encode_frame,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_NESTING_DEPTH",
    "WIRE_VERSION",
    "Frame",
    "FrameDecoder",
    "MessageType",
    "decode_cbor",
    "encode_cbor",
    "encode_frame",
]
