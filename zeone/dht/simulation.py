"""An in-process DHT network for tests, measurements and the simulator.

`SimNetwork` holds many `Dht` instances and gives each a `SimRpc`, a `DhtRpc` that calls the target
node's handlers directly (after an optional latency), so thousands of nodes run in one process on
Trio's virtual clock with the real table, store, validation and lookup code. Nodes can be made to
misbehave (`Behaviour`): unreachable, silent (every RPC times out), slow, returning nothing,
returning garbage, or colluding to eclipse lookups. Misbehaving nodes acknowledge STOREs without
keeping anything, which is the worst they can do to durability.

Building big networks fast: joining 10,000 nodes one by one through real lookups takes minutes, so
`seed_tables()` fills every routing table directly from one sorted list of all server ids. For a
node and each bucket index i, the ids sharing exactly i leading bits with it form one contiguous
interval of the sorted list (the prefix is fixed and bit i is flipped), found with two bisections;
up to k of them are sampled uniformly into bucket i. This yields the tables a long-running
Kademlia network converges to (full buckets far away, every node near us known), in
O(N log N) time.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import heapq
import random
from collections.abc import Callable, Iterable
from typing import Any

import trio

from zeone.dht.contact import Contact
from zeone.dht.dht import Dht, DhtConfig
from zeone.dht.lookup import DhtRpcError
from zeone.dht.records import Record, Validators, key_id
from zeone.dht.routing import ID_BITS
from zeone.dht.store import RecordStore
from zeone.identity import Identity, NodeId

VIRTUAL_EPOCH = 1_700_000_000.0


def virtual_wall_clock(base: float = VIRTUAL_EPOCH) -> Callable[[], float]:
    """A wall clock (epoch seconds) that follows Trio's clock, so record expiry runs on the
    virtual clock in tests."""
    return lambda: base + trio.current_time()


class Behaviour(enum.Enum):
    HONEST = "honest"
    DOWN = "down"
    """Unreachable: every RPC fails at once (connection refused)."""
    SILENT = "silent"
    """Connected but never answers: every RPC runs into the caller's timeout."""
    SLOW = "slow"
    """Answers correctly after `SimNetwork.slow_delay` seconds."""
    EMPTY = "empty"
    """Answers with no contacts and no records."""
    GARBAGE = "garbage"
    """Answers with malformed data."""
    ECLIPSE = "eclipse"
    """Colludes: answers only with other ECLIPSE nodes closest to the target, never a record."""


_LYING = frozenset({Behaviour.EMPTY, Behaviour.GARBAGE, Behaviour.ECLIPSE})


class SimRpc:
    """The `DhtRpc` of one simulated node."""

    def __init__(self, network: SimNetwork, owner: NodeId, *, client: bool = False) -> None:
        self.network = network
        self.owner = owner.int
        self.client = client

    def _sender(self) -> Contact:
        return self.network.nodes[self.owner].local_contact

    async def _reach(self, contact: Contact) -> tuple[Dht, Behaviour]:
        network = self.network
        network.calls += 1
        if network.latency:
            await trio.sleep(network.latency)
        else:
            await trio.lowlevel.checkpoint()
        node = network.nodes.get(contact.int_id)
        behaviour = network.behaviour.get(contact.int_id, Behaviour.HONEST)
        if node is None or behaviour is Behaviour.DOWN:
            raise DhtRpcError(f"{contact.node_id.short()}: connection refused")
        if behaviour is Behaviour.SILENT:
            await trio.sleep_forever()
        if behaviour is Behaviour.SLOW:
            await trio.sleep(network.slow_delay)
        return node, behaviour

    async def find_node(self, contact: Contact, target: NodeId) -> list[Contact]:
        node, behaviour = await self._reach(contact)
        if behaviour in _LYING:
            if behaviour is Behaviour.EMPTY:
                return []
            if behaviour is Behaviour.GARBAGE:
                return ["not a contact", 42]  # type: ignore[list-item]
            return self.network.eclipse_closest(target.int)
        return node.handle_find_node(self._sender(), target, sender_is_client=self.client)

    async def find_value(self, contact: Contact, key: bytes) -> tuple[list[Record], list[Contact]]:
        node, behaviour = await self._reach(contact)
        if behaviour in _LYING:
            if behaviour is Behaviour.EMPTY:
                return [], []
            if behaviour is Behaviour.GARBAGE:
                return [b"junk"], [None]  # type: ignore[list-item]
            return [], self.network.eclipse_closest(key_id(key).int)
        return node.handle_find_value(self._sender(), key, sender_is_client=self.client)

    async def store(self, contact: Contact, record: Record) -> bool:
        node, behaviour = await self._reach(contact)
        if behaviour in _LYING:
            return True  # acknowledge, keep nothing
        return node.handle_store(self._sender(), record, sender_is_client=self.client)

    async def ping(self, contact: Contact) -> bool:
        node, behaviour = await self._reach(contact)
        if behaviour in _LYING:
            return True
        return node.handle_ping(self._sender(), sender_is_client=self.client)


class SimNetwork:
    """Many `Dht`s in one process. Create nodes with `spawn`, wire them with `seed_tables` (or
    real `bootstrap` calls), then run lookups from any node."""

    def __init__(
        self,
        *,
        config: DhtConfig | None = None,
        latency: float = 0.0,
        slow_delay: float = 60.0,
        seed: int = 0,
        validators: Validators | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config or DhtConfig()
        self.latency = latency
        self.slow_delay = slow_delay
        self.seed = seed
        self.rng = random.Random(seed)
        self.validators = validators if validators is not None else Validators.default()
        self.wall_clock = wall_clock or virtual_wall_clock()
        self.nodes: dict[int, Dht] = {}
        self.behaviour: dict[int, Behaviour] = {}
        self.calls = 0
        self._eclipse: list[Contact] = []
        self._count = 0

    def __len__(self) -> int:
        return len(self.nodes)

    def spawn(
        self,
        *,
        behaviour: Behaviour = Behaviour.HONEST,
        client_only: bool = False,
        config: DhtConfig | None = None,
        store: RecordStore | None = None,
    ) -> Dht:
        """A new node with a deterministic identity and address `memory://simN`."""
        index = self._count
        self._count += 1
        identity = Identity.from_seed(
            hashlib.sha256(f"zeone-dht-sim:{self.seed}:{index}".encode()).digest()
        )
        rpc = SimRpc(self, identity.node_id, client=client_only)
        dht = Dht(
            identity,
            rpc,
            addresses=(f"memory://sim{index}",),
            store=store
            if store is not None
            else RecordStore(None, self.validators, durable=False, clock=self.wall_clock),
            validators=self.validators,
            config=config or self.config,
            client_only=client_only,
            wall_clock=self.wall_clock,
            rng=random.Random(f"{self.seed}:{index}"),
        )
        self.nodes[identity.node_id.int] = dht
        self.set_behaviour(dht, behaviour)
        return dht

    def spawn_many(self, count: int, **kwargs: Any) -> list[Dht]:
        return [self.spawn(**kwargs) for _ in range(count)]

    def set_behaviour(self, dht: Dht, behaviour: Behaviour) -> None:
        x = dht.node_id.int
        previous = self.behaviour.get(x)
        self.behaviour[x] = behaviour
        if previous is Behaviour.ECLIPSE and behaviour is not Behaviour.ECLIPSE:
            self._eclipse = [c for c in self._eclipse if c.int_id != x]
        elif behaviour is Behaviour.ECLIPSE and previous is not Behaviour.ECLIPSE:
            self._eclipse.append(dht.local_contact)

    def honest(self) -> list[Dht]:
        return [
            dht
            for x, dht in self.nodes.items()
            if self.behaviour.get(x, Behaviour.HONEST) is Behaviour.HONEST and not dht.client_only
        ]

    def eclipse_closest(self, target: int) -> list[Contact]:
        return heapq.nsmallest(self.config.k, self._eclipse, key=lambda c: c.int_id ^ target)

    def seed_tables(self, nodes: Iterable[Dht] | None = None) -> None:
        """Fill routing tables directly from the sorted list of server ids (module docstring).

        Clients are never put into tables, but their own tables are filled too.
        """
        servers = sorted(
            (dht.node_id.int, dht.local_contact)
            for dht in self.nodes.values()
            if not dht.client_only
        )
        ids = [x for x, _ in servers]
        contacts = [c for _, c in servers]
        rng = self.rng
        for dht in nodes if nodes is not None else self.nodes.values():
            local = dht.node_id.int
            table = dht.table
            k = table.k
            for index in range(ID_BITS):
                bit = ID_BITS - 1 - index
                low = (local ^ (1 << bit)) >> bit << bit
                start = bisect.bisect_left(ids, low)
                stop = bisect.bisect_left(ids, low + (1 << bit))
                size = stop - start
                picks = rng.sample(range(start, stop), k) if size > k else range(start, stop)
                for position in picks:
                    table.add(contacts[position])
                # Stop once no other id shares index + 1 bits with us.
                same = local >> bit << bit
                if bisect.bisect_left(ids, same + (1 << bit)) - bisect.bisect_left(ids, same) <= (
                    1 if not dht.client_only else 0
                ):
                    break

    def closest_servers(self, target: int, count: int) -> list[Dht]:
        """Ground truth: the `count` honest-or-not server nodes closest to `target`."""
        return heapq.nsmallest(
            count,
            (d for d in self.nodes.values() if not d.client_only),
            key=lambda d: d.node_id.int ^ target,
        )
