"""The Kademlia routing table: 160 k-buckets by common-prefix length, LRU, ping-before-evict.

Bucket `i` holds contacts whose id shares exactly `i` leading bits with the local id (so bucket 0
covers half the id space, bucket 159 a single id). Each bucket keeps at most `k` contacts in
least-recently-seen-first order and a bounded replacement cache of contacts that arrived while the
bucket was full.

Why the rules are what they are:

- Ping-before-evict (Kademlia §2.2): long-lived nodes are the ones most likely to stay up, so a full
  bucket does not drop an old contact for a new one. `add()` parks the newcomer in the replacement
  cache and returns the least-recently-seen contact for the caller to ping; only `ping_failed()`
  evicts it, promoting the freshest replacement. The table never does I/O itself, so the same code
  runs on real connections, on the memory network and in a simulator.
- Failed lookup RPCs are counted (`record_failure`) but a contact is only dropped for them when a
  replacement is waiting, as the paper suggests: if *we* lost connectivity, every contact fails, and
  emptying the table would leave us nothing to reconnect through.
- Eclipse resistance: at most `max_per_prefix` contacts per bucket (and per replacement cache) may
  share an IPv4 /24 or IPv6 /64 (see `Contact.prefixes`), so one cheap subnet cannot fill the
  buckets near a target. memory:// and loopback addresses are exempt (tests, devnets).
- Buckets are created lazily and are plain lists: a table of N contacts uses memory for roughly
  log2(N) buckets, which is what lets a 10,000-node simulation fit in one process.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from zeone.dht.contact import Contact
from zeone.errors import ProtocolError
from zeone.identity import NODE_ID_BYTES, NodeId

ID_BITS = 8 * NODE_ID_BYTES
DEFAULT_K = 20
DEFAULT_MAX_PER_PREFIX = 2
DEFAULT_MAX_FAILURES = 3


def as_int(node: NodeId | int) -> int:
    """An id as an integer (ints pass through: hot paths precompute them)."""
    if type(node) is int:
        return node
    if type(node) is NodeId:
        return int.from_bytes(node.raw, "big")
    raise TypeError(f"expected a NodeId or int, got {type(node).__name__}")


def common_prefix_length(a: int, b: int) -> int:
    """Leading bits two 160-bit ids share (160 if equal)."""
    return ID_BITS - (a ^ b).bit_length()


def node_id_from_int(value: int) -> NodeId:
    return NodeId(value.to_bytes(NODE_ID_BYTES, "big"))


class _Bucket:
    """One k-bucket: contacts least-recently-seen first, plus the replacement cache."""

    __slots__ = ("contacts", "refreshed", "replacements")

    def __init__(self) -> None:
        self.contacts: list[Contact] = []
        self.replacements: list[Contact] = []  # oldest first
        self.refreshed: float | None = None


def _index_of(contacts: list[Contact], int_id: int) -> int:
    for index, contact in enumerate(contacts):
        if contact.int_id == int_id:
            return index
    return -1


@attrs.define(eq=False)
class RoutingTable:
    """A node's view of the network. All methods are synchronous and O(k) or better per call,
    except `closest()` which sorts only the buckets it needs."""

    local: NodeId
    k: int = DEFAULT_K
    max_per_prefix: int | None = DEFAULT_MAX_PER_PREFIX
    """Contacts per bucket sharing an IPv4 /24 or IPv6 /64; None disables the limit."""
    replacement_size: int | None = None
    """Replacement cache length per bucket; defaults to k."""
    max_failures: int = DEFAULT_MAX_FAILURES
    """Consecutive RPC failures after which a contact is replaced if a replacement is waiting."""
    created: float = 0.0
    """When the table was created, on the caller's monotonic clock: buckets count as refreshed
    then, so a fresh table is not immediately all stale."""

    _local_int: int = attrs.field(init=False)
    _buckets: list[_Bucket | None] = attrs.field(init=False)
    _nonempty: list[int] = attrs.field(init=False, factory=list)
    """Sorted indexes of buckets holding contacts: `closest()` visits only these."""
    _failures: dict[int, int] = attrs.field(init=False, factory=dict)
    _size: int = attrs.field(init=False, default=0)
    _stats: dict[str, int] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.max_per_prefix is not None and self.max_per_prefix < 1:
            raise ValueError(
                f"max_per_prefix must be at least 1 or None, got {self.max_per_prefix}"
            )
        if self.replacement_size is None:
            self.replacement_size = self.k
        self._local_int = as_int(self.local)
        self._buckets = [None] * ID_BITS
        self._stats = {"evicted": 0, "promoted": 0, "rejected_prefix": 0, "replaced_stale": 0}

    # -- queries --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    def __contains__(self, node: object) -> bool:
        """Membership by id: a NodeId, an int id or a Contact (whatever its addresses)."""
        if isinstance(node, Contact):
            node = node.int_id
        if not isinstance(node, (NodeId, int)) or isinstance(node, bool):
            return False
        return self.get(node) is not None

    def __iter__(self) -> Iterator[Contact]:
        for bucket in self._buckets:
            if bucket is not None:
                yield from bucket.contacts

    def get(self, node: NodeId | int) -> Contact | None:
        x = as_int(node)
        if x == self._local_int:
            return None
        bucket = self._buckets[common_prefix_length(self._local_int, x)]
        if bucket is None:
            return None
        index = _index_of(bucket.contacts, x)
        return bucket.contacts[index] if index >= 0 else None

    def bucket_index(self, node: NodeId | int) -> int:
        """The bucket a (non-local) id belongs in: its common-prefix length with the local id."""
        x = as_int(node)
        if x == self._local_int:
            raise ValueError("the local id has no bucket")
        return common_prefix_length(self._local_int, x)

    def bucket_contacts(self, index: int) -> list[Contact]:
        """A copy of one bucket, least recently seen first."""
        bucket = self._buckets[index]
        return list(bucket.contacts) if bucket is not None else []

    def replacement_contacts(self, index: int) -> list[Contact]:
        bucket = self._buckets[index]
        return list(bucket.replacements) if bucket is not None else []

    def failures(self, node: NodeId | int) -> int:
        return self._failures.get(as_int(node), 0)

    def closest(
        self,
        target: NodeId | int,
        count: int | None = None,
        exclude: Iterable[NodeId | int] = (),
    ) -> list[Contact]:
        """Up to `count` (default k) contacts closest to `target` by XOR, closest first.

        Each bucket is one band of XOR distances to the target: a contact in bucket `i` differs
        from the local id first at bit `i`, so its distance to the target has the bits of
        `L = local ^ target` above bit `i`, bit `i` of `L` flipped, and anything below. The bands
        are disjoint, so ordering the (few) non-empty buckets by their band's lower bound and
        sorting only inside the buckets needed to fill `count` gives the exact answer without
        ever sorting the whole table.
        """
        t = as_int(target)
        count = self.k if count is None else count
        if count <= 0:
            return []
        excluded = {as_int(e) for e in exclude}
        spread = self._local_int ^ t
        top = ID_BITS - 1
        bands = sorted(
            (((spread ^ (1 << (top - i))) >> (top - i)) << (top - i), i) for i in self._nonempty
        )
        result: list[Contact] = []
        buckets = self._buckets
        for _low, index in bands:
            group = buckets[index].contacts  # type: ignore[union-attr]
            if excluded:
                group = [c for c in group if c.int_id not in excluded]
            need = count - len(result)
            if len(group) > need:
                result.extend(heapq.nsmallest(need, group, key=lambda c: c.int_id ^ t))
                break
            result.extend(sorted(group, key=lambda c: c.int_id ^ t))
            if len(result) >= count:
                break
        return result

    # -- updates --------------------------------------------------------------------------------

    def add(self, contact: Contact) -> Contact | None:
        """Record that `contact` is alive (we heard from it or a peer told us about it).

        Returns None when the contact is now in the table, was refused (the local id, or the
        per-prefix limit), or already had its place. Returns the bucket's least-recently-seen
        contact when the bucket is full: the newcomer waits in the replacement cache, and the
        caller should ping the returned contact and report `ping_failed` or `touch`.
        """
        x = contact.int_id
        if x == self._local_int:
            return None
        index = common_prefix_length(self._local_int, x)
        bucket = self._buckets[index]
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
        contacts = bucket.contacts
        position = _index_of(contacts, x)
        if position >= 0:
            old = contacts.pop(position)
            if old.addresses != contact.addresses and not self._prefix_allowed(contacts, contact):
                contact = old  # new addresses would break the limit: keep the known ones
            contacts.append(contact)
            self._failures.pop(x, None)
            return None
        if not self._prefix_allowed(contacts, contact):
            self._stats["rejected_prefix"] += 1
            return None
        if len(contacts) < self.k:
            contacts.append(contact)
            self._size += 1
            if len(contacts) == 1:
                bisect.insort(self._nonempty, index)
            self._drop_replacement(bucket, x)
            return None
        self._add_replacement(bucket, contact)
        return contacts[0]

    def touch(self, node: NodeId | int) -> bool:
        """We received a message from `node`: move it to the most-recently-seen end.

        Returns False if it is not in the table (use `add` to insert it).
        """
        x = as_int(node)
        if x == self._local_int:
            return False
        bucket = self._buckets[common_prefix_length(self._local_int, x)]
        if bucket is None:
            return False
        position = _index_of(bucket.contacts, x)
        if position < 0:
            return False
        bucket.contacts.append(bucket.contacts.pop(position))
        self._failures.pop(x, None)
        return True

    def ping_failed(self, contact: Contact | NodeId | int) -> Contact | None:
        """The contact did not answer a ping: evict it and promote a replacement.

        Returns the promoted contact, if any.
        """
        x = contact.int_id if isinstance(contact, Contact) else as_int(contact)
        if self._evict(x):
            self._stats["evicted"] += 1
            return self._promote(x)
        return None

    def record_failure(self, node: NodeId | int) -> bool:
        """An RPC to `node` failed. After `max_failures` in a row, it is replaced if a replacement
        is waiting (never otherwise: see the module docstring). Returns True if it was evicted."""
        x = as_int(node)
        bucket = self._bucket_of(x)
        if bucket is None or _index_of(bucket.contacts, x) < 0:
            return False
        failures = self._failures[x] = self._failures.get(x, 0) + 1
        if failures >= self.max_failures and bucket.replacements:
            self._evict(x)
            self._stats["replaced_stale"] += 1
            self._promote(x)
            return True
        return False

    def remove(self, node: NodeId | int) -> bool:
        """Forget a contact (e.g. it misbehaved), promoting a replacement. True if it was there."""
        x = as_int(node)
        bucket = self._bucket_of(x)
        if bucket is not None:
            self._drop_replacement(bucket, x)
        if self._evict(x):
            self._promote(x)
            return True
        return False

    # -- refresh --------------------------------------------------------------------------------

    def mark_refreshed(self, target: NodeId | int, now: float) -> None:
        """A lookup for `target` ran at `now`: its bucket needs no refresh for a while."""
        x = as_int(target)
        if x == self._local_int:
            return
        index = common_prefix_length(self._local_int, x)
        bucket = self._buckets[index]
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
        bucket.refreshed = now

    def stale_buckets(
        self, now: float, interval: float, rng: random.Random | None = None
    ) -> list[NodeId]:
        """A random id in each bucket not refreshed for `interval`, shallowest bucket first.

        Only buckets up to the deepest non-empty one are considered: deeper ones cover fewer ids
        than there are nodes to fill them, and refreshing all 160 would cost 160 lookups.
        """
        rng = rng or random.Random()
        deepest = self.deepest_bucket()
        ids = []
        for index in range(deepest + 1):
            bucket = self._buckets[index]
            refreshed = bucket.refreshed if bucket is not None else None
            if refreshed is None:
                refreshed = self.created
            if now - refreshed >= interval:
                ids.append(self.random_id_in_bucket(index, rng))
        return ids

    def deepest_bucket(self) -> int:
        """Index of the deepest non-empty bucket, -1 if the table is empty."""
        return self._nonempty[-1] if self._nonempty else -1

    def random_id_in_bucket(self, index: int, rng: random.Random | None = None) -> NodeId:
        """A uniformly random id sharing exactly `index` leading bits with the local id."""
        if not 0 <= index < ID_BITS:
            raise ValueError(f"bucket index is 0-{ID_BITS - 1}, got {index}")
        rng = rng or random.Random()
        bit = ID_BITS - 1 - index
        mask = (1 << bit) - 1
        value = ((self._local_int ^ (1 << bit)) & ~mask) | (rng.getrandbits(bit) if bit else 0)
        return node_id_from_int(value)

    # -- persistence ----------------------------------------------------------------------------

    def to_records(self) -> list[list[Any]]:
        """The contacts as `[node_id, [addresses]]` arrays (CBOR-ready), each bucket least
        recently seen first, so `from_records` restores the LRU order."""
        return [contact.to_wire() for contact in self]

    @classmethod
    def from_records(cls, local: NodeId, records: Any, **kwargs: Any) -> tuple[RoutingTable, int]:
        """A table holding the saved contacts, and how many entries were unusable.

        The records come from disk, which may be stale or damaged: malformed entries are skipped
        (and counted), never fatal. Restored contacts go through `add`, so the limits hold.
        """
        table = cls(local, **kwargs)
        skipped = 0
        if not isinstance(records, list):
            return table, 1
        for record in records:
            try:
                contact = Contact.from_wire(record)
            except ProtocolError:
                skipped += 1
                continue
            table.add(contact)
        return table, skipped

    def statistics(self) -> dict[str, Any]:
        return {
            "contacts": self._size,
            "buckets": len(self._nonempty),
            "deepest_bucket": self.deepest_bucket(),
            "replacements": sum(len(b.replacements) for b in self._buckets if b is not None),
            "stale": sum(1 for f in self._failures.values() if f > 0),
            **self._stats,
        }

    # -- internals ------------------------------------------------------------------------------

    def _bucket_of(self, x: int) -> _Bucket | None:
        if x == self._local_int:
            return None
        return self._buckets[common_prefix_length(self._local_int, x)]

    def _prefix_allowed(self, others: list[Contact], contact: Contact) -> bool:
        limit = self.max_per_prefix
        if limit is None or not contact.prefixes:
            return True
        for prefix in contact.prefixes:
            if sum(1 for c in others if prefix in c.prefixes) >= limit:
                return False
        return True

    def _add_replacement(self, bucket: _Bucket, contact: Contact) -> None:
        replacements = bucket.replacements
        self._drop_replacement(bucket, contact.int_id)
        if not self._prefix_allowed(replacements, contact):
            self._stats["rejected_prefix"] += 1
            return
        replacements.append(contact)
        if len(replacements) > self.replacement_size:  # type: ignore[operator]
            del replacements[0]

    @staticmethod
    def _drop_replacement(bucket: _Bucket, x: int) -> None:
        position = _index_of(bucket.replacements, x)
        if position >= 0:
            del bucket.replacements[position]

    def _evict(self, x: int) -> bool:
        bucket = self._bucket_of(x)
        if bucket is None:
            return False
        position = _index_of(bucket.contacts, x)
        if position < 0:
            return False
        del bucket.contacts[position]
        self._size -= 1
        self._failures.pop(x, None)
        if not bucket.contacts:
            self._nonempty.remove(common_prefix_length(self._local_int, x))
        return True

    def _promote(self, evicted: int) -> Contact | None:
        index = common_prefix_length(self._local_int, evicted)
        bucket = self._buckets[index]
        if bucket is None:
            return None
        replacements = bucket.replacements
        # Freshest first; a replacement that the prefix limit now refuses stays parked.
        for position in range(len(replacements) - 1, -1, -1):
            candidate = replacements[position]
            if self._prefix_allowed(bucket.contacts, candidate):
                del replacements[position]
                bucket.contacts.append(candidate)
                if len(bucket.contacts) == 1:
                    bisect.insort(self._nonempty, index)
                self._size += 1
                self._stats["promoted"] += 1
                return candidate
        return None
