"""The deployment examples stay valid: every example config loads without errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from zeone.config import load_config
from zeone.plugins import Catalog

DEPLOY = Path(__file__).resolve().parents[1] / "examples" / "deploy"


@pytest.mark.parametrize("name", ["seed.toml", "full.toml", "light.toml"])
def test_example_configs_load(name: str) -> None:
    config = load_config(DEPLOY / name, environ={}, plugin_schemas=Catalog.discover().schemas)
    assert config.node.role == name.removesuffix(".toml")
