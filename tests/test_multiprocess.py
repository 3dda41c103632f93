"""Real node processes on loopback: they find each other, ping and exchange RPCs via the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

STARTUP_TIMEOUT = 30.0


class NodeProcess:
    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.config = str(directory / "zeone.toml")
        self.process: subprocess.Popen[str] | None = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "zeone", "--config", self.config, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def json(self, *args: str):
        return json.loads(self.cli(*args, "--json").stdout)

    def start(self, *flags: str) -> dict:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zeone", "--config", self.config, "run", *flags],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / "stderr.log").open("w"),
            stdin=subprocess.DEVNULL,
        )
        runtime = self.directory / "node.json"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not runtime.exists():
            assert self.process.poll() is None, (self.directory / "stderr.log").read_text()
            assert time.monotonic() < deadline, "node did not start"
            time.sleep(0.05)
        return json.loads(runtime.read_text())

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def wait_for(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def make_nodes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEONE_")}
    env["HOME"] = str(tmp_path / "home")
    nodes: list[NodeProcess] = []

    def make(count: int, enable: str = "hello") -> list[NodeProcess]:
        for index in range(count):
            node = NodeProcess(tmp_path / f"node{index}", env)
            node_dir = str(node.directory)
            subprocess.run(
                [sys.executable, "-m", "zeone", "--enable", enable, "init", "--dir", node_dir,
                 "--listen", "tcp://127.0.0.1:0", "--api-bind", "127.0.0.1:0"],
                env=env, check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            nodes.append(node)
        return nodes

    yield make
    for node in nodes:
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()


@pytest.mark.parametrize("count", [2, 5])
def test_nodes_mesh_ping_and_rpc_through_the_cli(make_nodes, count: int) -> None:
    nodes = make_nodes(count)
    seed = nodes[0].start()
    seed_entry = f"{seed['node_id']}@{seed['listen'][0]}"
    infos = [seed] + [node.start("--bootstrap", seed_entry) for node in nodes[1:]]
    ids = [info["node_id"] for info in infos]

    for node, own in zip(nodes, ids, strict=True):
        expected = set(ids) - {own}
        wait_for(
            lambda node=node, expected=expected: (
                {p["node_id"] for p in node.json("peers")["peers"]} == expected
            ),
            f"{node.directory.name} to see every other node",
        )

    last = nodes[-1]
    pong = last.json("ping", ids[0])
    assert pong["node_id"] == ids[0] and pong["rtt_ms"] > 0
    answer = last.json("hello", "greet", ids[0])
    assert answer == {"greeting": f"hello, {ids[-1][:8]}", "node_id": ids[0]}
    greetings = nodes[0].json("hello", "greetings")
    assert [g["from"] for g in greetings] == [ids[-1]]

    # the DHT through the CLI: an owned value and a provider record, written and read on
    # different nodes
    put = last.json("dht", "put", "greeting", "hello world")
    assert put["key"] == f"kv:{ids[-1]}/greeting" and put["acks"] >= 1
    got = nodes[0].json("dht", "get", put["key"])
    assert [(r["value"], r["publisher"]) for r in got] == [("hello world", ids[-1])]
    assert nodes[0].json("dht", "provide", "service:demo")["acks"] >= 1
    providers = last.json("dht", "providers", "service:demo")
    assert [p["node_id"] for p in providers] == [ids[0]]
    missing_key = nodes[0].cli("dht", "get", "kv:nobody/nothing", check=False)
    assert missing_key.returncode == 1 and "no record" in missing_key.stderr

    # an unknown peer is a clear error, not a traceback
    missing = last.cli("ping", "0" * 40, check=False)
    assert missing.returncode == 1
    assert "no known address" in missing.stderr and "Traceback" not in missing.stderr

    for node in reversed(nodes):
        assert node.stop() == 0
        assert not (node.directory / "node.json").exists()
