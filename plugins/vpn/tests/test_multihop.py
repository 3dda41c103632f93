"""Two-hop flows: entry -> relay -> exit, with an end-to-end layer the relay cannot read."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from vpn_helpers import LOOPBACK_EXIT, SMALL, curl, deterministic_bytes, drained, udp_echo
from zeone_vpn.onion import OnionStream, RecordCipher, entry_handshake, exit_handshake
from zeone_vpn.socks5 import (
    Atyp,
    Cmd,
    Destination,
    Reply,
    build_udp_header,
    client_greeting,
    client_request,
    parse_reply,
    parse_udp_header,
)
from zeone_vpn.state import state

from zeone.testing import open_network


async def two_hops(net, **entry_settings):
    exit = await net.add_node(enable=["vpn"], settings=LOOPBACK_EXIT)
    relay = await net.add_node(
        enable=["vpn"], settings={"plugins.vpn.relay": True, "plugins.vpn.entry": False}
    )
    entry = await net.add_node(
        enable=["vpn"],
        settings={"plugins.vpn.socks_bind": "127.0.0.1:0", "plugins.vpn.hops": 2,
                  **entry_settings},
    )  # fmt: skip
    await net.connect_all()
    directory = state(entry).directory
    with trio.fail_after(20):
        while True:
            await directory.refresh()
            known = [e for e in directory.exits.values() if e.onion_key is not None]
            if known and any(r.rtt is not None for r in directory.relays.values()):
                break
            await trio.sleep(0.2)
    return entry, relay, exit


async def test_curl_through_entry_relay_exit(http_server):
    async with open_network() as net:
        entry, relay, exit = await two_hops(net)
        host, port = state(entry).socks.address
        result = await curl("--socks5-hostname", f"{host}:{port}",
                            http_server.url("small.bin", "localhost"))  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout == deterministic_bytes(SMALL)
        refused = await curl("--socks5-hostname", f"{host}:{port}", "http://10.0.0.1/")
        assert refused.returncode == 97 and b"(2)" in refused.stderr
        await drained(entry, relay, exit)
        # each hop saw only its neighbours
        (at_exit,) = state(exit).meter.peer_rows()
        assert at_exit["peer"] == str(relay.node_id) and at_exit["sent"] >= SMALL
        (at_relay,) = state(relay).meter.peer_rows()
        assert at_relay["peer"] == str(entry.node_id) and at_relay["role"] == "relay"
        (at_entry,) = state(entry).meter.peer_rows()
        assert at_entry["peer"] == str(exit.node_id)
        # the entry never asked the exit anything directly (no probes in two-hop mode)
        assert state(entry).directory.exits[exit.node_id].rtt is None


async def test_udp_through_two_hops(nursery):
    echo_port = await nursery.start(udp_echo)
    async with open_network() as net:
        entry, _relay, _exit = await two_hops(net)
        control = await trio.open_tcp_stream(*state(entry).socks.address)
        async with control:
            await control.send_all(client_greeting())
            await control.receive_some()
            await control.send_all(
                client_request(Cmd.UDP_ASSOCIATE, Destination(Atyp.IPV4, "0.0.0.0", 0))
            )
            code, bound, _ = parse_reply(await control.receive_some())
            assert code == Reply.SUCCEEDED
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            with sock:
                await sock.bind(("127.0.0.1", 0))
                target = Destination(Atyp.IPV4, "127.0.0.1", echo_port)
                await sock.sendto(build_udp_header(target) + b"hi", (bound.host, bound.port))
                with trio.fail_after(10):
                    answer, _ = await sock.recvfrom(65535)
                _, _, offset = parse_udp_header(answer)
                assert answer[offset:] == b"echo:hi"


async def test_onion_records_cannot_be_read_altered_or_cut_by_the_relay():
    import nacl.public

    exit_key = nacl.public.PrivateKey.generate()
    public, send, receive = entry_handshake(bytes(exit_key.public_key))
    exit_send, exit_receive = exit_handshake(exit_key, public)
    assert (exit_send, exit_receive) == (receive, send)

    secret = b"GET /secret HTTP/1.1\r\n" * 100
    assert b"secret" not in RecordCipher(send).seal_all(secret)

    async def deliver(data: bytes) -> OnionStream:
        a, b = trio.testing.memory_stream_pair()
        await a.send_all(data)
        await a.send_eof()
        return OnionStream(b, exit_send, exit_receive)

    # intact, with the end marker: read back exactly, then a clean EOF
    cipher = RecordCipher(send)
    stream = await deliver(cipher.seal_all(secret) + cipher.seal(b""))
    got = b""
    while data := await stream.receive_some():
        got += data
    assert got == secret
    # one flipped bit: broken
    tampered = bytearray(RecordCipher(send).seal_all(secret))
    tampered[10] ^= 1
    stream = await deliver(bytes(tampered))
    with pytest.raises(trio.BrokenResourceError, match="authentication"):
        await stream.receive_some()
    # cut before the end marker: broken, not a clean end of data
    stream = await deliver(RecordCipher(send).seal_all(secret))
    with pytest.raises(trio.BrokenResourceError, match="end marker"):
        while await stream.receive_some():
            pass
