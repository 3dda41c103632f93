"""Iterative Kademlia lookups (FIND_NODE, FIND_VALUE, STORE) over an abstract RPC.

Everything network-facing goes through `DhtRpc`, a Protocol with four coroutines. The node
implements it on its encrypted connections (frames DHT_FIND_NODE ... DHT_STORE_RESP), tests and the
simulator implement it in-process (`zeone.dht.simulation`). The lookup code never knows which.

The algorithm (Kademlia §2.3, with the usual asynchronous refinement):

- Start from the k contacts closest to the target that the routing table knows (`seeds`).
- Keep up to alpha RPCs in flight to the closest not-yet-queried candidates among the k closest
  known. An RPC that raises one of `RPC_FAILURES` or exceeds `rpc_timeout` marks that peer failed
  and the lookup moves on; a slow peer costs one timeout, never a stall. Peers that get pushed out
  of the k closest while their RPC is in flight no longer hold one of the alpha slots.
- Merge every answer into the candidate list; stop when the k closest candidates that did not fail
  have all answered (no closer node can be learned from anyone we have not asked).
- FIND_VALUE stops at the first valid record for single-publisher keys and remembers the closest
  node that answered without it, where the caller may cache the record (Kademlia §2.3). For
  multi-publisher keys (provider records) it keeps going until `count` publishers are found or the
  lookup ends.

S/Kademlia disjoint paths (Baumgart & Mies 2007): with `disjoint_paths = d > 1` the seeds are dealt
round-robin to d paths; each path runs the algorithm above on its own candidate list, and a node is
queried by at most one path. An adversary who hijacks one path (answers only with its own nodes)
cannot hijack the others unless it sits on all of them; results are merged.

Hostile answers: a peer's answer must be a list of at most `max_answer_contacts` `Contact`s (and,
for FIND_VALUE, records for the requested key that pass the validators); anything else drops the
whole answer and counts the peer as failed. Our own id in an answer is skipped, not an error.

Measurements: `LookupResult.hops` is the length of the chain of referrals that led to the answer
(1 when a seed answered), `queried` and `failed` the peers contacted.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

import attrs
import trio

from zeone.dht.contact import Contact
from zeone.dht.records import InvalidRecord, Record, Validators, key_id
from zeone.dht.routing import DEFAULT_K, as_int
from zeone.errors import ZeoneError
from zeone.identity import NodeId

DEFAULT_ALPHA = 3
DEFAULT_RPC_TIMEOUT = 5.0
"""Seed 003 §2.1 RPC_TIMEOUT."""


class DhtRpcError(ZeoneError):
    """Raised by `DhtRpc` implementations when a peer cannot be reached or answered badly."""


RPC_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    ZeoneError,  # includes ProtocolError, DhtRpcError, RemoteError, RequestTimeout
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.BusyResourceError,
)
"""Exceptions from a `DhtRpc` call that mean "this peer failed"; anything else is a bug and
propagates."""


@runtime_checkable
class DhtRpc(Protocol):
    """The four Kademlia RPCs, as seen by the node that sends them.

    Implementations validate what peers send (`Contact.from_wire`, `Record.from_wire`) and raise
    one of `RPC_FAILURES` when the peer is unreachable, answers malformed data or refuses. They
    need not time out themselves: lookups wrap every call in `rpc_timeout`.
    """

    async def find_node(self, contact: Contact, target: NodeId) -> list[Contact]:
        """The k contacts `contact` knows closest to `target`."""
        ...

    async def find_value(self, contact: Contact, key: bytes) -> tuple[list[Record], list[Contact]]:
        """The records `contact` holds for `key`, and contacts closer to it."""
        ...

    async def store(self, contact: Contact, record: Record) -> bool:
        """Ask `contact` to keep `record`; True if it acknowledged (durably stored)."""
        ...

    async def ping(self, contact: Contact) -> bool:
        """True if `contact` is alive."""
        ...


@attrs.frozen
class LookupConfig:
    k: int = DEFAULT_K
    alpha: int = DEFAULT_ALPHA
    disjoint_paths: int = 1
    """S/Kademlia d; 1 is plain Kademlia."""
    rpc_timeout: float = DEFAULT_RPC_TIMEOUT
    max_answer_contacts: int | None = None
    """Largest contact list accepted in one answer; defaults to 2k."""

    def __attrs_post_init__(self) -> None:
        if self.k < 1 or self.alpha < 1 or self.disjoint_paths < 1:
            raise ValueError("k, alpha and disjoint_paths must be at least 1")
        if not self.rpc_timeout > 0:
            raise ValueError(f"rpc_timeout must be > 0, got {self.rpc_timeout!r}")

    @property
    def answer_limit(self) -> int:
        return self.max_answer_contacts or 2 * self.k


@attrs.frozen
class LookupResult:
    target: NodeId
    closest: tuple[Contact, ...]
    """Up to k peers closest to the target that answered, closest first."""
    records: tuple[Record, ...] = ()
    """FIND_VALUE: the valid records found (merged: newest seq per publisher)."""
    hops: int = 0
    queried: frozenset[NodeId] = frozenset()
    failed: frozenset[NodeId] = frozenset()
    cache_candidate: Contact | None = None
    """FIND_VALUE: the closest peer that answered without the record (cache it there)."""

    @property
    def found(self) -> bool:
        return bool(self.records)


@attrs.frozen
class StoreResult:
    record: Record
    acks: int
    """Peers that acknowledged the STORE."""
    attempted: int
    lookup: LookupResult
    pending: int = 0
    """STOREs still in flight when the put returned at its quorum (they go on in the background)."""


class _Tally:
    """Counts the STOREs of one put; `done` fires at the quorum of acks or when all are over."""

    __slots__ = ("acks", "done", "pending", "quorum")

    def __init__(self, total: int, quorum: int) -> None:
        self.acks = 0
        self.pending = total
        self.quorum = quorum
        self.done = trio.Event()

    def finish(self, ok: bool) -> None:
        self.pending -= 1
        self.acks += ok
        if self.acks >= self.quorum or not self.pending:
            self.done.set()


# Candidate states.
_NEW, _INFLIGHT, _OK, _FAILED = 0, 1, 2, 3


class _Candidate:
    __slots__ = ("contact", "hop", "path", "state")

    def __init__(self, contact: Contact, hop: int) -> None:
        self.contact = contact
        self.hop = hop
        self.state = _NEW
        self.path = -1  # the path that claimed (queried) it


class _Path:
    __slots__ = ("best", "done", "final", "members", "order")

    def __init__(self) -> None:
        self.order: list[int] = []  # distances of this path's candidates, sorted
        self.members: set[int] = set()
        self.done = False
        self.best: int | None = None  # distance of the closest peer that answered
        self.final = False
        """An answer brought nobody closer than `best`: the paper's last round, in which every
        unqueried peer among the k closest is asked at once instead of alpha at a time."""


_Answer = tuple[list[Record], list[Contact]]
_Call = Callable[[Contact], Awaitable[object]]


class Lookups:
    """Runs lookups for one local node. Stateless between lookups apart from counters.

    `on_response(contact)` and `on_failure(contact)` let the owner update its routing table
    (every answering peer is alive; failures count towards eviction).
    """

    def __init__(
        self,
        local: NodeId,
        rpc: DhtRpc,
        validators: Validators,
        config: LookupConfig | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
        on_response: Callable[[Contact], None] | None = None,
        on_failure: Callable[[Contact], None] | None = None,
    ) -> None:
        self.local = local
        self._local_int = as_int(local)
        self.rpc = rpc
        self.validators = validators
        self.config = config or LookupConfig()
        self.wall_clock = wall_clock
        self.on_response = on_response
        self.on_failure = on_failure
        self.counters = {"lookups": 0, "rpcs": 0, "rpc_failures": 0, "bad_answers": 0}

    # -- public ---------------------------------------------------------------------------------

    async def find_node(self, target: NodeId, seeds: Sequence[Contact]) -> LookupResult:
        """The k closest nodes to `target` that answer."""
        run = _Run(self, target, None, 0)
        return await run.execute(seeds)

    async def find_value(
        self, key: bytes, seeds: Sequence[Contact], *, count: int = DEFAULT_K
    ) -> LookupResult:
        """Records for `key`: the first valid one for single-publisher keys, up to `count`
        publishers for multi-publisher keys."""
        run = _Run(self, key_id(key), key, count)
        return await run.execute(seeds)

    async def store(
        self,
        record: Record,
        seeds: Sequence[Contact],
        *,
        quorum: int | None = None,
        background: trio.Nursery | None = None,
    ) -> StoreResult:
        """Find the k closest nodes to the record's key and STORE it on each, in parallel.

        With `quorum` and a `background` nursery, return as soon as `quorum` peers have
        acknowledged (durably stored) the record; the other STOREs go on in `background` and
        `StoreResult.pending` says how many were still in flight. Without, wait for every STORE.
        """
        lookup = await self.find_node(record.target, seeds)
        targets = lookup.closest[: self.config.k]
        if quorum is None or background is None or quorum >= len(targets):
            acks = await self.store_at(targets, record)
            return StoreResult(record, acks, len(targets), lookup)
        tally = _Tally(len(targets), quorum)
        for contact in targets:
            background.start_soon(self._store_counted, contact, record, tally)
        await tally.done.wait()
        return StoreResult(record, tally.acks, len(targets), lookup, tally.pending)

    async def _store_counted(self, contact: Contact, record: Record, tally: _Tally) -> None:
        ok = await self.call(self.rpc.store, contact, record) is True
        tally.finish(ok)

    async def store_at(self, contacts: Sequence[Contact], record: Record) -> int:
        """STORE `record` on each contact in parallel; how many acknowledged."""
        acks = 0

        async def one(contact: Contact) -> None:
            nonlocal acks
            if await self.call(self.rpc.store, contact, record) is True:
                acks += 1

        async with trio.open_nursery() as nursery:
            for contact in contacts:
                nursery.start_soon(one, contact)
        return acks

    async def call(self, method: Callable[..., Awaitable[object]], *args: object) -> object:
        """One RPC with the timeout; returns `_FAILED_CALL` on failure (and reports it)."""
        self.counters["rpcs"] += 1
        contact = args[0]
        with trio.move_on_after(self.config.rpc_timeout):
            try:
                return await method(*args)
            except RPC_FAILURES:
                pass
        self.counters["rpc_failures"] += 1
        if self.on_failure is not None:
            self.on_failure(contact)  # type: ignore[arg-type]
        return _FAILED_CALL


class _FailedCall:
    def __repr__(self) -> str:
        return "<failed call>"


_FAILED_CALL = _FailedCall()


class _Run:
    """The state of one lookup."""

    def __init__(self, owner: Lookups, target: NodeId, key: bytes | None, count: int) -> None:
        self.owner = owner
        self.config = owner.config
        self.target = target
        self.target_int = as_int(target)
        self.key = key
        self.count = count
        self.multi = key is not None and owner.validators.is_multi_publisher(key)
        self.candidates: dict[int, _Candidate] = {}  # by distance to the target
        self.paths = [_Path() for _ in range(self.config.disjoint_paths)]
        self.records: dict[bytes, Record] = {}  # by publisher
        self.value_hop = 0
        self.without_value: list[int] = []  # distances of peers that answered with no record
        self.stop = False

    # -- driving --------------------------------------------------------------------------------

    async def execute(self, seeds: Sequence[Contact]) -> LookupResult:
        self.owner.counters["lookups"] += 1
        ordered = sorted(
            (c for c in seeds if c.int_id != self.owner._local_int),
            key=lambda c: c.int_id ^ self.target_int,
        )
        for index, contact in enumerate(ordered[: self.config.k]):
            self._add(self.paths[index % len(self.paths)], contact, 1)
        send, receive = trio.open_memory_channel[tuple[int, _Candidate, object]](math.inf)
        async with trio.open_nursery() as nursery:
            while not self._schedule(nursery, send):
                index, candidate, answer = await receive.receive()
                self._absorb(index, candidate, answer)
            nursery.cancel_scope.cancel()  # RPCs still in flight are no longer needed
        return self._result()

    def _schedule(self, nursery: trio.Nursery, send: trio.MemorySendChannel) -> bool:
        """Start the RPCs each path may start; True when the lookup is finished."""
        if self.stop:
            return True
        finished = True
        k, alpha = self.config.k, self.config.alpha
        candidates = self.candidates
        for index, path in enumerate(self.paths):
            if path.done:
                continue
            fresh: list[_Candidate] = []
            active = seen = 0
            for distance in path.order:
                candidate = candidates[distance]
                state = candidate.state
                if state == _FAILED or (candidate.path != -1 and candidate.path != index):
                    continue
                seen += 1
                if state == _NEW:
                    fresh.append(candidate)
                elif state == _INFLIGHT:
                    active += 1
                if seen >= k:
                    break
            if not fresh and not active:
                path.done = True
                continue
            finished = False
            width = k if path.final else alpha
            for candidate in fresh[: max(0, width - active)]:
                candidate.state = _INFLIGHT
                candidate.path = index
                nursery.start_soon(self._query, index, candidate, send)
        return finished

    async def _query(self, index: int, candidate: _Candidate, send: trio.MemorySendChannel) -> None:
        owner = self.owner
        if self.key is None:
            answer = await owner.call(owner.rpc.find_node, candidate.contact, self.target)
        else:
            answer = await owner.call(owner.rpc.find_value, candidate.contact, self.key)
        send.send_nowait((index, candidate, answer))

    # -- answers --------------------------------------------------------------------------------

    def _absorb(self, index: int, candidate: _Candidate, answer: object) -> None:
        if answer is _FAILED_CALL:
            candidate.state = _FAILED
            return
        if self.key is None:
            contacts = self._check_contacts(answer)
            records: list[Record] = []
        else:
            checked = self._check_value_answer(answer)
            contacts, records = checked if checked is not None else (None, [])
        if contacts is None:
            self.owner.counters["bad_answers"] += 1
            candidate.state = _FAILED
            if self.owner.on_failure is not None:
                self.owner.on_failure(candidate.contact)
            return
        candidate.state = _OK
        if self.owner.on_response is not None:
            self.owner.on_response(candidate.contact)
        hop = candidate.hop + 1
        path = self.paths[index]
        local, target = self.owner._local_int, self.target_int
        answered = candidate.contact.int_id ^ target
        best = path.best if path.best is not None and path.best < answered else answered
        if not path.final and path.best is not None:
            path.final = all(contact.int_id ^ target >= best for contact in contacts)
        path.best = best
        # `_add` inlined: this loop runs for every contact of every answer.
        members, order, known = path.members, path.order, self.candidates
        for contact in contacts:
            distance = contact.int_id ^ target
            other = known.get(distance)
            if other is None:
                if distance == local ^ target:
                    continue  # ourselves
                known[distance] = _Candidate(contact, hop)
            elif hop < other.hop:
                other.hop = hop
            if distance not in members:
                members.add(distance)
                bisect.insort(order, distance)
        if self.key is None:
            return
        if not records:
            self.without_value.append(candidate.contact.int_id ^ self.target_int)
            return
        if not self.records:
            self.value_hop = candidate.hop
        for record in records:
            current = self.records.get(record.publisher)
            if current is None or record.seq > current.seq:
                self.records[record.publisher] = record
        if not self.multi or len(self.records) >= self.count:
            self.stop = True

    def _add(self, path: _Path, contact: Contact, hop: int) -> None:
        x = contact.int_id
        if x == self.owner._local_int:
            return
        distance = x ^ self.target_int
        candidate = self.candidates.get(distance)
        if candidate is None:
            self.candidates[distance] = _Candidate(contact, hop)
        elif hop < candidate.hop:
            candidate.hop = hop
        if distance not in path.members:
            path.members.add(distance)
            bisect.insort(path.order, distance)

    def _check_contacts(self, value: object) -> list[Contact] | None:
        if type(value) is not list or len(value) > self.config.answer_limit:
            return None
        for contact in value:
            if type(contact) is not Contact:
                return None
        return value

    def _check_value_answer(self, answer: object) -> tuple[list[Contact], list[Record]] | None:
        if type(answer) is not tuple or len(answer) != 2:
            return None
        records, contacts = answer
        checked = self._check_contacts(contacts)
        if checked is None or type(records) is not list:
            return None
        namespace = self.owner.validators.namespace_for(self.key)  # type: ignore[arg-type]
        limit = namespace.max_publishers if namespace is not None and self.multi else 1
        if len(records) > limit:
            return None
        now = self.owner.wall_clock()
        for record in records:
            if type(record) is not Record or record.key != self.key:
                return None
            try:
                self.owner.validators.check(record, now)
            except InvalidRecord:
                return None
        return checked, records

    # -- result ---------------------------------------------------------------------------------

    def _result(self) -> LookupResult:
        answered = sorted(d for d, c in self.candidates.items() if c.state == _OK)
        closest = tuple(self.candidates[d].contact for d in answered[: self.config.k])
        queried = frozenset(c.contact.node_id for c in self.candidates.values() if c.path != -1)
        failed = frozenset(
            c.contact.node_id for c in self.candidates.values() if c.state == _FAILED
        )
        records: tuple[Record, ...] = ()
        cache: Contact | None = None
        if self.records:
            records = tuple(self.owner.validators.merge(self.records.values()))
            hops = self.value_hop
            if not self.multi and self.without_value:
                cache = self.candidates[min(self.without_value)].contact
        else:
            hops = self.candidates[answered[0]].hop if answered else 0
        return LookupResult(self.target, closest, records, hops, queried, failed, cache)
