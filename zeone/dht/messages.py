"""Payloads of the DHT frame types (seed 003: DHT_FIND_NODE 0x10 ... DHT_STORE_RESP 0x15).

Each payload is a CBOR array whose first item is a request id chosen by the requester and echoed in
the response, so several DHT requests can be outstanding on one connection:

    DHT_FIND_NODE       [request_id, target: 20 bytes]
    DHT_FIND_NODE_RESP  [request_id, [contact, ...]]            contact = [node_id, [address, ...]]
    DHT_FIND_VALUE      [request_id, key: 1-128 bytes]
    DHT_FIND_VALUE_RESP [request_id, [record, ...], [contact, ...]]
    DHT_STORE           [request_id, record]                    record = Record.to_wire()
    DHT_STORE_RESP      [request_id, ok: bool, reason: str]

`from_wire` validates shapes and bounds and raises ProtocolError (the connection is closed with the
reason); semantic checks (signatures, namespaces, our own id in an answer) belong to the lookup and
the store. A node that does not serve DHT requests (a light/mobile client) answers FIND_* with
empty lists and STORE with `ok = false`, so a requester that asked anyway just moves on.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import attrs

from zeone.dht.contact import Contact, contacts_from_wire
from zeone.dht.records import MAX_KEY_BYTES, Record
from zeone.errors import ProtocolError
from zeone.identity import NODE_ID_BYTES, NodeId
from zeone.wire.frame import MessageType

MAX_CONTACTS = 40
"""Contacts accepted in one answer (2k for k = 20)."""
MAX_RECORDS = 64
"""Records accepted in one FIND_VALUE answer (a multi-publisher key's `max_publishers`)."""
MAX_REASON = 256
_MAX_REQUEST_ID = 2**53


def _request_id(value: Any, name: str) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_REQUEST_ID:
        raise ProtocolError(f"malformed {name}: bad request id")
    return value


def _array(payload: Any, length: int, name: str) -> list[Any]:
    if not isinstance(payload, list) or len(payload) != length:
        raise ProtocolError(f"malformed {name}: expected an array of {length} items")
    return payload


def _records_from_wire(value: Any, name: str) -> list[Record]:
    if not isinstance(value, list) or len(value) > MAX_RECORDS:
        raise ProtocolError(f"malformed {name}: records must be an array of at most {MAX_RECORDS}")
    return [Record.from_wire(item) for item in value]


class DhtMessage:
    TYPE: ClassVar[MessageType]

    def to_wire(self) -> list[Any]:
        raise NotImplementedError

    @classmethod
    def from_wire(cls, payload: Any) -> Self:
        raise NotImplementedError


@attrs.frozen
class FindNode(DhtMessage):
    TYPE = MessageType.DHT_FIND_NODE
    request_id: int
    target: NodeId

    def to_wire(self) -> list[Any]:
        return [self.request_id, self.target.raw]

    @classmethod
    def from_wire(cls, payload: Any) -> FindNode:
        request_id, target = _array(payload, 2, "DHT_FIND_NODE")
        if type(target) is not bytes or len(target) != NODE_ID_BYTES:
            raise ProtocolError(f"malformed DHT_FIND_NODE: target is not {NODE_ID_BYTES} bytes")
        return cls(_request_id(request_id, "DHT_FIND_NODE"), NodeId(target))


@attrs.frozen
class FindNodeResponse(DhtMessage):
    TYPE = MessageType.DHT_FIND_NODE_RESP
    request_id: int
    contacts: list[Contact]

    def to_wire(self) -> list[Any]:
        return [self.request_id, [c.to_wire() for c in self.contacts]]

    @classmethod
    def from_wire(cls, payload: Any) -> FindNodeResponse:
        request_id, contacts = _array(payload, 2, "DHT_FIND_NODE_RESP")
        return cls(
            _request_id(request_id, "DHT_FIND_NODE_RESP"),
            contacts_from_wire(contacts, limit=MAX_CONTACTS),
        )


@attrs.frozen
class FindValue(DhtMessage):
    TYPE = MessageType.DHT_FIND_VALUE
    request_id: int
    key: bytes

    def to_wire(self) -> list[Any]:
        return [self.request_id, self.key]

    @classmethod
    def from_wire(cls, payload: Any) -> FindValue:
        request_id, key = _array(payload, 2, "DHT_FIND_VALUE")
        if type(key) is not bytes or not 0 < len(key) <= MAX_KEY_BYTES:
            raise ProtocolError(f"malformed DHT_FIND_VALUE: key is not 1-{MAX_KEY_BYTES} bytes")
        return cls(_request_id(request_id, "DHT_FIND_VALUE"), key)


@attrs.frozen
class FindValueResponse(DhtMessage):
    TYPE = MessageType.DHT_FIND_VALUE_RESP
    request_id: int
    records: list[Record]
    contacts: list[Contact]

    def to_wire(self) -> list[Any]:
        return [
            self.request_id,
            [r.to_wire() for r in self.records],
            [c.to_wire() for c in self.contacts],
        ]

    @classmethod
    def from_wire(cls, payload: Any) -> FindValueResponse:
        request_id, records, contacts = _array(payload, 3, "DHT_FIND_VALUE_RESP")
        return cls(
            _request_id(request_id, "DHT_FIND_VALUE_RESP"),
            _records_from_wire(records, "DHT_FIND_VALUE_RESP"),
            contacts_from_wire(contacts, limit=MAX_CONTACTS),
        )


@attrs.frozen
class Store(DhtMessage):
    TYPE = MessageType.DHT_STORE
    request_id: int
    record: Record

    def to_wire(self) -> list[Any]:
        return [self.request_id, self.record.to_wire()]

    @classmethod
    def from_wire(cls, payload: Any) -> Store:
        request_id, record = _array(payload, 2, "DHT_STORE")
        return cls(_request_id(request_id, "DHT_STORE"), Record.from_wire(record))


@attrs.frozen
class StoreResponse(DhtMessage):
    TYPE = MessageType.DHT_STORE_RESP
    request_id: int
    ok: bool
    reason: str = ""

    def to_wire(self) -> list[Any]:
        return [self.request_id, self.ok, self.reason[:MAX_REASON]]

    @classmethod
    def from_wire(cls, payload: Any) -> StoreResponse:
        request_id, ok, reason = _array(payload, 3, "DHT_STORE_RESP")
        if type(ok) is not bool:
            raise ProtocolError("malformed DHT_STORE_RESP: ok is not a boolean")
        if type(reason) is not str or len(reason) > MAX_REASON:
            raise ProtocolError(f"malformed DHT_STORE_RESP: reason is not a string <= {MAX_REASON}")
        return cls(_request_id(request_id, "DHT_STORE_RESP"), ok, reason)


DHT_MESSAGES: dict[MessageType, type[DhtMessage]] = {
    m.TYPE: m
    for m in (FindNode, FindNodeResponse, FindValue, FindValueResponse, Store, StoreResponse)
}
"""Frame type -> payload class, for the connection's dispatcher."""
