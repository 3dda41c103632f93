"""Real node processes on loopback, driven through `zeone store ...` exactly as a user would."""

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
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "zeone", "--config", self.config, *args],
            env=self.env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def api(self):
        """The node's API in-process (polling through the CLI would cost a Python start each)."""
        from zeone.client import ApiClient
        from zeone.config import load_config

        client = ApiClient.from_config(load_config(Path(self.config), environ={}))
        client.timeout = 30.0
        return client

    def json(self, *args: str):
        return json.loads(self.cli(*args, "--json").stdout)

    def start(self, *flags: str) -> dict:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zeone", "--config", self.config, "run", *flags],
            env=self.env, stdout=subprocess.DEVNULL,
            stderr=(self.directory / "stderr.log").open("w"), stdin=subprocess.DEVNULL,
        )  # fmt: skip
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


def wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def nodes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEONE_")}
    env.update(
        HOME=str(tmp_path / "home"),
        ZEONE_PLUGINS__STORAGE__K="2",
        ZEONE_PLUGINS__STORAGE__M="1",
        ZEONE_PLUGINS__STORAGE__REPAIR_THRESHOLD="2",
        ZEONE_PLUGINS__STORAGE__STRIPE_SIZE="65536",
        ZEONE_PLUGINS__STORAGE__AUDIT_FAILURES="1",
        ZEONE_PLUGINS__STORAGE__REQUEST_TIMEOUT="5.0",
    )
    made = [NodeProcess(tmp_path / f"node{index}", env) for index in range(5)]
    inits = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zeone",
                "--enable",
                "storage",
                "init",
                "--dir",
                str(node.directory),
                "--listen",
                "tcp://127.0.0.1:0",
                "--api-bind",
                "127.0.0.1:0",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for node in made
    ]
    assert [init.wait(timeout=60) for init in inits] == [0] * len(inits)
    yield made
    for node in made:
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()


def test_store_put_get_status_and_repair_through_the_cli(nodes, tmp_path) -> None:
    seed = nodes[0].start()
    entry = f"{seed['node_id']}@{seed['listen'][0]}"
    infos = [seed] + [node.start("--bootstrap", entry) for node in nodes[1:]]
    for node in nodes:
        api = node.api()
        wait_for(lambda api=api: len(api.get_json("/peers")["peers"]) == 4, "a full mesh")

    data = os.urandom(300_000)
    source = tmp_path / "photo.bin"
    source.write_bytes(data)
    put = nodes[0].json("store", "put", str(source))
    assert put["stripes"] == 5 and put["encrypted"] and put["nodes"] >= 3
    capability = put["id"]
    cid = put["cid"]

    # another process fetches it with the capability; the plain output shows the size
    out = tmp_path / "copy.bin"
    got = nodes[4].cli("store", "get", capability, "-o", str(out))
    assert out.read_bytes() == data and "300000 bytes" in got.stdout
    listed = nodes[0].json("store", "ls")
    assert [(f["cid"], f["name"], f["size"]) for f in listed] == [(cid, "photo.bin", 300_000)]
    status = nodes[4].json("store", "status", cid)
    assert status["state"] == "healthy" and status["alive_per_stripe"] == [3] * 5

    # stop a holder: the publisher's audit notices and the fragments are regenerated elsewhere
    holder_ids = {
        p for p in (i["node_id"] for i in infos[1:])
        if p not in status["silent_holders"]
    }  # fmt: skip
    victim = next(
        n for n, info in zip(nodes[1:], infos[1:], strict=True) if info["node_id"] in holder_ids
        and (n.directory / "storage" / "fragments.sqlite3").exists()
        and n.api().get_json("/status")["sections"]["storage"]["fragments_held"] > 0
    )  # fmt: skip
    assert victim.stop() == 0
    audit = nodes[0].json("store", "audit")
    assert audit["audit"]["unreachable"] == 1 and audit["repair"]["unrecoverable"] == 0
    assert audit["repair"]["fragments"] > 0
    publisher = nodes[0].api()
    healed = wait_for(
        lambda: (s := publisher.get_json(f"/storage/status/{cid}"))["state"] == "healthy" and s,
        "the file to be healthy again",
    )
    assert healed["alive_per_stripe"] == [3] * 5
    out2 = tmp_path / "again.bin"
    nodes[3].cli("store", "get", capability, "-o", str(out2))
    assert out2.read_bytes() == data

    # bad input is a clear error, not a traceback
    api = nodes[0].api()
    with pytest.raises(Exception, match="absolute path"):
        api.post_json("/storage/put", {"path": "relative.bin"})
    with pytest.raises(Exception, match="not a readable regular file"):
        api.post_json("/storage/put", {"path": str(tmp_path)})
    with pytest.raises(Exception, match="no such job"):
        api.get_json("/storage/jobs/nope")
    bad = nodes[0].cli("store", "get", "not-an-id", check=False)
    assert bad.returncode != 0 and "bad file id" in bad.stderr and "Traceback" not in bad.stderr
    for node in nodes:
        if node is not victim:
            assert node.stop() == 0
