"""Plugin discovery, selection, ordering and isolated hook calls.

Plugins are found through the ``zeone.plugins`` and ``zeone.transports`` entry-point groups (plus
the kernel's own default plugins, which use the very same hooks). Discovery never raises: a plugin
that fails to import or describe itself is recorded as broken with the reason, so ``zeone plugins``
and ``zeone --help`` keep working and only enabling that plugin fails.

A node gets its own :class:`PluginHost` holding one pluggy ``PluginManager`` with only the enabled
plugins (and the plugins they require), registered in dependency order.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import pluggy

from zeone import hookspecs
from zeone.errors import PluginError

log = logging.getLogger(__name__)

#: The plugin API this kernel provides: plugins declare the version they were written against.
#: Same major and a minor no newer than ours is compatible.
KERNEL_API_VERSION = "1.0"
ENTRY_POINT_GROUPS = ("zeone.plugins", "zeone.transports")
HOOK_PREFIX = "zeone_"
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


def _check_name(_instance: Any, _attribute: attrs.Attribute, value: str) -> None:
    if not _NAME.fullmatch(value):
        raise ValueError(f"plugin name {value!r} must match {_NAME.pattern}")


def _check_api(_instance: Any, _attribute: attrs.Attribute, value: str) -> None:
    parse_api_version(value)


@attrs.frozen
class PluginInfo:
    """What a plugin says about itself (returned by ``zeone_plugin_info``)."""

    name: str = attrs.field(validator=_check_name)
    version: str
    #: The kernel plugin API version this plugin was written against, ``"MAJOR.MINOR"``.
    api: str = attrs.field(default=KERNEL_API_VERSION, validator=_check_api)
    #: Names of plugins that must be running before this one starts.
    requires: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    #: If a service of a required plugin crashes, the node stops instead of restarting it.
    required: bool = False
    description: str = ""
    #: attrs class for the ``[plugins.<name>]`` table; its defaults are the plugin's defaults.
    config: type | None = None


def parse_api_version(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)\.(\d+)", text)
    if not match:
        raise ValueError(f"API version must look like '1.0', got {text!r}")
    return int(match[1]), int(match[2])


def api_compatible(needed: str, provided: str = KERNEL_API_VERSION) -> bool:
    need_major, need_minor = parse_api_version(needed)
    have_major, have_minor = parse_api_version(provided)
    return need_major == have_major and need_minor <= have_minor


@attrs.frozen
class DiscoveredPlugin:
    """One installed plugin, loaded or not."""

    name: str
    group: str
    obj: Any = attrs.field(default=None, repr=False, eq=False)
    info: PluginInfo | None = None
    distribution: str | None = None
    error: str | None = None
    builtin: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def version(self) -> str:
        return self.info.version if self.info else "?"


class ZeonePluginManager(pluggy.PluginManager):
    """A PluginManager that also treats every ``zeone_*`` callable as a hook implementation.

    As in pytest, the decorator is optional, and ``check_pending()`` then catches a misspelled hook
    (``zeone_servces``) instead of silently never calling it.
    """

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith(HOOK_PREFIX):
            method = getattr(plugin, name, None)
            if callable(method) and not isinstance(method, type):
                return {}
        return opts


def _describe(obj: Any, name: str, group: str, dist: str | None, builtin: bool) -> DiscoveredPlugin:
    """Validate one plugin object in a throwaway manager and ask it for its PluginInfo."""
    pm = ZeonePluginManager()
    try:
        pm.register(obj, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        return DiscoveredPlugin(name, group, obj, None, dist, f"invalid hook: {exc}", builtin)
    impls = pm.hook.zeone_plugin_info.get_hookimpls()
    if not impls:
        return DiscoveredPlugin(
            name, group, obj, None, dist, "does not implement zeone_plugin_info()", builtin
        )
    try:
        info = impls[0].function()
    except Exception as exc:
        return DiscoveredPlugin(
            name, group, obj, None, dist, f"zeone_plugin_info() failed: {exc!r}", builtin
        )
    if not isinstance(info, PluginInfo):
        error = f"zeone_plugin_info() returned {type(info).__name__}, not PluginInfo"
        return DiscoveredPlugin(name, group, obj, None, dist, error, builtin)
    if info.name != name:
        error = f"entry point is named {name!r} but the plugin calls itself {info.name!r}"
        return DiscoveredPlugin(name, group, obj, info, dist, error, builtin)
    if info.config is not None and not attrs.has(info.config):
        error = "PluginInfo.config must be an attrs class"
        return DiscoveredPlugin(name, group, obj, info, dist, error, builtin)
    return DiscoveredPlugin(name, group, obj, info, dist, None, builtin)


def builtin_plugins() -> list[Any]:
    """The kernel's own features, shipped as default plugins that are always enabled."""
    from zeone.builtins import core

    return [core]


@attrs.frozen
class Catalog:
    """Every plugin this installation knows about, by name."""

    plugins: dict[str, DiscoveredPlugin]

    @classmethod
    def discover(cls, *, entry_points: bool = True, extra: Iterable[Any] = ()) -> Catalog:
        """Find builtins, entry-point plugins and ``extra`` plugin objects (tests)."""
        found: dict[str, DiscoveredPlugin] = {}
        for module in builtin_plugins():
            name = module.__name__.rpartition(".")[2]
            found[name] = _describe(module, name, "builtin", "zeone", True)
        if entry_points:
            for group in ENTRY_POINT_GROUPS:
                for ep in importlib.metadata.entry_points(group=group):
                    dist = ep.dist.name if ep.dist else None
                    if ep.name in found:
                        log.warning("plugin %r from %s ignored: the name is taken", ep.name, dist)
                        continue
                    try:
                        obj = ep.load()
                    except Exception as exc:  # a broken plugin must not break the rest
                        error = f"failed to import {ep.value}: {type(exc).__name__}: {exc}"
                        found[ep.name] = DiscoveredPlugin(ep.name, group, None, None, dist, error)
                        continue
                    found[ep.name] = _describe(obj, ep.name, group, dist, False)
        for obj in extra:
            probe = _describe(obj, "?", "extra", None, False)
            name = probe.info.name if probe.info else getattr(obj, "__name__", repr(obj))
            found[name] = _describe(obj, name, "extra", None, False)
        return cls(found)

    def healthy_plugins(self) -> list[str]:
        """Names of installed (non-builtin) plugins that loaded without error."""
        return sorted(n for n, p in self.plugins.items() if p.ok and not p.builtin)

    @property
    def schemas(self) -> dict[str, type | None]:
        return {n: p.info.config for n, p in self.plugins.items() if p.info and not p.builtin}

    def resolve(self, enable: Sequence[str]) -> list[DiscoveredPlugin]:
        """Enabled plugins plus builtins and dependencies, dependencies first.

        Raises PluginError for an unknown or broken name, a missing dependency, a dependency
        cycle or an incompatible API version.
        """
        installed = sorted(n for n, p in self.plugins.items() if not p.builtin)
        order: list[DiscoveredPlugin] = []
        state: dict[str, str] = {}

        def visit(name: str, wanted_by: str | None) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "visiting":
                raise PluginError(f"plugin dependency cycle through {name!r}")
            plugin = self.plugins.get(name)
            if plugin is None:
                if wanted_by:
                    raise PluginError(
                        f"plugin {wanted_by!r} requires {name!r}, which is not installed"
                    )
                raise PluginError(
                    f"unknown plugin {name!r}; installed: {', '.join(installed) or 'none'}"
                )
            if not plugin.ok:
                raise PluginError(f"plugin {name!r} is broken: {plugin.error}")
            assert plugin.info is not None
            if not api_compatible(plugin.info.api):
                raise PluginError(
                    f"plugin {name!r} {plugin.info.version} needs kernel plugin API "
                    f"{plugin.info.api}, this kernel provides {KERNEL_API_VERSION}"
                )
            state[name] = "visiting"
            for dep in plugin.info.requires:
                visit(dep, name)
            state[name] = "done"
            order.append(plugin)

        for name in sorted(n for n, p in self.plugins.items() if p.builtin and p.ok):
            visit(name, None)
        for name in enable:
            visit(name, None)
        return order


@attrs.frozen
class LoadedPlugin:
    name: str
    info: PluginInfo
    obj: Any = attrs.field(repr=False)


class PluginHost:
    """The plugins of one node: one PluginManager, registered in start order."""

    def __init__(self, catalog: Catalog, enable: Sequence[str]) -> None:
        self.catalog = catalog
        self.pm = ZeonePluginManager()
        self.plugins: list[LoadedPlugin] = []
        for plugin in catalog.resolve(enable):
            assert plugin.info is not None
            self.pm.register(plugin.obj, name=plugin.name)
            self.plugins.append(LoadedPlugin(plugin.name, plugin.info, plugin.obj))
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {exc.plugin!r}: {exc}") from None
        self._index = {p.name: i for i, p in enumerate(self.plugins)}

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.plugins]

    def get(self, name: str) -> LoadedPlugin | None:
        index = self._index.get(name)
        return None if index is None else self.plugins[index]

    def call(
        self, hook: str, *, isolate: bool = False, **kwargs: Any
    ) -> list[tuple[LoadedPlugin, Any]]:
        """Call ``hook`` on each plugin in start order; a failure names the plugin.

        Implementations receive only the arguments they declare. Results of None are skipped.
        With ``isolate``, a failing implementation is logged and contributes
        ``{"error": "..."}`` instead of failing the whole call (for read-only hooks such as
        status, where one broken plugin must not hide everyone else's answer).
        """
        results = []
        for impl in self._impls(hook):
            plugin = self.plugins[self._index[impl.plugin_name]]
            try:
                result = impl.function(*(kwargs[arg] for arg in impl.argnames))
            except PluginError:
                raise
            except Exception as exc:
                if isolate:
                    log.error("plugin %r failed in %s()", plugin.name, hook, exc_info=exc)
                    results.append((plugin, {"error": f"{type(exc).__name__}: {exc}"}))
                    continue
                raise PluginError(f"plugin {plugin.name!r} failed in {hook}(): {exc!r}") from exc
            if result is not None:
                results.append((plugin, result))
        return results

    def _impls(self, hook: str) -> list[pluggy.HookImpl]:
        impls = getattr(self.pm.hook, hook).get_hookimpls()
        return sorted(impls, key=lambda impl: self._index[impl.plugin_name])

    def registrar(self, hook: str, add: Callable[..., None], **kwargs: Any) -> None:
        """Call a ``register(...)``-style hook, attributing each registration to its plugin."""
        for impl in self._impls(hook):
            plugin = self.plugins[self._index[impl.plugin_name]]

            def register(*args: Any, _plugin: LoadedPlugin = plugin, **kw: Any) -> None:
                add(_plugin, *args, **kw)

            args = {"register": register, **kwargs}
            try:
                impl.function(*(args[arg] for arg in impl.argnames))
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(f"plugin {plugin.name!r} failed in {hook}(): {exc!r}") from exc


def plugin_table(
    catalog: Catalog, enabled: Mapping[str, bool] | None = None
) -> list[dict[str, Any]]:
    """Rows describing installed plugins, for ``zeone plugins`` and ``/plugins``."""
    rows = []
    for name, plugin in sorted(catalog.plugins.items()):
        info = plugin.info
        rows.append(
            {
                "name": name,
                "version": plugin.version,
                "kind": "builtin" if plugin.builtin else plugin.group.removeprefix("zeone."),
                "distribution": plugin.distribution,
                "api": info.api if info else None,
                "requires": list(info.requires) if info else [],
                "description": info.description if info else "",
                "status": "ok" if plugin.ok else "broken",
                "error": plugin.error,
                **({"enabled": enabled.get(name, False)} if enabled is not None else {}),
            }
        )
    return rows
