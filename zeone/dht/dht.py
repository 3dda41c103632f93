"""`Dht`: one node's DHT service — routing table, record store and lookups glued together.

The outbound side is `put` / `get` / `find_node` / `provide` / `find_providers`, which run
iterative lookups through the node's `DhtRpc`. The inbound side is the `handle_*` methods, which
the node's connection layer calls when a DHT frame arrives; they are synchronous (a table lookup
and at most one SQLite transaction) and they update the routing table with the sender.

Roles (seed 004 §3): light and mobile nodes are DHT *clients*. A client-only `Dht` issues lookups
and republishes its own records but never answers requests (its handlers raise `DhtClientOnly`),
and a server never puts a client into its routing table: the caller passes `sender_is_client`,
which it knows from the peer's handshake (see the package docstring), so other nodes never route
lookups through a phone that is about to go to sleep.

`run()` is the service the node starts in its nursery: bucket refresh, republishing (originals
re-signed with a new seq and `created`, replicas re-stored unchanged, both every
`republish_interval`) and expiry sweeps. It also owns the background tasks that ping-before-evict
and cache along the lookup path; without `run()` those are skipped, everything else works.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import trio

from zeone.dht.contact import Contact
from zeone.dht.lookup import (
    RPC_FAILURES,
    DhtRpc,
    LookupConfig,
    LookupResult,
    Lookups,
    StoreResult,
)
from zeone.dht.namespaces import Provider, ProviderInfo
from zeone.dht.records import DEFAULT_TTL, InvalidRecord, Record, Validators, key_id
from zeone.dht.routing import DEFAULT_MAX_PER_PREFIX, RoutingTable
from zeone.dht.store import RecordStore
from zeone.errors import ZeoneError
from zeone.identity import Identity, NodeId

log = logging.getLogger(__name__)


class DhtClientOnly(ZeoneError):
    """This node is a DHT client (light/mobile role) and does not serve DHT requests."""


@attrs.frozen
class DhtConfig:
    """Kademlia parameters (seed 003 §2.1) and maintenance intervals, in seconds."""

    k: int = 20
    alpha: int = 3
    disjoint_paths: int = 1
    rpc_timeout: float = 5.0
    max_per_prefix: int | None = DEFAULT_MAX_PER_PREFIX
    refresh_interval: float = 3600.0
    republish_interval: float = 3600.0
    expire_interval: float = 300.0
    maintenance_interval: float = 60.0
    """How often the refresh and republish loops look for work."""
    default_ttl: int = DEFAULT_TTL
    max_concurrent_maintenance: int = 8
    """Lookups the refresh/republish loops run at once."""
    max_answer_records: int = 64
    """Records in one FIND_VALUE answer (`messages.MAX_RECORDS`)."""
    max_answer_bytes: int = 1024 * 1024
    """Bytes of records in one FIND_VALUE answer, well inside the 4 MiB frame limit."""
    put_quorum: int | None = 3
    """`put` returns once this many peers have durably stored the record; the STOREs to the rest
    of the k closest go on in the background. None waits for all k."""
    max_pings: int = 16
    """Ping-before-evict probes in flight at once; newcomers beyond that wait in the
    replacement cache."""

    def lookup_config(self) -> LookupConfig:
        return LookupConfig(
            k=self.k,
            alpha=self.alpha,
            disjoint_paths=self.disjoint_paths,
            rpc_timeout=self.rpc_timeout,
        )


class Dht:
    """The DHT service of one node. See the module docstring."""

    def __init__(
        self,
        identity: Identity,
        rpc: DhtRpc,
        *,
        addresses: Sequence[str] = (),
        store: RecordStore | None = None,
        validators: Validators | None = None,
        config: DhtConfig | None = None,
        client_only: bool = False,
        table: RoutingTable | None = None,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.identity = identity
        self.node_id: NodeId = identity.node_id
        self.rpc = rpc
        self.config = config or DhtConfig()
        if store is not None and validators is not None and store.validators is not validators:
            raise ValueError("the store and the Dht must share one Validators registry")
        self.validators = (
            validators
            if validators is not None
            else (store.validators if store is not None else Validators.default())
        )
        self.store = (
            store
            if store is not None  # an empty store is falsy (it has __len__)
            else RecordStore(None, self.validators, durable=False, clock=wall_clock)
        )
        self.client_only = client_only
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        self.local_contact = Contact(self.node_id, tuple(addresses))
        self.table = (
            table
            if table is not None
            else RoutingTable(
                self.node_id, k=self.config.k, max_per_prefix=self.config.max_per_prefix
            )
        )
        if self.table.local != self.node_id:
            raise ValueError("the routing table belongs to another node id")
        self.lookups = Lookups(
            self.node_id,
            rpc,
            self.validators,
            self.config.lookup_config(),
            wall_clock=wall_clock,
            on_response=self._on_response,
            on_failure=self._on_failure,
        )
        self._nursery: trio.Nursery | None = None
        self._pinging: set[int] = set()
        self._handled = {"find_node": 0, "find_value": 0, "store": 0, "stored": 0, "ping": 0}

    def __repr__(self) -> str:
        role = "client" if self.client_only else "server"
        return f"<Dht {self.node_id.short()} {role} contacts={len(self.table)}>"

    def set_addresses(self, addresses: Sequence[str]) -> None:
        """Our listen addresses changed (known only once the transports listen)."""
        self.local_contact = Contact(self.node_id, tuple(addresses))

    # -- outbound operations --------------------------------------------------------------------

    async def lookup_node(self, target: NodeId) -> LookupResult:
        """Iterative FIND_NODE with the full result (hops, queried peers) for measurements."""
        seeds = self.table.closest(target, self.config.k)
        result = await self.lookups.find_node(target, seeds)
        self.table.mark_refreshed(target, trio.current_time())
        return result

    async def find_node(self, target: NodeId) -> list[Contact]:
        """The k nodes closest to `target` that answered."""
        return list((await self.lookup_node(target)).closest)

    async def lookup_value(self, key: bytes, count: int | None = None) -> LookupResult:
        target = key_id(key)
        seeds = self.table.closest(target, self.config.k)
        result = await self.lookups.find_value(key, seeds, count=count or self.config.k)
        self.table.mark_refreshed(target, trio.current_time())
        return result

    async def get(self, key: bytes) -> list[Record]:
        """The current records for `key` (newest per publisher; one for single-publisher keys),
        from the network merged with any we hold; [] if none was found."""
        result = await self.lookup_value(key)
        local = self.store.get(key)
        records = self.validators.merge([*result.records, *local])
        if result.cache_candidate is not None and records and self._nursery is not None:
            self._nursery.start_soon(self._cache_at, result.cache_candidate, records[0])
        return records

    async def put(
        self, key: bytes, value: bytes, ttl: int | None = None, *, seq: int | None = None
    ) -> StoreResult:
        """Publish `value` under `key` as this node, keep republishing it while we run.

        Raises InvalidRecord if the record breaks a namespace rule (checked locally first, so a
        mistake is an error here rather than k silent rejections).
        """
        record = self._sign(key, value, ttl if ttl is not None else self.config.default_ttl, seq)
        outcome = await self.store.put_async(record, original=True)
        if not outcome.accepted:
            raise InvalidRecord(outcome.reason)
        return await self._store_remote(record, quorum=self.config.put_quorum)

    async def provide(
        self, key: bytes, ttl: int | None = None, *, meta: dict[str, Any] | None = None
    ) -> StoreResult:
        """Announce that this node provides `key` (a `provider:` or `service:` key)."""
        if not self.validators.is_multi_publisher(key):
            raise ValueError(f"{key[:40]!r} is not in a multi-publisher (provider) namespace")
        info = ProviderInfo(self.local_contact.addresses, meta or {})
        return await self.put(key, info.to_value(), ttl)

    async def find_providers(self, key: bytes, count: int = 20) -> list[Provider]:
        """Up to `count` providers of `key`, most recently announced first."""
        result = await self.lookup_value(key, count)
        records = self.validators.merge([*result.records, *self.store.get(key)])
        providers = []
        for record in records[:count]:
            try:
                providers.append(Provider.from_record(record))
            except (InvalidRecord, ValueError):  # validated already; defensive
                continue
        return providers

    def stop_publishing(self, key: bytes) -> bool:
        """Stop republishing our record for `key`; copies elsewhere expire on their own."""
        return self.store.remove(key, self.identity.public_key) > 0

    async def bootstrap(self, contacts: Iterable[Contact]) -> int:
        """Join the network through `contacts` (seed nodes, a saved table).

        Kademlia's join: look up our own id, which fills the buckets near us and tells the nodes
        near us about us, then refresh every bucket further away than our closest neighbour.
        Once the own-id lookup is done the node is reachable and can look anything up, so while
        the service runs the refreshes continue in the background (as libp2p does) instead of
        delaying the join. Returns the number of contacts in the routing table.
        """
        for contact in contacts:
            if contact.node_id != self.node_id:
                self.table.add(contact)
        if not len(self.table):
            return 0
        result = await self.lookup_node(self.node_id)
        neighbour = result.closest[0] if result.closest else None
        if neighbour is None:
            return len(self.table)
        nearest = self.table.bucket_index(neighbour.node_id)
        targets = [self.table.random_id_in_bucket(i, self.rng) for i in range(nearest)]
        if self._nursery is not None:
            self._nursery.start_soon(self._run_lookups, targets)
        else:
            await self._run_lookups(targets)
        return len(self.table)

    # -- inbound handlers -----------------------------------------------------------------------

    def handle_ping(self, sender: Contact, *, sender_is_client: bool = False) -> bool:
        self._serve(sender, sender_is_client)
        self._handled["ping"] += 1
        return True

    def handle_find_node(
        self, sender: Contact, target: NodeId, *, sender_is_client: bool = False
    ) -> list[Contact]:
        """The k contacts we know closest to `target` (never the sender itself)."""
        self._serve(sender, sender_is_client)
        self._handled["find_node"] += 1
        return self.table.closest(target, self.config.k, exclude=(sender.int_id,))

    def handle_find_value(
        self, sender: Contact, key: bytes, *, sender_is_client: bool = False
    ) -> tuple[list[Record], list[Contact]]:
        """Our records for `key`, and the contacts closest to it (omitted when a
        single-publisher record answers the question)."""
        self._serve(sender, sender_is_client)
        self._handled["find_value"] += 1
        records = self.store.get(key)
        if records and not self.validators.is_multi_publisher(key):
            return records[:1], []
        # Bounded so the answer always fits in one frame, however many providers a key has.
        budget, answer = self.config.max_answer_bytes, []
        for record in records[: self.config.max_answer_records]:
            budget -= record.size()
            if budget < 0:
                break
            answer.append(record)
        contacts = self.table.closest(key_id(key), self.config.k, exclude=(sender.int_id,))
        return answer, contacts

    def handle_store(
        self, sender: Contact, record: Record, *, sender_is_client: bool = False
    ) -> bool:
        """Validate and durably store `record`; True only once it is committed."""
        self._serve(sender, sender_is_client)
        self._handled["store"] += 1
        stored = self.store.put(record)
        if stored:
            self._handled["stored"] += 1
        return stored

    async def handle_store_async(
        self, sender: Contact, record: Record, *, sender_is_client: bool = False
    ) -> bool:
        """`handle_store` for the network path: the commit does not hold the event loop."""
        self._serve(sender, sender_is_client)
        self._handled["store"] += 1
        stored = (await self.store.put_async(record)).accepted
        if stored:
            self._handled["stored"] += 1
        return stored

    # -- service --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Maintenance loops and background tasks, until cancelled."""
        self.table.created = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._refresh_loop)
                nursery.start_soon(self._republish_loop)
                nursery.start_soon(self._expire_loop)
                task_status.started()
        finally:
            self._nursery = None

    async def refresh(self) -> int:
        """Look up a random id in every bucket not refreshed for `refresh_interval`."""
        targets = self.table.stale_buckets(
            trio.current_time(), self.config.refresh_interval, self.rng
        )
        await self._run_lookups(targets)
        return len(targets)

    async def republish(self) -> int:
        """Republish every record due; returns how many were republished."""
        due = self.store.due_for_republish(self.wall_clock(), self.config.republish_interval)
        limiter = trio.CapacityLimiter(self.config.max_concurrent_maintenance)
        count = 0

        async def one(record: Record, original: bool) -> None:
            nonlocal count
            async with limiter:
                if original and record.publisher == self.identity.public_key:
                    fresh = self._sign(record.key, record.value, record.ttl, None)
                    if not self.store.put(fresh, original=True):
                        return
                    record = fresh
                elif self.client_only:
                    return  # clients hold no replicas worth spreading
                self.store.mark_republished(record, self.wall_clock())
                await self._store_remote(record)
                count += 1

        async with trio.open_nursery() as nursery:
            for stored in due:
                nursery.start_soon(one, stored.record, stored.original)
        return count

    def statistics(self) -> dict[str, Any]:
        """Counters for /status and metrics."""
        return {
            "node_id": str(self.node_id),
            "client_only": self.client_only,
            "routing": self.table.statistics(),
            "store": self.store.statistics(),
            "lookups": dict(self.lookups.counters),
            "handled": dict(self._handled),
            "pinging": len(self._pinging),
        }

    # -- internals ------------------------------------------------------------------------------

    def _sign(self, key: bytes, value: bytes, ttl: int, seq: int | None) -> Record:
        now_ms = int(self.wall_clock() * 1000)
        if seq is None:
            # Monotonic even if the store was lost: at least the clock, in milliseconds.
            previous = self.store.highest_seq(key, self.identity.public_key)
            seq = max(now_ms, previous + 1 if previous is not None else 0)
        return Record.create(self.identity, key, value, seq, ttl, created=now_ms)

    async def _store_remote(self, record: Record, *, quorum: int | None = None) -> StoreResult:
        seeds = self.table.closest(record.target, self.config.k)
        result = await self.lookups.store(record, seeds, quorum=quorum, background=self._nursery)
        self.table.mark_refreshed(record.target, trio.current_time())
        return result

    async def _run_lookups(self, targets: Sequence[NodeId]) -> None:
        limiter = trio.CapacityLimiter(self.config.max_concurrent_maintenance)

        async def one(target: NodeId) -> None:
            async with limiter:
                await self.lookup_node(target)

        async with trio.open_nursery() as nursery:
            for target in targets:
                nursery.start_soon(one, target)

    def _serve(self, sender: Contact, sender_is_client: bool) -> None:
        if self.client_only:
            raise DhtClientOnly("this node is a DHT client and does not serve DHT requests")
        if type(sender) is not Contact:
            raise TypeError(f"sender must be a Contact, got {type(sender).__name__}")
        if not sender_is_client:
            self._observe(sender)

    def observe(self, contact: Contact) -> None:
        """A DHT server we are connected to (heard from outside a DHT request)."""
        if not self.client_only and contact.node_id != self.node_id:
            self._observe(contact)

    def _observe(self, contact: Contact) -> None:
        """A server we heard from: into the table, pinging the bucket's oldest if it is full."""
        oldest = self.table.add(contact)
        if (
            oldest is not None
            and self._nursery is not None
            and oldest.int_id not in self._pinging
            and len(self._pinging) < self.config.max_pings
        ):
            self._pinging.add(oldest.int_id)
            self._nursery.start_soon(self._ping_oldest, oldest)

    async def _ping_oldest(self, contact: Contact) -> None:
        try:
            alive = False
            with trio.move_on_after(self.config.rpc_timeout):
                try:
                    alive = await self.rpc.ping(contact) is True
                except RPC_FAILURES:
                    alive = False
            if alive:
                self.table.touch(contact.int_id)
            else:
                self.table.ping_failed(contact)
        finally:
            self._pinging.discard(contact.int_id)

    def _on_response(self, contact: Contact) -> None:
        self._observe(contact)

    def _on_failure(self, contact: Contact) -> None:
        self.table.record_failure(contact.int_id)

    async def _cache_at(self, contact: Contact, record: Record) -> None:
        await self.lookups.call(self.rpc.store, contact, record)

    async def _refresh_loop(self) -> None:
        while True:
            await trio.sleep(self.config.maintenance_interval)
            try:
                await self.refresh()
            except Exception:  # a maintenance bug must not take the node down
                log.exception("DHT bucket refresh failed")

    async def _republish_loop(self) -> None:
        while True:
            await trio.sleep(self.config.maintenance_interval)
            try:
                await self.republish()
            except Exception:
                log.exception("DHT republish failed")

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(self.config.expire_interval)
            try:
                self.store.expire(self.wall_clock())
            except Exception:
                log.exception("DHT expiry sweep failed")
