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


class ExitOnNodeOne:
    """A plugin that shapes the devnet: its own port per node, a role for node 1."""

    __name__ = "shaper"

    def zeone_plugin_info(self):
        import attrs

        from zeone import PluginInfo

        @attrs.frozen
        class ShaperConfig:
            port: int = 0
            exit: bool = False

        return PluginInfo(name="shaper", version="1.0", config=ShaperConfig)

    def zeone_devnet_configure(self, index, count, settings, port):
        settings["plugins.shaper.port"] = port("shaper")
        settings["plugins.shaper.exit"] = index == 1 and count > 1
        if index == 2:  # reachable on another address only
            settings["network.listen"] = [f"tcp://127.0.0.1:{port('alt')}"]


def test_plugins_shape_each_devnet_node_with_their_own_ports(tmp_path: Path) -> None:
    from zeone.config import load_config
    from zeone.devnet import Devnet
    from zeone.plugins import Catalog

    catalog = Catalog.discover(entry_points=False, extra=[ExitOnNodeOne()])
    net = Devnet(
        directory=tmp_path / "net",
        nodes=3,
        enable=["shaper"],
        base_port=20000,
        api_base_port=21000,
        catalog=catalog,
    )
    net.prepare()
    configs = [
        load_config(m.config_path, environ={}, plugin_schemas=catalog.schemas) for m in net.members
    ]
    ports = [c.plugins.settings["shaper"].port for c in configs]
    assert ports == [20003, 20004, 20005]  # a block of 3 after the P2P ports 20000-20002
    assert [c.plugins.settings["shaper"].exit for c in configs] == [False, True, False]
    assert configs[2].network.listen == ["tcp://127.0.0.1:20008"]  # the next block: "alt"
    assert configs[1].network.listen == ["tcp://127.0.0.1:20001"]
    net.prepare()  # stable across runs
    again = load_config(net.members[0].config_path, environ={}, plugin_schemas=catalog.schemas)
    assert again.plugins.settings["shaper"].port == 20003
