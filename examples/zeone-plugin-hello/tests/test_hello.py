"""The hello plugin on an in-memory network of real nodes (zeone.testing)."""

from __future__ import annotations

import pytest
import trio
from zeone_hello.plugin import PROTOCOL, HelloConfig

from zeone import RemoteError
from zeone.errors import ConfigError
from zeone.testing import TestNetwork


async def test_peers_greet_each_other(zeone_network: TestNetwork, autojump_clock) -> None:
    a = await zeone_network.add_node(enable=["hello"])
    b = await zeone_network.add_node(
        enable=["hello"], settings={"plugins.hello.greeting": "bonjour"}
    )
    reply = await a.rpc.request(b.node_id, PROTOCOL, {"name": "alice"})
    assert reply == {"greeting": "bonjour, alice", "node_id": str(b.node_id)}
    received = list(b.plugin_state["hello"].received)
    assert [(g["from"], g["name"]) for g in received] == [(str(a.node_id), "alice")]
    assert b.status()["sections"]["hello"] == {"greetings_received": 1}
    assert a.status()["sections"]["hello"] == {"greetings_received": 0}


async def test_bad_greeting_is_a_clear_remote_error(zeone_network, autojump_clock) -> None:
    a, b = await zeone_network.add_nodes(2, enable=["hello"])
    with pytest.raises(RemoteError) as info:
        await a.rpc.request(b.node_id, PROTOCOL, {"name": ""})
    assert info.value.code == "bad-request"
    with pytest.raises(RemoteError):
        await a.rpc.request(b.node_id, PROTOCOL, ["not", "a", "map"])


async def test_greeter_service_greets_connected_peers(zeone_network, autojump_clock) -> None:
    await zeone_network.add_node(enable=["hello"], settings={"plugins.hello.interval": 10})
    b = await zeone_network.add_node(enable=["hello"])
    await zeone_network.connect_all()
    await trio.sleep(35)  # virtual time: three rounds
    assert len(b.plugin_state["hello"].received) == 3


async def test_greeting_survives_latency_and_loss(tmp_path, autojump_clock) -> None:
    from zeone.testing import open_network

    async with open_network(2, enable=["hello"], latency=0.05, loss=0.2, seed=7) as net:
        a, b = net.nodes
        started = trio.current_time()
        reply = await a.rpc.request(b.node_id, PROTOCOL, {"name": "x"}, timeout=30)
        assert reply["greeting"] == "hello, x"
        # at least dial + handshake + request round trips of 100 ms each
        assert trio.current_time() - started >= 0.3


async def test_partition_makes_the_peer_unreachable_until_healed(zeone_network, autojump_clock):
    a, b = await zeone_network.add_nodes(2, enable=["hello"])
    zeone_network.partition([a], [b])
    with pytest.raises(OSError):
        await a.rpc.request(b.node_id, PROTOCOL, {"name": "x"}, timeout=5)
    zeone_network.heal()
    await trio.sleep(5)  # let the dial backoff expire
    reply = await a.rpc.request(b.node_id, PROTOCOL, {"name": "x"})
    assert reply["greeting"] == "hello, x"


def test_config_is_validated(tmp_path) -> None:
    from zeone.plugins import Catalog
    from zeone.testing import make_config

    catalog = Catalog.discover()
    config = make_config(tmp_path, enable=["hello"], catalog=catalog)
    assert config.plugin_settings("hello") == HelloConfig()
    with pytest.raises(ConfigError, match=r"plugins\.hello\.interval"):
        make_config(tmp_path, catalog=catalog, settings={"plugins.hello.interval": -1})
    with pytest.raises(ConfigError, match=r"plugins\.hello\.colour: unknown key"):
        make_config(tmp_path, catalog=catalog, settings={"plugins.hello.colour": "red"})
