"""Real ``zeone`` node processes for integration tests: what a user runs, driven through the CLI.

The in-memory `TestNetwork` covers protocol logic; these cover everything between a shell and the
wire (config files, entry points, signals, the local API, real sockets). Use the pytest fixture::

    def test_two_nodes(zeone_processes):
        a, b = zeone_processes.make(2, enable=["hello"])
        seed = a.start()
        b.start("--bootstrap", f"{seed['node_id']}@{seed['listen'][0]}")
        wait_for(lambda: b.json("peers")["peers"], "b to connect")

Nodes listen on ``tcp://127.0.0.1:0`` and serve their API on ``127.0.0.1:0``; the real addresses
are in the runtime file ``start()`` returns. Every process still running at the end of the test
gets SIGTERM, then SIGKILL if it does not stop in time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
CLI_TIMEOUT = 120.0

T = TypeVar("T")


class NodeProcess:
    """One node directory and the ``zeone run`` process started from it."""

    def __init__(self, directory: Path, env: Mapping[str, str]) -> None:
        self.directory = Path(directory)
        self.env = dict(env)
        self.config = self.directory / "zeone.toml"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.directory.name

    def init_command(self, enable: Sequence[str] = ()) -> list[str]:
        command = [sys.executable, "-m", "zeone"]
        if enable:
            command += ["--enable", ",".join(enable)]
        return [
            *command, "init", "--dir", str(self.directory),
            "--listen", "tcp://127.0.0.1:0", "--api-bind", "127.0.0.1:0",
        ]  # fmt: skip

    def configure(self, plugins: Mapping[str, Mapping[str, Any]]) -> None:
        """Merge ``{"vpn": {"exit": True}}`` into the config's ``[plugins.<name>]`` tables."""
        data = tomllib.loads(self.config.read_text())
        tables = data.setdefault("plugins", {})
        for name, values in plugins.items():
            tables.setdefault(name, {}).update(values)
        self.config.write_text(tomli_w.dumps(data))

    def cli(
        self, *args: str, check: bool = True, timeout: float = CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run ``zeone --config <this node> ARGS`` and return what it printed."""
        result = subprocess.run(
            [sys.executable, "-m", "zeone", "--config", str(self.config), *args],
            env=self.env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if check:
            assert result.returncode == 0, f"zeone {' '.join(args)}: {result.stderr}"
        return result

    def json(self, *args: str) -> Any:
        """``cli(*args, "--json")``, parsed."""
        return json.loads(self.cli(*args, "--json").stdout)

    def start(self, *flags: str) -> dict[str, Any]:
        """Start ``zeone run FLAGS``; returns the runtime file (node id, listen, api_url...)."""
        log = (self.directory / "stderr.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zeone", "--config", str(self.config), "run", *flags],
            env=self.env, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        runtime = self.directory / "node.json"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not runtime.exists():
            assert self.process.poll() is None, (self.directory / "stderr.log").read_text()
            assert time.monotonic() < deadline, f"{self.name} did not start"
            time.sleep(0.05)
        return self.runtime()

    def runtime(self) -> dict[str, Any]:
        return json.loads((self.directory / "node.json").read_text())

    @property
    def token(self) -> str:
        return (self.directory / "api.token").read_text().strip()

    def api(self, path: str, *, timeout: float = 30.0) -> Any:
        """GET ``path`` from the node's API in-process (a CLI call costs a Python start)."""
        return self.client(timeout).get_json(path)

    def client(self, timeout: float = 30.0) -> Any:
        """A `zeone.client.ApiClient` for this node (``get_json``, ``post_json``)."""
        from zeone.client import ApiClient
        from zeone.config import load_config

        client = ApiClient.from_config(load_config(self.config, environ={}))
        client.timeout = timeout
        return client

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, and the exit code once the node has shut down gracefully."""
        assert self.process is not None, f"{self.name} was never started"
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait()


class NodeProcesses:
    """Node directories under ``root`` sharing one environment (no ``ZEONE_*`` leaks in)."""

    def __init__(self, root: Path, env: Mapping[str, str] | None = None) -> None:
        self.root = Path(root)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ZEONE_")}
        self.env["HOME"] = str(self.root / "home")
        self.env.update(env or {})
        self.nodes: list[NodeProcess] = []

    def make(
        self,
        count: int | Sequence[str],
        *,
        enable: Sequence[str] = (),
        plugins: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[NodeProcess]:
        """Create and ``zeone init`` nodes (named ``node0``... or as given), in parallel."""
        names = [f"node{i}" for i in range(count)] if isinstance(count, int) else list(count)
        made = [NodeProcess(self.root / name, self.env) for name in names]
        inits = [
            subprocess.Popen(
                node.init_command(enable),
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
            )
            for node in made
        ]
        for node, init in zip(made, inits, strict=True):
            _, stderr = init.communicate(timeout=CLI_TIMEOUT)
            assert init.returncode == 0, f"zeone init {node.name}: {stderr.decode()}"
            if plugins:
                node.configure(plugins)
        self.nodes += made
        return made

    def close(self) -> None:
        """Stop what is still running: SIGTERM to all, then SIGKILL to the stragglers."""
        running = [node for node in self.nodes if node.running]
        for node in running:
            assert node.process is not None
            node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for node in running:
            assert node.process is not None
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.kill()


def wait_for(
    predicate: Callable[[], T], what: str, timeout: float = 30.0, interval: float = 0.1
) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)
