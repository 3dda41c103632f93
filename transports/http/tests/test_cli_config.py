"""The plugin as a user meets it: `zeone plugins`, `zeone http secret-path`, config errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from zeone_http.config import SECRET_PATH_RE, load_or_create_secret_path
from zeone_http.transport import HttpSettings, WssTransport, WsTransport

from zeone.errors import ConfigError
from zeone.net.transport import Address, ListenError
from zeone.plugins import Catalog
from zeone.testing import make_config


def zeone(tmp_path: Path, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "zeone.toml").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEONE_")}
    env["HOME"] = str(tmp_path)
    return subprocess.run(
        [sys.executable, "-m", "zeone", "--config", str(tmp_path / "zeone.toml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )


BASE = '[node]\ndata_dir = "data"\n[plugins]\nenable = ["http"]\n'


def test_cli_lists_the_plugin_and_prints_a_persistent_secret_path(tmp_path: Path) -> None:
    listed = zeone(tmp_path, BASE, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    (http,) = [p for p in json.loads(listed.stdout)["plugins"] if p["name"] == "http"]
    assert http["kind"] == "transports" and http["status"] == "ok"
    first = zeone(tmp_path, BASE, "http", "secret-path")
    assert first.returncode == 0, first.stderr
    secret = first.stdout.strip()
    assert SECRET_PATH_RE.fullmatch(secret)
    assert load_or_create_secret_path(tmp_path / "data") == secret  # what the node will use
    assert (tmp_path / "data" / "http_secret_path").stat().st_mode & 0o777 == 0o600
    configured = zeone(
        tmp_path,
        BASE + '[plugins.http]\nsecret_path = "/static/x-1234567"\n',
        "http",
        "secret-path",
    )
    assert configured.stdout.strip() == "/static/x-1234567"


def test_a_bad_setting_stops_the_cli_naming_the_key(tmp_path: Path) -> None:
    result = zeone(tmp_path, BASE + '[plugins.http]\nsecret_path = "a b"\n', "http", "secret-path")
    assert result.returncode == 2
    assert "plugins.http: secret_path must be" in result.stderr


@pytest.mark.parametrize(
    ("key", "value", "complaint"),
    [
        ("secret_path", "/a b c d e f", "secret_path must be"),
        ("secret_path", "/short", "secret_path must be"),
        ("public_address", "tcp://1.2.3.4:5", "public_address must be a ws:// or wss:// URL"),
        ("public_address", "wss://example.org", "public_address must be a ws:// or wss:// URL"),
        ("host_header", "a\r\nX-Injected: 1", "must not contain CR, LF or NUL"),
        ("max_header_bytes", 10, "max_header_bytes"),
        ("header_timeout", 0.0, "header_timeout"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, key: str, value: object, complaint: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(complaint)):
        make_config(
            tmp_path,
            enable=["http"],
            settings={f"plugins.http.{key}": value},
            catalog=Catalog.discover(),
        )


def test_a_corrupted_secret_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "http_secret_path").write_text("not a path\n")
    with pytest.raises(ValueError, match="malformed secret path"):
        load_or_create_secret_path(tmp_path)


async def test_listen_errors_say_what_is_missing(tmp_path: Path) -> None:
    async def handler(stream) -> None:
        pass

    settings = HttpSettings(secret_path=lambda: "/static/x-1234567")
    with pytest.raises(ListenError, match=r"needs \[plugins.http\] tls_cert and tls_key"):
        await WssTransport(settings).listen(Address.build("wss", "127.0.0.1", 0), handler)
    with pytest.raises(ListenError, match="needs a port"):
        await WsTransport(settings).listen(Address.build("ws", "127.0.0.1"), handler)
    broken = HttpSettings(secret_path=lambda: load_or_create_secret_path(tmp_path / "f" / "x"))
    (tmp_path / "f").write_text("a file where a directory should be")
    with pytest.raises(ListenError, match="no secret path"):
        await WsTransport(broken).listen(Address.build("ws", "127.0.0.1", 0), handler)


def test_devnet_makes_the_last_node_reachable_over_ws_only() -> None:
    from zeone_http import plugin

    configs = []
    for index in range(4):
        settings: dict[str, object] = {"network.listen": [f"tcp://127.0.0.1:{4000 + index}"]}
        plugin.zeone_devnet_configure(
            index=index, count=4, settings=settings, port=lambda name, i=index: 5000 + i
        )
        configs.append(settings)
    assert all(c["network.transports"] == ["tcp", "ws", "wss"] for c in configs)
    assert [c["network.listen"] for c in configs[:3]] == [
        ["tcp://127.0.0.1:4000"], ["tcp://127.0.0.1:4001"], ["tcp://127.0.0.1:4002"]
    ]  # fmt: skip
    assert configs[3]["network.listen"] == ["ws://127.0.0.1:5003"]
