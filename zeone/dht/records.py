"""Signed DHT records and the per-namespace rules that decide which records a node keeps.

A record is `(key, value, publisher, seq, created, ttl, signature)`. The publisher signs a canonical
CBOR encoding of every other field behind a domain-separation prefix, so a signature made for a
DHT record can never be replayed as some other signed ZEONE message (or the reverse), and no field
can be changed by the nodes that store and forward it. Storing nodes are therefore untrusted
couriers: they can withhold a record or serve an older one, never forge or alter one.

Keys are namespaced (`b"peer:..."`, `b"provider:..."`, `b"forum:..."`): the part before the first
`:` picks the `Namespace`, whose validator checks the value and whose flags say whether a key may
hold records from many publishers (provider records) or is owned by its first publisher. A node
rejects records of namespaces nobody registered, so the DHT cannot be used as free storage for
arbitrary data; plugins register theirs.

Why the bounds: `created` must not be more than `MAX_CLOCK_SKEW` ahead of our clock (or a record
would outlive its TTL), `ttl` is capped per namespace (a record cannot pin storage for years), and
`seq` lets the publisher replace its record: a store with a seq not above the stored one is stale
(equal seq with identical content is a harmless re-store, equal seq with different content is
equivocation and refused).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from zeone.errors import ProtocolError, ZeoneError
from zeone.identity import NODE_ID_BYTES, Identity, NodeId, verify_signature
from zeone.wire.frame import encode_cbor

MAX_KEY_BYTES = 128
MAX_VALUE_BYTES = 64 * 1024
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
U64_MAX = 2**64 - 1
MAX_CREATED_MS = 2**53 - 1
"""`created` is milliseconds since the epoch; capped so it stays exact as a float anywhere."""
MIN_TTL = 1
MAX_TTL = 7 * 24 * 3600
"""No record lives longer than a week without being re-signed by its publisher."""
DEFAULT_TTL = 24 * 3600
"""Seed 003 §2.1 DEFAULT_TTL."""
MAX_CLOCK_SKEW = 300.0
"""Seconds a record's `created` may be ahead of our clock."""
DEFAULT_MAX_PUBLISHERS = 64
"""Records per key in a multi-publisher namespace, so a popular key cannot fill a node's disk."""

SIGNATURE_CONTEXT = b"zeone/dht-record/v1\x00"
"""Domain separation: prepended to the canonical CBOR before signing."""

_VERIFIED_CACHE_SIZE = 16384


class InvalidRecord(ZeoneError):
    """A record breaks a rule; `reason` says which (also the exception message)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def key_id(key: bytes) -> NodeId:
    """The point in the 160-bit id space where `key` lives: BLAKE2b-160 of the key.

    The same hash that derives NodeIds from public keys, so keys and node ids are uniformly
    distributed in one space (seed 003 §3.3 used SHA-1 for the same purpose).
    """
    return NodeId(hashlib.blake2b(key, digest_size=NODE_ID_BYTES).digest())


def namespace_of(key: bytes) -> bytes | None:
    """`b"peer"` for `b"peer:..."`; None for a key without a namespace prefix."""
    name, sep, _rest = key.partition(b":")
    return name if sep and name else None


# Digests of (signed bytes, signature) already verified: the simulator hands one record object to
# many nodes, and a node re-reads its own rows; checking Ed25519 once per distinct record suffices.
_verified: dict[bytes, None] = {}


def _check_bytes(name: str, value: Any, low: int, high: int) -> None:
    if type(value) is not bytes:
        raise TypeError(f"record {name} must be bytes, got {type(value).__name__}")
    if not low <= len(value) <= high:
        raise ValueError(
            f"record {name} is {len(value)} bytes; expected {low}"
            + (f"-{high}" if high != low else "")
        )


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if type(value) is not int:  # bool is excluded on purpose
        raise TypeError(f"record {name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"record {name} {value} is outside {low}-{high}")


@attrs.frozen(slots=True, repr=False)
class Record:
    """One signed DHT record. Build with `Record.create`; decode peers' with `from_wire`.

    Construction checks types and sizes (so a `Record` is always well-formed); the signature and
    namespace rules are checked by `verify()` and `Validators.check()`.
    """

    key: bytes
    value: bytes
    publisher: bytes
    """The publisher's 32-byte Ed25519 public key."""
    seq: int
    created: int
    """Milliseconds since the epoch, on the publisher's clock."""
    ttl: int
    """Seconds after `created` at which the record expires."""
    signature: bytes

    def __attrs_post_init__(self) -> None:
        _check_bytes("key", self.key, 1, MAX_KEY_BYTES)
        _check_bytes("value", self.value, 0, MAX_VALUE_BYTES)
        _check_bytes("publisher", self.publisher, PUBLIC_KEY_BYTES, PUBLIC_KEY_BYTES)
        _check_int("seq", self.seq, 0, U64_MAX)
        _check_int("created", self.created, 0, MAX_CREATED_MS)
        _check_int("ttl", self.ttl, MIN_TTL, MAX_TTL)
        _check_bytes("signature", self.signature, SIGNATURE_BYTES, SIGNATURE_BYTES)

    def __repr__(self) -> str:
        return (
            f"Record({self.key[:40]!r}, {len(self.value)} bytes, "
            f"publisher={self.publisher_id.short()}, seq={self.seq})"
        )

    # -- creation and wire form -----------------------------------------------------------------

    @classmethod
    def create(
        cls,
        identity: Identity,
        key: bytes,
        value: bytes,
        seq: int,
        ttl: int = DEFAULT_TTL,
        *,
        created: int | None = None,
    ) -> Record:
        """Sign a new record as `identity`. `created` defaults to the wall clock, in ms."""
        if created is None:
            created = int(time.time() * 1000)
        publisher = identity.public_key
        message = _signing_bytes(key, value, publisher, seq, created, ttl)
        return cls(key, value, publisher, seq, created, ttl, identity.sign(message))

    def to_wire(self) -> list[Any]:
        """`[key, value, publisher, seq, created, ttl, signature]`."""
        return [
            self.key,
            self.value,
            self.publisher,
            self.seq,
            self.created,
            self.ttl,
            self.signature,
        ]

    @classmethod
    def from_wire(cls, value: Any) -> Record:
        """Decode a peer's record (shape and bounds only); raises ProtocolError."""
        if not isinstance(value, list) or len(value) != 7:
            raise ProtocolError("malformed record: expected an array of 7 items")
        try:
            return cls(*value)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed record: {exc}") from None

    # -- derived values -------------------------------------------------------------------------

    @property
    def publisher_id(self) -> NodeId:
        return NodeId.from_public_key(self.publisher)

    @property
    def namespace(self) -> bytes | None:
        return namespace_of(self.key)

    @property
    def target(self) -> NodeId:
        """Where in the id space the record is stored (`key_id(key)`)."""
        return key_id(self.key)

    @property
    def expires_ms(self) -> int:
        return self.created + 1000 * self.ttl

    def expired(self, now: float) -> bool:
        """True once `now` (seconds since the epoch) has reached the expiry time."""
        return now * 1000 >= self.expires_ms

    def size(self) -> int:
        """Approximate bytes the record occupies (for store accounting)."""
        return len(self.key) + len(self.value) + PUBLIC_KEY_BYTES + SIGNATURE_BYTES + 24

    def signing_bytes(self) -> bytes:
        return _signing_bytes(
            self.key, self.value, self.publisher, self.seq, self.created, self.ttl
        )

    def verify(self) -> bool:
        """True if the publisher signed exactly these fields."""
        message = self.signing_bytes()
        digest = hashlib.blake2b(message + self.signature, digest_size=32).digest()
        if digest in _verified:
            return True
        if not verify_signature(self.publisher, message, self.signature):
            return False
        if len(_verified) >= _VERIFIED_CACHE_SIZE:
            del _verified[next(iter(_verified))]
        _verified[digest] = None
        return True

    def same_content(self, other: Record) -> bool:
        return self.signature == other.signature and self == other


def _signing_bytes(
    key: bytes, value: bytes, publisher: bytes, seq: int, created: int, ttl: int
) -> bytes:
    return SIGNATURE_CONTEXT + encode_cbor([key, value, publisher, seq, created, ttl])


# -- namespaces -----------------------------------------------------------------------------------

Validator = Callable[[Record], None]
"""Checks a record's key suffix and value; raises InvalidRecord(reason) to reject it."""


def accept_any(_record: Record) -> None:
    """The validator of a namespace that only needs the generic checks."""


def _check_namespace_name(_instance: Any, _attribute: attrs.Attribute, value: bytes) -> None:
    if type(value) is not bytes or not 0 < len(value) <= 32 or b":" in value:
        raise ValueError(f"a namespace name is 1-32 bytes without ':', got {value!r}")


@attrs.frozen
class Namespace:
    """The rules for keys `name + b":" + ...`."""

    name: bytes = attrs.field(validator=_check_namespace_name)
    validate: Validator = accept_any
    multi_publisher: bool = False
    """Many publishers per key, one record each (provider records); otherwise the first
    publisher owns the key until its record expires."""
    max_ttl: int = MAX_TTL
    max_publishers: int = DEFAULT_MAX_PUBLISHERS
    description: str = ""

    @property
    def prefix(self) -> bytes:
        return self.name + b":"


@attrs.frozen
class Selection:
    """What a store should do with an incoming record, given what it holds for the key."""

    accept: bool
    reason: str = ""
    replaces: Record | None = None
    """The stored record (same publisher) the incoming one supersedes."""
    duplicate: bool = False
    """The incoming record is identical to a stored one: nothing to change, but not an error."""


class Validators:
    """The namespace registry and the rules every record passes before a node keeps or trusts it.

    `Validators.default()` has the built-in `peer`, `provider` and `service` namespaces; plugins
    add theirs with `register`.
    """

    def __init__(
        self, namespaces: Iterable[Namespace] = (), *, clock_skew: float = MAX_CLOCK_SKEW
    ) -> None:
        self._namespaces: dict[bytes, Namespace] = {}
        self.clock_skew = clock_skew
        for namespace in namespaces:
            self.register(namespace)

    @classmethod
    def default(cls, extra: Iterable[Namespace] = ()) -> Validators:
        from zeone.dht.namespaces import builtin_namespaces

        return cls([*builtin_namespaces(), *extra])

    def register(self, namespace: Namespace, *, replace: bool = False) -> None:
        if namespace.name in self._namespaces and not replace:
            raise ValueError(f"DHT namespace {namespace.name!r} is already registered")
        self._namespaces[namespace.name] = namespace

    def namespaces(self) -> list[Namespace]:
        return list(self._namespaces.values())

    def namespace_for(self, key: bytes) -> Namespace | None:
        name = namespace_of(key)
        return self._namespaces.get(name) if name is not None else None

    def is_multi_publisher(self, key: bytes) -> bool:
        namespace = self.namespace_for(key)
        return namespace is not None and namespace.multi_publisher

    def check(self, record: Record, now: float) -> Namespace:
        """Raise InvalidRecord unless `record` may be stored or believed at `now` (epoch seconds).

        Cheap checks first, the signature last but one, the namespace's own validator last (it
        may decode the value).
        """
        if type(record) is not Record:
            raise InvalidRecord(f"not a record: {type(record).__name__}")
        namespace = self.namespace_for(record.key)
        if namespace is None:
            raise InvalidRecord(f"unknown namespace in key {record.key[:40]!r}")
        if record.ttl > namespace.max_ttl:
            raise InvalidRecord(
                f"ttl {record.ttl}s exceeds the {namespace.max_ttl}s limit of "
                f"namespace {namespace.name.decode(errors='replace')!r}"
            )
        if record.created > (now + self.clock_skew) * 1000:
            raise InvalidRecord(
                f"record created {record.created / 1000 - now:.0f}s in the future "
                f"(allowed skew {self.clock_skew:.0f}s)"
            )
        if record.expired(now):
            raise InvalidRecord("record has expired")
        if not record.verify():
            raise InvalidRecord("bad signature")
        namespace.validate(record)
        return namespace

    def select(self, existing: Sequence[Record], incoming: Record) -> Selection:
        """Decide about `incoming` given the unexpired records stored under its key.

        - same publisher: a higher seq replaces, a lower one is stale, the same seq is a
          duplicate if identical and equivocation otherwise;
        - another publisher: refused in single-publisher namespaces (the key is owned), accepted
          in multi-publisher ones up to `max_publishers`.
        """
        namespace = self.namespace_for(incoming.key)
        for record in existing:
            if record.publisher != incoming.publisher:
                continue
            if incoming.seq > record.seq:
                return Selection(True, "newer seq", replaces=record)
            if incoming.seq < record.seq:
                return Selection(False, f"stale seq {incoming.seq} (stored {record.seq})")
            if incoming.same_content(record):
                return Selection(True, "duplicate", duplicate=True)
            return Selection(False, f"conflicting record with the same seq {incoming.seq}")
        if not existing:
            return Selection(True, "new key")
        if namespace is None or not namespace.multi_publisher:
            return Selection(False, "key is owned by another publisher")
        if len(existing) >= namespace.max_publishers:
            return Selection(False, f"key already has {namespace.max_publishers} publishers")
        return Selection(True, "new publisher")

    def merge(self, records: Iterable[Record]) -> list[Record]:
        """Reduce records for one key gathered from several nodes to what a reader should use.

        The newest seq per publisher; in a single-publisher namespace, where replicas may
        disagree about who got there first, the earliest-created record's publisher wins (then
        the lowest key, so every reader picks the same one). Multi-publisher records come back
        most recently created first.
        """
        best: dict[bytes, Record] = {}
        key = None
        for record in records:
            key = record.key
            current = best.get(record.publisher)
            if current is None or record.seq > current.seq:
                best[record.publisher] = record
        if key is None:
            return []
        if self.is_multi_publisher(key):  # freshest providers first
            return sorted(best.values(), key=lambda r: (-r.created, r.publisher))
        return [min(best.values(), key=lambda r: (r.created, r.publisher))]
