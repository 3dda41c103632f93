"""Layered config: defaults < file < env < flags, and one clear error for anything wrong."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from zeone.config import (
    ApiSection,
    Config,
    NetworkSection,
    NodeSection,
    dump_toml,
    env_layer,
    find_config_file,
    load_config,
    parse_env_value,
    parse_host_port,
)
from zeone.errors import ConfigError


@attrs.frozen
class HelloConfig:
    greeting: str = "hello"
    repeat: int = 1
    tags: list[str] = attrs.Factory(list)


SCHEMAS: dict[str, type | None] = {"hello": HelloConfig, "bare": None}
SEED_PEER = "3f" * 20 + "@tcp://10.0.0.1:4001"


def write(tmp_path: Path, text: str, name: str = "zeone.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(path: Path | None, env: dict[str, str] | None = None, **kwargs) -> Config:
    return load_config(path, environ=env or {}, **kwargs)


def config_error(path: Path | None, env: dict[str, str] | None = None, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, env, **kwargs)
    assert info.value.exit_code == 2
    return str(info.value)


# -- defaults and layering ---------------------------------------------------------------------


def test_defaults() -> None:
    config = load(None)
    assert config == Config()
    assert config.node == NodeSection()
    assert config.node.role == "full"
    assert config.network.listen == ["tcp://0.0.0.0:4001"]
    assert config.network.max_connections == 512
    assert config.api.bind == "127.0.0.1:8765"
    assert config.api.enabled is True
    assert config.plugins.enable == []
    assert config.path is None
    assert set(config.sources.values()) == {"default"}
    assert config.sources["network.max_connections"] == "default"


def test_layers_override_in_order_and_sources_say_who_set_what(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[node]
role = "seed"
log_level = "debug"

[network]
max_connections = 64
bootstrap = ["{SEED_PEER}"]
""",
    )
    env = {
        "ZEONE_NODE__LOG_LEVEL": "warning",
        "ZEONE_NETWORK__MAX_STREAMS_PER_PEER": "32",
        "ZEONE_API__BIND": "127.0.0.1:9000",
        "ZEONE_CONFIG": "/ignored/here/because/it/selects/the/file",
        "ZEONE_HOME": "no double underscore: not a setting",
        "PATH_UNRELATED": "x",
    }
    config = load(
        path,
        env,
        overrides={"node.log_level": "error", "network.listen": ["tcp://127.0.0.1:0"]},
        override_source={"node.log_level": "flag --log-level", "network.listen": "flag --listen"},
    )
    assert config.path == path
    assert config.node.role == "seed"  # file
    assert config.network.max_connections == 64  # file
    assert config.network.bootstrap == [SEED_PEER]  # file
    assert config.network.max_streams_per_peer == 32  # env, parsed as an integer
    assert config.api.bind == "127.0.0.1:9000"  # env, kept as a string
    assert config.node.log_level == "error"  # flag beats env beats file
    assert config.network.listen == ["tcp://127.0.0.1:0"]  # flag
    assert config.network.idle_timeout == 300.0  # default

    sources = config.sources
    assert sources["node.role"] == str(path)
    assert sources["network.max_connections"] == str(path)
    assert sources["network.bootstrap"] == str(path)
    assert sources["network.max_streams_per_peer"] == "env ZEONE_NETWORK__MAX_STREAMS_PER_PEER"
    assert sources["api.bind"] == "env ZEONE_API__BIND"
    assert sources["node.log_level"] == "flag --log-level"
    assert sources["network.listen"] == "flag --listen"
    assert sources["network.idle_timeout"] == "default"


def test_env_beats_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[node]\nrole = 'seed'\n")
    config = load(path, {"ZEONE_NODE__ROLE": "light"})
    assert config.node.role == "light"
    assert config.sources["node.role"] == "env ZEONE_NODE__ROLE"


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("64", 64),
        ("-3", -3),
        ("2.5", 2.5),
        ("true", True),
        ("false", False),
        ('["tcp://0.0.0.0:4001", "tcp://[::]:4001"]', ["tcp://0.0.0.0:4001", "tcp://[::]:4001"]),
        ('"quoted"', "quoted"),
        ("seed", "seed"),
        ("127.0.0.1:8765", "127.0.0.1:8765"),
        ("tcp://0.0.0.0:4001", "tcp://0.0.0.0:4001"),
        ("hello world", "hello world"),
        ("", ""),
    ],
)
def test_env_values_are_toml_values_else_strings(raw: str, value: object) -> None:
    assert parse_env_value(raw) == value
    assert type(parse_env_value(raw)) is type(value)


def test_env_types_reach_the_config() -> None:
    env = {
        "ZEONE_NETWORK__MAX_CONNECTIONS": "64",
        "ZEONE_API__ENABLED": "false",
        "ZEONE_NETWORK__LISTEN": '["tcp://127.0.0.1:4001", "tcp://127.0.0.1:4002"]',
        "ZEONE_NODE__SHUTDOWN_TIMEOUT": "3",  # an integer is fine for a float setting
    }
    config = load(None, env)
    assert config.network.max_connections == 64
    assert config.api.enabled is False
    assert config.network.listen == ["tcp://127.0.0.1:4001", "tcp://127.0.0.1:4002"]
    assert config.node.shutdown_timeout == 3.0
    assert isinstance(config.node.shutdown_timeout, float)


def test_env_empty_segment_is_an_error() -> None:
    message = config_error(None, {"ZEONE_NODE____ROLE": "seed"})
    assert "ZEONE_NODE____ROLE" in message


def test_env_layer_ignores_unrelated_variables() -> None:
    layer = env_layer({"HOME": "/root", "ZEONE_CONFIG": "x.toml", "ZEONE_DEBUG": "1"})
    assert layer.data == {}


def test_flags_replace_lists_instead_of_appending(tmp_path: Path) -> None:
    path = write(tmp_path, "[plugins]\nenable = ['hello']\n")
    config = load(path, overrides={"plugins.enable": ["bare"]}, plugin_schemas=SCHEMAS)
    assert config.plugins.enable == ["bare"]
    assert config.sources["plugins.enable"] == "flag"


def test_data_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[node]\ndata_dir = 'state'\n")
    config = load(path)
    assert config.data_dir == (tmp_path / "state").resolve()
    assert config.key_file == config.data_dir / "node.key"
    assert config.token_file == config.data_dir / "api.token"


def test_find_config_file_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    (home / ".zeone").mkdir(parents=True)
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert find_config_file(None, {}) is None
    write(home / ".zeone", "")
    assert find_config_file(None, {}) == home / ".zeone" / "zeone.toml"
    write(work, "")
    assert find_config_file(None, {}) == work / "zeone.toml"
    assert find_config_file(None, {"ZEONE_CONFIG": "/etc/z.toml"}) == Path("/etc/z.toml")
    assert find_config_file("x.toml", {"ZEONE_CONFIG": "/etc/z.toml"}) == work / "x.toml"


# -- errors: every one names where, what and what was expected ---------------------------------


def test_unknown_key_names_file_and_dotted_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[network]\nmax_conections = 5\n")
    message = config_error(path)
    assert f"{path}: network.max_conections: unknown key" in message


def test_unknown_section_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[nodes]\nrole = 'seed'\n\n[network.limits]\nx = 1\n")
    message = config_error(path)
    assert f"{path}: nodes: unknown key" in message
    assert f"{path}: network.limits: unknown key" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "[node]\nrole = 'king'\nbogus = 1\n[network]\nmax_connections = 'x'\n")
    message = config_error(path)
    assert "node.role" in message
    assert "node.bogus" in message
    assert "network.max_connections" in message


@pytest.mark.parametrize(
    ("toml", "key", "expected"),
    [
        ("[network]\nmax_connections = 'many'", "network.max_connections", "expected an integer"),
        ("[network]\nmax_connections = true", "network.max_connections", "got a boolean"),
        ("[network]\nmax_connections = 1.5", "network.max_connections", "expected an integer"),
        ("[node]\ndata_dir = 5", "node.data_dir", "expected a string, got int 5"),
        ("[node]\nshutdown_timeout = 'soon'", "node.shutdown_timeout", "expected a number"),
        ("[node]\nshutdown_timeout = false", "node.shutdown_timeout", "got a boolean"),
        ("[api]\nenabled = 1", "api.enabled", "expected true or false"),
        ("[api]\nenabled = 'yes'", "api.enabled", "expected true or false"),
        ("[network]\nlisten = [1]", "network.listen.0", "expected a string"),
        ("[network]\nlisten = 'tcp://0.0.0.0:4001'", "network.listen", "expected a list"),
        ("[plugins]\nenable = 'hello'", "plugins.enable", "expected a list"),
        ("node = 5", "node", "expected a table"),
        ("plugins = 'hello'", "plugins", "expected a table"),
    ],
)
def test_wrong_type_is_named(tmp_path: Path, toml: str, key: str, expected: str) -> None:
    path = write(tmp_path, toml + "\n")
    message = config_error(path)
    assert f"{path}: {key}: " in message
    assert expected in message


def test_role_must_be_one_of_the_literals(tmp_path: Path) -> None:
    path = write(tmp_path, "[node]\nrole = 'king'\n")
    message = config_error(path)
    assert f"{path}: node.role: expected one of 'seed', 'full', 'light', 'mobile'" in message
    assert "'king'" in message


def test_bad_env_value_names_the_variable() -> None:
    message = config_error(None, {"ZEONE_NODE__LOG_LEVEL": "loud"})
    assert "env ZEONE_NODE__LOG_LEVEL: node.log_level: expected one of" in message


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[network]\nmax_connections = 0", "network.max_connections"),
        ("[network]\nmax_connections = -1", "network.max_connections"),
        ("[network]\nmax_frame_size = 10", "network.max_frame_size"),
        ("[node]\nshutdown_timeout = 0", "node.shutdown_timeout"),
    ],
)
def test_out_of_range(tmp_path: Path, toml: str, key: str) -> None:
    path = write(tmp_path, toml + "\n")
    message = config_error(path)
    assert f"{path}: {key}: must be" in message


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("localhost", "expected host:port"),
        ("127.0.0.1:", "expected host:port"),
        (":8765", "expected host:port"),
        ("127.0.0.1:http", "expected host:port"),
        ("::1:8765", "expected host:port"),
        ("127.0.0.1:70000", "out of range"),
    ],
)
def test_bad_api_bind(tmp_path: Path, bind: str, expected: str) -> None:
    path = write(tmp_path, f"[api]\nbind = '{bind}'\n")
    message = config_error(path)
    assert f"{path}: api.bind: " in message
    assert expected in message


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("localhost:8765", ("localhost", 8765)),
        ("[::1]:8765", ("::1", 8765)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_parse_host_port(text: str, parsed: tuple[str, int]) -> None:
    assert parse_host_port(text) == parsed
    assert ApiSection(bind=text).bind == text


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[node\nrole = 'seed'\n")
    message = config_error(path)
    assert message.startswith(f"{path}: not valid TOML")
    assert "line 1" in message


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path / "nope.toml")
    assert f"{tmp_path / 'nope.toml'}: config file not found" in message


# -- plugin tables -----------------------------------------------------------------------------


def test_plugin_table_is_structured_with_its_schema(tmp_path: Path) -> None:
    path = write(tmp_path, "[plugins.hello]\ngreeting = 'hi'\ntags = ['a']\n")
    config = load(path, {"ZEONE_PLUGINS__HELLO__REPEAT": "3"}, plugin_schemas=SCHEMAS)
    assert config.plugin_settings("hello") == HelloConfig(greeting="hi", repeat=3, tags=["a"])
    assert config.sources["plugins.hello.greeting"] == str(path)
    assert config.sources["plugins.hello.repeat"] == "env ZEONE_PLUGINS__HELLO__REPEAT"


def test_enabled_plugins_get_their_defaults_without_a_table() -> None:
    config = load(None, overrides={"plugins.enable": ["hello", "bare"]}, plugin_schemas=SCHEMAS)
    assert config.plugin_settings("hello") == HelloConfig()
    assert config.plugin_settings("bare") is None


def test_plugin_table_errors_name_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[plugins.hello]\nrepeat = 'twice'\ngreting = 'hi'\n")
    message = config_error(path, plugin_schemas=SCHEMAS)
    assert f"{path}: plugins.hello.repeat: expected an integer" in message
    assert f"{path}: plugins.hello.greting: unknown key" in message


def test_unknown_plugin_table_lists_installed_plugins(tmp_path: Path) -> None:
    path = write(tmp_path, "[plugins.vpn]\nexit = true\n")
    message = config_error(path, plugin_schemas=SCHEMAS)
    assert f"{path}: plugins.vpn: no installed plugin named 'vpn'" in message
    assert "installed: bare, hello" in message


def test_plugin_without_schema_rejects_settings(tmp_path: Path) -> None:
    path = write(tmp_path, "[plugins.bare]\nanything = 1\n")
    message = config_error(path, plugin_schemas=SCHEMAS)
    assert f"{path}: plugins.bare: plugin 'bare' takes no settings" in message
    # an empty table is harmless
    write(tmp_path, "[plugins.bare]\n")
    assert load(path, plugin_schemas=SCHEMAS).plugin_settings("bare") is None


def test_plugin_table_must_be_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, "[plugins]\nhello = 5\n")
    message = config_error(path, plugin_schemas=SCHEMAS)
    assert "plugins.hello: expected a table of plugin settings" in message


def test_plugin_tables_are_kept_raw_before_discovery(tmp_path: Path) -> None:
    path = write(tmp_path, "[plugins.vpn]\nexit = true\n")
    assert load(path).plugin_settings("vpn") == {"exit": True}


# -- writing -----------------------------------------------------------------------------------


def test_to_dict_and_dump_toml_roundtrip(tmp_path: Path) -> None:
    original = load(
        None,
        overrides={
            "node.role": "seed",
            "node.shutdown_timeout": 2.5,
            "network.listen": ["tcp://127.0.0.1:4100"],
            "network.bootstrap": [SEED_PEER],
            "api.enabled": False,
            "plugins.enable": ["hello"],
            "plugins.hello": {"greeting": "hi", "tags": ["x", "y"]},
        },
        plugin_schemas=SCHEMAS,
    )
    data = original.to_dict()
    assert set(data) == {"node", "network", "dht", "api", "plugins"}
    assert data["plugins"] == {
        "enable": ["hello"],
        "hello": {"greeting": "hi", "repeat": 1, "tags": ["x", "y"]},
    }
    path = write(tmp_path, dump_toml(original))
    again = load(path, plugin_schemas=SCHEMAS)
    assert attrs.evolve(again, path=None) == original
    assert again.to_dict() == data
    assert set(again.sources.values()) == {str(path)}


def test_default_config_dumps_every_section() -> None:
    text = dump_toml(Config())
    for section in ("[node]", "[network]", "[api]", "[plugins]"):
        assert section in text
    assert isinstance(Config().network, NetworkSection)


def test_unset_optional_plugin_settings_dump_and_load_back(tmp_path: Path) -> None:
    @attrs.frozen
    class ExitConfig:
        allow: str | None = None
        port: int = 1080

    schemas = {"exit": ExitConfig}
    config = load(None, overrides={"plugins.enable": ["exit"]}, plugin_schemas=schemas)
    text = dump_toml(config)  # TOML has no null: the key is left out
    assert "allow" not in text
    path = write(tmp_path, text)
    assert load(path, plugin_schemas=schemas).plugin_settings("exit") == ExitConfig()


def test_dht_settings_are_validated_with_the_key_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dht\.beta: unknown key"):
        load(write(tmp_path, "[dht]\nbeta = 2\n", "typo.toml"))
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, "[dht]\nk = 1\nput_quorum = -1\n"))
    assert "dht.k: must be >= 2: 1" in str(caught.value)
    assert load(write(tmp_path, "[dht]\ndisjoint_paths = 3\n", "ok.toml")).dht.disjoint_paths == 3
