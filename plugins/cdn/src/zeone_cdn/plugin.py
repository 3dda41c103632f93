"""The `cdn` plugin's hooks: content protocol, replica protocol, gateway routes, service, CLI."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import attrs
import click
import trio
from prometheus_client import CollectorRegistry, Gauge
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, RedirectResponse, Response

from zeone import PluginInfo, hookimpl
from zeone.api.auth import COOKIE_NAME
from zeone.content import ContentError, ContentId, register_content_protocol
from zeone.rpc import Request
from zeone_cdn import __version__
from zeone_cdn.cache import Cdn
from zeone_cdn.config import CdnConfig
from zeone_cdn.gateway import serve, status_of
from zeone_cdn.replication import PROTOCOL, Replicator

log = logging.getLogger(__name__)
NAME = "cdn"


@attrs.define
class CdnState:
    cdn: Cdn
    replicator: Replicator


def state(node: Any) -> CdnState:
    """The node's CDN (the store is opened on first use, during node construction)."""
    found = node.plugin_state.get(NAME)
    if found is None:
        config: CdnConfig = node.plugin_config(NAME)
        cdn = Cdn(node, config, node.config.data_dir / "cdn")
        found = node.plugin_state[NAME] = CdnState(cdn, Replicator(cdn))
    return found


@hookimpl
def zeone_plugin_info() -> PluginInfo:
    return PluginInfo(
        name=NAME,
        version=__version__,
        api="1.0",
        description="Verified content distribution with an HTTP gateway and a popularity cache.",
        config=CdnConfig,
    )


@hookimpl
def zeone_register_protocols(register: Any, node: Any) -> None:
    cdn = state(node).cdn

    def counting_register(protocol: str, handler: Any, **kwargs: Any) -> None:
        # Count peers' fetches (one manifest request starts each) towards popularity. When the
        # storage plugin registered the protocol first this is never called and only gateway
        # requests count.
        async def counted(request: Request) -> Any:
            body = request.payload
            if isinstance(body, dict) and body.get("op") == "manifest":
                with contextlib.suppress(ContentError):
                    cdn.hit(ContentId.from_bytes(body.get("cid")), f"peer:{request.peer}")
            return await handler(request)

        register(protocol, counted, **kwargs)

    register_content_protocol(counting_register, node, cdn.store)
    register(PROTOCOL, state(node).replicator.handle)


@attrs.define(eq=False)
class CdnService:
    """Announces held content, syncs the pinned set, scans popularity, runs replica fetches."""

    node: Any
    name: str = "cache"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        current = state(self.node)
        cdn, replicator = current.cdn, current.replicator
        try:
            async with trio.open_nursery() as nursery:
                cdn.attach(nursery)
                nursery.start_soon(replicator.worker)
                nursery.start_soon(cdn.announce_held)
                task_status.started()
                while True:
                    await replicator.sync_pinned()
                    await cdn.enforce_bound()
                    await replicator.scan()
                    await trio.sleep(cdn.config.replicate_interval)
        finally:
            cdn.attach(None)


@hookimpl
def zeone_services(node: Any) -> list[CdnService]:
    return [CdnService(node)]


@hookimpl
def zeone_node_status(node: Any) -> dict[str, Any]:
    cdn = state(node).cdn
    return {
        "served_requests": cdn.stats.requests,
        "served_bytes": cdn.stats.bytes_served,
        "bytes_from_peers": cdn.stats.bytes_from_peers,
        "bad_chunks": cdn.stats.bad_chunks,
        "replicas_fetched": cdn.stats.replicas_fetched,
    }


@hookimpl
def zeone_register_metrics(registry: CollectorRegistry, node: Any) -> None:
    cdn = state(node).cdn
    for field in ("requests", "bytes_served", "bytes_from_peers", "bad_chunks", "evictions"):
        gauge = Gauge(
            f"zeone_cdn_{field}", f"CDN {field.replace('_', ' ')} since start.", registry=registry
        )
        gauge.set_function(lambda field=field: getattr(cdn.stats, field))


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


async def _json(request: HttpRequest) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ValueError("send a JSON object")
    return body


@hookimpl
def zeone_register_routes(register: Any, node: Any) -> None:
    cdn = state(node).cdn

    def gateway_url(cid: ContentId) -> str | None:
        return f"{node.api_url}/cdn/{cid}" if node.api_url else None

    async def publish(request: HttpRequest) -> Response:
        try:
            body = await _json(request)
            path = body.get("path")
            if not isinstance(path, str) or not path:
                raise ValueError("'path' must be a file or directory path")
            options: dict[str, Any] = {}
            for key, kind in (("name", str), ("media_type", str), ("chunk_size", int)):
                if body.get(key) is not None:
                    if type(body[key]) is not kind:
                        raise ValueError(f"'{key}' must be a {kind.__name__}")
                    options[key] = body[key]
            if body.get("pin") is not None:
                if type(body["pin"]) is not bool:
                    raise ValueError("'pin' must be true or false")
                options["pin"] = body["pin"]
        except ValueError as exc:
            return _error(400, str(exc))
        try:
            manifest = await cdn.publish(Path(path), **options)
        except (ContentError, OSError) as exc:
            return _error(400, str(exc))
        cid = manifest.content_id
        return JSONResponse(
            {
                "id": str(cid),
                "url": gateway_url(cid),
                "size": manifest.size,
                "chunks": manifest.chunk_count,
                "type": manifest.media_type,
                "entries": len(manifest.entries),
            }
        )

    async def contents(_request: HttpRequest) -> Response:
        import time

        now = time.time()
        rows = []
        for item in reversed(await cdn.store.list_contents()):
            key = str(item.cid)
            rows.append(
                {
                    "id": key,
                    "size": item.size,
                    "stored": item.stored_bytes,
                    "complete": item.complete,
                    "pinned": item.pinned,
                    "rate_per_hour": round(cdn.popularity.rate_per_hour(key, now), 3),
                    "audience": cdn.popularity.audience(key, now),
                    "score": round(cdn.popularity.score(key, now, item.added), 3),
                }
            )
        return JSONResponse({"contents": rows})

    async def pin(request: HttpRequest) -> Response:
        try:
            cid = ContentId.parse(str((await _json(request)).get("id", "")))
        except (ValueError, ContentError) as exc:
            return _error(400, str(exc))
        want = request.url.path.endswith("/pin")
        if await cdn.store.has_manifest(cid):
            await cdn.store.set_pinned(cid, want)
            if not want:
                await cdn.enforce_bound()
            complete = await cdn.store.has(cid)
            if want and not complete:
                cdn.spawn(cdn.fetch_in_background, cid, True)
            return JSONResponse({"id": str(cid), "pinned": want, "complete": complete})
        if not want:
            return _error(404, f"{cid} is not held here")
        if not cdn.spawn(cdn.fetch_in_background, cid, True):
            return _error(503, "the CDN service is not running")
        return JSONResponse({"id": str(cid), "pinned": True, "complete": False, "fetching": True})

    async def status(_request: HttpRequest) -> Response:
        items = await cdn.store.list_contents()
        return JSONResponse(
            {
                **status_of(cdn),
                "used_bytes": await cdn.store.used_bytes(),
                "contents": len(items),
                "pinned": sum(1 for i in items if i.pinned),
                "complete": sum(1 for i in items if i.complete),
            }
        )

    async def login(request: HttpRequest) -> Response:
        # The kernel let this through only with the right token (header, cookie or ?token=).
        token = request.query_params.get("token") or request.headers.get(
            "authorization", ""
        ).removeprefix("Bearer ")
        target = request.query_params.get("next", "")
        if not target.startswith("/cdn/") or "//" in target or "\\" in target:
            target = "/cdn/api/status"
        response = RedirectResponse(target, status_code=303)
        if token:
            response.set_cookie(
                COOKIE_NAME, token, httponly=True, samesite="strict", path="/", max_age=30 * 86400
            )
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    async def gateway(request: HttpRequest) -> Response:
        return await serve(cdn, request)

    register("/cdn/api/publish", publish, methods=["POST"])
    register("/cdn/api/contents", contents)
    register("/cdn/api/pin", pin, methods=["POST"])
    register("/cdn/api/unpin", pin, methods=["POST"])
    register("/cdn/api/status", status)
    register("/cdn/ui/login", login)
    register("/cdn/{cid}", gateway, methods=["GET", "HEAD"])
    register("/cdn/{cid}/{path:path}", gateway, methods=["GET", "HEAD"])


@hookimpl
def zeone_devnet_configure(
    index: int, count: int, settings: MutableMapping[str, Any], port: Any
) -> None:
    # Small caches and an eager replication threshold so a devnet shows eviction and
    # popularity-driven replication within minutes; the seed (node 0) takes no replicas.
    settings.setdefault("plugins.cdn.max_bytes", 512 * 1024 * 1024)
    settings.setdefault("plugins.cdn.replicate_rate", 20.0)
    settings.setdefault("plugins.cdn.replicate_interval", 15.0)
    settings.setdefault("plugins.cdn.target_replicas", min(3, max(count, 1)))
    if index == 0:
        settings.setdefault("plugins.cdn.accept_replicas", False)


@hookimpl
def zeone_register_commands(cli: click.Group) -> None:
    from zeone_cdn.cli import add_commands

    add_commands(cli)
