"""Sans-IO SOCKS5 parser, exit policy, wire messages, rate limiter and config: no sockets."""

from __future__ import annotations

import ipaddress

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from zeone_vpn.policy import ExitPolicy, PolicyError, is_special, parse_rule
from zeone_vpn.relay import TokenBucket
from zeone_vpn.socks5 import (
    Atyp,
    Cmd,
    Command,
    Destination,
    Reply,
    ServerHandshake,
    SocksError,
    build_udp_header,
    client_auth,
    client_greeting,
    client_request,
    parse_reply,
    parse_udp_header,
    reply,
)
from zeone_vpn.wire import ConnectHeader, ConnectReply, DatagramReader, encode_datagram

from zeone.testing import make_config

hostnames = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=255
)
destinations = st.one_of(
    st.builds(lambda a, p: Destination(Atyp.IPV4, str(ipaddress.IPv4Address(a)), p),
              st.integers(0, 2**32 - 1), st.integers(0, 65535)),
    st.builds(lambda a, p: Destination(Atyp.IPV6, str(ipaddress.IPv6Address(a)), p),
              st.integers(0, 2**128 - 1), st.integers(0, 65535)),
    st.builds(lambda h, p: Destination(Atyp.DOMAIN, h, p), hostnames, st.integers(0, 65535)),
)  # fmt: skip
credentials = st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) < 256)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


def run_handshake(pieces: list[bytes], **kwargs) -> tuple[bytes, Command | None]:
    handshake = ServerHandshake(**kwargs)
    out, command = b"", None
    for piece in pieces:
        if handshake.done:
            assert piece == b""
            continue
        sent, got = handshake.feed(piece)
        out += sent
        command = command or got
    return out, command


@given(destinations, st.sampled_from([Cmd.CONNECT, Cmd.UDP_ASSOCIATE]),
       st.none() | st.tuples(credentials, credentials),
       st.lists(st.integers(0, 600), max_size=8))  # fmt: skip
def test_any_valid_handshake_in_any_split_parses(destination, cmd, auth, cuts):
    message = client_greeting(auth[0] if auth else None)
    if auth:
        message += client_auth(*auth)
    message += client_request(cmd, destination)
    out, command = run_handshake(split(message, cuts))
    assert command == Command(cmd, destination, *(auth or (None, None)))
    assert out == (b"\x05\x02\x01\x00" if auth else b"\x05\x00")


@settings(max_examples=300)
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=6))
def test_garbage_never_escapes_as_anything_but_socks_error(data, cuts):
    handshake = ServerHandshake()
    try:
        for piece in split(data, cuts):
            if handshake.done:
                break
            handshake.feed(piece)
    except SocksError as exc:
        assert isinstance(exc.reply, bytes)


@given(destinations, st.sampled_from(list(Reply)))
def test_reply_round_trip(destination, code):
    data = reply(code, destination)
    assert parse_reply(data) == (code, destination, len(data))
    assert parse_reply(data[:-1]) is None


@given(destinations, st.binary(max_size=100))
def test_udp_header_round_trip(destination, payload):
    datagram = build_udp_header(destination) + payload
    parsed, frag, offset = parse_udp_header(datagram)
    assert (parsed, frag, datagram[offset:]) == (destination, 0, payload)


def test_specific_refusals():
    with pytest.raises(SocksError) as info:
        run_handshake([b"\x05\x01\x00\x05\x02\x00\x01\x01\x02\x03\x04\x00\x50"])  # BIND
    assert info.value.reply == b"\x05\x00" + reply(Reply.COMMAND_NOT_SUPPORTED)
    with pytest.raises(SocksError) as info:
        run_handshake([b"\x05\x01\x00\x05\x01\x00\x09\x01"])  # unknown ATYP
    assert info.value.reply.endswith(reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED))
    with pytest.raises(SocksError) as info:
        run_handshake([b"\x05\x01\x00"], allow_no_auth=False)
    assert info.value.reply == b"\x05\xff"
    with pytest.raises(SocksError) as info:
        run_handshake([client_greeting("u") + client_auth("u", "bad")],
                      check=lambda u, p: p == "good")  # fmt: skip
    assert info.value.reply == b"\x05\x02\x01\x01"
    with pytest.raises(SocksError):
        run_handshake([b"\x05\x01\x00\x05\x01\x00\x03\x00\x00\x50"])  # empty domain name
    # data pipelined after the request is kept for the relay, not parsed
    handshake = ServerHandshake()
    handshake.feed(client_greeting() + client_request(
        Cmd.CONNECT, Destination(Atyp.DOMAIN, "example.com", 80)) + b"GET /")  # fmt: skip
    assert handshake.done and handshake.remainder == b"GET /"


# -- policy ----------------------------------------------------------------------------------


def check(policy: ExitPolicy, host: str, port: int) -> bool:
    return policy.check(ipaddress.ip_address(host), port).allowed


def test_default_policy_denies_special_purpose_space():
    policy = ExitPolicy.parse(["allow *:*", "allow 0.0.0.0/0:*", "allow ::/0:*"])
    special = [
        "127.0.0.1",
        "10.1.1.1",
        "172.31.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.251",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "64:ff9b::a00:1",
        "2002:c0a8:101::1",
        "::127.0.0.1",
    ]
    for host in special:
        assert not check(policy, host, 80), host
        assert is_special(ipaddress.ip_address(host)), host
    for host in ("1.1.1.1", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8"):
        assert check(policy, host, 443), host


def test_rules_first_match_and_explicit_openings():
    policy = ExitPolicy.parse(["deny *:25", "allow 127.0.0.1/32:8000-8080",
                               "deny 8.8.8.0/24:*", "allow *:80", "allow *:443"])  # fmt: skip
    assert not check(policy, "1.2.3.4", 25)
    assert check(policy, "127.0.0.1", 8000) and check(policy, "127.0.0.1", 8080)
    assert not check(policy, "127.0.0.1", 8081)  # only the opened ports
    assert not check(policy, "127.0.0.2", 8000)  # only the opened address
    assert not check(policy, "8.8.8.8", 80) and check(policy, "8.8.4.4", 80)
    assert not check(policy, "1.2.3.4", 22)  # nothing matches: denied
    assert policy.may_allow_port(443) and not policy.may_allow_port(25)
    assert not policy.may_allow_port(22)
    # one private address among a name's addresses refuses the name (DNS rebinding)
    mixed = [ipaddress.ip_address("1.2.3.4"), ipaddress.ip_address("127.0.0.1")]
    assert not policy.check_all(mixed, 80).allowed


@pytest.mark.parametrize(
    "text", ["allow", "permit *:*", "allow *", "allow 10.0.0.0/33:*", "allow *:70000",
             "allow *:9-1", "allow host.example:*", "allow *:a"])  # fmt: skip
def test_bad_rules_are_named(text):
    with pytest.raises(PolicyError, match="policy rule"):
        parse_rule(text)


@given(st.integers(0, 2**32 - 1), st.integers(0, 65535))
def test_wildcard_allow_never_opens_special_space(address, port):
    ip = ipaddress.IPv4Address(address)
    assert check(ExitPolicy.parse(["allow *:*"]), str(ip), port) is not is_special(ip)


# -- wire -------------------------------------------------------------------------------------


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=5))
def test_datagram_reader_reassembles_any_split(payload, cuts):
    stream = encode_datagram(payload) + encode_datagram(b"second")
    reader, out = DatagramReader(), []
    for piece in split(stream, cuts):
        out += reader.feed(piece)
    assert out == [payload, b"second"]


def test_connect_messages_validate_hostile_values():
    from zeone_vpn.wire import VpnProtocolError

    assert ConnectHeader.decode({"host": "a.b", "port": 1}) == ConnectHeader("a.b", 1)
    for bad in ({"host": "", "port": 1}, {"host": "x", "port": 70000}, {"host": 5, "port": 1},
                [], {"host": "x" * 300, "port": 1}):  # fmt: skip
        with pytest.raises(VpnProtocolError):
            ConnectHeader.decode(bad)
    with pytest.raises(VpnProtocolError):
        ConnectReply.decode({"code": 99})
    assert ConnectReply.decode({"code": 2, "bound": "junk"}).code == Reply.NOT_ALLOWED


# -- rate limit and config ------------------------------------------------------------------------


async def test_token_bucket_holds_the_rate(autojump_clock):
    bucket = TokenBucket(1_000_000)
    start = trio.current_time()
    for _ in range(50):
        await bucket.take(100_000)  # 5 MB at 1 MB/s with a 1 MB burst
    assert trio.current_time() - start >= 4.0


def test_config_errors_name_the_key(tmp_path):
    from zeone.plugins import Catalog

    catalog = Catalog.discover()
    settings = {"plugins.vpn.exit": True, "plugins.vpn.policy": ["deny *:*"]}
    config = make_config(tmp_path, catalog=catalog, settings=settings)
    assert config.plugin_settings("vpn").policy == ["deny *:*"]
    for key, value, words in [
        ("plugins.vpn.policy", ["allow everything"], "policy rule"),
        ("plugins.vpn.users", ["nocolon"], "users"),
        ("plugins.vpn.socks_bind", "localhost", "host:port"),
        ("plugins.vpn.exits", ["abc"], "node id"),
        ("plugins.vpn.max_flows_per_client", 0, "max_flows_per_client"),
    ]:
        with pytest.raises(Exception, match=words):
            make_config(tmp_path, settings={key: value}, catalog=catalog)
