"""Shared helpers for the kernel tests: in-test plugins, node configs on tmp dirs, the real CLI.

Nothing here is mocked: plugins are real module objects registered with pluggy, configs go through
the real layered loader, and the CLI runs as ``python -m zeone`` in a subprocess with its own HOME
and working directory and no ``ZEONE_*`` variables from the outer environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from zeone.config import Config, load_config
from zeone.hookspecs import hookimpl
from zeone.plugins import KERNEL_API_VERSION, Catalog, PluginInfo

CLI_TIMEOUT = 60.0

# Property tests explore the same examples on every run: a flaky test is a bug, and CI must not
# depend on luck. (Run with HYPOTHESIS_PROFILE=explore locally to search with fresh randomness.)
settings.register_profile("deterministic", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


def make_plugin(
    name: str,
    *,
    version: str = "1.0",
    api: str = KERNEL_API_VERSION,
    requires: Iterable[str] = (),
    required: bool = False,
    config: type | None = None,
    description: str = "",
    **hooks: Any,
) -> types.ModuleType:
    """A plugin module named ``name`` implementing ``zeone_plugin_info`` plus the given hooks.

    Hooks are plain functions (the kernel treats every ``zeone_*`` callable as an implementation,
    which is also how a misspelled hook gets caught).
    """
    module = types.ModuleType(name)  # broken plugins are catalogued by module name

    @hookimpl
    def zeone_plugin_info() -> PluginInfo:
        return PluginInfo(
            name=name,
            version=version,
            api=api,
            requires=tuple(requires),
            required=required,
            config=config,
            description=description,
        )

    module.zeone_plugin_info = zeone_plugin_info
    for hook_name, function in hooks.items():
        setattr(module, hook_name, function)
    return module


def make_catalog(*plugins: Any) -> Catalog:
    """The builtins plus ``plugins``, without the installed entry points (hermetic)."""
    return Catalog.discover(entry_points=False, extra=plugins)


def node_config(
    data_dir: Path,
    *,
    catalog: Catalog | None = None,
    enable: Iterable[str] = (),
    settings: Mapping[str, Any] | None = None,
) -> Config:
    """A config for an in-process node: no P2P listeners, the API on an ephemeral loopback port."""
    overrides: dict[str, Any] = {
        "node.data_dir": str(data_dir),
        "network.listen": [],
        "api.bind": "127.0.0.1:0",
        "plugins.enable": list(enable),
        **(settings or {}),
    }
    schemas = (catalog or make_catalog()).schemas
    return load_config(None, environ={}, overrides=overrides, plugin_schemas=schemas)


def clean_environ(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEONE_")}
    env["HOME"] = str(home)
    env["COLUMNS"] = "200"  # rich would otherwise wrap long paths at 80 columns
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("NO_COLOR", None)
    return env


class Cli:
    """Runs ``python -m zeone`` for real, in its own working directory and HOME."""

    def __init__(self, root: Path) -> None:
        self.cwd = root / "work"
        self.home = root / "home"
        self.cwd.mkdir()
        self.home.mkdir()
        self.env = clean_environ(self.home)

    def argv(self, *args: str | os.PathLike[str]) -> list[str]:
        return [sys.executable, "-m", "zeone", *map(str, args)]

    def __call__(
        self, *args: str | os.PathLike[str], env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )

    def run_all(
        self, *commands: Iterable[str | os.PathLike[str]]
    ) -> list[subprocess.CompletedProcess[str]]:
        """Run independent commands concurrently (each one is a full interpreter start-up)."""
        processes = [(list(map(str, c)), self.popen(*c)) for c in commands]
        results = []
        for args, process in processes:
            try:
                out, err = process.communicate(timeout=CLI_TIMEOUT)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
            results.append(subprocess.CompletedProcess(args, process.returncode, out, err))
        return results

    def popen(self, *args: str | os.PathLike[str], **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kwargs,
        )


# The suite runs with --import-mode=importlib, so test modules get these helpers as fixtures.


@pytest.fixture(name="make_plugin")
def make_plugin_fixture() -> Any:
    return make_plugin


@pytest.fixture(name="make_catalog")
def make_catalog_fixture() -> Any:
    return make_catalog


@pytest.fixture(name="node_config")
def node_config_fixture() -> Any:
    return node_config


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)
