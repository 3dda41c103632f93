"""The forum's local API routes (`/forum/...`), the web UI and its live-update WebSocket.

The UI is plain HTML/JS served from the package (no build step). Posts are rendered on the node:
markdown-it with raw HTML disabled, then nh3's allow-list sanitizer; the page's strict
Content-Security-Policy (scripts only from the node itself, no inline script, no plugins, no
framing) is a third layer, so hostile markdown or HTML in a post is shown, never executed.

Browsers authenticate with the API token exchanged for an HttpOnly SameSite=Strict cookie at
`/forum/ui/login?token=...` (the kernel accepts the cookie). Because other pages on 127.0.0.1 are
"same-site", requests that rely on the cookie must also come from the node's own origin (checked on
every state-changing request and on the WebSocket handshake); API clients that send the
Authorization header are not affected.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

import nh3
import trio
from markdown_it import MarkdownIt
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from zeone.api.auth import COOKIE_NAME
from zeone.errors import ZeoneError
from zeone.identity import NodeId

if TYPE_CHECKING:
    from zeone_forum.service import Forum

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
ALLOWED_TAGS = {
    "p",
    "br",
    "hr",
    "em",
    "strong",
    "del",
    "s",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "a",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
}

_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(
    ["strikethrough", "table"]
)


def render_markdown(text: str) -> str:
    """Safe HTML for a post: raw HTML stays text, then only an allow-list of tags survives, links
    only to http(s)/mailto with rel=noopener noreferrer nofollow. No images (no tracking pixels)."""
    html = _markdown.render(text)
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes={"a": {"href", "title"}, "th": {"align"}, "td": {"align"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _same_origin(headers: Any, scheme: str) -> bool:
    """True for API clients (Authorization header) and for requests from the UI's own origin."""
    if "authorization" in headers:
        return True
    origin = headers.get("origin")
    host = headers.get("host")
    return bool(origin and host and origin == f"{scheme}://{host}")


def _hex_id(value: Any, what: str) -> bytes:
    if isinstance(value, str) and len(value) == 64:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    raise ValueError(f"{what} must be 64 hex digits")


async def _body(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError:
        raise ValueError("the request body must be JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the request body must be a JSON object")
    return data


def _text(data: dict[str, Any], name: str, default: str | None = None) -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise ValueError(f"{name!r} must be a string")
    return value


def _flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if type(value) is not bool:
        raise ValueError(f"{name!r} must be true or false")
    return value


def register_routes(register: Any, forum: Forum) -> None:
    def guarded(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            if request.method != "GET" and not _same_origin(request.headers, request.url.scheme):
                return _error("cross-origin request refused", 403)
            if forum.store is None:
                return _error("the forum service is not running", 503)
            try:
                return await handler(request)
            except LookupError as exc:
                return _error(str(exc.args[0] if exc.args else exc), 404)
            except (ValueError, TypeError) as exc:
                return _error(str(exc), 400)

        return endpoint

    def with_html(thread: dict[str, Any]) -> dict[str, Any]:
        for message in thread["messages"]:
            message["html"] = render_markdown(message["content"])
        return thread

    async def threads(request: Request) -> Response:
        q = request.query_params
        limit = int(q.get("limit", "50"))
        if not 0 < limit <= 500:
            raise ValueError("limit is 1-500")
        rows = forum.store.list_threads(  # type: ignore[union-attr]
            order=q.get("order", "popular"),
            category=q.get("category"),
            tag=q.get("tag"),
            limit=limit,
        )
        return JSONResponse({"threads": rows})

    async def create_thread(request: Request) -> Response:
        data = await _body(request)
        tags = data.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError("'tags' must be a list of strings")
        thread, post = forum.new_thread(
            _text(data, "title"),
            _text(data, "content"),
            category=_text(data, "category", "general") or "general",
            tags=tuple(tags),
        )
        return JSONResponse({"thread": thread.id.hex(), "post": post.id.hex()}, status_code=201)

    async def read_thread(request: Request) -> Response:
        tid = _hex_id(request.path_params["thread"], "thread id")
        store = forum.store
        assert store is not None
        data = store.thread(tid, reader="local")
        if data is None or not data["held"]:
            await forum.fetch_thread(tid)
            data = store.thread(tid, reader="local")
        if data is None:
            raise LookupError("no such thread")
        return JSONResponse(with_html(data))

    async def reply(request: Request) -> Response:
        tid = _hex_id(request.path_params["thread"], "thread id")
        data = await _body(request)
        parent = data.get("parent")
        record = forum.reply(
            tid,
            _text(data, "content"),
            parent=_hex_id(parent, "parent") if parent is not None else None,
            anonymous=_flag(data, "anonymous"),
        )
        return JSONResponse({"id": record.id.hex()}, status_code=201)

    async def vote(request: Request) -> Response:
        data = await _body(request)
        value = data.get("value", 1)
        if type(value) is not int:
            raise ValueError("'value' is -1, 0 or 1")
        record = forum.vote(
            _hex_id(data.get("target"), "target"),
            value,
            _text(data, "reaction", ""),
            anonymous=_flag(data, "anonymous"),
        )
        return JSONResponse({"id": record.id.hex()}, status_code=201)

    async def delete(request: Request) -> Response:
        data = await _body(request)
        record = forum.delete(_hex_id(data.get("target"), "target"))
        return JSONResponse({"id": record.id.hex()}, status_code=201)

    async def edit(request: Request) -> Response:
        data = await _body(request)
        record = forum.edit(_hex_id(data.get("target"), "target"), _text(data, "content"))
        return JSONResponse({"id": record.id.hex()}, status_code=201)

    async def profile(request: Request) -> Response:
        data = await _body(request)
        record = forum.set_profile(_text(data, "nick"), _text(data, "about", ""))
        return JSONResponse({"id": record.id.hex()}, status_code=201)

    async def search(request: Request) -> Response:
        query = request.query_params.get("q", "")
        if not query.strip():
            raise ValueError("give a query: ?q=words")
        return JSONResponse({"results": forum.store.search(query)})  # type: ignore[union-attr]

    async def sync(request: Request) -> Response:
        data = await _body(request)
        peers = forum.forum_peers()
        if data.get("peer"):
            peers = [NodeId.parse(_text(data, "peer"))]
        results = {}
        for peer in peers:
            try:
                with trio.fail_after(120):
                    results[str(peer)] = await forum.sync_with(peer, reconcile=True)
            except (ZeoneError, OSError, trio.TooSlowError) as exc:
                results[str(peer)] = {"error": str(exc) or "timed out"}
        return JSONResponse({"peers": results})

    async def status(_request: Request) -> Response:
        return JSONResponse(forum.status())

    async def ui(_request: Request) -> Response:
        return _static_response("index.html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return _error("not found", 404)
        return _static_response(name)

    async def login(request: Request) -> Response:
        # The kernel let this request through only with the right token (header or ?token=).
        token = request.query_params.get("token") or request.headers.get(
            "authorization", ""
        ).removeprefix("Bearer ")
        response = RedirectResponse("/forum/ui", status_code=303)
        response.set_cookie(
            COOKIE_NAME, token, httponly=True, samesite="strict", path="/", max_age=30 * 86400
        )
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    async def live(websocket: WebSocket) -> None:
        if not _same_origin(websocket.headers, "http" if websocket.url.scheme == "ws" else "https"):
            await websocket.close(code=1008)
            return
        await websocket.accept()
        send, receive = trio.open_memory_channel[dict[str, Any]](256)
        forum.watchers.add(send)
        try:
            async with trio.open_nursery() as nursery:

                async def drain() -> None:  # notice the browser leaving
                    try:
                        while True:
                            await websocket.receive_text()
                    except (WebSocketDisconnect, RuntimeError):
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(drain)
                async for event in receive:
                    await websocket.send_json(event)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            forum.watchers.discard(send)

    register("/forum/threads", guarded(threads))
    register("/forum/threads", guarded(create_thread), methods=["POST"])
    register("/forum/threads/{thread}", guarded(read_thread))
    register("/forum/threads/{thread}/reply", guarded(reply), methods=["POST"])
    register("/forum/vote", guarded(vote), methods=["POST"])
    register("/forum/delete", guarded(delete), methods=["POST"])
    register("/forum/edit", guarded(edit), methods=["POST"])
    register("/forum/profile", guarded(profile), methods=["POST"])
    register("/forum/search", guarded(search))
    register("/forum/sync", guarded(sync), methods=["POST"])
    register("/forum/status", guarded(status))
    register("/forum/ui", ui)
    register("/forum/ui/login", login)
    register("/forum/ui/static/{name}", static)
    register("/forum/ws", live, methods=["WEBSOCKET"])


def _static_response(name: str) -> Response:
    text = resources.files("zeone_forum").joinpath("static", name).read_bytes()
    return Response(text, media_type=STATIC[name], headers=SECURITY_HEADERS)
