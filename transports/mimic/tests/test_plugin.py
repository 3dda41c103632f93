"""Config validation, the CLI commands and `zeone plugins`, in process."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from zeone_mimic import auth
from zeone_mimic.plugin import MimicConfig

from zeone.cli import CliState, build_cli
from zeone.errors import ConfigError
from zeone.plugins import Catalog
from zeone.testing import make_config


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.discover()


def test_defaults_and_table(tmp_path, catalog) -> None:
    config = make_config(tmp_path, enable=["mimic"], catalog=catalog)
    assert config.plugin_settings("mimic") == MimicConfig()
    assert "mimic" in config.to_dict()["plugins"]


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("fallback", "no-port", "host:port"),
        ("sni", "bad host/name", "sni"),
        ("handshake_timeout", 0, "handshake_timeout"),
        ("replay_window", 1, "replay_window"),
    ],
)
def test_bad_settings_are_named(tmp_path, catalog, key, value, match) -> None:
    with pytest.raises((ConfigError, ValueError), match=match):
        make_config(
            tmp_path, enable=["mimic"], settings={f"plugins.mimic.{key}": value}, catalog=catalog
        )


def invoke(catalog: Catalog, *args: str):
    group, _ = build_cli()
    return CliRunner().invoke(group, list(args), obj=CliState(catalog), catch_exceptions=False)


def test_cli_address_creates_and_reuses_the_key(tmp_path, catalog) -> None:
    config = tmp_path / "zeone.toml"
    config.write_text('[node]\ndata_dir = "."\n[plugins]\nenable = ["mimic"]\n')
    first = invoke(
        catalog, "--config", str(config), "mimic", "address", "--host", "203.0.113.7", "--json"
    )
    assert first.exit_code == 0, first.output
    data = json.loads(first.output)
    assert data["address"] == f"mimic://203.0.113.7:443?sni=www.example.com&pk={data['public_key']}"
    key = auth.ServerKey.load_or_create(tmp_path / "mimic.key")
    assert key.public_text == data["public_key"]
    again = invoke(
        catalog, "--config", str(config), "mimic", "address", "--host", "203.0.113.7", "--json"
    )
    assert json.loads(again.output)["public_key"] == data["public_key"]


def test_plugins_lists_mimic_as_a_transport(tmp_path, catalog) -> None:
    config = tmp_path / "zeone.toml"
    config.write_text('[node]\ndata_dir = "."\n[api]\nbind = "127.0.0.1:1"\n')
    result = invoke(catalog, "--config", str(config), "plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)["plugins"]}
    assert rows["mimic"]["status"] == "ok"
    assert rows["mimic"]["kind"] == "transports"
