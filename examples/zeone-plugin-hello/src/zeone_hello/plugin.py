"""The hello plugin: peers greet each other over ``/zeone/hello/1``.

Each node answers a greeting request with its configured greeting, remembers the greetings it
received, and -- if ``interval`` is set -- greets every connected peer periodically.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import attrs
import click
import trio
from attrs import validators as v
from prometheus_client import CollectorRegistry, Counter
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse

from zeone import PluginInfo, RemoteError, Request, hookimpl
from zeone_hello import __version__

PROTOCOL = "/zeone/hello/1"
MAX_NAME = 64
KEEP_GREETINGS = 100


@attrs.frozen
class HelloConfig:
    """``[plugins.hello]``."""

    greeting: str = attrs.field(default="hello", validator=[v.min_len(1), v.max_len(100)])
    interval: float = attrs.field(default=0.0, validator=v.ge(0))


@attrs.define
class HelloState:
    """Per-node state; kept on the node so several in-process nodes don't share it."""

    received: collections.deque[dict[str, Any]] = attrs.Factory(
        lambda: collections.deque(maxlen=KEEP_GREETINGS)
    )
    counter: Counter | None = None


def state(node: Any) -> HelloState:
    return node.plugin_state.setdefault("hello", HelloState())


@hookimpl
def zeone_plugin_info() -> PluginInfo:
    return PluginInfo(
        name="hello",
        version=__version__,
        api="1.0",
        description="Example plugin: peers greet each other.",
        config=HelloConfig,
    )


@hookimpl
def zeone_register_protocols(register: Any, node: Any) -> None:
    config: HelloConfig = node.plugin_config("hello")

    async def greet(request: Request) -> dict[str, Any]:
        name = request.payload.get("name") if isinstance(request.payload, dict) else None
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise RemoteError("bad-request", f"send {{'name': <1-{MAX_NAME} characters>}}")
        hello = state(node)
        hello.received.append({"from": str(request.peer), "name": name, "at": time.time()})
        if hello.counter is not None:
            hello.counter.inc()
        return {"greeting": f"{config.greeting}, {name}", "node_id": str(node.node_id)}

    register(PROTOCOL, greet)


@attrs.define(eq=False)
class Greeter:
    """Greets every connected peer every ``interval`` seconds."""

    node: Any
    interval: float
    name: str = "greeter"
    sent: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            for peer in list(self.node.network.connections):
                try:
                    await self.node.rpc.request(
                        peer, PROTOCOL, {"name": self.node.node_id.short()}, timeout=5
                    )
                    self.sent += 1
                except Exception:  # a peer without the plugin, or gone: try again next round
                    continue


@hookimpl
def zeone_services(node: Any) -> list[Greeter]:
    config: HelloConfig = node.plugin_config("hello")
    return [Greeter(node, config.interval)] if config.interval > 0 else []


@hookimpl
def zeone_register_routes(register: Any, node: Any) -> None:
    async def greetings(_request: HttpRequest) -> JSONResponse:
        return JSONResponse({"greetings": list(state(node).received)})

    async def greet_peer(request: HttpRequest) -> JSONResponse:
        peer = request.query_params.get("peer", "")
        try:
            answer = await node.rpc.request(peer, PROTOCOL, {"name": node.node_id.short()})
        except Exception as exc:
            return JSONResponse({"error": str(exc)}, status_code=502)
        return JSONResponse(answer)

    register("/hello/greetings", greetings)
    register("/hello/greet", greet_peer, methods=["POST"])


@hookimpl
def zeone_register_metrics(registry: CollectorRegistry, node: Any) -> None:
    state(node).counter = Counter(
        "zeone_hello_greetings_received", "Greetings this node answered.", registry=registry
    )


@hookimpl
def zeone_node_status(node: Any) -> dict[str, Any]:
    return {"greetings_received": len(state(node).received)}


@hookimpl
def zeone_register_commands(cli: click.Group) -> None:
    from zeone.cli import CliState, print_json, print_rows

    @cli.group()
    def hello() -> None:
        """Greet peers (example plugin)."""

    @hello.command()
    @click.argument("peer")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def greet(state_: CliState, peer: str, as_json: bool) -> None:
        """Ask the running node to greet PEER (a node id or <id>@<address>)."""
        from urllib.parse import quote

        answer = state_.client().post_json(f"/hello/greet?peer={quote(peer)}")
        if as_json:
            print_json(answer)
        else:
            click.echo(f"{answer['node_id'][:8]} says: {answer['greeting']}")

    @hello.command()
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def greetings(state_: CliState, as_json: bool) -> None:
        """Greetings the running node has received."""
        rows = state_.client().get_json("/hello/greetings")["greetings"]
        if as_json:
            print_json(rows)
        else:
            print_rows("greetings", rows, ["from", "name", "at"])
