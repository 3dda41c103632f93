"""The node: owns the root nursery, starts every service in order and stops them in reverse.

Construction is synchronous and does all the checking (identity, plugins, registrations), so a
misconfigured node fails before it binds a socket. ``run()`` then starts, in order: the local API,
then each plugin's services in dependency order; ``task_status.started()`` is reported once all are
ready. ``stop()`` (or SIGINT/SIGTERM when ``handle_signals`` is set) cancels services one at a time
in reverse start order, each given the remaining part of ``[node] shutdown_timeout``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Gauge, Info

from zeone import __version__
from zeone.api.app import ApiService
from zeone.api.auth import ensure_token
from zeone.api.routes import RouteTable
from zeone.config import Config
from zeone.dht import DHT_SERVER_CAPABILITY, Namespace, Validators
from zeone.dht.service import DhtService
from zeone.errors import ConfigError, PluginError, ZeoneError
from zeone.identity import Identity, NodeId
from zeone.net.manager import ConnectionManager
from zeone.net.transport import TcpTransport, Transport, TransportRegistry
from zeone.plugins import KERNEL_API_VERSION, Catalog, LoadedPlugin, PluginHost, plugin_table
from zeone.replay import ReplayGuard
from zeone.rpc import Handler, Router
from zeone.services import FatalServiceError, Service, Supervised, supervise

log = logging.getLogger(__name__)

RUNTIME_FILE = "node.json"
REPLAY_DB = "replay.sqlite3"


class Node:
    """One ZEONE node. Create it, then ``await node.run()`` inside a Trio task."""

    def __init__(
        self,
        config: Config,
        *,
        catalog: Catalog | None = None,
        identity: Identity | None = None,
        transports: Sequence[Transport] = (),
        handle_signals: bool = False,
        write_runtime_file: bool = True,
    ) -> None:
        self.config = config
        self.catalog = catalog if catalog is not None else Catalog.discover()
        self.handle_signals = handle_signals
        self.write_runtime_file = write_runtime_file
        self.plugins = PluginHost(self.catalog, config.plugins.enable)
        # After the plugins: `zeone --enable typo` says so before asking for `zeone init`.
        self.identity = identity if identity is not None else Identity.load(config.key_file)
        self.router = Router()
        self.routes = RouteTable()
        self.metrics = CollectorRegistry(auto_describe=True)
        self.transports = TransportRegistry([TcpTransport(), *transports])
        self.api_url: str | None = None
        #: Per-node state of plugins, by plugin name (module-level globals would be shared by
        #: every node of an in-process test network).
        self.plugin_state: dict[str, Any] = {}
        self.started = trio.Event()
        self.stopped = trio.Event()
        self._services: list[Supervised] = []
        #: Set once a stop has been requested (by stop(), a signal or a required service's crash).
        self.stopping = trio.Event()
        self._fatal: BaseException | None = None
        self._started_at: float | None = None
        # Created before plugins register, so registration hooks may keep a reference to it.
        self.network = ConnectionManager(
            self.identity,
            config.network,
            self.router,
            self.transports,
            replay=ReplayGuard(config.data_dir / REPLAY_DB),
        )
        self._transport_owners: dict[str, str] = {t: "core" for t in self.transports.schemes()}
        #: DHT record namespaces: the built-in ones, plus those plugins register.
        self.record_validators = Validators.default()
        self._register_everything()
        try:
            config.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"data dir {config.data_dir}: {exc.strerror or exc}") from None
        self.dht_service = DhtService(self, self.record_validators)
        #: ``node.dht.put/get/find_node/provide/find_providers`` (see zeone.dht.Dht).
        self.dht = self.dht_service.dht
        self.network.frame_handlers.update(self.dht_service.frame_handlers())
        self.network.on_connected.append(self.dht_service.on_connected)
        self.network.resolver = self.dht_service.resolve
        if not self.dht_service.client_only:
            self.network.capabilities.append(DHT_SERVER_CAPABILITY)

    # -- identity and config ----------------------------------------------------------------

    @property
    def node_id(self) -> NodeId:
        return self.identity.node_id

    def plugin_config(self, name: str) -> Any:
        """The validated ``[plugins.<name>]`` settings: an instance of the plugin's config class."""
        return self.config.plugin_settings(name)

    # -- registration (synchronous, at construction) ---------------------------------------

    @property
    def rpc(self) -> ConnectionManager:
        """``node.rpc.request(peer, protocol, message, timeout=...)``; ``node.rpc.ping(peer)``."""
        return self.network

    def _register_everything(self) -> None:
        self.plugins.registrar("zeone_register_transports", self._add_transport, node=self)
        self.plugins.registrar("zeone_register_record_namespaces", self._add_namespace, node=self)
        self.plugins.registrar("zeone_register_protocols", self._add_protocol, node=self)
        self.plugins.registrar("zeone_register_routes", self._add_route, node=self)
        for _plugin, _ in self.plugins.call(
            "zeone_register_metrics", registry=self.metrics, node=self
        ):
            pass
        Info("zeone_node", "This node's identity and versions.", registry=self.metrics).info(
            {
                "node_id": str(self.node_id),
                "version": __version__,
                "api": KERNEL_API_VERSION,
                "role": self.config.node.role,
            }
        )
        Gauge(
            "zeone_node_uptime_seconds", "Seconds since the node started.", registry=self.metrics
        ).set_function(self.uptime)

    def _add_namespace(self, plugin: LoadedPlugin, namespace: Namespace) -> None:
        try:
            self.record_validators.register(namespace)
        except ValueError as exc:
            raise PluginError(f"plugin {plugin.name!r}: {exc}") from None

    def _add_transport(self, plugin: LoadedPlugin, transport: Transport) -> None:
        owner = self._transport_owners.get(getattr(transport, "scheme", "").lower())
        if owner is not None:
            raise PluginError(
                f"plugin {plugin.name!r}: transport scheme {transport.scheme!r} is already "
                f"registered by plugin {owner!r}"
            )
        try:
            self.transports.register(transport)
        except ValueError as exc:
            raise PluginError(f"plugin {plugin.name!r}: {exc}") from None
        self._transport_owners[transport.scheme.lower()] = plugin.name

    def _add_protocol(
        self, plugin: LoadedPlugin, protocol: str, handler: Handler, *, stream: bool = False
    ) -> None:
        try:
            if stream:
                self.router.register_stream(protocol, handler, owner=plugin.name)
            else:
                self.router.register(protocol, handler, owner=plugin.name)
        except ValueError as exc:
            raise PluginError(f"plugin {plugin.name!r}: {exc}") from None

    def _add_route(
        self, plugin: LoadedPlugin, path: str, endpoint: Any, methods: Sequence[str] = ("GET",)
    ) -> None:
        try:
            self.routes.add(
                plugin.name, path, endpoint, methods, builtin=plugin.info.name == "core"
            )
        except ValueError as exc:
            raise PluginError(f"plugin {plugin.name!r}: {exc}") from None

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop` (or a signal); re-raises a required service's crash."""
        try:
            async with trio.open_nursery() as nursery:
                if self.handle_signals:
                    nursery.start_soon(self._watch_signals)
                try:
                    interrupted = not await self._start_unless_stopped(nursery)
                except ZeoneError as exc:
                    # Stop what did start, then raise the error itself (not a nursery group).
                    if self._fatal is None:
                        self._fatal = exc
                    interrupted = True
                if not interrupted:
                    self._started_at = time.time()
                    self._write_runtime_file()
                    log.info(
                        "node %s up (%s) with plugins: %s",
                        self.node_id.short(),
                        self.config.node.role,
                        ", ".join(p for p in self.plugins.names if p != "core") or "none",
                    )
                    self.started.set()
                    task_status.started(self)
                    await self.stopping.wait()
                await self._shutdown()
                nursery.cancel_scope.cancel()
        finally:
            self._remove_runtime_file()
            self.stopped.set()
        if self._fatal is not None:
            raise self._fatal

    def stop(self) -> None:
        """Ask the node to shut down gracefully; safe to call from any task, more than once."""
        self.stopping.set()

    async def _start_unless_stopped(self, nursery: trio.Nursery) -> bool:
        """Start every service; False if stop() (or a signal, or a crash) came first.

        A service slow to become ready must not make the node deaf to Ctrl-C: start-up runs in a
        scope that a stop request cancels (a service cancelled before ``started()`` just ends).
        """
        try:
            async with trio.open_nursery() as watcher:

                async def cancel_on_stop() -> None:
                    await self.stopping.wait()
                    watcher.cancel_scope.cancel()

                watcher.start_soon(cancel_on_stop)
                await self._start_services(nursery)
                watcher.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise _single(group) from None
        return not self.stopping.is_set()

    async def _start_services(self, nursery: trio.Nursery) -> None:
        entries: list[tuple[str, Service, bool]] = [
            ("core", self.network, True),
            ("core", self.dht_service, True),
        ]
        if self.config.api.enabled:
            token = ensure_token(self.config.token_file)
            entries.append(("core", ApiService(self, token, self.config.api.bind), True))
        for plugin, services in self.plugins.call("zeone_services", node=self):
            for service in services:
                if not isinstance(service, Service):
                    raise PluginError(
                        f"plugin {plugin.name!r} returned {service!r} from zeone_services(), "
                        "which has no name or no async run(*, task_status)"
                    )
                entries.append((plugin.name, service, plugin.info.required))
        for plugin_name, service, required in entries:
            entry = Supervised(plugin_name, service, required)
            self._services.append(entry)
            await nursery.start(supervise, entry, self._on_fatal)
            if self._fatal is not None:
                raise self._fatal
        api = next((s.service for s in self._services if isinstance(s.service, ApiService)), None)
        self.api_url = api.url if api else None

    def _on_fatal(self, exc: FatalServiceError) -> None:
        if self._fatal is None:
            self._fatal = exc
        self.stop()

    async def _shutdown(self) -> None:
        deadline = trio.current_time() + self.config.node.shutdown_timeout
        log.info("node %s stopping", self.node_id.short())
        for entry in reversed(self._services):
            entry.scope.cancel()
            with trio.move_on_at(deadline) as waiting:
                await entry.done.wait()
            if waiting.cancelled_caught:
                log.error("service %s did not stop within the shutdown timeout", entry.label)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if self.stopping.is_set():
                    log.warning("second %s: exiting immediately", signal.Signals(signum).name)
                    logging.shutdown()
                    os._exit(130)
                log.info("received %s, shutting down", signal.Signals(signum).name)
                self.stop()

    # -- runtime file: lets `zeone status` find a node bound to an ephemeral port ----------

    @property
    def runtime_file(self) -> Path:
        return self.config.data_dir / RUNTIME_FILE

    def _write_runtime_file(self) -> None:
        if not self.write_runtime_file:
            return
        data = {
            "pid": os.getpid(),
            "node_id": str(self.node_id),
            "api_url": self.api_url,
            "listen": list(self.network.listen_addresses),
        }
        tmp = self.runtime_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.runtime_file)

    def _remove_runtime_file(self) -> None:
        if self.write_runtime_file and self._started_at is not None:
            self.runtime_file.unlink(missing_ok=True)

    # -- introspection ----------------------------------------------------------------------

    def uptime(self) -> float:
        return 0.0 if self._started_at is None else time.time() - self._started_at

    def peers(self) -> list[dict[str, Any]]:
        return self.network.peers()

    def plugin_rows(self) -> list[dict[str, Any]]:
        enabled = {name: True for name in self.plugins.names}
        return plugin_table(self.catalog, enabled)

    def status(self) -> dict[str, Any]:
        sections: dict[str, Any] = {}
        for plugin, section in self.plugins.call("zeone_node_status", node=self, isolate=True):
            sections[plugin.name] = section
        return {
            "node_id": str(self.node_id),
            "version": __version__,
            "api_version": KERNEL_API_VERSION,
            "role": self.config.node.role,
            "uptime": round(self.uptime(), 3),
            "pid": os.getpid(),
            "data_dir": str(self.config.data_dir),
            "plugins": [p for p in self.plugins.names if p != "core"],
            "protocols": self.router.protocols(),
            "listen": list(self.network.listen_addresses),
            "network": self.network.statistics(),
            "dht": self.dht_service.statistics(),
            "services": [s.snapshot() for s in self._services],
            "sections": sections,
        }


def _single(group: BaseExceptionGroup) -> BaseException:
    """The one real error inside a nursery's group (the watcher task only ever gets Cancelled)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    real = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
    return real[0] if len(real) == 1 else group


__all__ = ["Node", "ZeoneError"]
