"""Real node processes over TCP on loopback: an exit and an entry, curl, `zeone vpn status`."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from vpn_helpers import SMALL, deterministic_bytes, need

from zeone.testing import NodeProcess, NodeProcesses


@pytest.fixture
def processes(zeone_processes: NodeProcesses):
    def make(name: str, vpn: dict) -> NodeProcess:
        (node,) = zeone_processes.make([name], enable=["vpn"], plugins={"vpn": vpn})
        return node

    return make


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

    table = entry.cli("vpn", "status", check=False)
    assert table.returncode == 0, table.stderr
    assert "SOCKS5 proxy" in table.stdout and proxy in table.stdout and "exits" in table.stdout
    listed = exit.cli("vpn", "status", "--json", check=False)
    assert listed.returncode == 0, listed.stderr
    at_exit = json.loads(listed.stdout)
    assert at_exit["exit"]["policy"][0] == "allow 127.0.0.1/32:*"
    assert at_exit["peers"][0]["sent"] >= SMALL
    node_status = exit.api("/status")
    assert node_status["sections"]["vpn"]["bytes_sent"] >= SMALL

    assert entry.stop() == 0
    assert exit.stop() == 0
    stopped = entry.cli("vpn", "status", check=False)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
