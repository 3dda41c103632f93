"""Range-based set reconciliation (Aljoscha Meyer's scheme, as used by Negentropy), sans IO.

Both sides keep their record ids sorted by `(created, id)`. The initiator describes the whole key
space as consecutive ranges, each with a fingerprint (a hash of the sum of its ids and their
count). The other side compares: equal ranges are done; a differing range is split into
`BUCKETS` sub-ranges with fingerprints, or, once small, answered with the list of ids in it. Ranges
shrink geometrically around the differences, so two nodes that share almost everything exchange a
few fingerprints per difference instead of every id.

Ids in id lists are sent as `PREFIX`-byte prefixes (collisions at 64 bits are negligible for the
set sizes a node holds, and a collision only costs a redundant fetch). Range bounds carry the
shortest id prefix that separates neighbours. Timestamps are delta-encoded.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable
from typing import Any

import attrs

BUCKETS = 16
ID_LIST_MAX = 32
PREFIX = 8
SKIP, FINGERPRINT, ID_LIST = 0, 1, 2
MAX_TS = 2**53
_MASK = (1 << 128) - 1
MAX_RANGES = 4096
"""A message with more ranges is refused (bounded work per round for a hostile peer)."""


class ReconcileError(ValueError):
    """A malformed reconciliation message."""


Bound = tuple[int, bytes]
INFINITY: Bound = (MAX_TS, b"")


class SyncIndex:
    """The sorted `(created, id)` keys of the records a node holds, with fingerprints."""

    def __init__(self, keys: Iterable[tuple[int, bytes]] = ()) -> None:
        self.keys: list[tuple[int, bytes]] = sorted(keys)
        self._vals = [int.from_bytes(k[1][:16], "big") for k in self.keys]
        self._by_prefix: dict[bytes, list[bytes]] = {}
        self._created: dict[bytes, int] = {}
        for created, rid in self.keys:
            self._by_prefix.setdefault(rid[:PREFIX], []).append(rid)
            self._created[rid] = created

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, created: int, rid: bytes) -> None:
        if rid in self._created:
            return
        i = bisect.bisect_left(self.keys, (created, rid))
        self.keys.insert(i, (created, rid))
        self._vals.insert(i, int.from_bytes(rid[:16], "big"))
        self._by_prefix.setdefault(rid[:PREFIX], []).append(rid)
        self._created[rid] = created

    def discard_id(self, rid: bytes) -> None:
        created = self._created.pop(rid, None)
        if created is None:
            return
        i = bisect.bisect_left(self.keys, (created, rid))
        del self.keys[i]
        del self._vals[i]
        same = self._by_prefix.get(rid[:PREFIX], [])
        if rid in same:
            same.remove(rid)
        if not same:
            self._by_prefix.pop(rid[:PREFIX], None)

    def resolve(self, prefix: bytes) -> list[bytes]:
        return list(self._by_prefix.get(prefix, ()))

    def position(self, bound: Bound) -> int:
        return bisect.bisect_left(self.keys, bound)

    def fingerprint(self, start: int, end: int) -> bytes:
        total = sum(self._vals[start:end]) & _MASK
        return hashlib.blake2b(
            total.to_bytes(16, "big") + (end - start).to_bytes(8, "big"), digest_size=16
        ).digest()

    def bound_before(self, i: int) -> Bound:
        """The shortest bound that separates key i-1 from key i (key i is inside)."""
        created, rid = self.keys[i]
        if i == 0:
            return (created, b"")
        prev_created, prev_id = self.keys[i - 1]
        if prev_created != created:
            return (created, b"")
        n = 0
        while n < len(rid) and rid[n] == prev_id[n]:
            n += 1
        return (created, rid[: n + 1])


@attrs.define
class Outcome:
    """What one side learned from processing a message."""

    reply: list[Any]
    need: set[bytes] = attrs.Factory(set)
    """Id prefixes the other side has and we lack."""
    have: set[bytes] = attrs.Factory(set)
    """Full ids we hold and the other side lacks."""

    @property
    def done(self) -> bool:
        return not self.reply


class _Writer:
    def __init__(self) -> None:
        self.out: list[Any] = []
        self.last_ts = 0
        self.pending_skip: Bound | None = None

    def _emit(self, bound: Bound, mode: int, payload: Any) -> None:
        ts, prefix = bound
        self.out.append([ts - self.last_ts, prefix, mode, payload])
        self.last_ts = ts

    def skip(self, bound: Bound) -> None:
        self.pending_skip = bound

    def add(self, bound: Bound, mode: int, payload: Any) -> None:
        if self.pending_skip is not None:
            self._emit(self.pending_skip, SKIP, None)
            self.pending_skip = None
        self._emit(bound, mode, payload)

    def finish(self) -> list[Any]:
        return self.out  # a trailing skip is implied


def _split(index: SyncIndex, writer: _Writer, start: int, end: int, upper: Bound) -> None:
    count = end - start
    if count <= ID_LIST_MAX:
        writer.add(upper, ID_LIST, [index.keys[i][1][:PREFIX] for i in range(start, end)])
        return
    step, extra = divmod(count, BUCKETS)
    pos = start
    for b in range(BUCKETS):
        nxt = pos + step + (1 if b < extra else 0)
        bound = upper if b == BUCKETS - 1 else index.bound_before(nxt)
        writer.add(bound, FINGERPRINT, index.fingerprint(pos, nxt))
        pos = nxt


def initiate(index: SyncIndex) -> list[Any]:
    writer = _Writer()
    _split(index, writer, 0, len(index), INFINITY)
    return writer.finish()


def _decode(message: Any) -> list[tuple[Bound, int, Any]]:
    if not isinstance(message, list) or len(message) > MAX_RANGES:
        raise ReconcileError(f"a reconciliation message is a list of at most {MAX_RANGES} ranges")
    ranges = []
    ts = 0
    previous: Bound = (-1, b"")
    for item in message:
        if not isinstance(item, list) or len(item) != 4:
            raise ReconcileError("a range is [ts delta, id prefix, mode, payload]")
        delta, prefix, mode, payload = item
        if type(delta) is not int or delta < 0 or type(prefix) is not bytes or len(prefix) > 32:
            raise ReconcileError("bad range bound")
        ts += delta
        bound = (ts, prefix)
        if bound <= previous or ts > MAX_TS:
            raise ReconcileError("range bounds must increase")
        previous = bound
        if mode == FINGERPRINT:
            if type(payload) is not bytes or len(payload) != 16:
                raise ReconcileError("a fingerprint is 16 bytes")
        elif mode == ID_LIST:
            if not isinstance(payload, list) or len(payload) > 4 * ID_LIST_MAX:
                raise ReconcileError(f"an id list has at most {4 * ID_LIST_MAX} ids")
            if any(type(p) is not bytes or len(p) != PREFIX for p in payload):
                raise ReconcileError(f"ids in a list are {PREFIX}-byte prefixes")
        elif mode != SKIP:
            raise ReconcileError(f"unknown range mode {mode!r}")
        ranges.append((bound, mode, payload))
    return ranges


def process(index: SyncIndex, message: Any, *, initiator: bool) -> Outcome:
    """Answer one message. The initiator resolves id lists into need/have; the responder answers
    an id list with its own ids of that range (so the initiator learns both directions)."""
    ranges = _decode(message)
    writer = _Writer()
    outcome = Outcome([])
    lower = 0
    for bound, mode, payload in [*ranges, (INFINITY, SKIP, None)] if ranges else []:
        upper = index.position(bound)
        if mode == SKIP:
            writer.skip(bound)
        elif mode == FINGERPRINT:
            if index.fingerprint(lower, upper) == payload:
                writer.skip(bound)
            else:
                _split(index, writer, lower, upper, bound)
        else:  # ID_LIST
            mine = {index.keys[i][1][:PREFIX]: index.keys[i][1] for i in range(lower, upper)}
            if initiator:
                theirs = set(payload)
                outcome.need.update(theirs - mine.keys())
                outcome.have.update(rid for p, rid in mine.items() if p not in theirs)
                writer.skip(bound)
            elif upper - lower > ID_LIST_MAX:
                _split(index, writer, lower, upper, bound)  # too many to list: narrow it down
            else:
                writer.add(bound, ID_LIST, list(mine))
        lower = upper
    outcome.reply = writer.finish()
    return outcome
