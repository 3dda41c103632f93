"""Real node processes: two ZEONE nodes over mimic, curl on the same port gets the cover site."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mimic_cover import COVER_NAME, COVER_PAGE, make_certificate


class CoverHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(COVER_PAGE)))
        self.end_headers()
        self.wfile.write(COVER_PAGE)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def threaded_cover_site(tmp_path):
    cert, key = make_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CoverHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


class Node:
    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.config = str(directory / "zeone.toml")
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "zeone", "--config", self.config, *args],
            env=self.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    def json(self, *args: str):
        return json.loads(self.cli(*args, "--json"))

    def start(self, *flags: str) -> dict:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zeone", "--config", self.config, "run", *flags],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / "stderr.log").open("w"),
            stdin=subprocess.DEVNULL,
        )
        runtime = self.directory / "node.json"
        deadline = time.monotonic() + 30
        while not runtime.exists():
            assert self.process.poll() is None, (self.directory / "stderr.log").read_text()
            assert time.monotonic() < deadline, "node did not start"
            time.sleep(0.05)
        return json.loads(runtime.read_text())


def test_node_processes_over_mimic_and_curl_sees_the_cover_site(
    tmp_path, threaded_cover_site
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEONE_")}
    env["HOME"] = str(tmp_path / "home")
    nodes = []
    try:
        for index in range(2):
            node = Node(tmp_path / f"node{index}", env)
            subprocess.run(
                [sys.executable, "-m", "zeone", "--enable", "mimic", "init", "--dir",
                 str(node.directory), "--listen", "mimic://127.0.0.1:0",
                 "--api-bind", "127.0.0.1:0"],
                env=env, check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            config = Path(node.config)
            text = config.read_text()
            text = re.sub(
                r'(?m)^fallback = ""$', f'fallback = "127.0.0.1:{threaded_cover_site}"', text
            )
            text = re.sub(r'(?m)^sni = ".*"$', f'sni = "{COVER_NAME}"', text)
            text = re.sub(r"(?ms)^transports = \[.*?\]", 'transports = ["mimic"]', text)
            config.write_text(text)
            nodes.append(node)
        seed = nodes[0].start()
        listen = seed["listen"][0]
        assert listen.startswith("mimic://127.0.0.1:") and "pk=" in listen
        other = nodes[1].start("--bootstrap", f"{seed['node_id']}@{listen}")
        pong = nodes[1].json("ping", seed["node_id"])
        assert pong["node_id"] == seed["node_id"]

        status = nodes[0].json("status")["sections"]["mimic"]
        assert status["accepted"] >= 1 and status["fallback_connections"] == 0

        curl = shutil.which("curl")
        if curl is None:
            if os.environ.get("CI"):
                pytest.fail("curl is required in CI")
            pytest.skip("curl is not installed")
        port = listen.split(":")[2].split("?")[0]
        page = subprocess.run(
            [curl, "-sS", "-k", "--max-time", "20", "--resolve",
             f"{COVER_NAME}:{port}:127.0.0.1", f"https://{COVER_NAME}:{port}/"],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        assert page.returncode == 0, page.stderr
        assert page.stdout == COVER_PAGE
        status = nodes[0].json("status")["sections"]["mimic"]
        assert status["fallback_connections"] == 1
        assert status["fallback_reasons"] == {"no valid token": 1}
        assert status["accepted"] >= 1 and other["node_id"] != seed["node_id"]
    finally:
        for node in nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
                try:
                    node.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()
