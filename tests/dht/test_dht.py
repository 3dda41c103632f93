"""The `Dht` service: roles, routing-table upkeep, bootstrap, caching, republish and expiry."""

from __future__ import annotations

import random

import pytest
import trio

from zeone.dht import DHT_SERVER_CAPABILITY
from zeone.dht.dht import Dht, DhtClientOnly, DhtConfig
from zeone.dht.namespaces import PeerInfo, ProviderInfo, peer_key, provider_key
from zeone.dht.records import InvalidRecord, Namespace, Validators, key_id
from zeone.dht.routing import node_id_from_int
from zeone.dht.simulation import Behaviour, SimNetwork


def network(n: int, *, seed: int = 0, **config: object) -> tuple[SimNetwork, list[Dht]]:
    net = SimNetwork(seed=seed, config=DhtConfig(**config))  # type: ignore[arg-type]
    nodes = net.spawn_many(n)
    net.seed_tables()
    return net, nodes


async def test_clients_use_the_dht_but_are_never_routed_through() -> None:
    net = SimNetwork(seed=1)
    servers = net.spawn_many(120)
    clients = net.spawn_many(10, client_only=True)
    net.seed_tables()
    client_ids = {c.node_id for c in clients}
    for client in clients:
        assert len(client.table) > 0
        key = peer_key(client.node_id)
        result = await client.put(key, PeerInfo(role="mobile").to_value())
        assert result.acks == 20
        assert await clients[0].get(key) == [result.record]
        assert not await client.get(peer_key(servers[0].node_id))
    for server in servers:
        assert not client_ids & {c.node_id for c in server.table}
        assert server.statistics()["handled"]["store"] >= 0
    with pytest.raises(DhtClientOnly):
        clients[0].handle_find_node(servers[0].local_contact, servers[1].node_id)
    with pytest.raises(DhtClientOnly):
        clients[0].handle_store(servers[0].local_contact, result.record)
    # Servers asking a client get a refusal, which counts as a failed RPC.
    failures = servers[0].lookups.counters["rpc_failures"]
    assert await servers[0].lookups.call(servers[0].rpc.ping, clients[0].local_contact) is not True
    assert servers[0].lookups.counters["rpc_failures"] == failures + 1
    assert DHT_SERVER_CAPABILITY.startswith("/zeone/")


async def test_handlers_learn_servers_but_not_clients() -> None:
    net = SimNetwork(seed=2)
    a, b, c = net.spawn_many(3)
    a.handle_find_node(b.local_contact, c.node_id, sender_is_client=True)
    assert b.node_id not in a.table
    assert a.handle_find_node(b.local_contact, c.node_id) == []
    assert b.node_id in a.table
    assert a.handle_ping(c.local_contact)
    assert a.handle_find_node(c.local_contact, c.node_id) == [b.local_contact]  # not the sender
    records, contacts = a.handle_find_value(c.local_contact, b"peer:" + bytes(20))
    assert records == [] and contacts == [b.local_contact]
    with pytest.raises(TypeError):
        a.handle_find_node("not a contact", c.node_id)  # type: ignore[arg-type]


async def test_ping_before_evict(autojump_clock: object) -> None:
    net = SimNetwork(seed=3, config=DhtConfig(k=2, rpc_timeout=5.0))
    local = net.spawn()
    others = net.spawn_many(40)
    # Three nodes that fall into the same bucket of `local`.
    same = [o for o in others if local.table.bucket_index(o.node_id) == 0][:4]
    old, young, newcomer, later = same
    async with trio.open_nursery() as nursery:
        await nursery.start(local.run)
        local.handle_ping(old.local_contact)
        local.handle_ping(young.local_contact)
        # Full bucket, oldest alive: it answers the ping and stays; the newcomer waits.
        local.handle_ping(newcomer.local_contact)
        await trio.sleep(1)
        assert local.table.bucket_contacts(0) == [young.local_contact, old.local_contact]
        assert local.table.replacement_contacts(0) == [newcomer.local_contact]
        # Now the oldest (young) is dead: the ping times out and the newcomer takes its place.
        net.set_behaviour(young, Behaviour.SILENT)
        local.handle_ping(later.local_contact)
        await trio.sleep(6)
        assert young.node_id not in local.table
        assert set(local.table.bucket_contacts(0)) == {old.local_contact, later.local_contact}
        nursery.cancel_scope.cancel()


async def test_bootstrap_builds_a_working_network_from_one_seed() -> None:
    net = SimNetwork(seed=4)
    seed_node = net.spawn()
    joined = [seed_node]
    for _ in range(60):
        dht = net.spawn()
        assert await dht.bootstrap([seed_node.local_contact]) > 0
        joined.append(dht)
    rng = random.Random(4)
    for _ in range(40):
        source, target = rng.sample(joined, 2)
        result = await source.lookup_node(target.node_id)
        assert result.closest[0].node_id == target.node_id
    assert await net.spawn().bootstrap([]) == 0


async def test_get_caches_the_record_along_the_path(autojump_clock: object) -> None:
    _net, nodes = network(200, seed=5)
    owner, reader = nodes[0], nodes[150]
    key = peer_key(owner.node_id)
    record = (await owner.put(key, PeerInfo().to_value())).record
    # Keep a single replica, at a node the reader does not know: the reader's first answers
    # come from nodes without the record, and the closest of those gets a copy.
    seeds = {c.node_id for c in reader.table.closest(key_id(key))}
    holders = [d for d in nodes if d.store.get(key)]
    keep = next(d for d in holders if d.node_id not in seeds and d not in (reader, owner))
    for dht in holders:
        if dht is not keep:
            dht.store.remove(key)
    result = await reader.lookup_value(key)
    assert result.records == (record,) and result.cache_candidate is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(reader.run)
        assert await reader.get(key) == [record]
        await trio.sleep(1)
        holders = [d for d in nodes if d.store.get(key)]
        assert len(holders) == 2 and keep in holders  # cached at exactly one more node
        nursery.cancel_scope.cancel()


async def test_republish_keeps_records_alive_and_expiry_removes_them(
    autojump_clock: object,
) -> None:
    config = dict(
        republish_interval=3600.0,
        refresh_interval=10**7,
        maintenance_interval=300.0,
        expire_interval=300.0,
    )
    net, nodes = network(40, seed=6, **config)
    owner, reader = nodes[0], nodes[39]
    key = provider_key(b"blob")
    owner_scope = trio.CancelScope()

    async def run_owner(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with owner_scope:
            await owner.run(task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_owner)
        for dht in nodes[1:]:
            await nursery.start(dht.run)
        first = (await owner.provide(key, ttl=7200)).record
        # Beyond the TTL: only republishing keeps it alive. (Reads happen between maintenance
        # rounds, which run every 300 s.)
        await trio.sleep(3 * 3600 + 150)
        records = await reader.get(key)
        assert len(records) == 1 and records[0].seq > first.seq
        assert records[0].created > first.created
        # The publisher goes away: replicas keep republishing the last record until it expires.
        owner_scope.cancel()
        net.set_behaviour(owner, Behaviour.DOWN)
        last = records[0]
        await trio.sleep(3600)
        assert await reader.get(key) == [last]
        await trio.sleep(2 * 3600 + 600)
        assert await reader.get(key) == []
        assert sum(len(d.store) for d in nodes if d is not owner) == 0
        nursery.cancel_scope.cancel()


async def test_refresh_looks_up_stale_buckets(autojump_clock: object) -> None:
    _net, nodes = network(60, seed=7, refresh_interval=3600.0, maintenance_interval=600.0)
    dht = nodes[0]
    async with trio.open_nursery() as nursery:
        await nursery.start(dht.run)
        before = dht.lookups.counters["lookups"]
        await trio.sleep(601)
        assert dht.lookups.counters["lookups"] == before  # a fresh table is not stale
        await trio.sleep(3600)
        refreshed = dht.lookups.counters["lookups"] - before
        assert refreshed == dht.table.deepest_bucket() + 1
        assert dht.table.stale_buckets(trio.current_time(), 3600.0) == []
        nursery.cancel_scope.cancel()


async def test_put_checks_locally_and_stop_publishing() -> None:
    validators = Validators.default([Namespace(b"forum")])
    net = SimNetwork(seed=8, validators=validators)
    nodes = net.spawn_many(30)
    net.seed_tables()
    owner = nodes[0]
    with pytest.raises(InvalidRecord, match="unknown namespace"):
        await owner.put(b"nosuch:1", b"v")
    with pytest.raises(InvalidRecord, match="only be published"):
        await owner.put(peer_key(nodes[1].node_id), PeerInfo().to_value())
    with pytest.raises(ValueError, match="multi-publisher"):
        await owner.provide(b"forum:x")
    first = (await owner.put(b"forum:x", b"1")).record
    second = (await owner.put(b"forum:x", b"2")).record
    assert second.seq > first.seq
    assert [r.value for r in await nodes[20].get(b"forum:x")] == [b"2"]
    # Someone else cannot take the key over: refused locally if they hold a replica, and by
    # every replica otherwise.
    try:
        squat = await nodes[1].put(b"forum:x", b"mine now")
    except InvalidRecord as exc:
        assert "owned" in exc.reason
    else:
        assert squat.acks == 0
    assert owner.stop_publishing(b"forum:x")
    assert not owner.stop_publishing(b"forum:x")
    stats = owner.statistics()
    assert stats["routing"]["contacts"] == len(owner.table)
    assert stats["store"]["records"] == 0
    assert stats["lookups"]["lookups"] > 0


async def test_provide_advertises_our_addresses() -> None:
    _net, nodes = network(30, seed=9)
    await nodes[4].provide(provider_key(b"x"), meta={"size": 3})
    providers = await nodes[9].find_providers(provider_key(b"x"))
    assert [p.contact for p in providers] == [nodes[4].local_contact]
    assert providers[0].info == ProviderInfo(nodes[4].local_contact.addresses, {"size": 3})
    nodes[4].set_addresses(("tcp://198.51.100.1:4001",))
    assert nodes[4].local_contact.addresses == ("tcp://198.51.100.1:4001",)
    assert await nodes[9].find_node(node_id_from_int(0)) != []


async def test_find_value_answers_stay_bounded() -> None:
    net = SimNetwork(seed=10, config=DhtConfig(max_answer_records=5, max_answer_bytes=10**6))
    nodes = net.spawn_many(12)
    net.seed_tables()
    key = provider_key(b"popular")
    for dht in nodes[1:]:
        await dht.provide(key)
    records, contacts = nodes[0].handle_find_value(nodes[1].local_contact, key)
    assert len(nodes[0].store.get(key)) == 11
    assert len(records) == 5 and contacts
    tight = SimNetwork(seed=10, config=DhtConfig(max_answer_bytes=300)).spawn()
    for dht in nodes[1:]:
        tight.store.put(nodes[0].store.get_own(key, dht.identity.public_key))  # type: ignore[arg-type]
    records, _ = tight.handle_find_value(nodes[1].local_contact, key)
    assert 0 < len(records) < 11
    assert sum(r.size() for r in records) <= 300


async def test_put_returns_at_its_quorum_and_replicates_to_k_in_the_background(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(seed=5, slow_delay=2.0, config=DhtConfig(put_quorum=3))
    nodes = net.spawn_many(30)
    net.seed_tables()
    for slow in nodes[10:20]:
        net.set_behaviour(slow, Behaviour.SLOW)
    publisher = nodes[0]
    key = peer_key(publisher.node_id)
    async with trio.open_nursery() as nursery:
        await nursery.start(publisher.run)
        result = await publisher.put(key, PeerInfo(role="full").to_value())
        holders = sum(bool(d.store.get(key)) for d in nodes[1:])
        # Returned at the quorum: the slow peers among the k closest had not answered yet.
        assert result.acks >= 3
        assert result.pending > 0
        assert holders == result.acks < result.attempted == 20
        await trio.sleep(net.slow_delay + 1)  # the background STOREs land
        assert sum(bool(d.store.get(key)) for d in nodes[1:]) == 20
        nursery.cancel_scope.cancel()


async def test_put_without_a_quorum_waits_for_every_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = SimNetwork(seed=5, slow_delay=2.0, config=DhtConfig(put_quorum=None))
    nodes = net.spawn_many(30)
    net.seed_tables()
    for slow in nodes[10:20]:
        net.set_behaviour(slow, Behaviour.SLOW)
    async with trio.open_nursery() as nursery:
        await nursery.start(nodes[0].run)
        result = await nodes[0].put(peer_key(nodes[0].node_id), PeerInfo(role="full").to_value())
        assert result.acks == result.attempted == 20
        assert result.pending == 0
        nursery.cancel_scope.cancel()
