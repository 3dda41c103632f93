"""The built-in record namespaces: peer, provider and service records, and owned values.

- `kv:<owner node id hex>/<name>` — a small value that only its owner can publish or update
  (newer sequence numbers replace older ones), e.g. `zeone dht put greeting hello`.

- `peer:<20-byte node id>` — how to reach a node: its addresses, transports, capabilities and role
  (seed 004 §3). Only the node itself may publish it: the publisher's NodeId (derived from the
  signing key) must equal the key suffix, so nobody can redirect traffic for someone else's id.
- `provider:<content or service id>` and `service:<name>` — who holds some content or offers some
  service (`service:vpn_exit`, seed 003 §3.3). Many publishers per key, one record each, and each
  record's publisher *is* the provider, so a provider cannot be advertised without its consent.

Values are CBOR maps decoded with the hostile-input decoder; unknown map keys are ignored so later
versions can add fields without breaking older nodes.
"""

from __future__ import annotations

from typing import Any

import attrs

from zeone.dht.contact import MAX_ADDRESS_LENGTH, MAX_ADDRESSES, Contact
from zeone.dht.records import InvalidRecord, Namespace, Record
from zeone.errors import ProtocolError
from zeone.identity import NODE_ID_BYTES, NodeId
from zeone.wire.frame import decode_cbor, encode_cbor

PEER = b"peer"
PROVIDER = b"provider"
SERVICE = b"service"
KV = b"kv"

ROLES = ("seed", "full", "light", "mobile")
"""Node roles of seed 004 §3."""
CLIENT_ROLES = frozenset({"light", "mobile"})
"""Roles that only issue DHT requests: never in routing tables, never asked to store."""

MAX_ITEMS = 64
MAX_ITEM_LENGTH = 256
MAX_META_BYTES = 4096
MAX_PROVIDER_VALUE = 8192


def peer_key(node_id: NodeId) -> bytes:
    return PEER + b":" + node_id.raw


def provider_key(resource: bytes) -> bytes:
    """`provider:<resource>`, e.g. a content hash."""
    return PROVIDER + b":" + resource


def service_key(name: str) -> bytes:
    """`service:<name>`, e.g. `service:vpn_exit`."""
    return SERVICE + b":" + name.encode()


def _strings(data: dict[str, Any], name: str, limit: int, length: int) -> tuple[str, ...]:
    items = data.get(name, [])
    if not isinstance(items, list) or len(items) > limit:
        raise ValueError(f"{name} must be an array of at most {limit} strings")
    for item in items:
        if type(item) is not str or not 0 < len(item) <= length:
            raise ValueError(f"{name} entries are strings of 1-{length} characters")
    return tuple(items)


def _decode_map(value: bytes, what: str) -> dict[str, Any]:
    try:
        data = decode_cbor(value)
    except ProtocolError as exc:
        raise InvalidRecord(f"{what}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRecord(f"{what}: value is not a CBOR map")
    return data


def _check_addresses(addresses: tuple[str, ...]) -> None:
    # Contact performs the full address validation (count, length, syntax).
    Contact(NodeId(bytes(NODE_ID_BYTES)), addresses)


@attrs.frozen
class PeerInfo:
    """The value of a `peer:` record."""

    addresses: tuple[str, ...] = ()
    transports: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    role: str = "full"

    def __attrs_post_init__(self) -> None:
        _check_addresses(self.addresses)
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")

    @property
    def is_client(self) -> bool:
        return self.role in CLIENT_ROLES

    def to_value(self) -> bytes:
        return encode_cbor(
            {
                "addresses": list(self.addresses),
                "transports": list(self.transports),
                "capabilities": list(self.capabilities),
                "role": self.role,
            }
        )

    @classmethod
    def from_value(cls, value: bytes) -> PeerInfo:
        """Decode and validate; raises InvalidRecord."""
        data = _decode_map(value, "peer record")
        try:
            role = data.get("role", "full")
            if type(role) is not str:
                raise ValueError("role must be a string")
            return cls(
                _strings(data, "addresses", MAX_ADDRESSES, MAX_ADDRESS_LENGTH),
                _strings(data, "transports", MAX_ITEMS, MAX_ITEM_LENGTH),
                _strings(data, "capabilities", MAX_ITEMS * 4, MAX_ITEM_LENGTH),
                role,
            )
        except (TypeError, ValueError) as exc:
            raise InvalidRecord(f"peer record: {exc}") from None


@attrs.frozen
class ProviderInfo:
    """The value of a `provider:` or `service:` record: where to reach the provider, plus
    optional small provider-defined metadata (a CBOR map with string keys)."""

    addresses: tuple[str, ...] = ()
    meta: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        _check_addresses(self.addresses)
        if not isinstance(self.meta, dict) or not all(isinstance(k, str) for k in self.meta):
            raise ValueError("provider meta must be a map with string keys")
        if len(encode_cbor(self.meta)) > MAX_META_BYTES:
            raise ValueError(f"provider meta is larger than {MAX_META_BYTES} bytes")

    def to_value(self) -> bytes:
        return encode_cbor({"addresses": list(self.addresses), "meta": self.meta})

    @classmethod
    def from_value(cls, value: bytes) -> ProviderInfo:
        data = _decode_map(value, "provider record")
        try:
            meta = data.get("meta", {})
            return cls(_strings(data, "addresses", MAX_ADDRESSES, MAX_ADDRESS_LENGTH), meta)
        except (TypeError, ValueError) as exc:
            raise InvalidRecord(f"provider record: {exc}") from None


@attrs.frozen
class Provider:
    """A provider as `find_providers` reports it."""

    contact: Contact
    info: ProviderInfo
    record: Record

    @classmethod
    def from_record(cls, record: Record) -> Provider:
        info = ProviderInfo.from_value(record.value)
        return cls(Contact(record.publisher_id, info.addresses), info, record)


def validate_peer(record: Record) -> None:
    suffix = record.key[len(PEER) + 1 :]
    if len(suffix) != NODE_ID_BYTES:
        raise InvalidRecord(f"peer record key must end in a {NODE_ID_BYTES}-byte node id")
    if record.publisher_id.raw != suffix:
        raise InvalidRecord("a peer record can only be published by that peer")
    PeerInfo.from_value(record.value)


def validate_provider(record: Record) -> None:
    if len(record.key) <= record.key.index(b":") + 1:
        raise InvalidRecord("provider record key has no resource id after the namespace")
    if len(record.value) > MAX_PROVIDER_VALUE:
        # Many publishers share a key: small values keep a FIND_VALUE answer small.
        raise InvalidRecord(f"provider record value is larger than {MAX_PROVIDER_VALUE} bytes")
    ProviderInfo.from_value(record.value)


def kv_key(owner: NodeId, name: str) -> bytes:
    """`kv:<owner node id hex>/<name>`: a mutable value only its owner can publish (like IPNS)."""
    return KV + b":" + str(owner).encode() + b"/" + name.encode()


def validate_kv(record: Record) -> None:
    rest = record.key[len(KV) + 1 :]
    owner, slash, name = rest.partition(b"/")
    if not slash or not name:
        raise InvalidRecord("a kv key is kv:<owner node id>/<name>")
    if owner != str(record.publisher_id).encode():
        raise InvalidRecord("only the owner named in a kv key may publish it")


def builtin_namespaces() -> list[Namespace]:
    return [
        Namespace(KV, validate_kv, description="a value owned by the node named in the key"),
        Namespace(PEER, validate_peer, description="how to reach a node (self-published)"),
        Namespace(
            PROVIDER,
            validate_provider,
            multi_publisher=True,
            description="who holds a piece of content",
        ),
        Namespace(
            SERVICE,
            validate_provider,
            multi_publisher=True,
            description="who offers a service, e.g. service:vpn_exit",
        ),
    ]
