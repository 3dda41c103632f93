"""Typed payloads of the kernel's frame types, validated on the way in.

Payloads are CBOR arrays (compact and positional). ``from_wire`` checks shape and types with attrs
validators and turns every mismatch into a ProtocolError naming the message and the problem, so
the connection code only ever sees well-formed objects.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Self

import attrs
from attrs import validators as v

from zeone.errors import ProtocolError
from zeone.wire.frame import MessageType

_u64 = [v.instance_of(int), v.ge(0), v.le(2**64 - 1)]
_request_id = [v.instance_of(int), v.ge(0), v.le(2**53)]
_protocol = [v.instance_of(str), v.max_len(128)]
_nonce = [v.instance_of(bytes), v.min_len(8), v.max_len(32)]


def _not_bool(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool):
        raise TypeError(f"'{attribute.name}' must be an integer, not a boolean")


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in attrs.fields(cls))


class WireMessage:
    """Mixin: ``to_wire()`` gives the CBOR array, ``from_wire()`` validates one."""

    TYPE: ClassVar[MessageType]

    def to_wire(self) -> list[Any]:
        return [getattr(self, name) for name in _field_names(type(self))]

    @classmethod
    def from_wire(cls, payload: Any) -> Self:
        fields = _field_names(cls)
        if type(payload) is not list or len(payload) != len(fields):
            raise ProtocolError(
                f"malformed {cls.TYPE.name}: expected an array of {len(fields)} items, "
                f"got {type(payload).__name__}"
                + (f" of {len(payload)}" if isinstance(payload, list) else "")
            )
        try:
            return cls(*payload)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed {cls.TYPE.name}: {exc}") from None


@attrs.frozen
class Ping(WireMessage):
    """Liveness and RTT probe. ``timestamp`` is the sender's wall clock in milliseconds."""

    TYPE = MessageType.PING
    nonce: bytes = attrs.field(validator=_nonce)
    timestamp: int = attrs.field(validator=[_not_bool, *_u64])


@attrs.frozen
class Pong(WireMessage):
    """Echoes the PING's nonce and timestamp, so the pinger measures RTT on its own clock."""

    TYPE = MessageType.PONG
    nonce: bytes = attrs.field(validator=_nonce)
    timestamp: int = attrs.field(validator=[_not_bool, *_u64])


@attrs.frozen
class ServiceRequest(WireMessage):
    TYPE = MessageType.SERVICE_REQUEST
    request_id: int = attrs.field(validator=[_not_bool, *_request_id])
    protocol: str = attrs.field(validator=_protocol)
    body: Any = None


@attrs.frozen
class ServiceResponse(WireMessage):
    """``ok`` false means ``body`` is ``[code, message]``."""

    TYPE = MessageType.SERVICE_RESPONSE
    request_id: int = attrs.field(validator=[_not_bool, *_request_id])
    ok: bool = attrs.field(validator=v.instance_of(bool))
    body: Any = None

    def __attrs_post_init__(self) -> None:
        if not self.ok and not (
            isinstance(self.body, list)
            and len(self.body) == 2
            and all(isinstance(item, str) and len(item) <= 1024 for item in self.body)
        ):
            raise ValueError("an error response carries [code, message] strings")


@attrs.frozen
class Discover(WireMessage):
    """Ask a peer for peers it knows (seed 003's DISCOVER); ``limit`` caps the answer."""

    TYPE = MessageType.DISCOVER
    limit: int = attrs.field(validator=[_not_bool, v.instance_of(int), v.ge(0), v.le(256)])


def _peer_entries(_instance: Any, _attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, list) or len(value) > 256:
        raise ValueError("peers must be an array of at most 256 entries")
    for entry in value:
        if not (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[0], bytes)
            and len(entry[0]) == 20
            and isinstance(entry[1], list)
            and len(entry[1]) <= 16
            and all(isinstance(a, str) and len(a) <= 256 for a in entry[1])
        ):
            raise ValueError("each peer is [20-byte node id, [address strings]]")


@attrs.frozen
class PeerList(WireMessage):
    """Answer to DISCOVER: ``[[node_id, [addresses...]], ...]``."""

    TYPE = MessageType.PEER_LIST
    peers: list[Any] = attrs.field(validator=_peer_entries)


@attrs.frozen
class GoAway(WireMessage):
    """The sender will start no new requests on this connection and closes it when idle."""

    TYPE = MessageType.GOAWAY
    reason: str = attrs.field(validator=[v.instance_of(str), v.max_len(256)])
