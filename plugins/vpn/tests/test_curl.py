"""curl through a real entry node and exit node(s) to a real HTTP server on loopback."""

from __future__ import annotations

import hashlib

import pytest
import trio
from vpn_helpers import (
    SMALL,
    HttpServer,
    curl,
    deterministic_bytes,
    drained,
    socks_url,
    start_vpn,
)
from zeone_vpn.state import state

from zeone.testing import open_network

BIG = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def big_file(web_root):
    data = deterministic_bytes(BIG, seed=b"big")
    (web_root / "big.bin").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def http6_server(web_root):
    server = HttpServer(web_root, "::1")
    yield server
    server.stop()


async def test_names_ipv4_and_ipv6_literals_and_metering(http_server, http6_server):
    async with open_network() as net:
        entry, (exit,) = await start_vpn(net)
        proxy = socks_url(entry)
        expected = deterministic_bytes(SMALL)
        for url in (
            http_server.url("small.bin", "localhost"),  # a name: resolved at the exit
            http_server.url("small.bin", "127.0.0.1"),
            http6_server.url("small.bin", "::1"),
        ):
            result = await curl("--socks5-hostname", proxy, url)
            assert result.returncode == 0, (url, result.stderr)
            assert result.stdout == expected, url
        # bytes counted per peer and direction, on both sides
        await drained(entry, exit)
        (at_exit,) = state(exit).meter.peer_rows()
        (at_entry,) = state(entry).meter.peer_rows()
        assert at_exit["peer"] == str(entry.node_id) and at_entry["peer"] == str(exit.node_id)
        assert at_exit["flows"] == at_entry["flows"] == 3
        assert at_exit["sent"] == at_entry["received"] >= 3 * SMALL
        assert at_exit["received"] == at_entry["sent"] > 0
        section = entry.status()["sections"]["vpn"]
        assert section["bytes_received"] == at_entry["received"] and section["active_flows"] == 0


async def test_large_download_is_byte_exact(http_server, big_file):
    async with open_network() as net:
        entry, _ = await start_vpn(net)
        result = await trio.run_process(
            f"curl -sS --max-time 60 --socks5-hostname {socks_url(entry)} "
            f"{http_server.url('big.bin', 'localhost')} | sha256sum",
            shell=True, capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[0].decode() == big_file


async def test_username_password_auth(http_server):
    async with open_network() as net:
        entry, _ = await start_vpn(net, entry_settings={"plugins.vpn.users": ["alice:s3cret"]})
        proxy = socks_url(entry)
        url = http_server.url("hello.txt")
        ok = await curl("--socks5-hostname", proxy, "--socks5-basic", "-U", "alice:s3cret", url)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == b"hello through the VPN\n"
        wrong = await curl("--socks5-hostname", proxy, "--socks5-basic", "-U", "alice:nope", url)
        assert wrong.returncode != 0 and b"User was rejected" in wrong.stderr
        # without credentials the proxy offers no acceptable method
        anonymous = await curl("--socks5-hostname", proxy, url)
        assert anonymous.returncode != 0 and b"No authentication method" in anonymous.stderr


async def test_failures_have_the_right_socks_reply_codes(http_server):
    """curl prints the SOCKS5 reply code: "Can't complete SOCKS5 connection to X. (N)"."""
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    closed_port = closed.getsockname()[1]
    async with open_network() as net:
        entry, _ = await start_vpn(
            net, exit_settings={"plugins.vpn.policy": [
                "deny *:25", "allow 127.0.0.1/32:*", "allow *:*"]},
        )  # fmt: skip
        proxy = socks_url(entry)
        cases = [
            (f"http://127.0.0.1:{closed_port}/", 5),  # connection refused
            ("http://no-such-host.invalid/", 4),  # the exit cannot resolve it: host unreachable
            ("http://127.0.0.1:25/", 2),  # exit policy denies the port
            ("http://192.168.1.1/", 2),  # LAN address: not opened by the policy
        ]
        for url, code in cases:
            result = await curl("--socks5-hostname", proxy, url)
            assert result.returncode == 97, (url, result.stderr)  # CURLE_PROXY
            assert f"({code})".encode() in result.stderr, (url, result.stderr)
        refused = state(entry).meter.refused
        assert refused["connection_refused"] == 1 and refused["host_unreachable"] == 1
    closed.close()


async def test_default_policy_refuses_loopback_and_lan_even_through_names(http_server):
    """A hostile client asks the exit for its own loopback (by address and by a name that
    resolves to it, as DNS rebinding would), its LAN and link-local metadata addresses."""
    async with open_network() as net:
        entry, (exit,) = await start_vpn(net, exit_settings={"plugins.vpn.policy": ["allow *:*"]})
        proxy = socks_url(entry)
        for url in (
            http_server.url("hello.txt", "127.0.0.1"),
            http_server.url("hello.txt", "localhost"),
            http_server.url("hello.txt", "::1"),
            http_server.url("hello.txt", "::ffff:127.0.0.1"),
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.64.0.1/",
            "http://[fd00::1]/",
        ):
            result = await curl("--socks5-hostname", proxy, url)
            assert result.returncode == 97 and b"(2)" in result.stderr, (url, result.stderr)
        # The entry refuses literals its exits' published policies deny without asking them;
        # the name reaches the exit, which resolves it and refuses (test_exit.py sends literals
        # to the exit directly, as a hostile entry would).
        assert state(exit).meter.refused["not_allowed"] == 1
        assert sum(state(entry).meter.refused.values()) == 8
