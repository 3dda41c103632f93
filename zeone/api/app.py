"""The Starlette application behind the local API, and the service that serves it with hypercorn."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from zeone.api.auth import BearerAuth
from zeone.api.dht import dht_routes
from zeone.config import parse_host_port
from zeone.errors import ZeoneError
from zeone.net.peers import PeerAddress

if TYPE_CHECKING:
    from zeone.node import Node

log = logging.getLogger(__name__)


def build_app(node: Node, token: str) -> BearerAuth:
    async def status(_request: Request) -> Response:
        return JSONResponse(node.status())

    async def peers(_request: Request) -> Response:
        return JSONResponse({"peers": node.peers()})

    async def plugins(_request: Request) -> Response:
        return JSONResponse({"plugins": node.plugin_rows()})

    async def peer_action(request: Request) -> Response:
        """POST /peers/ping and /peers/connect with ``{"peer": "<id> | <id>@<addr> | <addr>"}``."""
        try:
            body = await request.json()
            peer = body["peer"]
            if not isinstance(peer, str):
                raise TypeError
            target = PeerAddress.parse(peer)
        except (ValueError, KeyError, TypeError):
            return JSONResponse(
                {"error": 'send {"peer": "<node id> or <node id>@<address>"}'},
                status_code=400,
            )
        try:
            with trio.fail_after(node.config.network.handshake_timeout + 5):
                if request.url.path.endswith("/ping"):
                    node_id, rtt = await node.rpc.ping(target)
                    return JSONResponse({"node_id": str(node_id), "rtt_ms": rtt * 1000})
                conn = await node.network.connect(target)
                return JSONResponse(conn.snapshot())
        except (ZeoneError, OSError, trio.TooSlowError) as exc:
            return JSONResponse({"error": str(exc) or "timed out"}, status_code=502)

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(node.metrics), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/status", status),
        Route("/peers", peers),
        Route("/peers/ping", peer_action, methods=["POST"]),
        Route("/peers/connect", peer_action, methods=["POST"]),
        Route("/plugins", plugins),
        Route("/metrics", metrics),
    ]
    routes += dht_routes(node)
    for route in node.routes.routes:
        if route.methods == ("WEBSOCKET",):  # register(path, endpoint, methods=["WEBSOCKET"])
            routes.append(WebSocketRoute(route.path, route.endpoint))
        else:
            routes.append(Route(route.path, route.endpoint, methods=list(route.methods)))
    app = Starlette(routes=routes)
    app.state.node = node
    return BearerAuth(app, token)


@attrs.define(eq=False)
class ApiService:
    """Serves the local API until cancelled; reports the bound URL on start."""

    node: Node
    token: str
    bind: str
    name: str = "api"
    url: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = parse_host_port(self.bind)
        config = HypercornConfig()
        config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("zeone.api.server")
        config.graceful_timeout = 2.0
        shutdown = trio.Event()
        app = build_app(self.node, self.token)
        # The server runs shielded so that cancelling this service starts a graceful shutdown
        # (in-flight requests finish) instead of cutting connections; the deadline bounds it.
        server_scope = trio.CancelScope(shield=True)

        async def serve_shielded(*, task_status: trio.TaskStatus[Any]) -> None:
            with server_scope:
                await serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve_shielded)
            self.url = binds[0]
            log.info("local API on %s", self.url)
            task_status.started(self.url)
            try:
                await trio.sleep_forever()
            finally:
                shutdown.set()
                server_scope.deadline = trio.current_time() + config.graceful_timeout + 1
