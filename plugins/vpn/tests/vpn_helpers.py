"""Helpers for the VPN tests: real loopback servers, a VPN network, curl."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from zeone_vpn.socks5 import (
    Atyp,
    Cmd,
    Destination,
    Reply,
    client_greeting,
    client_request,
    parse_reply,
)
from zeone_vpn.state import state

from zeone.testing import TestNetwork

LOOPBACK_EXIT = {
    "plugins.vpn.exit": True,
    "plugins.vpn.entry": False,
    "plugins.vpn.policy": ["allow 127.0.0.1/32:*", "allow ::1/128:*", "allow *:*"],
}
ENTRY = {"plugins.vpn.socks_bind": "127.0.0.1:0"}
SMALL = 100_000

HTTP_SERVER = r"""
import http.server, socket, socketserver, sys, functools
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    address_family = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
server = Server((sys.argv[2], 0), handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def deterministic_bytes(size: int, seed: bytes = b"zeone-vpn") -> bytes:
    """Incompressible, reproducible content (SHA-256 counter mode)."""
    block = b"".join(hashlib.sha256(seed + i.to_bytes(8, "big")).digest() for i in range(4096))
    reps, rest = divmod(size, len(block))
    return block * reps + block[:rest]


class HttpServer:
    def __init__(self, root: Path, host: str = "127.0.0.1") -> None:
        self.root = root
        self.host = host
        self.process = subprocess.Popen(
            [sys.executable, "-c", HTTP_SERVER, str(root), host],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def url(self, path: str, host: str | None = None) -> str:
        host = host or self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/{path}"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


async def udp_echo(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A UDP echo server on 127.0.0.1; reports its port."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        task_status.started(sock.getsockname()[1])
        while True:
            data, address = await sock.recvfrom(65535)
            await sock.sendto(b"echo:" + data, address)


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} is required in CI")
        pytest.skip(f"{binary} is not installed")
    return path


async def start_vpn(
    net: TestNetwork,
    exits: int = 1,
    *,
    exit_settings: dict[str, Any] | None = None,
    entry_settings: dict[str, Any] | None = None,
    api: bool = False,
) -> tuple[Any, list[Any]]:
    """One entry and ``exits`` exit nodes, connected, with the entry knowing every exit."""
    exit_nodes = [
        await net.add_node(enable=["vpn"], settings={**LOOPBACK_EXIT, **(exit_settings or {})})
        for _ in range(exits)
    ]
    entry = await net.add_node(
        enable=["vpn"], settings={**ENTRY, **(entry_settings or {})}, api=api
    )
    await net.connect_all()
    directory = state(entry).directory
    with trio.fail_after(20):
        while True:
            await directory.refresh()
            if sum(1 for e in directory.exits.values() if e.rtt is not None) >= exits:
                break
            await trio.sleep(0.2)
    return entry, exit_nodes


def socks_url(entry: Any) -> str:
    host, port = state(entry).socks.address
    return f"{host}:{port}"


async def curl(*args: str) -> trio.CompletedProcess:
    return await trio.run_process(
        [need("curl"), "--silent", "--show-error", "--max-time", "30", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    """Poll a condition that no event signals (counters in another node's state)."""
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - polling plain state on purpose
            await trio.sleep(0.01)


async def drained(*nodes: Any) -> None:
    """Wait until no VPN flow is open on ``nodes`` (closing races curl's exit)."""
    await wait_until(lambda: not any(state(node).meter.flows for node in nodes))


async def firehose(counter: list[int], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A TCP server on loopback that writes to each client as fast as it can."""
    chunk = b"z" * 65536

    async def serve(stream: trio.SocketStream) -> None:
        try:
            while True:
                await stream.send_all(chunk)
                counter[0] += len(chunk)
        except trio.BrokenResourceError:
            pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(serve, listeners)


async def socks_connect(entry, host: str, port: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream(*state(entry).socks.address)
    await stream.send_all(client_greeting())
    assert await stream.receive_some(2) == b"\x05\x00"
    await stream.send_all(client_request(Cmd.CONNECT, Destination(Atyp.IPV4, host, port)))
    answer = b""
    while (parsed := parse_reply(answer)) is None:
        answer += await stream.receive_some(1)
    assert parsed[0] == Reply.SUCCEEDED
    return stream
