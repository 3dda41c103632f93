"""Typed payloads of the stream multiplexing frames (STREAM_OPEN 0x60 ... STREAM_RESET 0x64).

Same conventions as `zeone.wire.messages`: CBOR arrays, attrs validators, and ``from_wire`` turning
every mismatch into a ProtocolError that names the message. The rules that need state (windows,
id parity, which streams exist) live in `zeone.net.mux`.

    STREAM_OPEN    [stream_id, protocol, initial_window]
    STREAM_DATA    [stream_id, data]
    STREAM_WINDOW  [stream_id, increment]
    STREAM_CLOSE   [stream_id]            half-close: the sender will send no more data
    STREAM_RESET   [stream_id, code]      abort both directions

Stream ids are u32 and never 0: the dialer's are odd, the listener's even.
"""

from __future__ import annotations

from typing import Any

import attrs
from attrs import validators as v

from zeone.errors import ProtocolError
from zeone.wire.frame import MessageType
from zeone.wire.messages import WireMessage

U32_MAX = 2**32 - 1
MAX_STREAM_CHUNK = 1024 * 1024
"""Largest STREAM_DATA payload the wire accepts (a 4 MiB frame limit leaves ample room)."""
MAX_PROTOCOL = 128
MAX_RESET_CODE = 64


def _u32(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if type(value) is not int or not 0 <= value <= U32_MAX:  # type() also rejects bool
        raise ValueError(f"'{attribute.name}' must be an integer 0-{U32_MAX}, got {value!r:.40}")


def _stream_id(_instance: Any, _attribute: attrs.Attribute, value: Any) -> None:
    if type(value) is not int or not 0 < value <= U32_MAX:
        raise ValueError(f"'stream_id' must be an integer 1-{U32_MAX}, got {value!r:.40}")


def _data(_instance: Any, _attribute: attrs.Attribute, value: Any) -> None:
    if type(value) is not bytes or not 0 < len(value) <= MAX_STREAM_CHUNK:
        raise ValueError(
            f"'data' must be 1-{MAX_STREAM_CHUNK} bytes, got "
            + (f"{len(value)} bytes" if type(value) is bytes else type(value).__name__)
        )


def _increment(_instance: Any, _attribute: attrs.Attribute, value: Any) -> None:
    if type(value) is not int or not 0 < value <= U32_MAX:
        raise ValueError(f"'increment' must be an integer 1-{U32_MAX}, got {value!r:.40}")


@attrs.frozen
class StreamOpen(WireMessage):
    """Open stream ``stream_id`` for ``protocol``; the opener grants ``initial_window`` bytes."""

    TYPE = MessageType.STREAM_OPEN
    stream_id: int = attrs.field(validator=_stream_id)
    protocol: str = attrs.field(validator=[v.instance_of(str), v.max_len(MAX_PROTOCOL)])
    initial_window: int = attrs.field(validator=_u32)


@attrs.frozen
class StreamData(WireMessage):
    TYPE = MessageType.STREAM_DATA
    stream_id: int = attrs.field(validator=_stream_id)
    data: bytes = attrs.field(validator=_data, repr=lambda data: f"<{len(data)} bytes>")

    def to_wire(self) -> list[Any]:  # the hot path: skip attrs.astuple
        return [self.stream_id, self.data]


@attrs.frozen
class StreamWindow(WireMessage):
    """The receiver consumed data: the sender may send ``increment`` more bytes."""

    TYPE = MessageType.STREAM_WINDOW
    stream_id: int = attrs.field(validator=_stream_id)
    increment: int = attrs.field(validator=_increment)


@attrs.frozen
class StreamClose(WireMessage):
    """Half-close: the sender will send no more data on the stream."""

    TYPE = MessageType.STREAM_CLOSE
    stream_id: int = attrs.field(validator=_stream_id)


@attrs.frozen
class StreamReset(WireMessage):
    """Abort: the sender neither sends nor reads any more on this stream."""

    TYPE = MessageType.STREAM_RESET
    stream_id: int = attrs.field(validator=_stream_id)
    code: str = attrs.field(validator=[v.instance_of(str), v.max_len(MAX_RESET_CODE)])


StreamMessage = StreamOpen | StreamData | StreamWindow | StreamClose | StreamReset

STREAM_MESSAGES: dict[MessageType, type[StreamMessage]] = {
    cls.TYPE: cls for cls in (StreamOpen, StreamData, StreamWindow, StreamClose, StreamReset)
}
"""Frame type -> payload class, for the connection's dispatcher."""


def parse_stream_message(kind: MessageType, payload: Any) -> StreamMessage:
    """The typed message for a STREAM_* frame; ProtocolError if the payload is malformed."""
    cls = STREAM_MESSAGES.get(kind)
    if cls is None:
        raise ProtocolError(f"{kind.name} is not a stream frame")
    return cls.from_wire(payload)
