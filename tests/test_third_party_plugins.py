"""Plugins as a third party ships them: found through entry points, installed with pip.

The broken-plugin tests put a real ``*.dist-info`` with an ``entry_points.txt`` on PYTHONPATH, which
is exactly what importlib.metadata reads for an installed distribution, without a build step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "examples" / "zeone-plugin-hello"


def make_distribution(site: Path, name: str, module_source: str, group: str = "zeone.plugins"):
    """Install a one-module distribution into ``site`` by writing its files directly."""
    module = f"zeone_{name}_plugin"
    (site / f"{module}.py").write_text(module_source)
    info = site / f"zeone_plugin_{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: zeone-plugin-{name}\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(f"[{group}]\n{name} = {module}\n")


def run_zeone(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "zeone", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    make_distribution(site, "broken", "raise ImportError('libfoo.so: cannot open shared object')\n")
    make_distribution(
        site,
        "typo",
        "from zeone import PluginInfo\n"
        "def zeone_plugin_info():\n    return PluginInfo(name='typo', version='0.1')\n"
        "def zeone_servces(node):\n    return []\n",
    )
    make_distribution(
        site,
        "future",
        "from zeone import PluginInfo\n"
        "def zeone_plugin_info():\n    return PluginInfo(name='future', version='9', api='2.0')\n",
    )
    make_distribution(
        site,
        "badcli",
        "from zeone import PluginInfo\n"
        "def zeone_plugin_info():\n    return PluginInfo(name='badcli', version='0.1')\n"
        "def zeone_register_commands(cli):\n    raise RuntimeError('oops')\n",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEONE_")}
    env["PYTHONPATH"] = str(site)
    env["HOME"] = str(tmp_path / "home")
    return env


def test_broken_plugins_do_not_break_the_cli(plugin_env, tmp_path) -> None:
    result = run_zeone("--help", env=plugin_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hello" in result.stdout  # the healthy plugin's commands are still there
    assert "plugin 'badcli' failed to add its commands: RuntimeError: oops" in result.stderr
    assert "Traceback" not in result.stderr

    result = run_zeone("plugins", "--json", env=plugin_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)["plugins"]}
    assert rows["hello"]["status"] == "ok"
    assert rows["broken"]["status"] == "broken"
    assert "libfoo.so" in rows["broken"]["error"]
    assert "zeone_servces" in rows["typo"]["error"]
    assert rows["future"]["status"] == "ok"  # installed fine; only enabling it is refused


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("broken", "plugin 'broken' is broken: failed to import zeone_broken_plugin: ImportError"),
        ("typo", "unknown hook 'zeone_servces'"),
        ("future", "needs kernel plugin API 2.0, this kernel provides 1.0"),
        ("nope", "unknown plugin 'nope'; installed: "),
    ],
)
def test_enabling_a_bad_plugin_is_a_clear_error(plugin_env, tmp_path, name, message) -> None:
    run_zeone("init", "--dir", str(tmp_path / "n"), env=plugin_env, cwd=tmp_path)
    config = str(tmp_path / "n" / "zeone.toml")
    result = run_zeone(
        "--config", config, "--enable", f"hello,{name}", "run", env=plugin_env, cwd=tmp_path
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.slow
def test_pip_install_from_its_own_directory_and_enable(tmp_path: Path) -> None:
    """The real `pip install zeone-plugin-x` path, in a fresh virtual environment."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(ROOT),
            str(HELLO),
        ],
        check=True,
        timeout=600,
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ZEONE_", "VIRTUAL_ENV", "PYTHON"))
    }
    env["HOME"] = str(tmp_path / "home")
    zeone = str(env_dir / "bin" / "zeone")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [zeone, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    # `zeone uninstall` / `zeone install` drive the same pip (as `llm install` does)
    assert cli("uninstall", "--yes", "zeone-plugin-hello").returncode == 0
    listed = json.loads(cli("plugins", "--json").stdout)["plugins"]
    assert "hello" not in {row["name"] for row in listed}
    installed = cli("install", str(HELLO))
    assert installed.returncode == 0, installed.stderr
    listed = json.loads(cli("plugins", "--json").stdout)["plugins"]
    hello = next(row for row in listed if row["name"] == "hello")
    assert (hello["status"], hello["distribution"], hello["version"]) == (
        "ok",
        "zeone-plugin-hello",
        "1.0.0",
    )
    node_dir = tmp_path / "node"
    init = cli(
        "init", "--dir", str(node_dir), "--listen", "tcp://127.0.0.1:0", "--api-bind", "127.0.0.1:0"
    )
    assert init.returncode == 0, init.stderr
    config = str(node_dir / "zeone.toml")
    process = subprocess.Popen(
        [zeone, "--config", config, "--enable", "hello", "run"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (node_dir / "node.json").exists():
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "node did not start"
            time.sleep(0.1)
        status = json.loads(cli("--config", config, "status", "--json").stdout)
        assert status["plugins"] == ["hello"]
        assert "/zeone/hello/1" in status["protocols"]
        greetings = cli("--config", config, "hello", "greetings", "--json")
        assert greetings.returncode == 0, greetings.stderr
        assert json.loads(greetings.stdout) == []
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
