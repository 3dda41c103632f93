"""Regression tests for ways a peer or a plugin could have stopped a whole node."""

from __future__ import annotations

import pytest
import trio

from zeone import PluginInfo, RemoteError
from zeone.errors import ConfigError
from zeone.identity import Identity
from zeone.net.memory import MemoryTransport
from zeone.net.transport import parse_address
from zeone.rpc import RequestTimeout
from zeone.testing import make_config, open_network


class OddErrors:
    __name__ = "odd"

    def zeone_plugin_info(self) -> PluginInfo:
        return PluginInfo(name="odd", version="1")

    def zeone_register_protocols(self, register) -> None:
        async def numeric_code(_request):
            raise RemoteError(404, None)  # not strings: must not kill the connection

        register("/zeone/odd/1", numeric_code)


async def test_a_handler_raising_odd_errors_costs_one_answer(tmp_path, autojump_clock) -> None:
    async with open_network(2, data_root=tmp_path, plugins=[OddErrors()], enable=["odd"]) as net:
        a, b = net.nodes
        with pytest.raises(RemoteError) as info:
            await a.rpc.request(b.node_id, "/zeone/odd/1", None)
        assert info.value.code == "404"
        peer, _ = await a.rpc.ping(b.node_id)
        assert peer == b.node_id


async def test_concurrent_dials_to_a_silent_peer_fail_cleanly(tmp_path, autojump_clock) -> None:
    """A listener that accepts but never handshakes; several callers wait on one dial."""
    async with open_network(1, data_root=tmp_path) as net:
        (a,) = net.nodes
        silent = MemoryTransport(net.memory, name="silent")

        async def hold(stream) -> None:
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            await nursery.start(silent.listen, parse_address("memory://silent"), hold)
            victim_id = Identity.generate().node_id
            a.network.book[victim_id] = ["memory://silent"]
            outcomes = []

            async def call(timeout: float) -> None:
                try:
                    await a.rpc.request(victim_id, "/zeone/x/1", None, timeout=timeout)
                except (RequestTimeout, OSError) as exc:
                    outcomes.append(type(exc).__name__)

            async with trio.open_nursery() as callers:
                callers.start_soon(call, 0.2)
                callers.start_soon(call, 30)
                callers.start_soon(call, 30)
            nursery.cancel_scope.cancel()
        assert len(outcomes) == 3
        assert a.network._dialing == {}
        # and the node is still alive
        assert a.status()["services"][0]["state"] == "running"


async def test_stop_during_a_slow_start_is_honoured(tmp_path, autojump_clock) -> None:
    class Slow:
        __name__ = "slow"

        def zeone_plugin_info(self):
            return PluginInfo(name="slow", version="1")

        def zeone_services(self, node):
            class Service:
                name = "slow-start"

                async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
                    await trio.sleep(3600)  # never becomes ready in this test
                    task_status.started()

            return [Service()]

    from zeone.node import Node
    from zeone.plugins import Catalog

    catalog = Catalog.discover(entry_points=False, extra=[Slow()])
    node = Node(
        make_config(tmp_path, enable=["slow"], catalog=catalog),
        catalog=catalog,
        identity=Identity.generate(),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.run)
        await trio.sleep(1)
        node.stop()
        with trio.fail_after(30):
            await node.stopped.wait()
    assert not node.started.is_set()


async def test_concurrent_discovers_both_get_answers(tmp_path, autojump_clock) -> None:
    async with open_network(3, data_root=tmp_path) as net:
        hub, a, b = net.nodes
        await b.network.connect(hub.node_id)
        conn = await a.network.connect(hub.node_id)
        answers = []
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(lambda: _append(answers, conn.discover(5)))
        assert len(answers) == 3 and all(len(answer) == 1 for answer in answers)


async def _append(out: list, coro) -> None:
    out.append(await coro)


async def test_nodes_can_be_added_concurrently(tmp_path, autojump_clock) -> None:
    async with open_network(data_root=tmp_path) as net:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(net.add_node)
        assert len({node.node_id for node in net.nodes}) == 4
        await net.connect_all()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("network.stream_window", 2**32),
        ("network.max_frame_size", 2**33),
        ("network.max_frame_size", 4096),
        ("node.shutdown_timeout", float("inf")),
        ("network.idle_timeout", float("nan")),
    ],
)
def test_limits_that_would_only_fail_later_are_refused_at_load(tmp_path, key, value) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config(tmp_path, settings={key: value})
