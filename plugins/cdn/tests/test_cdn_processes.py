"""Real node processes on loopback, driven through the CLI: publish on A, fetch via B's gateway."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cdn_helpers import curl_path


class NodeProcess:
    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.config = str(directory / "zeone.toml")
        self.process: subprocess.Popen[bytes] | None = None
        subprocess.run(
            [sys.executable, "-m", "zeone", "--enable", "cdn", "init", "--dir", str(directory),
             "--listen", "tcp://127.0.0.1:0", "--api-bind", "127.0.0.1:0"],
            env=env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "zeone", "--config", self.config, *args],
            env=self.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def json(self, *args: str):
        result = self.cli(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def start(self, *flags: str) -> dict:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zeone", "--config", self.config, "run", *flags],
            env=self.env, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            stderr=(self.directory / "stderr.log").open("w"),
        )  # fmt: skip
        runtime = self.directory / "node.json"
        deadline = time.monotonic() + 30
        while not runtime.exists():
            assert self.process.poll() is None, (self.directory / "stderr.log").read_text()
            assert time.monotonic() < deadline, "node did not start"
            time.sleep(0.05)
        return json.loads(runtime.read_text())

    def curl(self, url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        token = (self.directory / "api.token").read_text().strip()
        return subprocess.run(
            ["curl", "-s", "-H", f"Authorization: Bearer {token}", *args, url],
            capture_output=True, timeout=60,
        )  # fmt: skip


@pytest.fixture
def nodes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEONE_")}
    env["HOME"] = str(tmp_path / "home")
    made = [NodeProcess(tmp_path / name, env) for name in ("a", "b")]
    yield made
    for node in made:
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
            try:
                node.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()


def test_publish_on_a_fetch_through_b(nodes, tmp_path):
    curl_path()  # skips (or fails in CI) without curl
    a, b = nodes
    info_a = a.start()
    info_b = b.start("--bootstrap", f"{info_a['node_id']}@{info_a['listen'][0]}")
    data = os.urandom(1_500_000)
    path = tmp_path / "report.pdf"
    path.write_bytes(data)

    published = a.cli("cdn", "publish", str(path))
    assert published.returncode == 0, published.stderr
    cid, url = published.stdout.split()
    assert url == f"{info_a['api_url']}/cdn/{cid}"

    url_b = f"{info_b['api_url']}/cdn/{cid}"
    deadline = time.monotonic() + 20
    while True:  # B's bootstrap lookup may still be running when the first request comes
        result = b.curl(url_b, "-o", str(tmp_path / "got.pdf"), "-w", "%{http_code}")
        if result.stdout == b"200" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert result.stdout == b"200", result.stderr
    got = (tmp_path / "got.pdf").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    contents = f"{info_b['api_url']}/cdn/api/contents"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the cache is flushed just after the client is done
        listed = json.loads(b.curl(contents).stdout)["contents"]
        if listed and listed[0]["complete"]:
            break
        time.sleep(0.1)
    ranged = b.curl(url_b, "-r", "-100")  # from B's cache now
    assert ranged.stdout == data[-100:]
    status = b.json("cdn", "status")
    assert status["bytes_from_peers"] == len(data) and status["bad_chunks"] == 0
    rows = b.json("cdn", "ls")
    assert [(r["id"], r["complete"], r["pinned"]) for r in rows] == [(cid, True, False)]
    assert b.json("cdn", "pin", cid)["pinned"] is True
    bad = b.cli("cdn", "pin", "not-an-id")
    assert bad.returncode == 1 and "error" in bad.stderr and "Traceback" not in bad.stderr
