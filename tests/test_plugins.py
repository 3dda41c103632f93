"""Plugin discovery, ordering, API checks, isolation of broken plugins and attributed hook calls."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from zeone.errors import PluginError
from zeone.hookspecs import hookimpl
from zeone.identity import Identity
from zeone.node import Node
from zeone.plugins import (
    KERNEL_API_VERSION,
    Catalog,
    PluginHost,
    PluginInfo,
    api_compatible,
    plugin_table,
)


def test_real_entry_point_discovery_does_not_raise() -> None:
    catalog = Catalog.discover()
    assert "core" in catalog.plugins
    core = catalog.plugins["core"]
    assert core.ok and core.builtin and core.info is not None
    assert core.info.required
    # whatever is installed, each plugin is either usable or reports why not
    for plugin in catalog.plugins.values():
        assert plugin.ok or plugin.error
    rows = plugin_table(catalog)
    assert any(row["name"] == "core" and row["kind"] == "builtin" for row in rows)


def test_builtins_always_resolve_first(make_plugin, make_catalog) -> None:
    catalog = make_catalog(make_plugin("hello"))
    assert [p.name for p in catalog.resolve([])] == ["core"]
    assert [p.name for p in catalog.resolve(["hello"])] == ["core", "hello"]
    assert "core" not in catalog.schemas  # builtins take no [plugins.core] table


def test_dependencies_start_first(make_plugin, make_catalog) -> None:
    catalog = make_catalog(
        make_plugin("vpn", requires=["settlement", "dht"]),
        make_plugin("settlement", requires=["dht"]),
        make_plugin("dht"),
        make_plugin("forum", requires=["dht"]),
    )
    order = [p.name for p in catalog.resolve(["vpn", "forum"])]
    assert order == ["core", "dht", "settlement", "vpn", "forum"]
    # enabling a dependency explicitly does not start it twice
    order = [p.name for p in catalog.resolve(["forum", "dht", "vpn"])]
    assert order == ["core", "dht", "forum", "settlement", "vpn"]


def test_missing_dependency(make_plugin, make_catalog) -> None:
    catalog = make_catalog(make_plugin("vpn", requires=["settlement"]))
    with pytest.raises(PluginError, match="plugin 'vpn' requires 'settlement', which is not"):
        catalog.resolve(["vpn"])


def test_dependency_cycle(make_plugin, make_catalog) -> None:
    catalog = make_catalog(
        make_plugin("a", requires=["b"]),
        make_plugin("b", requires=["c"]),
        make_plugin("c", requires=["a"]),
    )
    with pytest.raises(PluginError, match="cycle"):
        catalog.resolve(["a"])


def test_unknown_plugin_lists_installed_names(make_plugin, make_catalog) -> None:
    catalog = make_catalog(make_plugin("hello"), make_plugin("forum"))
    with pytest.raises(PluginError) as info:
        catalog.resolve(["vpn"])
    assert str(info.value) == "unknown plugin 'vpn'; installed: forum, hello"
    assert info.value.exit_code == 2


def test_incompatible_api_is_refused(make_plugin, make_catalog) -> None:
    catalog = make_catalog(make_plugin("future", version="3.1", api="2.0"))
    assert catalog.plugins["future"].ok  # installed and listed...
    with pytest.raises(PluginError) as info:  # ...but refused when enabled
        catalog.resolve(["future"])
    assert "'future' 3.1 needs kernel plugin API 2.0" in str(info.value)
    assert f"provides {KERNEL_API_VERSION}" in str(info.value)


@pytest.mark.parametrize(
    ("needed", "ok"),
    [("1.0", True), (KERNEL_API_VERSION, True), ("1.99", False), ("0.9", False), ("2.0", False)],
)
def test_api_compatibility_rule(needed: str, ok: bool) -> None:
    assert api_compatible(needed, "1.0") is ok


def test_malformed_plugin_info_fields_are_rejected() -> None:
    with pytest.raises(ValueError, match="API version"):
        PluginInfo(name="x", version="1", api="one")
    with pytest.raises(ValueError, match="plugin name"):
        PluginInfo(name="Bad Name", version="1")


def test_broken_plugin_is_recorded_and_only_fails_when_enabled(make_plugin, make_catalog) -> None:
    broken = types.ModuleType("broken_plugin")

    def zeone_plugin_info() -> PluginInfo:
        raise RuntimeError("cannot describe myself")

    broken.zeone_plugin_info = zeone_plugin_info
    catalog = make_catalog(broken, make_plugin("hello"))
    entry = catalog.plugins["broken_plugin"]
    assert not entry.ok
    assert "zeone_plugin_info() failed" in entry.error
    assert "cannot describe myself" in entry.error
    assert [p.name for p in catalog.resolve(["hello"])] == ["core", "hello"]
    with pytest.raises(PluginError, match="plugin 'broken_plugin' is broken: zeone_plugin_info"):
        catalog.resolve(["hello", "broken_plugin"])
    rows = {row["name"]: row for row in plugin_table(catalog)}
    assert rows["broken_plugin"]["status"] == "broken"
    assert rows["hello"]["status"] == "ok"


@pytest.mark.parametrize(
    ("attributes", "error"),
    [
        ({}, "does not implement zeone_plugin_info()"),
        ({"zeone_plugin_info": lambda: {"name": "x"}}, "returned dict, not PluginInfo"),
        (
            {"zeone_plugin_info": lambda: PluginInfo(name="other", version="1")},
            "calls itself 'other'",
        ),
        (
            {"zeone_plugin_info": lambda: PluginInfo(name="odd", version="1", config=dict)},
            "must be an attrs class",
        ),
    ],
)
def test_plugins_that_cannot_describe_themselves(attributes: dict, error: str) -> None:
    module = types.ModuleType("odd")
    for key, value in attributes.items():
        setattr(module, key, value)
    # entry-point plugins are described under their entry-point name
    from zeone.plugins import _describe

    described = _describe(module, "odd", "zeone.plugins", "zeone-odd", False)
    assert not described.ok
    assert error in described.error


def test_misspelled_hook_is_caught(make_plugin, make_catalog) -> None:
    def zeone_servces(node):  # sic
        return []

    catalog = make_catalog(make_plugin("typo", zeone_servces=zeone_servces))
    entry = catalog.plugins["typo"]
    assert not entry.ok
    assert entry.error.startswith("invalid hook")
    assert "zeone_servces" in entry.error
    with pytest.raises(PluginError, match="'typo' is broken: invalid hook"):
        catalog.resolve(["typo"])


def test_hook_with_unknown_argument_is_caught(make_plugin, make_catalog) -> None:
    def zeone_services(node, nursery):
        return []

    entry = make_catalog(make_plugin("args", zeone_services=zeone_services)).plugins["args"]
    assert not entry.ok
    assert "invalid hook" in entry.error
    assert "nursery" in entry.error


def test_class_based_plugin_with_decorated_hooks(make_catalog) -> None:
    class Greeter:
        @hookimpl
        def zeone_plugin_info(self) -> PluginInfo:
            return PluginInfo(name="greeter", version="2.0")

        @hookimpl
        def zeone_services(self, node):
            return ["a service", node]

        def helper(self) -> None:  # not a hook: ignored
            pass

    plugins = PluginHost(make_catalog(Greeter()), ["greeter"])
    assert plugins.names == ["core", "greeter"]
    assert plugins.get("greeter").info.version == "2.0"
    assert plugins.get("nope") is None
    results = plugins.call("zeone_services", node="the node")
    assert [(p.name, r) for p, r in results] == [("greeter", ["a service", "the node"])]


def test_call_passes_only_declared_arguments_and_skips_none(make_plugin, make_catalog) -> None:
    seen = []

    def zeone_services():
        seen.append("called")

    def zeone_register_metrics(registry):
        return registry

    plugins = PluginHost(
        make_catalog(
            make_plugin("quiet", zeone_services=zeone_services),
            make_plugin("metered", zeone_register_metrics=zeone_register_metrics),
        ),
        ["quiet", "metered"],
    )
    assert plugins.call("zeone_services", node=object()) == []
    assert seen == ["called"]
    registry = CollectorRegistry()
    results = plugins.call("zeone_register_metrics", registry=registry, node=None)
    assert [(p.name, r) for p, r in results] == [("metered", registry)]


def test_call_isolates_a_failure_naming_the_plugin(make_plugin, make_catalog) -> None:
    def zeone_services(node):
        raise KeyError("boom")

    plugins = PluginHost(
        make_catalog(make_plugin("flaky", zeone_services=zeone_services)), ["flaky"]
    )
    with pytest.raises(PluginError) as info:
        plugins.call("zeone_services", node=None)
    assert "plugin 'flaky' failed in zeone_services()" in str(info.value)
    assert "boom" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)


def test_call_runs_in_start_order(make_plugin, make_catalog) -> None:
    calls: list[str] = []

    def recorder(name: str):
        def zeone_services():
            calls.append(name)

        return zeone_services

    plugins = PluginHost(
        make_catalog(
            make_plugin("zeta", zeone_services=recorder("zeta")),
            make_plugin("alpha", requires=["zeta"], zeone_services=recorder("alpha")),
            make_plugin("beta", zeone_services=recorder("beta")),
        ),
        ["beta", "alpha"],
    )
    assert plugins.names == ["core", "beta", "zeta", "alpha"]
    plugins.call("zeone_services")
    assert calls == ["beta", "zeta", "alpha"]


def test_registrar_attributes_each_registration_to_its_plugin(make_plugin, make_catalog) -> None:
    def transports_of(*schemes: str):
        def zeone_register_transports(register, node):
            for scheme in schemes:
                register(scheme)

        return zeone_register_transports

    plugins = PluginHost(
        make_catalog(
            make_plugin("obfs", zeone_register_transports=transports_of("obfs", "obfs4")),
            make_plugin("ws", zeone_register_transports=transports_of("ws")),
        ),
        ["ws", "obfs"],
    )
    added: list[tuple[str, str]] = []
    plugins.registrar(
        "zeone_register_transports",
        lambda plugin, scheme: added.append((plugin.name, scheme)),
        node=None,
    )
    assert added == [("ws", "ws"), ("obfs", "obfs"), ("obfs", "obfs4")]


def test_registrar_failure_names_the_plugin(make_plugin, make_catalog) -> None:
    def zeone_register_protocols(register):
        register("/zeone/x/1")  # missing the handler

    plugins = PluginHost(
        make_catalog(
            make_plugin("x", zeone_register_protocols=zeone_register_protocols),
        ),
        ["x"],
    )
    with pytest.raises(PluginError, match=r"plugin 'x' failed in zeone_register_protocols\(\)"):
        plugins.registrar("zeone_register_protocols", lambda plugin, proto, handler: None)


async def handler(request):
    return request.payload


def protocols(*ids: str):
    def zeone_register_protocols(register, node):
        for protocol in ids:
            register(protocol, handler)

    return zeone_register_protocols


def test_node_registers_protocols_per_plugin(
    make_plugin, make_catalog, node_config, tmp_path: Path
) -> None:
    catalog = make_catalog(
        make_plugin("forum", zeone_register_protocols=protocols("/zeone/forum/1", "/zeone/forum/2"))
    )
    node = Node(
        node_config(tmp_path, catalog=catalog, enable=["forum"]),
        catalog=catalog,
        identity=Identity.generate(),
    )
    assert node.router.protocols() == [
        "/zeone/core/keepalive/1",
        "/zeone/forum/1",
        "/zeone/forum/2",
    ]
    assert node.router.owner("/zeone/forum/1") == "forum"


def test_duplicate_protocol_error_names_the_other_plugin(
    make_plugin, make_catalog, node_config, tmp_path: Path
) -> None:
    catalog = make_catalog(
        make_plugin("forum", zeone_register_protocols=protocols("/zeone/forum/1")),
        make_plugin("copycat", zeone_register_protocols=protocols("/zeone/forum/1")),
    )
    config = node_config(tmp_path, catalog=catalog, enable=["forum", "copycat"])
    with pytest.raises(PluginError) as info:
        Node(config, catalog=catalog, identity=Identity.generate())
    message = str(info.value)
    assert message.startswith("plugin 'copycat': ")
    assert "/zeone/forum/1 is already registered by plugin 'forum'" in message


def test_bad_protocol_id_names_the_plugin(
    make_plugin, make_catalog, node_config, tmp_path: Path
) -> None:
    catalog = make_catalog(make_plugin("shouty", zeone_register_protocols=protocols("/ZEONE/X")))
    config = node_config(tmp_path, catalog=catalog, enable=["shouty"])
    with pytest.raises(PluginError, match="plugin 'shouty': protocol id '/ZEONE/X' must look"):
        Node(config, catalog=catalog, identity=Identity.generate())


def test_node_refuses_an_unknown_plugin_before_starting(
    make_catalog, node_config, tmp_path: Path
) -> None:
    config = node_config(tmp_path, enable=["vpn"])
    with pytest.raises(PluginError, match="unknown plugin 'vpn'"):
        Node(config, catalog=make_catalog(), identity=Identity.generate())


def test_plugin_config_reaches_the_plugin(
    make_plugin, make_catalog, node_config, tmp_path: Path
) -> None:
    import attrs

    @attrs.frozen
    class GreeterConfig:
        greeting: str = "hello"

    catalog = make_catalog(make_plugin("greeter", config=GreeterConfig))
    config = node_config(
        tmp_path, catalog=catalog, enable=["greeter"], settings={"plugins.greeter.greeting": "hi"}
    )
    node = Node(config, catalog=catalog, identity=Identity.generate())
    assert node.plugin_config("greeter") == GreeterConfig(greeting="hi")
    assert node.plugin_config("core") is None


def test_plugin_commands_are_added_and_failures_reported(make_plugin, make_catalog) -> None:
    import click

    from zeone.cli import add_plugin_commands

    def good(cli):
        @cli.group("hello")
        def hello_group() -> None:
            """Hello commands."""

    def bad(cli):
        raise RuntimeError("no commands today")

    catalog = make_catalog(
        make_plugin("hello", zeone_register_commands=good),
        make_plugin("grumpy", zeone_register_commands=bad),
    )
    group = click.Group("zeone")
    reports: list[str] = []
    add_plugin_commands(group, catalog, reports.append)
    assert "hello" in group.commands
    assert reports == [
        "plugin 'grumpy' failed to add its commands: RuntimeError: no commands today"
    ]
