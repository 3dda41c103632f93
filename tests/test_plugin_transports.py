"""A transport contributed by a plugin through zeone_register_transports carries real traffic."""

from __future__ import annotations

import attrs
import pytest
import trio

from zeone import PluginInfo
from zeone.errors import PluginError
from zeone.identity import Identity
from zeone.net.memory import MemoryNetwork, MemoryTransport
from zeone.net.transport import Address, Transport
from zeone.node import Node
from zeone.plugins import Catalog
from zeone.testing import make_config, open_network


@attrs.define
class CountingTransport(Transport):
    """Scheme ``counted``: the memory network underneath, counting the bytes it carries."""

    scheme = "counted"
    inner: MemoryTransport
    dials: int = 0

    async def dial(self, address: Address) -> trio.abc.Stream:
        self.check_address(address)
        self.dials += 1
        return await self.inner.dial(Address.build("memory", address.host))

    async def listen(self, address, handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.check_address(address)

        async def started(*, task_status) -> None:
            await self.inner.listen(
                Address.build("memory", address.host), handler, task_status=task_status
            )

        async with trio.open_nursery() as nursery:
            bound = await nursery.start(started)
            task_status.started(Address.build("counted", bound.host))


class CountedPlugin:
    __name__ = "counted"

    def __init__(self, memory: MemoryNetwork) -> None:
        self.memory = memory
        self.transports: list[CountingTransport] = []

    def zeone_plugin_info(self) -> PluginInfo:
        return PluginInfo(name="counted", version="1.0")

    def zeone_register_transports(self, register, node) -> None:
        name = "c-" + node.node_id.short()
        transport = CountingTransport(MemoryTransport(self.memory, name=name))
        self.transports.append(transport)
        register(transport)


async def test_nodes_talk_over_a_plugin_transport(tmp_path, autojump_clock) -> None:
    memory = MemoryNetwork()
    plugin = CountedPlugin(memory)
    async with open_network(data_root=tmp_path, plugins=[plugin]) as net:
        a, b = [
            await net.add_node(
                enable=["counted"],
                settings={
                    "network.listen": [f"counted://n{i}"],
                    "network.transports": ["counted", "memory"],
                },
            )
            for i in range(2)
        ]
        assert b.network.listen_addresses == ["counted://n1"]
        peer, _rtt = await a.rpc.ping(b.node_id)
        assert peer == b.node_id
        assert sum(t.dials for t in plugin.transports) == 1
        assert a.peers()[0]["address"] == "counted://n1"
        assert "counted" in a.transports


def test_a_scheme_registered_twice_is_refused_naming_the_plugin(tmp_path) -> None:
    class Twice(CountedPlugin):
        def zeone_register_transports(self, register, node) -> None:
            register(CountingTransport(MemoryTransport(self.memory)))
            register(CountingTransport(MemoryTransport(self.memory)))

    catalog = Catalog.discover(entry_points=False, extra=[Twice(MemoryNetwork())])
    config = make_config(tmp_path, enable=["counted"], catalog=catalog)
    with pytest.raises(
        PluginError,
        match="transport scheme 'counted' is already registered by plugin 'counted'",
    ):
        Node(config, catalog=catalog, identity=Identity.generate())
