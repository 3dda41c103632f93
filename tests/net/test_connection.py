"""RPC, limits and hostile peers on real nodes over the in-memory network (virtual clock)."""

from __future__ import annotations

import contextlib
import struct

import pytest
import trio

from zeone import PluginInfo, RemoteError, Request
from zeone.identity import Identity
from zeone.net.connection import ConnectionClosed
from zeone.net.memory import MemoryTransport
from zeone.net.noise import Hello, secure_dial
from zeone.net.transport import DialError, parse_address
from zeone.rpc import RequestTimeout
from zeone.testing import TestNetwork, open_network
from zeone.wire.frame import Frame, MessageType, encode_frame

ECHO = "/zeone/echo/1"
SLOW = "/zeone/echo/slow"
FAIL = "/zeone/echo/fail"


class EchoPlugin:
    """Echo, a handler that waits forever, and one that crashes."""

    __name__ = "echo"

    def __init__(self) -> None:
        self.slow_started = 0

    def zeone_plugin_info(self) -> PluginInfo:
        return PluginInfo(name="echo", version="1.0")

    def zeone_register_protocols(self, register) -> None:
        async def echo(request: Request):
            return {"echo": request.payload, "from": request.peer.raw}

        async def slow(request: Request):
            self.slow_started += 1
            await trio.sleep_forever()

        async def fail(request: Request):
            raise ZeroDivisionError("handler bug")

        register(ECHO, echo)
        register(SLOW, slow)
        register(FAIL, fail)


@pytest.fixture
async def net(tmp_path):
    # pytest-trio only sees a clock fixture requested by the test itself, so every test using
    # this fixture also asks for autojump_clock.
    async with open_network(data_root=tmp_path, plugins=[EchoPlugin()]) as network:
        yield network


async def test_request_response_and_errors(net: TestNetwork, autojump_clock) -> None:
    a, b = await net.add_nodes(2, enable=["echo"])
    assert await a.rpc.request(b.node_id, ECHO, [1, "two", b"3"]) == {
        "echo": [1, "two", b"3"],
        "from": a.node_id.raw,
    }
    with pytest.raises(RemoteError) as unknown:
        await a.rpc.request(b.node_id, "/zeone/nothing/1", None)
    assert unknown.value.code == "unknown-protocol"
    with pytest.raises(RemoteError) as crashed:
        await a.rpc.request(b.node_id, FAIL, None)
    assert crashed.value.code == "internal-error"
    assert "ZeroDivisionError" not in str(crashed.value)  # no internals leak to peers
    # the connection survived all of it
    assert await a.rpc.request(b.node_id, ECHO, "still here") is not None
    assert len(a.peers()) == 1


async def test_timeout_cancels_the_wait_and_drops_the_late_answer(
    net: TestNetwork, autojump_clock
) -> None:
    a, b = await net.add_nodes(2, enable=["echo"])
    started = trio.current_time()
    with pytest.raises(RequestTimeout):
        await a.rpc.request(b.node_id, SLOW, None, timeout=3)
    assert trio.current_time() - started == pytest.approx(3, abs=0.01)
    assert await a.rpc.request(b.node_id, ECHO, 1) == {"echo": 1, "from": a.node_id.raw}


async def test_in_flight_limit_answers_busy(net: TestNetwork, autojump_clock) -> None:
    a = await net.add_node(enable=["echo"])
    b = await net.add_node(enable=["echo"], settings={"network.max_requests_per_peer": 2})
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(_ignore_timeout, a.rpc.request(b.node_id, SLOW, None, timeout=60))
        await trio.sleep(1)
        with pytest.raises(RemoteError) as busy:
            await a.rpc.request(b.node_id, ECHO, 1)
        assert busy.value.code == "busy"
        nursery.cancel_scope.cancel()


async def _ignore_timeout(coro) -> None:
    with contextlib.suppress(RequestTimeout):
        await coro


async def test_request_flood_is_rate_limited_and_others_are_still_served(
    net: TestNetwork, autojump_clock
) -> None:
    settings = {"network.max_request_rate": 50.0}
    victim = await net.add_node(enable=["echo"], settings=settings)
    flooder, honest = await net.add_nodes(2, enable=["echo"])
    conn = await flooder.network.connect(victim.node_id)
    outcomes: list[str] = []

    async def one() -> None:
        try:
            await conn.request(ECHO, "x", timeout=10)
            outcomes.append("ok")
        except RemoteError as exc:
            outcomes.append(exc.code)

    async with trio.open_nursery() as nursery:
        for _ in range(500):
            nursery.start_soon(one)
    # the burst (2 x rate) plus what refills while the flood is processed: far below 500
    assert 100 <= outcomes.count("ok") <= 150
    assert outcomes.count("rate-limited") == 500 - outcomes.count("ok")
    # the honest peer is unaffected, and the flooder recovers once it slows down
    assert (await honest.rpc.request(victim.node_id, ECHO, 1))["echo"] == 1
    await trio.sleep(1)
    assert (await flooder.rpc.request(victim.node_id, ECHO, 2))["echo"] == 2


async def test_ping_measures_round_trip(tmp_path, autojump_clock) -> None:
    async with open_network(2, data_root=tmp_path, latency=0.025) as net:
        a, b = net.nodes
        await a.network.connect(b.node_id)
        peer, rtt = await a.rpc.ping(b.node_id)
        assert peer == b.node_id
        assert rtt == pytest.approx(0.05, abs=0.001)
        assert a.peers()[0]["rtt_ms"] == pytest.approx(50, abs=1)


async def test_simultaneous_dials_end_with_one_agreed_connection(
    net: TestNetwork, autojump_clock
) -> None:
    a, b = await net.add_nodes(2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.network.connect, b.node_id)
        nursery.start_soon(b.network.connect, a.node_id)
    await trio.sleep(1)  # let the loser drain
    a_conn = a.network.connections[b.node_id]
    b_conn = b.network.connections[a.node_id]
    assert a_conn.outbound != b_conn.outbound  # the same connection, seen from both ends
    assert len(a.network._all) == len(b.network._all) == 1


async def test_dialing_an_address_that_belongs_to_someone_else_fails(
    net: TestNetwork, autojump_clock
) -> None:
    a, b, c = await net.add_nodes(3)
    a.network.book[b.node_id] = list(c.network.listen_addresses)  # a stale or poisoned entry
    with pytest.raises(DialError, match=f"dialed node {b.node_id} but node {c.node_id} answered"):
        await a.network.connect(b.node_id)
    assert b.node_id not in a.network.connections
    assert c.node_id not in c.network.connections  # c never learned who a is


async def test_connection_limit_refuses_extra_inbound(net: TestNetwork, autojump_clock) -> None:
    hub = await net.add_node(settings={"network.max_connections": 1})
    first, second = await net.add_nodes(2)
    await first.network.connect(hub.node_id)
    with pytest.raises(DialError):
        await second.network.connect(hub.node_id)
    assert list(hub.network.connections) == [first.node_id]
    assert hub.network.refused == 1


async def test_idle_connections_are_closed(net: TestNetwork, autojump_clock) -> None:
    a = await net.add_node(settings={"network.idle_timeout": 20.0})
    b = await net.add_node()
    await a.network.connect(b.node_id)
    await trio.sleep(60)
    assert b.node_id not in a.network.connections
    assert a.node_id not in b.network.connections


async def test_a_silent_peer_is_dropped_by_keepalive(net: TestNetwork, autojump_clock) -> None:
    a, b = await net.add_nodes(2)
    await a.network.connect(b.node_id)
    net.partition([a], [b])  # data stalls, as on a dead link
    await trio.sleep(120)
    assert b.node_id not in a.network.connections


async def test_peers_found_through_a_seed(net: TestNetwork, autojump_clock) -> None:
    seed = await net.add_node()
    seed_entry = f"{seed.node_id}@{seed.network.listen_addresses[0]}"
    others = [await net.add_node(settings={"network.bootstrap": [seed_entry]}) for _ in range(3)]
    for node in others:  # the perfect address book of TestNetwork must not be what connects them
        node.network.book = {seed.node_id: list(seed.network.listen_addresses)}
    await trio.sleep(10)
    for node in others:
        assert len(node.network.connections) == 3, node.network.statistics()


# -- hostile peers speaking a real handshake, then misbehaving ----------------------------------


async def _authenticated_attacker(net: TestNetwork, target):
    transport = MemoryTransport(net.memory, name="attacker")
    stream = await transport.dial(parse_address(target.network.listen_addresses[0]))
    return await secure_dial(stream, Identity.generate(), Hello(), expected_peer=target.node_id)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * 64,  # bad magic
        struct.pack(">HBBI", 0x5A45, 9, 0x20, 0),  # unsupported version
        struct.pack(">HBBI", 0x5A45, 1, 0xEE, 0),  # unknown type
        struct.pack(">HBBI", 0x5A45, 1, 0x20, 0xFFFFFFFF),  # oversized length
        encode_frame(Frame(MessageType.SERVICE_REQUEST, {"not": "an array"})),
        encode_frame(Frame(MessageType.SERVICE_REQUEST, [True, ECHO, None])),
        encode_frame(Frame(MessageType.SERVICE_RESPONSE, [1, False, "not a pair"])),
        encode_frame(Frame(MessageType.STREAM_DATA, [1, b"x"])),
        encode_frame(Frame(MessageType.PING, [b"short", 1])),
    ],
)
async def test_malformed_frames_close_only_that_connection(
    net: TestNetwork, garbage, autojump_clock
) -> None:
    victim, honest = await net.add_nodes(2, enable=["echo"])
    await honest.network.connect(victim.node_id)
    channel = await _authenticated_attacker(net, victim)
    await channel.send_all(garbage)
    with trio.fail_after(5):
        while await channel.receive_some():
            pass  # the victim closes the connection: EOF
    assert (await honest.rpc.request(victim.node_id, ECHO, "fine"))["echo"] == "fine"
    assert victim.network.statistics()["peers"] == 1


async def test_peer_that_never_reads_cannot_exhaust_memory(
    net: TestNetwork, autojump_clock
) -> None:
    victim, honest = await net.add_nodes(2, enable=["echo"])
    channel = await _authenticated_attacker(net, victim)
    request = encode_frame(Frame(MessageType.SERVICE_REQUEST, [1, ECHO, b"x" * 1000]))
    with trio.move_on_after(30):
        try:
            while True:  # flood requests and never read a single answer
                await channel.send_all(request)
        except trio.BrokenResourceError:
            pass  # dropped as a flooder
    # the victim either stopped reading (backpressure) or dropped the flooder, and still serves
    assert (await honest.rpc.request(victim.node_id, ECHO, "ok"))["echo"] == "ok"


async def test_closed_connection_fails_pending_requests(net: TestNetwork, autojump_clock) -> None:
    a, b = await net.add_nodes(2, enable=["echo"])
    conn = await a.network.connect(b.node_id)

    async def close_soon() -> None:
        await trio.sleep(1)
        await conn.close("test")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_soon)
        with pytest.raises(ConnectionClosed):
            await conn.request(SLOW, None, timeout=30)


def test_addresses_from_peers_are_filtered_and_bounded() -> None:
    from zeone.net.manager import usable_addresses

    given = ["tcp://x", "nonsense", "tcp://127.0.0.1:4001", "tcp://127.0.0.1:4001", 7]
    given += [f"tcp://127.0.0.1:{port}" for port in range(5000, 5100)]
    usable = usable_addresses(given)
    assert usable[0] == "tcp://127.0.0.1:4001"
    assert len(usable) == 16 and "tcp://x" not in usable


async def test_discover_honours_its_limit(net: TestNetwork, autojump_clock) -> None:
    hub, a, b = await net.add_nodes(3)
    await a.network.connect(hub.node_id)
    await b.network.connect(hub.node_id)
    conn = a.network.connections[hub.node_id]
    assert await conn.discover(0) == []
    assert [entry[0] for entry in await conn.discover(5)] == [b.node_id.raw]
