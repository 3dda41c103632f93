"""The in-memory network: TCP-like streams, link conditions, faults and determinism.

Timing tests run on pytest-trio's `autojump_clock`, so simulated seconds cost nothing and the
measured times are exact.
"""

from __future__ import annotations

import logging
import time

import pytest
import trio
import trio.testing

from zeone.net.memory import (
    DEFAULT_WINDOW,
    LinkConditions,
    MemoryNetwork,
    MemoryStream,
    MemoryTransport,
)
from zeone.net.transport import Address, DialError, ListenError, TcpTransport, parse_address


async def echo(stream: trio.abc.Stream) -> None:
    async for data in stream:
        await stream.send_all(data)


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        data = await stream.receive_some(size - len(received))
        assert data, "unexpected end of stream"
        received += data
    return bytes(received)


async def serve(
    nursery: trio.Nursery, transport: MemoryTransport, name: str, handler=echo
) -> Address:
    return await nursery.start(transport.listen, parse_address(f"memory://{name}"), handler)


# -- the stream contract ------------------------------------------------------------------------


async def test_streams_pass_trio_conformance_checks() -> None:
    network = MemoryNetwork()

    async def make_pair() -> tuple[MemoryStream, MemoryStream]:
        return network.stream_pair()

    async def make_clogged_pair() -> tuple[MemoryStream, MemoryStream]:
        clogged = MemoryNetwork(window=16)
        a, b = clogged.stream_pair()
        await a.send_all(b"x" * 16)
        await b.send_all(b"y" * 16)
        return a, b

    await trio.testing.check_half_closeable_stream(make_pair, make_clogged_pair)


async def test_streams_pass_conformance_checks_with_latency_and_loss(autojump_clock) -> None:
    network = MemoryNetwork(latency=0.01, jitter=0.005, loss=0.1, seed=3)

    async def make_pair() -> tuple[MemoryStream, MemoryStream]:
        return network.stream_pair()

    await trio.testing.check_half_closeable_stream(make_pair, None)


async def test_connect_and_echo(nursery: trio.Nursery) -> None:
    network = MemoryNetwork()
    server = MemoryTransport(network, name="server")
    bound = await serve(nursery, server, "server")
    assert bound == parse_address("memory://server")

    client = MemoryTransport(network, name="client")
    stream = await client.dial(bound)
    assert (stream.local_name, stream.remote_name) == ("client", "server")
    assert stream.remote_address == bound
    async with stream:
        await stream.send_all(b"hello")
        assert await receive_exactly(stream, 5) == b"hello"
        stats = network.statistics()
        assert (stats.listeners, stats.connections_open, stats.connections_total) == (1, 1, 1)
        assert stats.bytes_sent == stats.bytes_delivered == 10
    await trio.testing.wait_all_tasks_blocked()
    assert network.statistics().connections_open == 0  # both ends closed: forgotten


async def test_accepted_stream_knows_the_dialer(nursery: trio.Nursery) -> None:
    network = MemoryNetwork()
    peers: list[str] = []

    async def handler(stream: trio.abc.Stream) -> None:
        assert isinstance(stream, MemoryStream)
        peers.append(stream.remote_name)

    await serve(nursery, MemoryTransport(network), "b", handler)
    named = MemoryTransport(network, name="a")
    anonymous = MemoryTransport(network)
    for transport in (named, anonymous, anonymous):
        async with await transport.dial(parse_address("memory://b")) as stream:
            assert await stream.receive_some() == b""
    assert peers[0] == "a"
    assert peers[1] == peers[2] == anonymous.local_name
    assert peers[1].startswith("dialer-")


async def test_listening_transport_dials_under_its_listener_name(nursery: trio.Nursery) -> None:
    network = MemoryNetwork()
    a = MemoryTransport(network)
    await serve(nursery, a, "a")
    await serve(nursery, MemoryTransport(network), "b")
    async with await a.dial(parse_address("memory://b")) as stream:
        assert stream.local_name == "a"


async def test_empty_name_is_assigned(nursery: trio.Nursery) -> None:
    network = MemoryNetwork()
    first = await nursery.start(MemoryTransport(network).listen, parse_address("memory://"), echo)
    second = await nursery.start(MemoryTransport(network).listen, parse_address("memory://"), echo)
    named = await nursery.start(
        MemoryTransport(network, name="n").listen, parse_address("memory://"), echo
    )
    assert first.host and second.host and first != second
    assert named == parse_address("memory://n")
    assert network.listening() == sorted([first.host, second.host, "n"])
    async with await MemoryTransport(network).dial(first) as stream:
        await stream.send_all(b"x")
        assert await stream.receive_some() == b"x"


async def test_name_in_use(nursery: trio.Nursery) -> None:
    network = MemoryNetwork()
    await serve(nursery, MemoryTransport(network), "a")
    with pytest.raises(ListenError, match="memory://a: name already in use"):
        await MemoryTransport(network).listen(parse_address("memory://a"), echo)


async def test_connection_refused_and_listener_shutdown() -> None:
    network = MemoryNetwork()
    transport = MemoryTransport(network, name="c")
    address = parse_address("memory://gone")
    with pytest.raises(DialError, match="memory://gone: connection refused"):
        await transport.dial(address)

    async with trio.open_nursery() as nursery:
        await serve(nursery, MemoryTransport(network), "gone")
        stream = await transport.dial(address)
        await stream.send_all(b"x")
        assert await stream.receive_some() == b"x"
        nursery.cancel_scope.cancel()  # stop the listener: its handlers are cancelled

    assert await stream.receive_some() == b""  # the accepted side was closed gracefully
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_all(b"more")
    await stream.aclose()
    assert network.listening() == []
    with pytest.raises(DialError, match="refused"):
        await transport.dial(address)
    assert network.statistics().dials_failed == 2
    assert network.statistics().connections_open == 0


async def test_dial_wrong_scheme_or_no_name() -> None:
    transport = MemoryTransport(MemoryNetwork())
    with pytest.raises(DialError, match="memory transport"):
        await transport.dial(parse_address("tcp://127.0.0.1:1"))
    with pytest.raises(DialError, match="needs a name"):
        await transport.dial(parse_address("memory://"))


async def test_handler_exception_does_not_kill_listener(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    network = MemoryNetwork()

    async def handler(stream: trio.abc.Stream) -> None:
        data = await stream.receive_some()
        if data == b"crash":
            raise RuntimeError("handler bug")
        await stream.send_all(data)

    await serve(nursery, MemoryTransport(network), "s", handler)
    client = MemoryTransport(network)
    with caplog.at_level(logging.ERROR, logger="zeone.net.transport"):
        async with await client.dial(parse_address("memory://s")) as stream:
            await stream.send_all(b"crash")
            assert await stream.receive_some() == b""
        async with await client.dial(parse_address("memory://s")) as stream:
            await stream.send_all(b"fine")
            assert await stream.receive_some() == b"fine"
    assert "handler bug" in caplog.text


async def test_half_close() -> None:
    a, b = MemoryNetwork().stream_pair()
    await a.send_all(b"request")
    await a.send_eof()
    await a.send_eof()  # idempotent
    with pytest.raises(trio.ClosedResourceError, match="send_eof"):
        await a.send_all(b"late")
    assert await b.receive_some() == b"request"
    assert await b.receive_some() == b""
    assert await b.receive_some() == b""  # EOF is sticky
    await b.send_all(b"response")  # the other direction still works
    await b.send_eof()
    assert await a.receive_some() == b"response"
    assert await a.receive_some() == b""


async def test_close_gives_eof_then_broken_writes() -> None:
    network = MemoryNetwork()
    a, b = network.stream_pair()
    await a.send_all(b"last words")
    await a.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await a.receive_some()
    assert await b.receive_some() == b"last words"
    assert await b.receive_some() == b""
    with pytest.raises(trio.BrokenResourceError, match="peer closed"):
        await b.send_all(b"anyone?")
    assert network.statistics().connections_open == 1  # b is still open
    await b.aclose()
    assert network.statistics().connections_open == 0


async def test_large_writes_are_split_and_reassembled() -> None:
    a, b = MemoryNetwork().stream_pair()
    payload = bytes(range(256)) * 4096  # 1 MiB, four windows

    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, memoryview(bytearray(payload)))
        assert await receive_exactly(b, len(payload)) == payload


# -- link conditions ----------------------------------------------------------------------------


async def test_latency_on_dial_and_round_trip(autojump_clock, nursery: trio.Nursery) -> None:
    network = MemoryNetwork(latency=0.05)
    await serve(nursery, MemoryTransport(network), "server")
    client = MemoryTransport(network, name="client")

    start = trio.current_time()
    stream = await client.dial(parse_address("memory://server"))
    assert trio.current_time() - start == pytest.approx(0.1)  # one round trip to connect

    start = trio.current_time()
    await stream.send_all(b"ping")
    assert await stream.receive_some() == b"ping"
    assert trio.current_time() - start == pytest.approx(0.1)

    network.set_link("client", "server", latency=0.2)  # per-pair override, both directions
    assert network.link("server", "client").latency == 0.2
    assert network.link("client", "other").latency == 0.05
    start = trio.current_time()
    await stream.send_all(b"ping")
    assert await stream.receive_some() == b"ping"
    assert trio.current_time() - start == pytest.approx(0.4)

    network.set_link("client", "server", latency=0.0, symmetric=False)
    start = trio.current_time()
    await stream.send_all(b"ping")
    assert await stream.receive_some() == b"ping"
    assert trio.current_time() - start == pytest.approx(0.2)

    network.clear_link("client", "server")
    assert network.link("client", "server") == network.default
    await stream.aclose()


async def timed_transfer(
    network: MemoryNetwork, messages: int, interval: float = 0.001, size: int = 100
) -> list[tuple[float, bytes]]:
    """Send numbered messages every `interval`; return (one-way delay, message) as received."""
    a, b = network.stream_pair("a", "b")
    sent_at: dict[int, float] = {}
    arrivals: list[tuple[float, bytes]] = []

    async def sender() -> None:
        for i in range(messages):
            sent_at[i] = trio.current_time()
            await a.send_all(i.to_bytes(4, "big") + bytes(size - 4))
            await trio.sleep(interval)
        await a.aclose()

    async def receiver() -> None:
        buffer = b""
        while data := await b.receive_some(size):
            buffer += data
            while len(buffer) >= size:
                index = int.from_bytes(buffer[:4], "big")
                arrivals.append((trio.current_time() - sent_at[index], buffer[:size]))
                buffer = buffer[size:]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        nursery.start_soon(receiver)
    await b.aclose()
    return arrivals


async def test_loss_adds_retransmission_delay_but_keeps_bytes_and_order(autojump_clock) -> None:
    network = MemoryNetwork(latency=0.02, loss=0.3, rto=0.5, seed=1)
    # messages 10 s apart never queue behind each other: each delay is latency + k * rto
    arrivals = await timed_transfer(network, 200, interval=10.0)
    assert [int.from_bytes(data[:4], "big") for _, data in arrivals] == list(range(200))
    losses = [round((delay - 0.02) / 0.5, 6) for delay, _ in arrivals]
    assert all(k == int(k) for k in losses)
    assert 35 <= sum(k >= 1 for k in losses) <= 90  # about 30% of 200 lost at least once
    assert max(losses) >= 2  # and some lost again on retransmission
    stats = network.statistics()
    assert stats.bytes_sent == stats.bytes_delivered == 200 * 100

    # sent back to back, a lost segment holds up everything behind it, still in order
    arrivals = await timed_transfer(MemoryNetwork(latency=0.02, loss=0.3, seed=1), 200)
    assert [int.from_bytes(data[:4], "big") for _, data in arrivals] == list(range(200))


async def test_jitter_stays_in_bounds_and_never_reorders(autojump_clock) -> None:
    network = MemoryNetwork(latency=0.1, jitter=0.05, seed=2)
    arrivals = await timed_transfer(network, 300, interval=1.0)
    delays = [delay for delay, _ in arrivals]
    assert all(0.05 - 1e-9 <= delay <= 0.15 + 1e-9 for delay in delays)
    assert max(delays) - min(delays) > 0.08  # spread over the whole ±50 ms
    # back to back, jitter would reorder packets; the stream still delivers in order
    arrivals = await timed_transfer(network, 300)
    assert [int.from_bytes(data[:4], "big") for _, data in arrivals] == list(range(300))


async def test_bandwidth_limits_throughput(autojump_clock) -> None:
    network = MemoryNetwork(bandwidth=100_000, latency=0.01)
    a, b = network.stream_pair()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, bytes(500_000))
        await receive_exactly(b, 500_000)
    # 5 s of serialization; the window keeps at most 256 KiB queued, so acks barely matter
    assert trio.current_time() - start == pytest.approx(5.0, rel=0.02)


def test_link_conditions_are_validated() -> None:
    with pytest.raises(ValueError, match="loss must be in"):
        LinkConditions(loss=1.0)
    with pytest.raises(ValueError, match="latency must be >= 0"):
        LinkConditions(latency=-1)
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        MemoryNetwork(bandwidth=0)
    with pytest.raises(ValueError, match="window"):
        MemoryNetwork(window=0)
    with pytest.raises(ValueError, match="jitter must be >= 0"):
        MemoryNetwork().set_link("a", "b", jitter=float("nan"))


# -- flow control -------------------------------------------------------------------------------


async def test_backpressure_bounds_buffering(autojump_clock) -> None:
    network = MemoryNetwork()
    a, b = network.stream_pair()
    sent = 0

    async def writer() -> None:
        nonlocal sent
        while True:
            await a.send_all(b"x" * 10_000)
            sent += 10_000

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        # the writer is stuck: at most one window is buffered
        assert network.statistics().bytes_sent == DEFAULT_WINDOW
        assert sent <= DEFAULT_WINDOW
        await trio.sleep(10)  # time alone does not help: nobody reads
        assert network.statistics().bytes_sent == DEFAULT_WINDOW
        # reading reopens the window and lets the writer go on
        await receive_exactly(b, 100_000)
        await trio.testing.wait_all_tasks_blocked()
        assert network.statistics().bytes_sent == DEFAULT_WINDOW + 100_000
        nursery.cancel_scope.cancel()


async def test_window_reopens_one_latency_after_reading(autojump_clock) -> None:
    network = MemoryNetwork(latency=0.1, window=1000)
    a, b = network.stream_pair()
    await a.send_all(bytes(1000))  # fills the window without blocking
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, bytes(1000))
        await receive_exactly(b, 1000)  # arrives after 0.1 s
        assert trio.current_time() - start == pytest.approx(0.1)
        await receive_exactly(b, 1000)  # ack back 0.1 s, then data forward 0.1 s
        assert trio.current_time() - start == pytest.approx(0.3)


# -- faults -------------------------------------------------------------------------------------


async def test_partition_blocks_dials_and_stalls_data_until_heal(
    autojump_clock, nursery: trio.Nursery
) -> None:
    network = MemoryNetwork(latency=0.01)
    await serve(nursery, MemoryTransport(network, name="b"), "b")
    await serve(nursery, MemoryTransport(network, name="c"), "c")
    a = MemoryTransport(network, name="a")
    to_b = await a.dial(parse_address("memory://b"))

    network.partition({"a", "c"}, {"b"})
    assert not network.reachable("a", "b") and network.reachable("a", "c")
    with pytest.raises(DialError, match="unreachable from 'a' \\(partitioned\\)"):
        await a.dial(parse_address("memory://b"))
    async with await a.dial(parse_address("memory://c")) as to_c:  # same side: fine
        await to_c.send_all(b"hi")
        assert await to_c.receive_some() == b"hi"

    await to_b.send_all(b"held")  # accepted into the window, but cannot get through
    with trio.move_on_after(60) as stalled:
        await to_b.receive_some()
    assert stalled.cancelled_caught

    heal_time = trio.current_time()
    network.heal()
    assert await to_b.receive_some() == b"held"
    # held data reaches b at once on heal; the echo needs one more latency to come back
    assert trio.current_time() - heal_time == pytest.approx(0.01)
    await to_b.aclose()


async def test_unlisted_names_form_their_own_group() -> None:
    network = MemoryNetwork()
    network.partition({"a"})
    assert not network.reachable("a", "b")
    assert network.reachable("b", "c")
    with pytest.raises(ValueError, match="more than one"):
        network.partition({"a", "b"}, {"b"})
    with pytest.raises(TypeError):
        network.partition("ab")  # type: ignore[arg-type]


async def test_partition_with_break_links_resets_connections(nursery: trio.Nursery) -> None:
    network = MemoryNetwork()
    await serve(nursery, MemoryTransport(network), "b")
    await serve(nursery, MemoryTransport(network), "c")
    a = MemoryTransport(network, name="a")
    to_b = await a.dial(parse_address("memory://b"))
    to_c = await a.dial(parse_address("memory://c"))

    network.partition({"a", "c"}, {"b"}, break_links=True)
    with pytest.raises(trio.BrokenResourceError, match="reset"):
        await to_b.receive_some()
    await to_c.send_all(b"still up")
    assert await to_c.receive_some() == b"still up"
    assert network.statistics().connections_open == 1


async def test_disconnect_resets_both_ends(nursery: trio.Nursery) -> None:
    network = MemoryNetwork()
    server_errors: list[BaseException] = []

    async def handler(stream: trio.abc.Stream) -> None:
        try:
            await echo(stream)
        except trio.BrokenResourceError as exc:
            server_errors.append(exc)

    await serve(nursery, MemoryTransport(network), "b", handler)
    a = MemoryTransport(network, name="a")
    stream = await a.dial(parse_address("memory://b"))
    await stream.send_all(b"1")
    assert await stream.receive_some() == b"1"

    assert network.disconnect("a") == 1
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_all(b"2")
    with pytest.raises(trio.BrokenResourceError):
        await stream.receive_some()
    await trio.testing.wait_all_tasks_blocked()
    assert len(server_errors) == 1  # the accepting side saw the reset too
    await stream.aclose()  # closing a reset stream is fine


async def test_disconnect_wakes_blocked_reader_with_broken(nursery: trio.Nursery) -> None:
    network = MemoryNetwork()
    await serve(nursery, MemoryTransport(network), "b")
    stream = await MemoryTransport(network, name="a").dial(parse_address("memory://b"))
    errors: list[BaseException] = []

    async def reader() -> None:
        try:
            await stream.receive_some()
        except trio.BrokenResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as inner:
        inner.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        network.disconnect("b")
    assert len(errors) == 1
    assert network.statistics().connections_open == 0
    # the node is still listening: a new connection works
    async with await MemoryTransport(network).dial(parse_address("memory://b")) as again:
        await again.send_all(b"back")
        assert await again.receive_some() == b"back"


async def test_cancelled_dial_resets_the_accepted_side(autojump_clock, nursery: trio.Nursery):
    network = MemoryNetwork(latency=1.0)
    outcomes: list[str] = []

    async def handler(stream: trio.abc.Stream) -> None:
        try:
            await stream.receive_some()
        except trio.BrokenResourceError:
            outcomes.append("reset")

    await serve(nursery, MemoryTransport(network), "b", handler)
    with trio.move_on_after(1.5):  # the SYN arrives at 1.0, the SYN-ACK would at 2.0
        await MemoryTransport(network).dial(parse_address("memory://b"))
    await trio.testing.wait_all_tasks_blocked()
    assert outcomes == ["reset"]
    assert network.statistics().connections_open == 0


# -- determinism and scale ----------------------------------------------------------------------


async def lossy_delays(seed: int) -> list[float]:
    network = MemoryNetwork(latency=0.05, jitter=0.02, loss=0.2, seed=seed)
    return [round(delay, 9) for delay, _ in await timed_transfer(network, 100)]


async def test_same_seed_same_run(autojump_clock) -> None:
    first = await lossy_delays(seed=42)
    second = await lossy_delays(seed=42)
    other = await lossy_delays(seed=43)
    assert first == second
    assert first != other


async def test_many_nodes(autojump_clock) -> None:
    """A ring of 1,000 nodes, each dialing its successor with latency: cheap in time and tasks."""
    network = MemoryNetwork(latency=0.01)
    count = 1000
    transports = [MemoryTransport(network, name=f"n{i}") for i in range(count)]
    async with trio.open_nursery() as nursery:
        for transport in transports:
            await nursery.start(transport.listen, parse_address("memory://"), echo)
        streams = []
        for i, transport in enumerate(transports):
            streams.append(await transport.dial(parse_address(f"memory://n{(i + 1) % count}")))
        for stream in streams:
            await stream.send_all(b"ping")
        for stream in streams:
            assert await stream.receive_some() == b"ping"
        assert network.statistics().connections_open == count
        for stream in streams:
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert network.statistics().connections_open == 0


async def test_throughput_of_ideal_link() -> None:
    """100 MB through one stream pair: with no conditions, delivery is a pointer handoff."""
    a, b = MemoryNetwork().stream_pair()
    total, chunk = 100 * 1024 * 1024, bytes(64 * 1024)

    async def sender() -> None:
        for _ in range(total // len(chunk)):
            await a.send_all(chunk)
        await a.send_eof()

    received = 0
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        while data := await b.receive_some():
            received += len(data)
    elapsed = time.perf_counter() - started
    assert received == total
    assert elapsed < 30  # a generous bound for slow CI; typically well under a second


def test_memory_transport_is_a_transport() -> None:
    from zeone.net.transport import Transport

    assert issubclass(MemoryTransport, Transport) and MemoryTransport.scheme == "memory"
    assert TcpTransport.scheme == "tcp"
