"""The ``zeone`` command, run for real as ``python -m zeone`` in a subprocess."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from zeone import __version__
from zeone.config import load_config
from zeone.identity import Identity
from zeone.plugins import Catalog

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def init_dir(cli, directory: Path, *args: str) -> Path:
    result = cli("init", "--dir", directory, "--api-bind", "127.0.0.1:0", *args)
    assert result.returncode == 0, result.stderr
    return directory / "zeone.toml"


def installed_names() -> str:
    names = sorted(n for n, p in Catalog.discover().plugins.items() if not p.builtin)
    return ", ".join(names) or "none"


def test_version(cli) -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"zeone, version {__version__}"


def test_help_lists_commands(cli) -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("run", "init", "config", "status", "peers", "plugins", "devnet"):
        assert f"\n  {command} " in result.stdout
    for option in ("--config", "--enable", "--log-level", "--version"):
        assert option in result.stdout


def test_init_writes_config_and_private_key(cli) -> None:
    directory = cli.cwd / "D"
    result = cli("init", "--dir", directory, "--role", "seed", "--listen", "tcp://127.0.0.1:4999")
    assert result.returncode == 0, result.stderr
    no_traceback(result)
    key = directory / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    node_id = str(Identity.load(key).node_id)
    assert node_id in result.stdout
    assert f"zeone --config {directory / 'zeone.toml'} run" in result.stdout
    config = load_config(directory / "zeone.toml", environ={})
    assert config.node.role == "seed"
    assert config.network.listen == ["tcp://127.0.0.1:4999"]
    assert config.key_file == key
    # a complete file: every kernel key is written out, so operators see what they can set
    assert set(config.sources.values()) == {str(directory / "zeone.toml")}


def test_init_defaults_to_home(cli) -> None:
    result = cli("init")
    assert result.returncode == 0, result.stderr
    assert (cli.home / ".zeone" / "zeone.toml").is_file()
    assert (cli.home / ".zeone" / "node.key").is_file()


def test_init_twice_needs_force_and_never_replaces_the_key(cli) -> None:
    directory = cli.cwd / "D"
    init_dir(cli, directory)
    key_before = (directory / "node.key").read_bytes()
    config_before = (directory / "zeone.toml").read_text()

    again = cli("init", "--dir", directory)
    assert again.returncode == 2
    no_traceback(again)
    assert "already exists" in again.stderr
    assert "--force" in again.stderr
    assert (directory / "zeone.toml").read_text() == config_before

    forced = cli("init", "--dir", directory, "--role", "light", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "kept existing identity" in forced.stdout
    assert (directory / "node.key").read_bytes() == key_before
    assert load_config(directory / "zeone.toml", environ={}).node.role == "light"


def test_config_show_names_the_source_of_every_value(cli) -> None:
    path = cli.cwd / "zeone.toml"
    path.write_text("[node]\nrole = 'seed'\n\n[network]\nmax_connections = 64\n")
    result = cli(
        "--config",
        path,
        "--enable",
        "core",
        "config",
        "show",
        "--json",
        env={"ZEONE_NODE__LOG_LEVEL": "debug"},
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["file"] == str(path)
    values = {row["key"]: (row["value"], row["source"]) for row in shown["values"]}
    assert values["node.role"] == ("seed", str(path))
    assert values["network.max_connections"] == (64, str(path))
    assert values["node.log_level"] == ("debug", "env ZEONE_NODE__LOG_LEVEL")
    assert values["plugins.enable"] == (["core"], "flag --enable")
    assert values["api.bind"] == ("127.0.0.1:8765", "default")
    assert {source for _, source in values.values()} >= {
        "default",
        str(path),
        "env ZEONE_NODE__LOG_LEVEL",
        "flag --enable",
    }


def test_config_show_finds_zeone_toml_in_the_working_directory(cli) -> None:
    (cli.cwd / "zeone.toml").write_text("[node]\nrole = 'light'\n")
    result = cli("config", "show", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["file"] == str(cli.cwd / "zeone.toml")
    table = cli("config", "show")
    assert table.returncode == 0
    assert "node.role" in table.stdout
    assert '"light"' in table.stdout


@pytest.mark.parametrize(
    ("toml", "key", "problem"),
    [
        ("[network]\nmax_conections = 5\n", "network.max_conections", "unknown key"),
        ("[network]\nmax_connections = 'lots'\n", "network.max_connections", "expected an integer"),
        ("[node]\nrole = 'king'\n", "node.role", "expected one of"),
        ("[network]\nlisten = 'tcp://0.0.0.0:4001'\n", "network.listen", "expected a list"),
        ("[node\n", "", "not valid TOML"),
    ],
)
def test_bad_config_is_one_clear_error(cli, toml: str, key: str, problem: str) -> None:
    path = cli.cwd / "bad.toml"
    path.write_text(toml)
    result = cli("--config", path, "config", "show")
    assert result.returncode == 2
    no_traceback(result)
    assert str(path) in result.stderr
    assert key in result.stderr
    assert problem in result.stderr


@pytest.mark.parametrize("command", [["run"], ["status"], []])
def test_every_command_reports_a_bad_config_the_same_way(cli, command: list[str]) -> None:
    path = cli.cwd / "bad.toml"
    path.write_text("[network]\nmax_connections = true\n")
    result = cli("--config", path, *command)
    assert result.returncode == 2
    no_traceback(result)
    assert f"{path}: network.max_connections: expected an integer, got a boolean" in result.stderr


def test_bad_env_value_names_the_variable(cli) -> None:
    result = cli("config", "show", env={"ZEONE_NETWORK__MAX_CONNECTIONS": "0"})
    assert result.returncode == 2
    no_traceback(result)
    assert "env ZEONE_NETWORK__MAX_CONNECTIONS: network.max_connections: must be > 0" in (
        result.stderr
    )


def test_enabling_unknown_plugins_lists_installed_ones(cli) -> None:
    config = init_dir(cli, cli.cwd / "D")
    result = cli("--config", config, "--enable", "no-such-plugin,cortex")
    assert result.returncode == 2
    no_traceback(result)
    assert "unknown plugin 'no-such-plugin'" in result.stderr
    assert f"installed: {installed_names()}" in result.stderr
    assert not (cli.cwd / "D" / "node.json").exists()


def test_status_without_a_running_node(cli) -> None:
    for command in ("status", "peers"):
        result = cli(command)
        assert result.returncode == 1
        no_traceback(result)
        assert "no node has run with data dir" in result.stderr
        assert "zeone run" in result.stderr


def test_status_with_a_stale_runtime_file(cli) -> None:
    config = init_dir(cli, cli.cwd / "D")
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    token = cli.cwd / "D" / "api.token"
    token.write_text("t" * 43 + "\n")
    token.chmod(0o600)
    (cli.cwd / "D" / "node.json").write_text(json.dumps({"api_url": f"http://127.0.0.1:{port}"}))
    result = cli("--config", config, "status", "--json")
    assert result.returncode == 1
    no_traceback(result)
    assert f"no node is running at http://127.0.0.1:{port}" in result.stderr


def test_plugins_without_a_node_lists_installed(cli) -> None:
    result = cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["source"].startswith("installed")
    rows = {row["name"]: row for row in data["plugins"]}
    assert rows["core"]["kind"] == "builtin"
    assert rows["core"]["status"] == "ok"
    assert set(rows) == set(Catalog.discover().plugins)
    table = cli("plugins")
    assert table.returncode == 0
    assert "core" in table.stdout


def test_exposed_key_refuses_to_run(cli) -> None:
    config = init_dir(cli, cli.cwd / "D")
    key = cli.cwd / "D" / "node.key"
    key.chmod(0o644)
    result = cli("--config", config, "run")
    assert result.returncode == 2
    no_traceback(result)
    assert f"chmod 600 {key}" in result.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o644  # reported, not silently changed


def test_run_without_identity_says_init(cli) -> None:
    result = cli("run")
    assert result.returncode == 2
    no_traceback(result)
    assert "zeone init" in result.stderr


def test_api_port_in_use_is_one_clear_error(cli) -> None:
    config = init_dir(cli, cli.cwd / "D", "--listen", "tcp://127.0.0.1:0")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("--config", config, "run", "--api-bind", f"127.0.0.1:{port}")
    assert result.returncode == 1
    no_traceback(result)
    assert "required service core/api crashed: OSError" in result.stderr
    assert not (cli.cwd / "D" / "node.json").exists()


def wait_for_file(path: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not path.exists():
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"node exited with {process.returncode} before starting:\n{err}")
        if time.monotonic() > deadline:
            process.kill()
            _, err = process.communicate()
            pytest.fail(f"node did not write {path} within {START_TIMEOUT} s:\n{err}")
        time.sleep(0.05)


def test_run_status_and_sigterm_end_to_end(cli) -> None:
    directory = cli.cwd / "D"
    config = init_dir(cli, directory)  # listen stays at the default tcp://0.0.0.0:4001
    node_id = str(Identity.load(directory / "node.key").node_id)
    process = cli.popen("--config", config, "run")
    try:
        wait_for_file(directory / "node.json", process)
        runtime = json.loads((directory / "node.json").read_text())
        assert runtime["pid"] == process.pid
        assert runtime["node_id"] == node_id
        assert runtime["api_url"].startswith("http://127.0.0.1:")

        status, peers, plugins, *tables = cli.run_all(
            *(
                ["--config", config, command, *flags]
                for flags in (["--json"], [])
                for command in ("status", "peers", "plugins")
            )
        )
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["node_id"] == node_id
        assert data["pid"] == process.pid
        assert data["role"] == "full"
        assert all(s["state"] == "running" for s in data["services"]), data["services"]

        assert peers.returncode == 0, peers.stderr
        assert json.loads(peers.stdout)["peers"] == []

        assert plugins.returncode == 0, plugins.stderr
        listed = json.loads(plugins.stdout)
        assert listed["source"] == "running node"
        enabled = {row["name"] for row in listed["plugins"] if row["enabled"]}
        assert enabled == {"core"}

        for table in tables:  # the human-readable tables render too
            assert table.returncode == 0, table.stderr
            no_traceback(table)
        assert node_id in tables[0].stdout

        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=STOP_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert not (directory / "node.json").exists()
