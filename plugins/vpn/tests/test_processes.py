"""Real node processes over TCP on loopback: an exit and an entry, curl, `zeone vpn status`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import tomli_w
from vpn_helpers import SMALL, deterministic_bytes, need


class NodeProcess:
    def __init__(self, directory: Path, env: dict[str, str], vpn: dict) -> None:
        self.directory = directory
        self.env = env
        self.config = directory / "zeone.toml"
        subprocess.run(
            [sys.executable, "-m", "zeone", "--enable", "vpn", "init", "--dir", str(directory),
             "--listen", "tcp://127.0.0.1:0", "--api-bind", "127.0.0.1:0"],
            env=env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        data = tomllib.loads(self.config.read_text())
        data["plugins"]["vpn"].update(vpn)
        self.config.write_text(tomli_w.dumps(data))
        self.process: subprocess.Popen | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "zeone", "--config", str(self.config), *args],
            env=self.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def start(self, *flags: str) -> dict:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zeone", "--config", str(self.config), "run", *flags],
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

    def api(self, path: str):
        """GET from the node's API directly (quicker than a CLI process for polling)."""
        info = json.loads((self.directory / "node.json").read_text())
        token = (self.directory / "api.token").read_text().strip()
        request = urllib.request.Request(
            info["api_url"] + path, headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def processes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEONE_")}
    env["HOME"] = str(tmp_path / "home")
    made: list[NodeProcess] = []

    def make(name: str, vpn: dict) -> NodeProcess:
        node = NodeProcess(tmp_path / name, env, vpn)
        made.append(node)
        return node

    yield make
    for node in made:
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()


def test_entry_and_exit_processes(processes, http_server):
    curl = need("curl")
    exit = processes("exit", {"exit": True, "entry": False,
                              "policy": ["allow 127.0.0.1/32:*", "allow *:*"]})  # fmt: skip
    entry = processes("entry", {"socks_bind": "127.0.0.1:0", "probe_interval": 0.5})
    seed = exit.start()
    entry.start("--bootstrap", f"{seed['node_id']}@{seed['listen'][0]}")

    deadline = time.monotonic() + 30
    while True:
        status = entry.api("/vpn/status")
        if any(e["rtt_ms"] is not None for e in status["exits"]):
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["exits"][0]["node_id"] == seed["node_id"]
    proxy = status["entry"]["socks"]

    result = subprocess.run(
        [curl, "-sS", "--max-time", "30", "--socks5-hostname", proxy, "--socks5-basic",
         "-U", "carol:pw", http_server.url("small.bin", "localhost")],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == deterministic_bytes(SMALL)

    table = entry.cli("vpn", "status")
    assert table.returncode == 0, table.stderr
    assert "SOCKS5 proxy" in table.stdout and proxy in table.stdout and "exits" in table.stdout
    listed = exit.cli("vpn", "status", "--json")
    assert listed.returncode == 0, listed.stderr
    at_exit = json.loads(listed.stdout)
    assert at_exit["exit"]["policy"][0] == "allow 127.0.0.1/32:*"
    assert at_exit["peers"][0]["sent"] >= SMALL
    node_status = exit.api("/status")
    assert node_status["sections"]["vpn"]["bytes_sent"] >= SMALL

    assert entry.stop() == 0
    assert exit.stop() == 0
    stopped = entry.cli("vpn", "status")
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
