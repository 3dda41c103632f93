"""The DHT inside real nodes: joined through a seed, used through node.dht, extended by plugins."""

from __future__ import annotations

import attrs
import pytest
import trio

from zeone import PluginInfo
from zeone.dht import DHT_SERVER_CAPABILITY, InvalidRecord, Namespace, service_key
from zeone.errors import PluginError
from zeone.identity import Identity
from zeone.net.memory import MemoryTransport
from zeone.node import Node
from zeone.plugins import Catalog
from zeone.testing import make_config, open_network


def check_note(record) -> None:
    if not record.value.startswith(b"note:"):
        raise InvalidRecord("a note starts with 'note:'")


class NotesPlugin:
    __name__ = "notes"

    def zeone_plugin_info(self) -> PluginInfo:
        return PluginInfo(name="notes", version="1")

    def zeone_register_record_namespaces(self, register, node) -> None:
        register(Namespace(name=b"notes", validate=check_note))


async def _joined_network(net, count: int, **settings):
    seed = await net.add_node(enable=["notes"])
    entry = f"{seed.node_id}@{seed.network.listen_addresses[0]}"
    nodes = []
    for _ in range(count):
        node = await net.add_node(
            enable=["notes"], settings={"network.bootstrap": [entry], **settings}
        )
        node.network.book = {seed.node_id: list(seed.network.listen_addresses)}  # seed only
        nodes.append(node)
    await trio.sleep(30)  # virtual: bootstrap lookups
    return seed, nodes


async def test_nodes_join_through_a_seed_and_share_records(tmp_path, autojump_clock) -> None:
    async with open_network(data_root=tmp_path, plugins=[NotesPlugin()]) as net:
        _seed, nodes = await _joined_network(net, 12)
        assert all(len(node.dht.table) >= 8 for node in nodes)
        writer, reader = nodes[0], nodes[-1]
        result = await writer.dht.put(b"notes:shopping", b"note: milk", ttl=3600)
        assert result.acks >= 10
        records = await reader.dht.get(b"notes:shopping")
        assert [r.value for r in records] == [b"note: milk"]
        assert records[0].publisher_id == writer.node_id
        # a value the plugin's validator refuses is refused locally, before any network traffic
        with pytest.raises(InvalidRecord, match="starts with 'note:'"):
            await writer.dht.put(b"notes:bad", b"nope")


async def test_providers_are_found_by_others(tmp_path, autojump_clock) -> None:
    async with open_network(data_root=tmp_path, plugins=[NotesPlugin()]) as net:
        _seed, nodes = await _joined_network(net, 8)
        exits = nodes[:3]
        for node in exits:
            await node.dht.provide(service_key("vpn_exit"))
        found = await nodes[-1].dht.find_providers(service_key("vpn_exit"))
        assert {p.contact.node_id for p in found} == {n.node_id for n in exits}
        assert all(p.contact.addresses for p in found)


async def test_light_nodes_use_the_dht_but_never_enter_routing_tables(
    tmp_path, autojump_clock
) -> None:
    async with open_network(data_root=tmp_path, plugins=[NotesPlugin()]) as net:
        seed, nodes = await _joined_network(net, 6)
        entry = f"{seed.node_id}@{seed.network.listen_addresses[0]}"
        phone = await net.add_node(
            enable=["notes"], settings={"node.role": "mobile", "network.bootstrap": [entry]}
        )
        await trio.sleep(30)
        await nodes[0].dht.put(b"notes:x", b"note: hi")
        assert [r.value for r in await phone.dht.get(b"notes:x")] == [b"note: hi"]
        for node in [seed, *nodes]:
            assert phone.node_id not in {c.node_id for c in node.dht.table}
        assert DHT_SERVER_CAPABILITY not in phone.network.hello().capabilities
        assert phone.status()["dht"]["role"] == "client"


async def test_records_and_the_routing_table_survive_a_restart(tmp_path, autojump_clock) -> None:
    async with open_network(data_root=tmp_path, plugins=[NotesPlugin()]) as net:
        _seed, nodes = await _joined_network(net, 6)
        node = nodes[2]
        await nodes[0].dht.put(b"notes:kept", b"note: durable")
        held = node.dht.store.get(b"notes:kept")
        await net.stop_node(node)
        # same data dir and identity, no bootstrap peers: it rejoins from its saved table
        config = attrs.evolve(
            node.config, network=attrs.evolve(node.config.network, listen=[], bootstrap=[])
        )
        restarted = Node(
            config,
            identity=node.identity,
            catalog=net.catalog,
            transports=[MemoryTransport(net.memory, name="again")],
            write_runtime_file=False,
        )
        await net.nursery.start(restarted.run)
        assert restarted.dht.store.get(b"notes:kept") == held
        assert len(restarted.dht.table) == len(node.dht.table) > 0
        await trio.sleep(10)
        assert [r.value for r in await restarted.dht.get(b"notes:kept")] == [b"note: durable"]
        restarted.stop()
        await restarted.stopped.wait()


def test_a_namespace_registered_twice_names_the_plugin(tmp_path) -> None:
    class Clash(NotesPlugin):
        def zeone_register_record_namespaces(self, register, node) -> None:
            register(Namespace(name=b"service"))

    catalog = Catalog.discover(entry_points=False, extra=[Clash()])
    with pytest.raises(PluginError, match=r"plugin 'notes'.*'service'"):
        Node(
            make_config(tmp_path, enable=["notes"], catalog=catalog),
            catalog=catalog,
            identity=Identity.generate(),
        )


async def test_a_peer_is_reached_by_id_alone_through_its_peer_record(
    tmp_path, autojump_clock
) -> None:
    async with open_network(data_root=tmp_path, plugins=[NotesPlugin()]) as net:
        _seed, nodes = await _joined_network(net, 10)
        a, b = nodes[0], nodes[-1]
        if b.node_id in a.network.connections:
            await a.network.connections[b.node_id].close()
        await trio.sleep(1)
        a.network.book.pop(b.node_id, None)  # a knows nothing about how to reach b
        resolved = []
        dht_resolver = a.network.resolver

        async def counting_resolver(node_id):
            resolved.append(node_id)
            return await dht_resolver(node_id)

        a.network.resolver = counting_resolver
        peer, _ = await a.rpc.ping(b.node_id)
        assert peer == b.node_id
        assert resolved == [b.node_id]
        assert a.network.book[b.node_id] == b.network.listen_addresses


async def test_a_find_node_flood_is_rate_limited_and_honest_lookups_go_on(
    tmp_path, autojump_clock
) -> None:
    from zeone.dht.messages import FindNode
    from zeone.net.noise import Hello, secure_dial
    from zeone.net.transport import parse_address
    from zeone.wire.frame import Frame, FrameDecoder, MessageType, encode_frame

    async with open_network(data_root=tmp_path, plugins=[NotesPlugin()]) as net:
        _seed, nodes = await _joined_network(net, 6, **{"network.max_request_rate": 100.0})
        victim, honest = nodes[0], nodes[1]
        stream = await MemoryTransport(net.memory, name="flooder").dial(
            parse_address(victim.network.listen_addresses[0])
        )
        channel = await secure_dial(stream, Identity.generate(), Hello(), victim.node_id)
        flood = b"".join(
            encode_frame(Frame(MessageType.DHT_FIND_NODE, FindNode(i, victim.node_id).to_wire()))
            for i in range(1, 2001)
        )
        await channel.send_all(flood)
        decoder, answers = FrameDecoder(), 0
        with trio.move_on_after(5):
            while data := await channel.receive_some():
                answers += len(decoder.feed(data))
        assert 200 <= answers <= 260  # the burst (2 x rate) and what refilled in 5 s
        assert (await honest.dht.find_node(victim.node_id))[0].node_id == victim.node_id
        await nodes[2].dht.put(b"notes:after-flood", b"note: fine")
        assert await honest.dht.get(b"notes:after-flood")


def test_the_dht_section_of_the_config_reaches_the_nodes_dht(tmp_path) -> None:
    from zeone.identity import Identity
    from zeone.node import Node
    from zeone.plugins import Catalog
    from zeone.testing import make_config

    catalog = Catalog.discover(entry_points=False)
    settings = {"dht.k": 8, "dht.alpha": 4, "dht.disjoint_paths": 3, "dht.put_quorum": 0}
    config = make_config(tmp_path, settings=settings, catalog=catalog)
    node = Node(config, catalog=catalog, identity=Identity.generate())
    dht = node.dht.config
    assert (dht.k, dht.alpha, dht.disjoint_paths) == (8, 4, 3)
    assert dht.put_quorum is None  # 0: wait for every STORE
    assert node.dht.lookups.config.disjoint_paths == 3
