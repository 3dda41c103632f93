"""Routes that plugins add to the local API through ``zeone_register_routes``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs


class RouteRegistrar(Protocol):
    def __call__(
        self, path: str, endpoint: Callable[..., Any], methods: Sequence[str] = ("GET",)
    ) -> None: ...


@attrs.frozen
class PluginRoute:
    path: str
    endpoint: Callable[..., Any] = attrs.field(repr=False)
    methods: tuple[str, ...]
    owner: str


class RouteTable:
    """Collects plugin routes; each plugin owns the ``/<plugin>/`` prefix."""

    def __init__(self) -> None:
        self.routes: list[PluginRoute] = []

    def add(
        self,
        owner: str,
        path: str,
        endpoint: Callable[..., Any],
        methods: Sequence[str] = ("GET",),
        *,
        builtin: bool = False,
    ) -> None:
        if not builtin and not (path == f"/{owner}" or path.startswith(f"/{owner}/")):
            raise ValueError(f"route {path!r} must start with /{owner}/ (the plugin's own prefix)")
        methods = tuple(m.upper() for m in methods)
        if any(r.path == path and set(r.methods) & set(methods) for r in self.routes):
            raise ValueError(f"route {path!r} is already registered")
        self.routes.append(PluginRoute(path, endpoint, methods, owner))
