"""The exit as a hostile entry, a never-reading client, limits, failover and isolation see it."""

from __future__ import annotations

from functools import partial

import pytest
import trio
from vpn_helpers import (
    LOOPBACK_EXIT,
    curl,
    drained,
    firehose,
    socks_connect,
    socks_url,
    start_vpn,
)
from zeone_vpn.socks5 import (
    Reply,
)
from zeone_vpn.state import state
from zeone_vpn.wire import CONNECT_PROTOCOL, ConnectHeader, ConnectReply, receive_message

from zeone.testing import open_network


async def ask_exit(entry, exit, host: str, port: int) -> ConnectReply:
    stream = await entry.rpc.open_stream(exit.node_id, CONNECT_PROTOCOL)
    async with stream:
        await stream.send_all(ConnectHeader(host, port).encode())
        return ConnectReply.decode(await receive_message(stream))


async def test_a_hostile_entry_cannot_reach_the_exits_own_network(http_server):
    async with open_network() as net:
        exit = await net.add_node(enable=["vpn"], settings={"plugins.vpn.exit": True})
        hostile = await net.add_node(enable=["vpn"], settings={"plugins.vpn.entry": False})
        hosts = [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.1.1",
            "224.0.0.1",
            "fe80::1",
            "fd12::1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "localhost",
        ]
        for host in hosts:
            reply = await ask_exit(hostile, exit, host, http_server.port)
            assert reply.code == Reply.NOT_ALLOWED, (host, reply)
            assert "exit policy" in reply.message
        assert state(exit).meter.refused["not_allowed"] == 16
        assert not state(exit).meter.flows


async def test_malformed_headers_reset_the_stream_and_the_exit_keeps_working(http_server):
    async with open_network() as net:
        entry, (exit,) = await start_vpn(net)
        for garbage in (b"\xff\xff", b"\x00\x03abc", b"\x00\x02\xa1\x00", b"\x00\x00"):
            stream = await entry.rpc.open_stream(exit.node_id, CONNECT_PROTOCOL)
            async with stream:
                await stream.send_all(garbage)
                with pytest.raises(trio.BrokenResourceError, match="bad-header"):
                    await stream.receive_some()
        result = await curl("--socks5-hostname", socks_url(entry), http_server.url("hello.txt"))
        assert result.returncode == 0, result.stderr


async def test_a_client_that_never_reads_stops_the_server(nursery):
    written = [0]
    port = await nursery.start(firehose, written)
    async with open_network() as net:
        entry, (exit,) = await start_vpn(net)
        client = await socks_connect(entry, "127.0.0.1", port)
        async with client:
            # wait until nothing moves any more: every buffer on the path is full
            stable, last = 0, -1
            with trio.fail_after(30):
                while stable < 5:
                    await trio.sleep(0.05)
                    stable = stable + 1 if written[0] == last else 0
                    last = written[0]
            (flow,) = state(exit).meter.flows.values()
            # Bounded by one mux window plus the kernel's socket buffers, nothing more.
            assert written[0] < 24 * 1024 * 1024, written[0]
            connection = entry.network.connections[exit.node_id]
            assert connection.mux.statistics().bytes_buffered <= 256 * 1024
            assert flow.sent <= written[0]
            # and reading resumes the flow
            got, target = 0, 2 * written[0]
            with trio.fail_after(30):
                while got < target:
                    got += len(await client.receive_some())


async def test_flow_limit_per_client(nursery, http_server):
    written = [0]
    port = await nursery.start(firehose, written)
    async with open_network() as net:
        entry, (exit,) = await start_vpn(net, exit_settings={"plugins.vpn.max_flows_per_client": 1})
        held = await socks_connect(entry, "127.0.0.1", port)
        async with held:
            result = await curl("--socks5-hostname", socks_url(entry), http_server.url("hello.txt"))
            assert result.returncode == 97 and b"(2)" in result.stderr
            assert state(exit).meter.refused["flow-limit"] == 1
        await drained(entry, exit)
        result = await curl("--socks5-hostname", socks_url(entry), http_server.url("hello.txt"))
        assert result.returncode == 0, result.stderr


async def test_an_exit_that_vanishes_fails_one_flow_and_new_flows_go_elsewhere(
    nursery, http_server
):
    written = [0]
    port = await nursery.start(firehose, written)
    async with open_network() as net:
        entry, exits = await start_vpn(net, exits=2)
        client = await socks_connect(entry, "127.0.0.1", port)
        async with client:
            with trio.fail_after(10):
                while written[0] < 1_000_000:
                    await client.receive_some()
            (dead,) = [e for e in exits if state(e).meter.flows]
            (alive,) = [e for e in exits if e is not dead]
            # the exit drops off the network without a goodbye
            net.partition([entry, alive], [dead], break_links=True)
            with trio.fail_after(10):
                try:
                    while await client.receive_some():
                        pass
                except trio.BrokenResourceError:
                    pass  # a reset: the user sees this one connection fail
        for _ in range(3):
            result = await curl("--socks5-hostname", socks_url(entry), http_server.url("hello.txt"))
            assert result.returncode == 0, result.stderr
        assert state(alive).meter.peer_rows()[0]["flows"] == 3
        info = state(entry).directory.exits[dead.node_id]
        assert info.failures >= 1


async def test_credentials_isolate_flows_onto_different_exits(http_server):
    async with open_network() as net:
        entry, exits = await start_vpn(net, exits=2)
        proxy, url = socks_url(entry), http_server.url("hello.txt")
        for user in ("alice:a", "bob:b", "alice:a", "bob:b", "alice:a"):
            result = await curl("--socks5-hostname", proxy, "--socks5-basic", "-U", user, url)
            assert result.returncode == 0, result.stderr
        await drained(entry, *exits)
        flows = sorted(state(e).meter.peer_rows()[0]["flows"] for e in exits)
        assert flows == [2, 3]  # alice always on one exit, bob always on the other


async def test_exit_advertises_its_policy_in_the_dht():
    async with open_network() as net:
        exit = await net.add_node(enable=["vpn"], settings={
            **LOOPBACK_EXIT, "plugins.vpn.policy": ["deny *:25", "allow *:*"]})  # fmt: skip
        other = await net.add_node(enable=["vpn"], settings={"plugins.vpn.entry": False})
        await net.connect_all()
        from zeone_vpn.exit import EXIT_KEY

        providers: list = []
        with trio.fail_after(20):
            while not providers:
                await trio.sleep(0.2)
                providers = await other.dht.find_providers(EXIT_KEY)
        (provider,) = providers
        assert provider.contact.node_id == exit.node_id
        assert provider.info.meta["policy"] == ["deny *:25", "allow *:*"]


async def test_half_close_reaches_the_server_and_the_answer_comes_back(nursery):
    async def counter(stream: trio.SocketStream) -> None:
        total = 0
        while data := await stream.receive_some():
            total += len(data)
        await stream.send_all(f"got {total}".encode())  # after our EOF, the write side lives on
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), counter, 0)
    port = listeners[0].socket.getsockname()[1]
    async with open_network() as net:
        entry, (exit,) = await start_vpn(net)
        client = await socks_connect(entry, "127.0.0.1", port)
        async with client:
            await client.send_all(b"x" * 1_000_000)
            await client.send_eof()
            answer = b""
            with trio.fail_after(10):
                while data := await client.receive_some():
                    answer += data
        assert answer == b"got 1000000"
        await drained(entry, exit)
