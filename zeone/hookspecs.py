"""The plugin API: every hook a ZEONE plugin can implement.

A plugin is a module (or object) registered through the ``zeone.plugins`` or ``zeone.transports``
entry-point group. It implements hooks by defining functions of the same name decorated with
:data:`zeone.hookimpl`. Hooks are synchronous; work that runs for the node's lifetime is returned as
a :class:`~zeone.services.Service` from :func:`zeone_services`.

Every hook receives only the arguments it names, so an implementation may omit parameters it does
not use (``def zeone_register_routes(register): ...`` is fine).

Contributions go through ``register(...)`` callbacks rather than return values so that one hook can
contribute several things and the kernel can name the plugin in any error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    import prometheus_client

    from zeone.api.routes import RouteRegistrar
    from zeone.dht import Namespace
    from zeone.net.transport import Transport
    from zeone.node import Node
    from zeone.plugins import PluginInfo
    from zeone.rpc import Handler
    from zeone.services import Service

PROJECT_NAME = "zeone"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def zeone_plugin_info() -> PluginInfo:
    """Describe the plugin: name, version, kernel API version, dependencies and config schema.

    Every plugin must implement this hook. The kernel calls it once per plugin at discovery time,
    before anything else, and uses the answer to order start-up (dependencies first), to refuse an
    incompatible API version or a missing dependency with a clear error, and to validate the
    plugin's ``[plugins.<name>]`` config table against ``PluginInfo.config`` (an attrs class whose
    defaults are the plugin's defaults).

    Example::

        @hookimpl
        def zeone_plugin_info():
            return PluginInfo(name="hello", version="1.0", api="1.0", config=HelloConfig)
    """


@hookspec
def zeone_register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``zeone`` command line.

    ``cli`` is the root :class:`click.Group`; add a group named after your plugin and put your
    commands under it (``zeone hello greet``). Called for every *installed* plugin, enabled or not,
    when the CLI starts, so that ``zeone --help`` lists them. Commands that need the running node
    talk to it through :class:`zeone.client.ApiClient`. An exception here is reported with the
    plugin's name and does not break the CLI or other plugins.
    """


@hookspec
def zeone_register_transports(register: Callable[[Transport], None], node: Node) -> None:
    """Register transports (``register(transport)``) that carry the secure channel.

    Each :class:`~zeone.net.transport.Transport` handles one address scheme (``obfs``, ``ws``, ...);
    registering a scheme that is already taken is an error naming both plugins. Transport
    distributions use the ``zeone.transports`` entry-point group; capability plugins may also
    register transports. Read your settings from ``node.plugin_config(<name>)``.
    """


@hookspec
def zeone_register_protocols(register: Callable[[str, Handler], None], node: Node) -> None:
    """Register request handlers with the node's protocol router.

    ``register(protocol_id, handler)`` where ``protocol_id`` is a path-like string
    (``/zeone/hello/1``: the plugin name and a protocol version, so versions can coexist) and
    ``handler`` is ``async def handler(request: zeone.rpc.Request) -> Any``. The handler's return
    value (CBOR-serialisable) is the response; raising :class:`zeone.rpc.RemoteError` sends an
    error the caller sees as ``RemoteError``; any other exception is logged and the caller sees a
    generic internal error. Callers use ``node.rpc.request(peer, protocol_id, body, timeout=...)``.

    ``register(protocol_id, handler, stream=True)`` registers a *stream* handler instead:
    ``async def handler(peer: NodeId, stream) -> None`` gets a multiplexed, flow-controlled
    ``trio.abc.HalfCloseableStream`` opened by the peer with
    ``node.rpc.open_stream(peer, protocol_id)``, for bulk or long-lived exchanges (the stream is
    closed when the handler returns). Registered protocol ids are advertised to peers as
    capabilities. Registering an id twice is an error naming the plugin.
    """


@hookspec
def zeone_register_record_namespaces(register: Callable[[Namespace], None], node: Node) -> None:
    """Register DHT record namespaces and their validators.

    ``register(zeone.dht.Namespace(name=b"forum", validate=check, multi_publisher=False))``
    makes keys ``forum:...`` storable in the DHT. ``validate(record)`` raises
    ``zeone.dht.InvalidRecord(reason)`` for a record no node should keep (bad value format, a
    publisher that may not write this key); signatures, sizes, TTLs and sequence numbers are
    checked by the kernel before it is called. ``multi_publisher=True`` keeps one record per
    publisher under a key (provider-style); otherwise a key is owned by its first publisher and
    newer sequence numbers from that publisher replace older ones. Built in: ``kv:``, ``peer:``,
    ``provider:``, ``service:``. Registering a name twice is an error naming the plugin.
    """


@hookspec
def zeone_register_routes(register: RouteRegistrar, node: Node) -> None:
    """Add HTTP routes to the node's local API.

    ``register(path, endpoint, methods=("GET",))`` where ``endpoint`` is a Starlette endpoint
    (``async def endpoint(request) -> Response``) and ``path`` must start with ``/<plugin name>/``
    (e.g. ``/hello/greetings``) so plugins cannot shadow kernel routes or each other. Routes are
    served behind the same bearer-token check as the kernel's own.
    """


@hookspec
def zeone_register_metrics(registry: prometheus_client.CollectorRegistry, node: Node) -> None:
    """Register Prometheus collectors on the node's registry, exported at ``/metrics``.

    Name metrics ``zeone_<plugin>_<what>_<unit>``. The registry is per node, so several in-process
    nodes (tests, simulations) do not collide.
    """


@hookspec
def zeone_services(node: Node) -> Iterable[Service]:
    """Return the services this plugin runs for the node's lifetime.

    A service is an object with ``name: str`` and
    ``async def run(self, *, task_status=trio.TASK_STATUS_IGNORED)`` that calls
    ``task_status.started()`` once it is ready (listening, loaded) and then runs until cancelled.
    The node starts services with ``nursery.start`` in dependency order of their plugins and stops
    them in reverse order. A service that raises is logged with its plugin's name and restarted
    with exponential backoff, unless the plugin is marked ``required`` in its
    :class:`~zeone.plugins.PluginInfo`, in which case the node stops with an error. Work that must
    not be interrupted half-way (a write being made durable) should run inside
    ``trio.CancelScope(shield=True)``; the node waits for it up to its shutdown timeout.
    """


@hookspec
def zeone_node_status(node: Node) -> dict[str, Any] | None:
    """Contribute a section to ``/status`` and ``zeone status``.

    Return a small JSON-serialisable dict (counters, states) or ``None``. It appears under the
    plugin's name. Called on every status request, so keep it cheap and non-blocking.
    """


@hookspec
def zeone_devnet_configure(
    index: int, count: int, settings: MutableMapping[str, Any], port: Callable[[str], int]
) -> None:
    """Adjust the config of node ``index`` (0 is the seed) of a ``zeone devnet`` of ``count``.

    ``settings`` holds dotted keys that ``zeone init`` applies over the defaults
    (``"network.listen"``, ``"plugins.<name>.<key>"``...); edit it in place so the devnet shows
    your plugin working: make node 1 a VPN exit, give each node its own SOCKS port, make node 2
    reachable only over your transport (``settings["network.listen"] = [...]``). ``port(name)``
    returns a loopback port unique to this node and ``name`` within the devnet, stable across
    runs. Called in plugin order, only for the plugins the devnet enables, before any node
    starts; an exception here is reported with the plugin's name and stops the devnet.
    """
