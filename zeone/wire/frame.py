"""The wire frame codec: `magic 0x5A45 | version u8 | type u8 | length u32 BE | CBOR payload`.

Sans-IO: `encode_frame` turns a `Frame` into bytes and `FrameDecoder.feed` turns whatever bytes
arrived into complete frames, so the same code runs over TCP, the memory network and in fuzzers.

Everything a peer sends is hostile. The decoder checks the header (magic, version, type, declared
length) before it buffers a payload, so a peer cannot make us hold more than `max_frame_size` bytes,
and it decodes CBOR into plain data only (int, float, str, bytes, bool, None, list, dict with str or
bytes keys): CBOR tags, which cbor2 would turn into datetimes, regexes, Decimals, shared references
and other objects, are rejected, as are simple values, indefinite lengths, duplicate map keys and
nesting deeper than `MAX_NESTING_DEPTH`. Map keys are limited to str and bytes because their hashes
are randomised; int keys would let a peer send a map of colliding hashes that takes quadratic time
to build. The encoder enforces the same rules, so whatever we send a peer also accepts.
"""

from __future__ import annotations

import enum
import gc
import io
import struct
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, NoReturn

import attrs
import cbor2

from zeone.errors import ProtocolError

MAGIC = 0x5A45
"""The first two bytes of every frame ("ZE")."""

WIRE_VERSION = 1
"""The frame format version this code speaks."""

HEADER = struct.Struct(">HBBI")
HEADER_SIZE = HEADER.size  # 8

DEFAULT_MAX_FRAME_SIZE = 4 * 1024 * 1024
"""Largest payload (the header's length field) accepted or produced by default."""

MAX_NESTING_DEPTH = 32
"""Deepest allowed CBOR nesting: the number of containers around the innermost item."""

_U32_MAX = 0xFFFFFFFF
_GC_PAUSE_OVER = 16 * 1024
_INT_MIN = -(2**64)  # CBOR major type 1 reaches -2**64; anything beyond needs a bignum tag
_INT_MAX = 2**64 - 1


class MessageType(enum.IntEnum):
    """Frame type codes. 0x01-0x52 follow seed 003; 0x60-0x64 are stream multiplexing."""

    PING = 0x01
    PONG = 0x02
    DISCOVER = 0x03
    PEER_LIST = 0x04
    DHT_FIND_NODE = 0x10
    DHT_FIND_NODE_RESP = 0x11
    DHT_FIND_VALUE = 0x12
    DHT_FIND_VALUE_RESP = 0x13
    DHT_STORE = 0x14
    DHT_STORE_RESP = 0x15
    SERVICE_REQUEST = 0x20
    SERVICE_RESPONSE = 0x21
    VPN_CONNECT = 0x30
    VPN_DATA = 0x31
    VPN_CLOSE = 0x32
    CACHE_REQUEST = 0x40
    CACHE_RESPONSE = 0x41
    IOU = 0x50
    BALANCE_CLAIM = 0x51
    BALANCE_ACK = 0x52
    STREAM_OPEN = 0x60
    STREAM_DATA = 0x61
    STREAM_WINDOW = 0x62
    STREAM_CLOSE = 0x63
    """Half-close: the sender will send no more data on the stream."""
    STREAM_RESET = 0x64
    GOAWAY = 0x7F


_TYPES_BY_CODE: dict[int, MessageType] = {t.value: t for t in MessageType}


def _check_version(_instance: object, _attribute: attrs.Attribute, value: int) -> None:
    if type(value) is not int or not 0 <= value <= 0xFF:
        raise ValueError(f"a frame version is an integer 0-255, got {value!r}")


@attrs.frozen
class Frame:
    """One protocol message. `payload` is plain CBOR-able data (see the module docstring)."""

    type: MessageType = attrs.field(converter=MessageType)
    payload: Any
    version: int = attrs.field(default=WIRE_VERSION, validator=_check_version)


# -- CBOR -----------------------------------------------------------------------------------------

# Tags cbor2 decodes by itself (found by probing cbor2 6.x). Overriding them makes every tag reach a
# rejecting callback; the plain-type check after decoding catches any tag a later cbor2 adds.
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261)
_BUILTIN_TAGS += (1004, 43000, 55799)


class _TagRejected(Exception):
    pass


def _reject_tag(*_args: object) -> NoReturn:
    raise _TagRejected


_REJECT_ALL_TAGS = dict.fromkeys(_BUILTIN_TAGS, _reject_tag)
_LEAF_TYPES = frozenset({int, float, str, bytes, bool, type(None)})


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while a payload's objects are created.

    Building millions of small containers otherwise triggers a collection every few hundred
    allocations, each traversing the young objects again: decoding 4 MiB of empty arrays took 2.3 s
    with the GC running and 0.3 s without. The objects are acyclic, so nothing is leaked.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def decode_cbor(data: bytes, *, max_depth: int = MAX_NESTING_DEPTH) -> Any:
    """Decode exactly one CBOR item from untrusted `data` into plain data.

    Raises ProtocolError for anything else: malformed CBOR, trailing bytes, tags, simple values,
    indefinite lengths, duplicate or non-str/bytes map keys, nesting deeper than `max_depth`.
    """
    stream = io.BytesIO(data)
    # Small payloads cannot allocate enough containers for the GC to matter; skip the toggling.
    with _gc_paused() if len(data) > _GC_PAUSE_OVER else nullcontext():
        try:
            value = cbor2.CBORDecoder(
                stream,
                tag_hook=_reject_tag,
                semantic_decoders=_REJECT_ALL_TAGS,
                max_depth=max_depth,
                allow_indefinite=False,
                allow_duplicate_keys=False,
                strict_hashable_types=True,
            ).decode()
        except Exception as exc:  # cbor2 raises several types on hostile input; all mean the same
            raise ProtocolError(f"undecodable CBOR payload: {exc}") from None
        if stream.tell() != len(data):
            raise ProtocolError(
                f"undecodable CBOR payload: {len(data) - stream.tell()} bytes after the item"
            )
        _check_plain(value)
    return value


def _check_plain(value: Any) -> None:
    """Raise ProtocolError unless `value` is made only of plain types (cbor2 checked map keys).

    A plain loop: on hostile payloads of millions of tiny containers it costs about as much as the
    decoding itself, less than variants that build a set of item types per container.
    """
    stack = [value]
    pop, push = stack.pop, stack.append
    leaf_types = _LEAF_TYPES
    while stack:
        node = pop()
        kind = type(node)
        if kind is dict:
            node = node.values()
        elif kind is not list:
            if kind in leaf_types:  # only the top-level value can get here
                continue
            raise ProtocolError(f"CBOR payload contains a value of type {kind.__name__}")
        for item in node:
            kind = type(item)
            if kind in leaf_types:
                continue
            if kind is list or kind is dict:
                if item:
                    push(item)
            else:
                raise ProtocolError(f"CBOR payload contains a value of type {kind.__name__}")


def encode_cbor(value: Any, *, max_depth: int = MAX_NESTING_DEPTH) -> bytes:
    """Canonical CBOR of `value`, refusing anything `decode_cbor` would reject at the other end.

    Tuples are encoded as arrays (they decode as lists). Raises TypeError or ValueError naming the
    offending value, because sending it would only get the connection closed by the peer.
    """
    _check_encodable(value, max_depth)
    return cbor2.dumps(value, canonical=True)


_ENCODABLE_LEAVES = frozenset({type(None), bool, float, str, bytes, bytearray})
_CONTAINERS = (list, tuple, dict)


def _check_encodable(value: Any, max_depth: int, depth: int = 0) -> None:
    """A loop over an explicit stack with exact-type fast paths: every outbound frame pays for
    this check, and the recursive version cost as much as the CBOR encoding itself."""
    stack = [(value, depth)]
    pop, push, leaves = stack.pop, stack.append, _ENCODABLE_LEAVES
    while stack:
        node, level = pop()
        kind = type(node)
        if kind in leaves:
            continue
        if kind is int:
            if not _INT_MIN <= node <= _INT_MAX:
                raise ValueError(f"integer {node} does not fit in CBOR without a bignum tag")
            continue
        if kind not in _CONTAINERS:
            _check_encodable_subclass(node, max_depth, level)
            continue
        if level >= max_depth and node:
            raise ValueError(f"payload is nested deeper than {max_depth} levels")
        if kind is dict:
            for key in node:
                if type(key) is not str and not isinstance(key, (str, bytes)):
                    raise TypeError(f"map keys must be str or bytes, got {type(key).__name__}")
            node = node.values()
        for item in node:
            if type(item) in leaves:
                continue
            push((item, level + 1))


def _check_encodable_subclass(value: Any, max_depth: int, depth: int) -> None:
    """Subclasses of the plain types (an IntEnum, a str subclass) are as encodable as their base."""
    if isinstance(value, (bool, float, str, bytes, bytearray)):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValueError(f"integer {value} does not fit in CBOR without a bignum tag")
        return
    if isinstance(value, _CONTAINERS):
        _check_encodable(type(value).__mro__[-2](value), max_depth, depth)
        return
    raise TypeError(f"cannot send a {type(value).__name__} in a frame payload")


# -- frames ---------------------------------------------------------------------------------------


def encode_frame(frame: Frame, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """The frame's bytes on the wire. Raises ValueError/TypeError for a payload a peer would refuse.

    `max_frame_size` bounds the payload as the receiving `FrameDecoder` does, so an oversized
    message fails here, where it is a bug, rather than at the peer, where it kills the connection.
    """
    payload = encode_cbor(frame.payload)
    if len(payload) > min(max_frame_size, _U32_MAX):
        raise ValueError(
            f"frame of {len(payload)} bytes exceeds the {min(max_frame_size, _U32_MAX)}-byte limit"
        )
    return HEADER.pack(MAGIC, frame.version, frame.type, len(payload)) + payload


class FrameDecoder:
    """Incremental, sans-IO frame decoder for one connection.

    Feed it bytes as they arrive; it returns the frames completed so far and keeps the rest. The
    first violation raises ProtocolError and kills the decoder for good (the byte stream can no
    longer be trusted to be aligned on frames), so every later `feed` raises too.
    """

    def __init__(
        self,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        supported_versions: frozenset[int] = frozenset({WIRE_VERSION}),
        *,
        max_depth: int = MAX_NESTING_DEPTH,
    ) -> None:
        if not 0 < max_frame_size <= _U32_MAX:
            raise ValueError(f"max_frame_size must be 1-{_U32_MAX}, got {max_frame_size}")
        if not supported_versions:
            raise ValueError("supported_versions must not be empty")
        self.max_frame_size = max_frame_size
        self.supported_versions = frozenset(supported_versions)
        self.max_depth = max_depth
        # bytearray: appending and deleting from the front are both amortised O(1) in CPython.
        self._buffer = bytearray()
        # The validated header of the frame whose payload is still arriving.
        self._pending: tuple[int, MessageType, int] | None = None
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames (bounded by header + max_frame_size)."""
        return len(self._buffer) + (HEADER_SIZE if self._pending else 0)

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return every frame they complete, in order."""
        if self._error is not None:
            raise ProtocolError(f"frame decoder is dead after an earlier error: {self._error}")
        try:
            return self._feed(data)
        except ProtocolError as exc:
            self._error = exc
            self._buffer = bytearray()
            raise

    def _feed(self, data: bytes) -> list[Frame]:
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        while True:
            if self._pending is None:
                if len(buffer) < HEADER_SIZE:
                    self._check_partial_header(buffer)
                    return frames
                magic, version, code, length = HEADER.unpack_from(buffer)
                self._pending = self._check_header(magic, version, code, length)
                del buffer[:HEADER_SIZE]
            version, message_type, length = self._pending
            if len(buffer) < length:
                return frames
            with memoryview(buffer) as view:
                payload = bytes(view[:length])
            del buffer[:length]
            self._pending = None
            value = decode_cbor(payload, max_depth=self.max_depth)
            frames.append(Frame(message_type, value, version))

    def _check_header(
        self, magic: int, version: int, code: int, length: int
    ) -> tuple[int, MessageType, int]:
        if magic != MAGIC:
            raise ProtocolError(f"bad magic 0x{magic:04x} (expected 0x{MAGIC:04x})")
        if version not in self.supported_versions:
            raise self._unsupported_version(version)
        message_type = _TYPES_BY_CODE.get(code)
        if message_type is None:
            raise ProtocolError(f"unknown message type 0x{code:02x}")
        if length > self.max_frame_size:
            raise ProtocolError(
                f"frame of {length} bytes exceeds the {self.max_frame_size}-byte limit"
            )
        return version, message_type, length

    def _unsupported_version(self, version: int) -> ProtocolError:
        supported = sorted(self.supported_versions)
        return ProtocolError(f"unsupported frame version {version} (supported: {supported})")

    def _check_partial_header(self, head: bytearray) -> None:
        """Reject a bad header as soon as its first bytes arrive (e.g. an HTTP request)."""
        if len(head) >= 2 and (magic := int.from_bytes(head[:2], "big")) != MAGIC:
            raise ProtocolError(f"bad magic 0x{magic:04x} (expected 0x{MAGIC:04x})")
        if len(head) >= 3 and head[2] not in self.supported_versions:
            raise self._unsupported_version(head[2])
        if len(head) >= 4 and head[3] not in _TYPES_BY_CODE:
            raise ProtocolError(f"unknown message type 0x{head[3]:02x}")
