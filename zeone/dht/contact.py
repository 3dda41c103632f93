"""A DHT contact: a node id and the addresses it can be dialed at.

Contacts arrive from peers (FIND_NODE answers, store senders) and from disk, so construction
validates everything: the id is a real `NodeId`, there are at most `MAX_ADDRESSES` addresses, each a
well-formed transport address of at most `MAX_ADDRESS_LENGTH` characters. Once built, a contact is
trusted as data (it is frozen), which lets lookups and routing tables handle them without
re-checking.

Two derived values are computed once at construction because the hot paths need them for every
contact they touch:

- `int_id`: the id as an integer, so XOR distances are one machine-level operation instead of a
  bytes-to-int conversion per comparison;
- `prefixes`: the network prefixes (IPv4 /24, IPv6 /64, or the host name) of the contact's
  IP-bearing addresses, which the routing table's eclipse limit counts. memory:// addresses (the
  in-process network) and loopback addresses (a devnet on one machine) carry no prefix, so tests
  and local networks are not limited.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

import attrs

from zeone.errors import ProtocolError
from zeone.identity import NODE_ID_BYTES, NodeId
from zeone.net.transport import parse_address

MAX_ADDRESSES = 16
"""Most addresses a contact may carry (on the wire and in memory)."""

MAX_ADDRESS_LENGTH = 256
"""Longest address string accepted, in characters."""

IPV4_PREFIX = 24
IPV6_PREFIX = 64


@functools.lru_cache(maxsize=65536)
def _address_prefix(address: str) -> str | None:
    """The eclipse-limit group of one address, or None if it is exempt.

    Raises ValueError if the address is malformed (so construction rejects it). Cached: the same
    addresses come back in almost every lookup answer, and parsing them was ~20% of a lookup's CPU.
    """
    parsed = parse_address(address)
    if parsed.scheme == "memory" or not parsed.host:
        return None
    host = parsed.host
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        # A host name: each name is its own group. Names are cheap for an attacker, so this only
        # stops the lazy case; IP literals are what the limit is really about.
        return f"name:{host.lower()}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_unspecified:
        return None
    bits = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


def _check_addresses(_instance: Any, _attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    if len(value) > MAX_ADDRESSES:
        raise ValueError(f"a contact has at most {MAX_ADDRESSES} addresses, got {len(value)}")
    for address in value:
        if type(address) is not str or not 0 < len(address) <= MAX_ADDRESS_LENGTH:
            raise ValueError(
                f"a contact address is a string of 1-{MAX_ADDRESS_LENGTH} characters, "
                f"got {address!r:.80}"
            )


def _check_node_id(_instance: Any, _attribute: attrs.Attribute, value: NodeId) -> None:
    if type(value) is not NodeId:
        raise TypeError(f"a contact's node_id is a NodeId, got {type(value).__name__}")


@attrs.frozen(slots=True, repr=False)
class Contact:
    """A node id with the addresses it can be dialed at.

    Equality is by id and addresses; routing tables key contacts by `int_id`, so a node that
    changes its addresses is still the same entry there.
    """

    node_id: NodeId = attrs.field(validator=_check_node_id)
    addresses: tuple[str, ...] = attrs.field(
        default=(), converter=tuple, validator=_check_addresses
    )
    int_id: int = attrs.field(init=False, eq=False, hash=False)
    prefixes: frozenset[str] = attrs.field(init=False, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        prefixes = set()
        for address in self.addresses:
            prefix = _address_prefix(address)  # raises ValueError for a malformed address
            if prefix is not None:
                prefixes.add(prefix)
        object.__setattr__(self, "int_id", int.from_bytes(self.node_id.raw, "big"))
        object.__setattr__(self, "prefixes", frozenset(prefixes))

    def __repr__(self) -> str:
        return f"Contact({self.node_id.short()}, {list(self.addresses)})"

    def to_wire(self) -> list[Any]:
        """`[node_id bytes, [address, ...]]`."""
        return [self.node_id.raw, list(self.addresses)]

    @classmethod
    def from_wire(cls, value: Any) -> Contact:
        """Validate a peer-supplied contact; raises ProtocolError naming the problem."""
        if not isinstance(value, list) or len(value) != 2:
            raise ProtocolError("malformed contact: expected [node_id, [addresses]]")
        raw, addresses = value
        if type(raw) is not bytes or len(raw) != NODE_ID_BYTES:
            raise ProtocolError(f"malformed contact: node id is not {NODE_ID_BYTES} bytes")
        if not isinstance(addresses, list):
            raise ProtocolError("malformed contact: addresses is not an array")
        if len(addresses) > MAX_ADDRESSES:
            # Checked before the converter copies a peer's huge list.
            raise ProtocolError(f"malformed contact: more than {MAX_ADDRESSES} addresses")
        try:
            return _parse_contact(raw, tuple(addresses))
        except (TypeError, ValueError) as exc:  # TypeError also for unhashable junk addresses
            raise ProtocolError(f"malformed contact: {exc}") from None


@functools.lru_cache(maxsize=8192)
def _parse_contact(raw: bytes, addresses: tuple[str, ...]) -> Contact:
    """Contacts are immutable and the same ones arrive in answer after answer (20 per FIND_NODE):
    parsing and checking their addresses each time was a tenth of a lookup's CPU. Only valid
    contacts are cached; a bad one raises every time."""
    return Contact(NodeId(raw), addresses)


def contacts_from_wire(value: Any, *, limit: int) -> list[Contact]:
    """Decode a peer's array of at most `limit` contacts (all or nothing)."""
    if not isinstance(value, list):
        raise ProtocolError("malformed contact list: not an array")
    if len(value) > limit:
        raise ProtocolError(f"malformed contact list: {len(value)} contacts, at most {limit}")
    return [Contact.from_wire(item) for item in value]
