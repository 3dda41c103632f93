"""Layered, typed configuration: built-in defaults < TOML file < ``ZEONE_*`` environment < flags.

Each layer is a nested dict; they are merged key by key while remembering which layer set each
value (``zeone config show`` prints that), then structured into frozen attrs classes with cattrs.
Anything wrong -- an unknown key, a wrong type, a value out of range, a table for a plugin that is
not installed -- becomes one :class:`~zeone.errors.ConfigError` naming where the value came from,
the key, and what was expected.

Environment variables use ``__`` between levels: ``ZEONE_NETWORK__MAX_CONNECTIONS=64``,
``ZEONE_PLUGINS__HELLO__GREETING=hi``. Their values are read as TOML values when they parse as
one (``64``, ``true``, ``["tcp://0.0.0.0:4001"]``) and as plain strings otherwise.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
import cattrs.cols
import tomli_w
from attrs import validators as v
from cattrs.gen import make_dict_structure_fn

from zeone.errors import ConfigError

ENV_PREFIX = "ZEONE_"
ENV_CONFIG = "ZEONE_CONFIG"
CONFIG_FILE_NAME = "zeone.toml"
DEFAULT_HOME = Path("~/.zeone")
DEFAULT_PORT = 4001
DEFAULT_API_PORT = 8765

Role = Literal["seed", "full", "light", "mobile"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["rich", "json"]

_positive = v.gt(0)


def _seconds(_instance: Any, attribute: attrs.Attribute, value: float) -> None:
    """A finite, positive duration of at most a day (inf would overflow timers later)."""
    if not 0 < value <= 86400:
        raise ValueError(f"'{attribute.name}' must be > 0 and <= 86400 seconds: {value}")


@attrs.frozen
class NodeSection:
    """``[node]``: who this node is and where it keeps its state."""

    role: Role = "full"
    #: Directory for the key, the API token and plugin state; relative to the config file.
    data_dir: str = "."
    log_level: LogLevel = "info"
    log_format: LogFormat = "rich"
    #: Seconds the node waits for services to stop before cancelling them hard.
    shutdown_timeout: float = attrs.field(default=10.0, validator=_seconds)


def _each(check):
    """An attrs validator applying ``check`` to every item, naming the field and the item."""

    def validate(_instance: Any, attribute: attrs.Attribute, value: list[Any]) -> None:
        for index, item in enumerate(value):
            try:
                check(item)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"'{attribute.name}' item {index} ({item!r}): {exc}") from None

    return validate


def _check_address(text: Any) -> None:
    from zeone.net.transport import parse_address

    if not isinstance(text, str):
        raise TypeError("expected an address string")
    parse_address(text)


def _check_peer(text: Any) -> None:
    from zeone.net.peers import PeerAddress

    if not isinstance(text, str):
        raise TypeError("expected <node id>@<address>")
    PeerAddress.parse(text)


@attrs.frozen
class NetworkSection:
    """``[network]``: where the node listens, whom it dials first, and the limits it enforces."""

    listen: list[str] = attrs.field(
        factory=lambda: [f"tcp://0.0.0.0:{DEFAULT_PORT}"], validator=_each(_check_address)
    )
    #: Seed peers as ``<node id>@<address>``, e.g. ``3f...9a@tcp://198.51.100.7:4001``.
    bootstrap: list[str] = attrs.field(factory=list, validator=_each(_check_peer))
    #: DNS names with TXT (``zeone=<id>@<address>``) or SRV seed records, used when no bootstrap
    #: peer answers (seed 004 section 8.1).
    bootstrap_dns: list[str] = attrs.Factory(list)
    #: ``host:port`` of the DNS server to ask for them; empty means the system resolver.
    dns_server: str = attrs.field(default="")

    @dns_server.validator
    def _check_dns_server(self, attribute: attrs.Attribute, value: str) -> None:
        if value:
            try:
                parse_host_port(value)
            except ValueError as exc:
                raise ValueError(f"'{attribute.name}' {exc}") from None

    #: Transport schemes in order of preference when a peer advertises several addresses.
    transports: list[str] = attrs.Factory(lambda: ["tcp"])
    max_connections: int = attrs.field(default=512, validator=_positive)
    #: Requests from one peer handled at the same time; more are answered ``busy``.
    max_requests_per_peer: int = attrs.field(default=256, validator=_positive)
    #: Open multiplexed streams per peer and direction (memory: streams x stream_window).
    max_streams_per_peer: int = attrs.field(default=256, validator=_positive)
    #: Flow-control window of each stream, in bytes.
    stream_window: int = attrs.field(
        default=256 * 1024, validator=[v.ge(64 * 1024), v.le(2**31 - 1)]
    )
    #: Inbound requests per second accepted from one peer (token bucket; bursts up to 2x).
    max_request_rate: float = attrs.field(default=1000.0, validator=[_positive, v.le(1e6)])
    #: Largest frame payload accepted; stream data travels in 64 KiB chunks, so at least 128 KiB.
    max_frame_size: int = attrs.field(
        default=4 * 1024 * 1024, validator=[v.ge(128 * 1024), v.le(2**32 - 1)]
    )
    handshake_timeout: float = attrs.field(default=10.0, validator=_seconds)
    idle_timeout: float = attrs.field(default=300.0, validator=_seconds)


@attrs.frozen
class DhtSection:
    """``[dht]``: Kademlia parameters (seed 003 section 2.1) and the put quorum."""

    #: Bucket size and replication factor.
    k: int = attrs.field(default=20, validator=[v.ge(2), v.le(64)])
    #: Parallel RPCs of a lookup.
    alpha: int = attrs.field(default=3, validator=[v.ge(1), v.le(16)])
    #: S/Kademlia disjoint lookup paths (1 = plain Kademlia; more resists adversarial nodes).
    disjoint_paths: int = attrs.field(default=1, validator=[v.ge(1), v.le(8)])
    #: Seconds a lookup waits for one peer before counting it as failed.
    rpc_timeout: float = attrs.field(default=5.0, validator=[_seconds, v.le(120)])
    #: A put returns once this many of the k closest nodes stored the record durably (the other
    #: STOREs go on in the background); 0 waits for all k.
    put_quorum: int = attrs.field(default=3, validator=[v.ge(0), v.le(64)])


@attrs.frozen
class ApiSection:
    """``[api]``: the node's local HTTP API."""

    enabled: bool = True
    #: ``host:port``; keep it on loopback unless something in front of it adds TLS.
    bind: str = attrs.field(default=f"127.0.0.1:{DEFAULT_API_PORT}")
    #: Bearer token file, relative to the data dir; created with 0600 permissions.
    token_file: str = "api.token"

    @bind.validator
    def _check_bind(self, attribute: attrs.Attribute, value: str) -> None:
        try:
            parse_host_port(value)
        except ValueError as exc:
            raise ValueError(f"'{attribute.name}' {exc}") from None


@attrs.frozen
class PluginsSection:
    """``[plugins]``: which plugins run, and one validated table per plugin."""

    enable: list[str] = attrs.Factory(list)
    #: ``[plugins.<name>]`` tables, structured into each plugin's declared config class.
    settings: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class Config:
    """The effective configuration of one node."""

    node: NodeSection = attrs.Factory(NodeSection)
    network: NetworkSection = attrs.Factory(NetworkSection)
    dht: DhtSection = attrs.Factory(DhtSection)
    api: ApiSection = attrs.Factory(ApiSection)
    plugins: PluginsSection = attrs.Factory(PluginsSection)
    #: The file this config was read from, if any.
    path: Path | None = None
    #: Dotted key -> the layer that set it ("default", a file path, "env ZEONE_...", "flag --x").
    sources: dict[str, str] = attrs.field(factory=dict, eq=False, repr=False)

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    @property
    def data_dir(self) -> Path:
        return (self.base_dir / Path(self.node.data_dir).expanduser()).resolve()

    @property
    def key_file(self) -> Path:
        return self.data_dir / "node.key"

    @property
    def token_file(self) -> Path:
        return self.data_dir / self.api.token_file

    def plugin_settings(self, name: str) -> Any:
        return self.plugins.settings.get(name)

    def to_dict(self) -> dict[str, Any]:
        """The config as TOML-ready nested dicts (plugin tables included)."""
        data = _converter.unstructure(attrs.evolve(self, plugins=PluginsSection()))
        data.pop("path", None)
        data.pop("sources", None)
        data["plugins"] = {"enable": list(self.plugins.enable)}
        for name, settings in sorted(self.plugins.settings.items()):
            data["plugins"][name] = _converter.unstructure(settings) if settings else {}
        return data


def parse_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port``; raises ValueError with what was expected."""
    match = re.fullmatch(
        r"\[(?P<v6>[0-9a-fA-F:.]+)\]:(?P<p6>\d+)|(?P<h>[^:\[\]]+):(?P<p>\d+)", text
    )
    if not match:
        raise ValueError(f"expected host:port (e.g. 127.0.0.1:{DEFAULT_API_PORT}), got {text!r}")
    host = match["v6"] or match["h"]
    port = int(match["p6"] or match["p"])
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return host, port


# -- structuring untrusted input -------------------------------------------------------------------


def _strict(kind: type, name: str):
    def hook(value: Any, _type: type) -> Any:
        # bool is an int subclass: a TOML `true` must not pass as a number.
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {name}, got a boolean")
        if kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, kind):
            raise TypeError(f"expected {name}, got {type(value).__name__} {value!r}")
        return value

    return hook


def _container(kind: type, name: str, inner: Any):
    def hook(value: Any, type_: type) -> Any:
        if not isinstance(value, kind):
            raise TypeError(f"expected {name}, got {type(value).__name__} {value!r}")
        return inner(value, type_)

    return hook


def make_converter() -> cattrs.Converter:
    """A cattrs converter that refuses unknown keys and never coerces types silently."""
    conv = cattrs.Converter(forbid_extra_keys=True)
    # cattrs would iterate a string into a list of characters (listen = "tcp://..." becoming
    # ["t", "c", ...]) and report `node = 5` as "not iterable": check the container kind first.
    conv.register_structure_hook_factory(
        lambda t: typing.get_origin(t) is list,
        lambda t, c: _container(list, "a list", cattrs.cols.list_structure_factory(t, c)),
    )
    conv.register_structure_hook_factory(
        attrs.has, lambda t, c: _container(dict, "a table", make_dict_structure_fn(t, c))
    )
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(int, _strict(int, "an integer"))
    conv.register_structure_hook(float, _strict(float, "a number"))
    conv.register_structure_hook(bool, _strict(bool, "true or false"))
    conv.register_structure_hook(Path, lambda value, _t: Path(_strict(str, "a path")(value, str)))
    conv.register_unstructure_hook(Path, str)
    return conv


_converter = make_converter()


def describe_structure_error(exc: BaseException, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten a cattrs error into ``(dotted key, message)`` pairs."""
    problems: list[tuple[str, str]] = []

    def fmt(error: BaseException, type_: type | None) -> str:
        if isinstance(error, cattrs.ForbiddenExtraKeysError):
            return "unknown key(s): " + ", ".join(sorted(error.extra_fields))
        if isinstance(error, KeyError):
            return f"missing required key {error}"
        text = str(error)
        literal = re.match(r"(.+) not in literal typing\.Literal\[(.*)\]$", text)
        if literal:
            return f"expected one of {literal[2]}, got {literal[1]!r}"
        return text

    for line in cattrs.transform_error(exc, path="$", format_exception=fmt):
        message, _, path = line.rpartition(" @ ")
        key = path.removeprefix("$").lstrip(".")
        key = re.sub(r"\[(\d+)\]", r".\1", key)
        # attrs validators name the field in their message ("'port' must be >= 1: 0").
        named = re.match(r"'(\w+)' (.*)", message)
        if named:
            key = f"{key}.{named[1]}" if key else named[1]
            message = named[2]
        if message.startswith("unknown key(s): "):
            for extra in message.removeprefix("unknown key(s): ").split(", "):
                problems.append((_join(prefix, key, extra), "unknown key"))
            continue
        problems.append((_join(prefix, key), message))
    return problems


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def structure(data: Any, cls: type, *, prefix: str = "", sources: Mapping[str, str] | None = None):
    """Structure untrusted ``data`` into ``cls`` or raise one ConfigError listing every problem."""
    try:
        return _converter.structure(data, cls)
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        problems = describe_structure_error(exc, prefix)
        raise ConfigError(_format_problems(problems, sources), problems) from None


def _format_problems(problems: Iterable[tuple[str, str]], sources: Mapping[str, str] | None) -> str:
    lines = []
    for key, message in problems:
        where = _source_of(key, sources or {})
        lines.append(f"{where}: {key or '(top level)'}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _source_of(key: str, sources: Mapping[str, str]) -> str:
    probe = key
    while probe:
        if probe in sources:
            return sources[probe]
        probe = probe.rpartition(".")[0]
    # a whole table (an unknown [section]): the layer that set its values
    for leaf, source in sources.items():
        if leaf.startswith(key + "."):
            return source
    return "config"


# -- layers -------------------------------------------------------------------------------------


@attrs.frozen
class Layer:
    """One source of settings: a nested dict plus the name shown for it in errors and reports."""

    name: str
    data: dict[str, Any]


def defaults_layer() -> Layer:
    return Layer("default", Config().to_dict())


def file_layer(path: Path) -> Layer:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    return Layer(str(path), data)


def env_layer(environ: Mapping[str, str]) -> Layer:
    """``ZEONE_SECTION__KEY=value`` variables (``ZEONE_CONFIG`` selects the file instead)."""
    data: dict[str, Any] = {}
    names: dict[str, str] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG or "__" not in name:
            continue
        parts = [p.lower() for p in name.removeprefix(ENV_PREFIX).split("__")]
        if not all(parts):
            raise ConfigError(f"environment variable {name}: empty key segment")
        _set_nested(data, parts, parse_env_value(raw))
        names[".".join(parts)] = name
    return Layer("env", data) if not names else _EnvLayer("env", data, names)


@attrs.frozen
class _EnvLayer(Layer):
    variables: dict[str, str] = attrs.Factory(dict)


def parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_nested(data: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        node = data.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts)}: {part} is a value, not a table")
        data = node
    data[parts[-1]] = value


def merge_layers(layers: Iterable[Layer]) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge tables recursively (later layers win) and record the source of every leaf."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def walk(dst: dict[str, Any], src: Mapping[str, Any], layer: Layer, prefix: str) -> None:
        for key, value in src.items():
            dotted = _join(prefix, str(key))
            if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
                walk(dst[key], value, layer, dotted)
                continue
            dst[key] = copy.deepcopy(value)
            for leaf in _leaves(value, dotted):
                sources[leaf] = _layer_label(layer, leaf)
            # a replaced table's old leaves no longer come from the old layer
            for stale in [k for k in sources if k.startswith(dotted + ".")]:
                if stale not in _leaves(value, dotted):
                    del sources[stale]

    for layer in layers:
        walk(merged, layer.data, layer, "")
    return merged, sources


def _leaves(value: Any, prefix: str) -> list[str]:
    if isinstance(value, Mapping) and value:
        out: list[str] = []
        for key, item in value.items():
            out.extend(_leaves(item, f"{prefix}.{key}"))
        return out
    return [prefix]


def _layer_label(layer: Layer, leaf: str) -> str:
    if isinstance(layer, _EnvLayer):
        for key, var in layer.variables.items():
            if leaf == key or leaf.startswith(key + "."):
                return f"env {var}"
        return "env"
    return layer.name


# -- loading ------------------------------------------------------------------------------------


def find_config_file(explicit: str | os.PathLike | None, environ: Mapping[str, str]) -> Path | None:
    """``--config``, else ``ZEONE_CONFIG``, else ``./zeone.toml``, else ``~/.zeone/zeone.toml``."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG]).expanduser().absolute()
    for candidate in (Path.cwd() / CONFIG_FILE_NAME, DEFAULT_HOME.expanduser() / CONFIG_FILE_NAME):
        if candidate.is_file():
            return candidate.absolute()
    return None


def load_config(
    path: Path | None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    override_source: Mapping[str, str] | None = None,
    plugin_schemas: Mapping[str, type | None] | None = None,
) -> Config:
    """Build the effective config from all layers and validate it.

    ``overrides`` are CLI flags as dotted keys (``{"plugins.enable": ["hello"]}``) and
    ``override_source`` names the flag behind each (``{"plugins.enable": "flag --enable"}``).
    ``plugin_schemas`` maps installed plugin names to their config class (or None for no settings);
    when it is None, plugin tables are kept as plain dicts (used before plugins are discovered).
    """
    environ = os.environ if environ is None else environ
    layers = [defaults_layer()]
    if path is not None:
        layers.append(file_layer(path))
    layers.append(env_layer(environ))
    flags: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        _set_nested(flags, key.split("."), value)
    layers.append(Layer("flag", flags))
    merged, sources = merge_layers(layers)
    for key in overrides or {}:
        for leaf in list(sources):
            if leaf == key or leaf.startswith(key + "."):
                sources[leaf] = (override_source or {}).get(key, "flag")
    return build_config(merged, sources, path, plugin_schemas)


def build_config(
    data: dict[str, Any],
    sources: dict[str, str],
    path: Path | None,
    plugin_schemas: Mapping[str, type | None] | None,
) -> Config:
    data = dict(data)
    plugins_table = data.pop("plugins", None) or {}
    if not isinstance(plugins_table, dict):
        raise ConfigError(_format_problems([("plugins", "expected a table")], sources))
    plugins_table = dict(plugins_table)
    enable = plugins_table.pop("enable", [])
    kernel = structure({**data, "plugins": {"enable": enable}}, _KernelSections, sources=sources)
    settings: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for name, table in plugins_table.items():
        if not isinstance(table, dict):
            problems.append((f"plugins.{name}", "expected a table of plugin settings"))
            continue
        if plugin_schemas is None:
            settings[name] = table
            continue
        if name not in plugin_schemas:
            installed = ", ".join(sorted(plugin_schemas)) or "none"
            problems.append(
                (f"plugins.{name}", f"no installed plugin named {name!r} (installed: {installed})")
            )
            continue
        schema = plugin_schemas[name]
        if schema is None:
            if table:
                problems.append((f"plugins.{name}", f"plugin {name!r} takes no settings"))
            continue
        try:
            settings[name] = structure(table, schema, prefix=f"plugins.{name}", sources=sources)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if plugin_schemas is not None:
        # Enabled plugins without a table get their defaults (or a clear error for a setting
        # that has none); settings of plugins that are not enabled are not needed.
        for name in kernel.plugins.enable:
            schema = plugin_schemas.get(name)
            if name not in settings and schema is not None:
                try:
                    settings[name] = structure({}, schema, prefix=f"plugins.{name}")
                except ConfigError as exc:
                    problems.extend(exc.problems)
    if problems:
        raise ConfigError(_format_problems(problems, sources))
    return Config(
        node=kernel.node,
        network=kernel.network,
        dht=kernel.dht,
        api=kernel.api,
        plugins=PluginsSection(enable=kernel.plugins.enable, settings=settings),
        path=path,
        sources=sources,
    )


@attrs.frozen
class _KernelPlugins:
    enable: list[str] = attrs.Factory(list)


@attrs.frozen
class _KernelSections:
    node: NodeSection = attrs.Factory(NodeSection)
    network: NetworkSection = attrs.Factory(NetworkSection)
    dht: DhtSection = attrs.Factory(DhtSection)
    api: ApiSection = attrs.Factory(ApiSection)
    plugins: _KernelPlugins = attrs.Factory(_KernelPlugins)


def dump_toml(config: Config) -> str:
    # TOML has no null: an unset optional setting is left out and loads back as its default.
    return tomli_w.dumps(_without_none(config.to_dict()))


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


def unstructure(value: Any) -> Any:
    return _converter.unstructure(value)
