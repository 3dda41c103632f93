"""`zeone devnet`: real node processes that find each other and all stop on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port_block(count: int) -> int:
    """A base port such that base..base+count-1 were free a moment ago."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count >= 65000:
            continue
        try:
            sockets = []
            for port in range(base, base + count):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free port block")


def test_devnet_meshes_and_stops_every_node_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEONE_")}
    env.update(HOME=str(tmp_path / "home"), COLUMNS="200")
    nodes = 3
    command = [
        sys.executable, "-m", "zeone", "devnet", "--nodes", str(nodes),
        "--dir", str(tmp_path / "net"),
        "--base-port", str(free_port_block(nodes)),
        "--api-base-port", str(free_port_block(nodes)),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    runtime = [tmp_path / "net" / f"node{i}" / "node.json" for i in range(nodes)]
    try:
        deadline = time.monotonic() + 60
        pids = []
        while len(pids) < nodes or not _meshed(tmp_path, env, nodes):
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "devnet did not come up and mesh"
            pids = [json.loads(p.read_text())["pid"] for p in runtime if p.exists()]
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "stopped (0)" in output
    for pid in pids:  # every node process is gone, and removed its runtime file
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
    assert not any(p.exists() for p in runtime)


def _meshed(tmp_path: Path, env: dict[str, str], nodes: int) -> bool:
    config = tmp_path / "net" / "node0" / "zeone.toml"
    if not (config.parent / "node.json").exists():
        return False
    result = subprocess.run(
        [sys.executable, "-m", "zeone", "--config", str(config), "peers", "--json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return result.returncode == 0 and len(json.loads(result.stdout)["peers"]) == nodes - 1


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
