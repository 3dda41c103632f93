"""Malformed and unsupported SOCKS5 input against a running entry, and UDP ASSOCIATE."""

from __future__ import annotations

import trio
from vpn_helpers import drained, start_vpn, udp_echo, wait_until
from zeone_vpn.socks5 import (
    Atyp,
    Cmd,
    Destination,
    Reply,
    build_udp_header,
    client_auth,
    client_greeting,
    client_request,
    parse_reply,
    parse_udp_header,
)
from zeone_vpn.state import state

from zeone.testing import open_network


async def read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(10):
        try:
            while chunk := await stream.receive_some():
                data += chunk
        except trio.BrokenResourceError:
            pass  # closed with our unread data: a reset
    return data


async def exchange(address, *messages: bytes) -> bytes:
    """Send each message, then everything the server says until it closes."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        for message in messages:
            await stream.send_all(message)
        return await read_all(stream)


async def test_malformed_and_unsupported_requests_get_clear_replies():
    async with open_network() as net:
        entry, _ = await start_vpn(net)
        socks = state(entry).socks
        address = socks.address
        target = Destination(Atyp.IPV4, "127.0.0.1", 80)
        # not SOCKS5 at all (an HTTP request): closed without a reply
        assert await exchange(address, b"GET / HTTP/1.1\r\n\r\n") == b""
        # no acceptable method (GSSAPI only)
        assert await exchange(address, b"\x05\x01\x01") == b"\x05\xff"
        # BIND is not supported: reply 7
        answer = await exchange(address, client_greeting(), client_request(Cmd.BIND, target))
        assert (
            answer[:2] == b"\x05\x00" and parse_reply(answer[2:])[0] == Reply.COMMAND_NOT_SUPPORTED
        )
        # unknown address type 0x05: reply 8
        answer = await exchange(address, client_greeting(), b"\x05\x01\x00\x05\x01\x02")
        assert parse_reply(answer[2:] + b"")[0] == Reply.ADDRESS_TYPE_NOT_SUPPORTED
        # an unknown command code: reply 7
        answer = await exchange(
            address, client_greeting(), b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50"
        )
        assert parse_reply(answer[2:])[0] == Reply.COMMAND_NOT_SUPPORTED
        # a request with the wrong version byte: general failure
        answer = await exchange(
            address, client_greeting(), b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50"
        )
        assert parse_reply(answer[2:])[0] == Reply.GENERAL_FAILURE
        assert socks.failed_handshakes == 6
        assert socks.clients == 0


async def test_silent_client_is_dropped_after_the_handshake_timeout():
    async with open_network() as net:
        entry, _ = await start_vpn(net, entry_settings={"plugins.vpn.handshake_timeout": 0.2})
        stream = await trio.open_tcp_stream(*state(entry).socks.address)
        async with stream:
            assert await read_all(stream) == b""
        assert state(entry).socks.failed_handshakes == 1


async def test_udp_associate_relays_datagrams_through_the_exit(nursery):
    echo_port = await nursery.start(udp_echo)
    async with open_network() as net:
        entry, (exit,) = await start_vpn(net, entry_settings={"plugins.vpn.users": ["bob:pw"]})
        control = await trio.open_tcp_stream(*state(entry).socks.address)
        async with control:
            await control.send_all(client_greeting("bob"))
            assert await control.receive_some() == b"\x05\x02"
            await control.send_all(client_auth("bob", "pw"))
            assert await control.receive_some() == b"\x01\x00"
            await control.send_all(
                client_request(Cmd.UDP_ASSOCIATE, Destination(Atyp.IPV4, "0.0.0.0", 0))
            )
            code, relay, _ = parse_reply(await control.receive_some())
            assert code == Reply.SUCCEEDED
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            with sock:
                await sock.bind(("127.0.0.1", 0))
                for i, target in enumerate(
                    [Destination(Atyp.IPV4, "127.0.0.1", echo_port),
                     Destination(Atyp.DOMAIN, "localhost", echo_port)]  # resolved at the exit
                ):  # fmt: skip
                    payload = f"ping {i}".encode()
                    await sock.sendto(build_udp_header(target) + payload, (relay.host, relay.port))
                    with trio.fail_after(10):
                        answer, _ = await sock.recvfrom(65535)
                    source, frag, offset = parse_udp_header(answer)
                    assert frag == 0 and source.port == echo_port
                    assert source.host == "127.0.0.1"
                    assert answer[offset:] == b"echo:" + payload
                # a fragment (FRAG != 0) is dropped, the association survives
                target = Destination(Atyp.IPV4, "127.0.0.1", echo_port)
                fragment = bytearray(build_udp_header(target) + b"frag")
                fragment[2] = 1
                await sock.sendto(bytes(fragment), (relay.host, relay.port))
                await sock.sendto(build_udp_header(target) + b"after", (relay.host, relay.port))
                with trio.fail_after(10):
                    answer, _ = await sock.recvfrom(65535)
                assert answer.endswith(b"echo:after")
        # closing the TCP control connection ends the association at both ends
        await drained(entry, exit)
        (row,) = state(exit).meter.peer_rows()
        assert row["flows"] == 1 and row["sent"] > 0 and row["received"] > 0


async def test_udp_to_a_denied_destination_is_dropped_at_the_exit(nursery):
    echo_port = await nursery.start(udp_echo)
    async with open_network() as net:
        entry, (exit,) = await start_vpn(net, exit_settings={"plugins.vpn.policy": ["allow *:*"]})
        control = await trio.open_tcp_stream(*state(entry).socks.address)
        async with control:
            await control.send_all(client_greeting())
            await control.receive_some()
            await control.send_all(
                client_request(Cmd.UDP_ASSOCIATE, Destination(Atyp.IPV4, "0.0.0.0", 0))
            )
            code, relay, _ = parse_reply(await control.receive_some())
            assert code == Reply.SUCCEEDED
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            with sock:
                await sock.bind(("127.0.0.1", 0))
                target = Destination(Atyp.IPV4, "127.0.0.1", echo_port)
                await sock.sendto(build_udp_header(target) + b"x", (relay.host, relay.port))
                await wait_until(lambda: state(exit).meter.refused.get("udp_not_allowed"))
                with trio.move_on_after(0.2) as scope:
                    await sock.recvfrom(65535)
                assert scope.cancelled_caught  # no echo came back
