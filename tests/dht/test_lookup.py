"""Iterative lookups on an in-process network of 200 real `Dht` instances.

Everything runs on pytest-trio's autojump clock: RPC timeouts cost virtual seconds only, so the
assertions about time are exact and the suite stays fast.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import trio

from zeone.dht.contact import Contact
from zeone.dht.dht import Dht, DhtConfig
from zeone.dht.lookup import LookupConfig, Lookups
from zeone.dht.namespaces import PeerInfo, ProviderInfo, peer_key, provider_key
from zeone.dht.records import Record, key_id
from zeone.dht.routing import node_id_from_int
from zeone.dht.simulation import Behaviour, SimNetwork, SimRpc
from zeone.identity import Identity, NodeId

N = 200


def network(n: int = N, *, seed: int = 0, **config: object) -> tuple[SimNetwork, list[Dht]]:
    net = SimNetwork(seed=seed, config=DhtConfig(**config))  # type: ignore[arg-type]
    nodes = net.spawn_many(n)
    net.seed_tables()
    return net, nodes


def truth(net: SimNetwork, target: int, source: Dht, count: int) -> list[int]:
    closest = net.closest_servers(target, count + 1)
    return [d.node_id.int for d in closest if d is not source][:count]


async def publish_peer_records(net: SimNetwork, publishers: list[Dht]) -> list[bytes]:
    keys = []
    for dht in publishers:
        key = peer_key(dht.node_id)
        result = await dht.put(key, PeerInfo(dht.local_contact.addresses).to_value())
        assert result.acks >= 1
        keys.append(key)
    return keys


async def success_rate(net: SimNetwork, keys: list[bytes], rng: random.Random) -> float:
    readers = net.honest()
    found = 0
    for key in keys:
        records = await rng.choice(readers).get(key)
        found += bool(records) and records[0].key == key
    return found / len(keys)


# -- healthy network ------------------------------------------------------------------------------


async def test_find_node_returns_the_true_k_closest() -> None:
    net, nodes = network()
    rng = random.Random(1)
    exact = 0
    for _ in range(100):
        source = rng.choice(nodes)
        target = rng.getrandbits(160)
        result = await source.lookup_node(node_id_from_int(target))
        got = [c.int_id for c in result.closest]
        expected = truth(net, target, source, 20)
        assert got[0] == expected[0]
        assert got == sorted(got, key=lambda x: x ^ target)
        exact += got == expected
        assert 1 <= result.hops <= 4
        assert {c.node_id for c in result.closest} <= result.queried
        assert not result.failed
    assert exact >= 95


async def test_put_stores_on_the_k_closest_and_get_finds_it() -> None:
    net, nodes = network()
    publisher = nodes[7]
    key = peer_key(publisher.node_id)
    result = await publisher.put(key, PeerInfo(("memory://sim7",), role="seed").to_value())
    assert result.acks == result.attempted == 20
    holders = [d for d in net.nodes.values() if d.store.get(key)]
    closest = set(truth(net, key_id(key).int, publisher, 20))
    assert closest <= {d.node_id.int for d in holders}
    for reader in random.Random(2).sample(nodes, 20):
        records = await reader.get(key)
        assert records == [result.record]
        assert PeerInfo.from_value(records[0].value).role == "seed"


async def test_find_providers_collects_many_publishers() -> None:
    _net, nodes = network()
    key = provider_key(b"movie.mkv")
    providers = nodes[10:40]
    for dht in providers:
        assert (await dht.provide(key, meta={"n": dht.local_contact.addresses[0]})).acks > 0
    found = await nodes[100].find_providers(key, count=25)
    assert len(found) == 25
    assert len({p.contact.node_id for p in found}) == 25
    assert {p.contact.node_id for p in found} <= {d.node_id for d in providers}
    assert all(p.info.meta == {"n": p.contact.addresses[0]} for p in found)
    assert len(await nodes[101].find_providers(key, count=5)) >= 5


async def test_missing_values_end_the_lookup_empty_handed() -> None:
    _net, nodes = network()
    result = await nodes[0].lookup_value(b"peer:" + bytes(20))
    assert not result.found and result.cache_candidate is None
    assert len(result.closest) == 20
    assert await nodes[0].get(b"peer:" + bytes(20)) == []


# -- failures -------------------------------------------------------------------------------------


async def test_a_silent_node_costs_one_timeout_not_a_stall(autojump_clock: object) -> None:
    net, nodes = network(rpc_timeout=5.0)
    target = nodes[50].node_id
    net.set_behaviour(nodes[50], Behaviour.SILENT)  # the closest node to the target is dead
    start = trio.current_time()
    result = await nodes[0].lookup_node(target)
    elapsed = trio.current_time() - start
    assert 5.0 <= elapsed < 10.0
    assert target in result.failed and target not in {c.node_id for c in result.closest}
    assert len(result.closest) == 20
    # Unreachable nodes (connection refused) cost no time at all.
    net.set_behaviour(nodes[50], Behaviour.DOWN)
    start = trio.current_time()
    result = await nodes[1].lookup_node(target)
    assert trio.current_time() == start and target in result.failed


async def test_many_dead_nodes_never_stall_a_lookup(autojump_clock: object) -> None:
    net, nodes = network(rpc_timeout=5.0)
    rng = random.Random(3)
    for dht in rng.sample(nodes, 60):
        net.set_behaviour(dht, Behaviour.SILENT)
    alive = net.honest()
    for _ in range(20):
        source = rng.choice(alive)
        target = rng.getrandbits(160)
        start = trio.current_time()
        result = await source.lookup_node(node_id_from_int(target))
        assert trio.current_time() - start <= 40.0  # a handful of timeout waves, in parallel
        live_truth = [d.node_id.int for d in net.closest_servers(target, 60) if d in alive]
        live_truth = [x for x in live_truth if x != source.node_id.int]
        assert result.closest[0].int_id == live_truth[0]


async def test_slow_nodes_are_given_up_on(autojump_clock: object) -> None:
    net, nodes = network(rpc_timeout=2.0)
    net.slow_delay = 3600.0
    for dht in nodes[:40]:
        net.set_behaviour(dht, Behaviour.SLOW)
    start = trio.current_time()
    result = await nodes[100].lookup_node(nodes[0].node_id)
    assert trio.current_time() - start < 3600.0
    assert nodes[0].node_id in result.failed


async def test_stored_values_survive_30_percent_of_nodes_failing_at_once(
    autojump_clock: object,
) -> None:
    net, nodes = network(rpc_timeout=5.0)
    rng = random.Random(4)
    keys = await publish_peer_records(net, rng.sample(nodes, 100))
    for index, dht in enumerate(rng.sample(nodes, 60)):
        net.set_behaviour(dht, Behaviour.DOWN if index % 2 else Behaviour.SILENT)
    assert await success_rate(net, keys, rng) >= 0.99


@pytest.mark.parametrize("behaviour", [Behaviour.EMPTY, Behaviour.GARBAGE, Behaviour.ECLIPSE])
@pytest.mark.parametrize("fraction", [0.1, 0.2])
async def test_honest_nodes_find_values_despite_lying_nodes(
    autojump_clock: object, behaviour: Behaviour, fraction: float
) -> None:
    net, nodes = network(seed=5)
    rng = random.Random(5)
    liars = rng.sample(nodes, int(fraction * N))
    for dht in liars:  # present before publishing: they also swallow stores
        net.set_behaviour(dht, behaviour)
    keys = await publish_peer_records(net, rng.sample(net.honest(), 60))
    assert await success_rate(net, keys, rng) >= 0.99
    if behaviour is Behaviour.GARBAGE:
        assert sum(d.lookups.counters["bad_answers"] for d in net.honest()) > 0


async def eclipse_success(disjoint_paths: int) -> float:
    # Small buckets and no parallelism make plain Kademlia easy to divert: the setting in which
    # S/Kademlia's disjoint paths matter.
    net, nodes = network(seed=6, k=4, alpha=1, disjoint_paths=disjoint_paths)
    rng = random.Random(6)
    for dht in rng.sample(nodes, int(0.2 * N)):
        net.set_behaviour(dht, Behaviour.ECLIPSE)
    honest = net.honest()
    keys = []
    for index in range(100):
        key = provider_key(b"item-%d" % index)
        await honest[index % len(honest)].provide(key)
        keys.append(key)
    found = 0
    for key in keys:
        found += (await rng.choice(honest).lookup_value(key, count=1)).found
    return found / len(keys)


async def test_disjoint_paths_resist_an_eclipse(autojump_clock: object) -> None:
    plain = await eclipse_success(1)
    disjoint = await eclipse_success(4)
    assert disjoint >= 0.97
    assert disjoint >= plain + 0.15, (plain, disjoint)


class CountingRpc(SimRpc):
    """Counts FIND_* RPCs per target node."""

    def __init__(self, inner: SimRpc) -> None:
        super().__init__(inner.network, node_id_from_int(inner.owner), client=inner.client)
        self.queried: Counter[int] = Counter()

    async def find_node(self, contact: Contact, target: NodeId) -> list[Contact]:
        self.queried[contact.int_id] += 1
        return await super().find_node(contact, target)


async def test_disjoint_paths_never_query_a_node_twice() -> None:
    net, nodes = network(seed=7)
    source = nodes[0]
    rpc = CountingRpc(source.rpc)  # type: ignore[arg-type]
    lookups = Lookups(source.node_id, rpc, net.validators, LookupConfig(disjoint_paths=3))
    rng = random.Random(7)
    for _ in range(20):
        rpc.queried.clear()
        target = rng.getrandbits(160)
        result = await lookups.find_node(node_id_from_int(target), source.table.closest(target))
        assert max(rpc.queried.values()) == 1
        assert len(result.queried) == sum(rpc.queried.values())
        assert result.closest[0].int_id == truth(net, target, source, 1)[0]


# -- hostile answers ------------------------------------------------------------------------------


class ForgingRpc(SimRpc):
    """Node `liar` answers with whatever `answer` returns."""

    def __init__(self, inner: SimRpc, liar: int, answer: object) -> None:
        super().__init__(inner.network, node_id_from_int(inner.owner))
        self.liar = liar
        self.answer = answer

    async def find_node(self, contact: Contact, target: NodeId) -> list[Contact]:
        if contact.int_id == self.liar:
            return self.answer  # type: ignore[return-value]
        return await super().find_node(contact, target)

    async def find_value(self, contact: Contact, key: bytes) -> tuple[list[Record], list[Contact]]:
        if contact.int_id == self.liar:
            return self.answer  # type: ignore[return-value]
        return await super().find_value(contact, key)


def forge(net: SimNetwork, source: Dht, liar: Dht, answer: object) -> Lookups:
    rpc = ForgingRpc(source.rpc, liar.node_id.int, answer)  # type: ignore[arg-type]
    return Lookups(source.node_id, rpc, net.validators, wall_clock=net.wall_clock)


async def test_malformed_answers_drop_that_peer_only() -> None:
    net, nodes = network(seed=8)
    source, target = nodes[0], nodes[1].node_id
    seeds = source.table.closest(target)
    liar = next(d for d in nodes if d.local_contact == seeds[0])
    too_many = [d.local_contact for d in nodes[:41]]
    for answer in (None, "x", [b"not a contact"], too_many, ([], [])):
        lookups = forge(net, source, liar, answer)
        result = await lookups.find_node(target, seeds)
        assert liar.node_id in result.failed
        assert result.closest[0].node_id == target
        assert lookups.counters["bad_answers"] == 1


async def test_our_own_id_in_an_answer_is_skipped() -> None:
    net, nodes = network(seed=9)
    source = nodes[0]
    seeds = source.table.closest(nodes[1].node_id)
    liar = next(d for d in nodes if d.local_contact == seeds[0])
    lookups = forge(net, source, liar, [source.local_contact])
    result = await lookups.find_node(nodes[1].node_id, seeds)
    assert liar.node_id not in result.failed
    assert source.node_id not in result.queried


async def test_forged_or_misplaced_records_are_rejected() -> None:
    net, nodes = network(seed=10)
    owner = nodes[3]
    key = peer_key(owner.node_id)
    real = (await owner.put(key, PeerInfo(("memory://sim3",)).to_value())).record
    source = nodes[150]
    seeds = source.table.closest(key_id(key))
    liar = next(d for d in nodes if d.local_contact == seeds[0])
    mallory = Identity.from_seed(b"m" * 32)
    other_key = peer_key(mallory.node_id)
    wrong_key = Record.create(
        mallory, other_key, PeerInfo().to_value(), 1, 60, created=real.created
    )
    squat = Record.create(mallory, key, PeerInfo().to_value(), 9, 60, created=real.created)
    tampered = Record(key, b"\xa0", real.publisher, real.seq + 1, real.created, 60, real.signature)
    for bad in (wrong_key, squat, tampered, b"junk"):
        lookups = forge(net, source, liar, ([bad], []))
        result = await lookups.find_value(key, seeds)
        assert result.records == (real,), bad
        assert liar.node_id in result.failed


async def test_unexpected_errors_are_bugs_and_propagate() -> None:
    class BrokenRpc(SimRpc):
        async def find_node(self, contact: Contact, target: NodeId) -> list[Contact]:
            raise RuntimeError("bug")

    net, nodes = network(n=30)
    rpc = BrokenRpc(net, nodes[0].node_id)
    lookups = Lookups(nodes[0].node_id, rpc, net.validators)
    with pytest.raises(BaseExceptionGroup) as info:
        await lookups.find_node(nodes[1].node_id, nodes[0].table.closest(nodes[1].node_id))
    assert info.group_contains(RuntimeError, match="bug", depth=1)


async def test_lookup_without_contacts_returns_empty() -> None:
    net = SimNetwork()
    lonely = net.spawn()
    result = await lonely.lookup_node(NodeId(bytes(20)))
    assert result.closest == () and result.hops == 0
    assert (await lonely.put(b"provider:x", ProviderInfo().to_value())).acks == 0
    assert await lonely.get(b"provider:x") != []  # our own copy
