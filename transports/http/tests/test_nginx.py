"""Two ZEONE nodes connected through Debian's nginx running the example config from examples/."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from zeone.testing import open_network

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "nginx" / "zeone.conf"
SECRET = "/assets/app-7c1e0b55.js"
HELLO = "/zeone/hello/1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    def __init__(self, directory: Path, plain: int, tls: int) -> None:
        self.directory = directory
        self.plain = plain
        self.tls = tls

    def access_log(self) -> str:
        return (self.directory / "access.log").read_text()


def render_example(backend: int, plain: int, tls: int, cert: Path, key: Path, root: Path) -> str:
    """The example server block, pointed at loopback ports and temp files."""
    text = EXAMPLE.read_text()
    main_block, _, _redirect_block = text.partition("# Optional: send plain-HTTP")
    replacements = {
        "    listen 443 ssl;\n": (
            f"    listen 127.0.0.1:{tls} ssl;\n    listen 127.0.0.1:{plain};\n"
        ),
        "    listen [::]:443 ssl;\n": "",
        "/etc/letsencrypt/live/example.org/fullchain.pem": str(cert),
        "/etc/letsencrypt/live/example.org/privkey.pem": str(key),
        "/var/www/example.org": str(root),
        "127.0.0.1:8080": f"127.0.0.1:{backend}",
    }
    for old, new in replacements.items():
        assert old in main_block, f"the example no longer contains {old!r}"
        main_block = main_block.replace(old, new)
    assert SECRET in main_block
    return main_block


@pytest.fixture
def start_nginx(tmp_path: Path, certificate, need_binary) -> Iterator[object]:
    binary = need_binary("nginx")
    processes: list[subprocess.Popen] = []
    cert, key = certificate

    def start(backend: int, root: Path) -> Nginx:
        directory = tmp_path / "nginx"
        directory.mkdir()
        plain, tls = free_port(), free_port()
        (directory / "zeone.conf").write_text(render_example(backend, plain, tls, cert, key, root))
        (directory / "nginx.conf").write_text(
            f"""
daemon off;
master_process off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    types {{ text/html html; text/css css; }}
    include {directory}/zeone.conf;
}}
"""
        )
        process = subprocess.Popen(
            [binary, "-p", str(directory), "-c", str(directory / "nginx.conf"),
             "-e", str(directory / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        processes.append(process)
        for _ in range(200):
            assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", plain), timeout=1).close()
                socket.create_connection(("127.0.0.1", tls), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError("nginx did not start")
        return Nginx(directory, plain, tls)

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def site(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("<h1>My bakery</h1>\n")
    return root


async def test_two_nodes_connect_through_nginx_over_ws_and_wss(
    tmp_path, start_nginx, certificate
) -> None:
    cert, _key = certificate
    backend = free_port()
    nginx = start_nginx(backend, site(tmp_path))
    server_settings = {
        "network.listen": [f"ws://127.0.0.1:{backend}"],
        "network.transports": ["ws", "wss"],
        "plugins.http.secret_path": SECRET,
        "plugins.http.public_address": f"wss://localhost:{nginx.tls}{SECRET}",
    }
    client_settings = {
        "network.transports": ["ws", "wss"],
        "plugins.http.tls_ca_file": str(cert),
    }
    async with open_network(data_root=tmp_path / "nodes") as net:
        b = await net.add_node(enable=["http", "hello"], settings=server_settings)
        a = await net.add_node(enable=["http", "hello"], settings=client_settings)
        assert b.network.listen_addresses == [f"wss://localhost:{nginx.tls}{SECRET}"]
        with trio.fail_after(30):
            reply = await a.rpc.request(b.node_id, HELLO, {"name": "via nginx"})
        assert reply["node_id"] == str(b.node_id)
        assert a.peers()[0]["address"] == f"wss://localhost:{nginx.tls}{SECRET}"

        # A third node dials the plain-HTTP side of the same nginx.
        c = await net.add_node(enable=["http", "hello"], settings={"network.transports": ["ws"]})
        with trio.fail_after(30):
            peer, _rtt = await c.rpc.ping(f"{b.node_id}@ws://127.0.0.1:{nginx.plain}{SECRET}")
        assert peer == b.node_id

    log = nginx.access_log()
    assert log.count(f'"GET {SECRET} HTTP/1.1" 101') == 2
    assert "Chrome/" in log  # nginx logged our browser-like User-Agent


async def test_nginx_serves_the_site_and_hides_the_secret_path(
    tmp_path, start_nginx, need_binary
) -> None:
    backend = free_port()
    nginx = start_nginx(backend, site(tmp_path))
    seen = trio.Event()

    async def should_not_be_reached(stream) -> None:
        seen.set()

    # A backend that records any connection: probes must never reach it.
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_tcp, should_not_be_reached, backend)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{nginx.plain}") as client:
            index = await client.get("/")
            assert index.status_code == 200 and index.text == "<h1>My bakery</h1>\n"
            missing = await client.get("/nothing-here.js")
            probe = await client.get(SECRET)
            half = await client.get(SECRET, headers={"Connection": "Upgrade"})
            assert missing.status_code == probe.status_code == half.status_code == 404
            assert missing.text == probe.text == half.text
            assert probe.headers["server"].startswith("nginx")
        curl = await trio.run_process(
            [need_binary("curl"), "-sS", "-o", "/dev/null", "-w", "%{http_code}",
             f"http://127.0.0.1:{nginx.plain}{SECRET}"],
            capture_stdout=True,
        )  # fmt: skip
        assert curl.stdout == b"404"
        nursery.cancel_scope.cancel()
    assert not seen.is_set()
