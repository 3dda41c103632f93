"""The HTTP gateway: `GET|HEAD /cdn/<id>[/<path>]` on the node's local API.

Responses carry `ETag` (the content id; `<id>.<entry index>` for a file of a directory),
`Accept-Ranges`, an immutable `Cache-Control` and the manifest's media type; `Range`,
`If-Range`, `If-None-Match` and `If-Match` follow `ranges.py`. Bodies are produced by
`Cdn.stream` in a producer task and sent by `VerifiedBody`, which aborts the connection (instead
of ending the body) if a chunk cannot be obtained mid-response, so a client never mistakes a
partial body for the content: the `Content-Length` it was promised is not met and the
connection is cut.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from zeone.content import ContentError, ContentId, ContentNotFound, Entry, Manifest, check_path
from zeone_cdn.cache import Cdn, NotAvailable
from zeone_cdn.ranges import (
    ByteRange,
    RangeOutcome,
    if_match_fails,
    if_range_allows,
    none_match,
    parse_range,
)

log = logging.getLogger(__name__)

CACHE_CONTROL = "public, max-age=31536000, immutable"
PIPE_BLOCKS = 1


class TransferAborted(Exception):
    """Raised out of the ASGI app after the response started: hypercorn then cuts the
    connection, so the client sees a short body, never a clean end."""


class VerifiedBody(Response):
    """A response whose body comes from `Cdn.stream`, with read-ahead and disconnect handling."""

    def __init__(
        self,
        cdn: Cdn,
        manifest: Manifest,
        start: int,
        length: int,
        *,
        status_code: int,
        headers: dict[str, str],
        head: bool,
    ) -> None:
        self.cdn = cdn
        self.manifest = manifest
        self.start = start
        self.length = length
        self.head = head
        super().__init__(status_code=status_code, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.head or self.length == 0:
            await self._start(send)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        failure: list[BaseException] = []
        async with trio.open_nursery() as nursery:
            blocks_in, blocks_out = trio.open_memory_channel[bytes](PIPE_BLOCKS)

            async def produce() -> None:
                async with blocks_in:
                    try:
                        await self.cdn.stream(
                            self.manifest, self.start, self.length, blocks_in.send
                        )
                    except (ContentError, OSError) as exc:
                        failure.append(exc)

            async def watch_disconnect() -> None:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(produce)
            nursery.start_soon(watch_disconnect)
            sent = 0
            async with blocks_out:
                # The status line waits for the first verified block: if not even that can be
                # had, the client gets a clean 502 instead of a cut 200.
                try:
                    first: bytes | None = await blocks_out.receive()
                except trio.EndOfChannel:
                    first = None
                if first is None and failure:
                    self.cdn.stats.aborted += 1
                    await _error(502, f"content unavailable: {failure[0]}")(scope, receive, send)
                    nursery.cancel_scope.cancel()
                    return
                await self._start(send)
                block = first
                while block is not None:
                    await send({"type": "http.response.body", "body": block, "more_body": True})
                    sent += len(block)
                    self.cdn.stats.bytes_served += len(block)
                    try:
                        block = await blocks_out.receive()
                    except trio.EndOfChannel:
                        block = None
            if failure or sent != self.length:
                self.cdn.stats.aborted += 1
                reason = failure[0] if failure else f"{sent} of {self.length} bytes"
                log.warning(
                    "aborting %s after %d bytes: %s", self.manifest.content_id, sent, reason
                )
                raise TransferAborted(str(reason))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel()

    async def _start(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _listing(cid: ContentId, manifest: Manifest, prefix: str) -> Response:
    entries = [
        {"path": e.path, "size": e.size, "type": e.media_type}
        for e in manifest.entries
        if e.path.startswith(prefix)
    ]
    if prefix and not entries:
        return _error(404, f"no entry {prefix.rstrip('/')!r} in {cid}")
    body = {"id": str(cid), "name": manifest.name, "size": manifest.size, "entries": entries}
    return Response(
        json.dumps(body, indent=1),
        media_type="application/json",
        headers={"ETag": f'"{cid}.list"', "Cache-Control": CACHE_CONTROL},
    )


async def serve(cdn: Cdn, request: Request) -> Response:
    """`GET|HEAD /cdn/{cid}` and `/cdn/{cid}/{path:path}`."""
    try:
        cid = ContentId.parse(request.path_params["cid"])
    except ContentError as exc:
        return _error(400, f"bad content id: {exc}")
    path: str = request.path_params.get("path", "")
    raw_path = request.scope.get("raw_path", b"") or b""
    if b"/../" in raw_path + b"/" or b"/./" in raw_path + b"/" or b"\\" in raw_path:
        return _error(400, "path traversal is not allowed")
    directory_prefix = ""
    if path:
        bare = path.rstrip("/")
        try:
            check_path(bare)
        except ContentError as exc:
            return _error(400, f"bad path: {exc}")
        if path.endswith("/"):
            directory_prefix = bare + "/"
    if not path and none_match(request.headers.get("if-none-match"), str(cid)):
        # The id names immutable bytes: a client holding that tag is current, held here or not.
        headers = {"ETag": f'"{cid}"', "Cache-Control": CACHE_CONTROL, "Accept-Ranges": "bytes"}
        return Response(status_code=304, headers=headers)
    try:
        manifest = await cdn.resolve(cid)
    except NotAvailable as exc:
        return _error(502 if exc.holders else 404, str(exc))
    except ContentError as exc:
        return _error(502, str(exc))

    entry: Entry | None = None
    etag = str(cid)
    if path and not directory_prefix:
        if not manifest.is_directory:
            return _error(404, f"{cid} is a file, not a directory")
        try:
            entry = manifest.entry(path)
        except ContentNotFound:
            if any(e.path.startswith(path + "/") for e in manifest.entries):
                directory_prefix = path + "/"
            else:
                return _error(404, f"no entry {path!r} in {cid}")
        except ContentError as exc:
            return _error(400, f"bad path: {exc}")
    if directory_prefix or (not path and manifest.is_directory):
        index = f"{directory_prefix}index.html"
        try:
            entry = manifest.entry(index)
        except ContentError:
            return _listing(cid, manifest, directory_prefix)
    if entry is not None:
        etag = f"{cid}.{manifest.entries.index(entry)}"
        base, size, media_type = entry.offset, entry.size, entry.media_type
    else:
        base, size, media_type = 0, manifest.size, manifest.media_type

    headers = {
        "ETag": f'"{etag}"',
        "Cache-Control": CACHE_CONTROL,
        "Accept-Ranges": "bytes",
        "Content-Type": media_type,
        "X-Content-Type-Options": "nosniff",
    }
    if if_match_fails(request.headers.get("if-match"), etag):
        return Response(status_code=412, headers=headers)
    if none_match(request.headers.get("if-none-match"), etag):
        del headers["Content-Type"]
        return Response(status_code=304, headers=headers)

    status, start, length = 200, 0, size
    range_header = request.headers.get("range")
    if range_header is not None and if_range_allows(request.headers.get("if-range"), etag):
        outcome = parse_range(range_header, size)
        if outcome is RangeOutcome.UNSATISFIABLE:
            headers["Content-Range"] = f"bytes */{size}"
            del headers["Content-Type"]
            return Response(status_code=416, headers=headers)
        if isinstance(outcome, ByteRange):
            status, start, length = 206, outcome.start, outcome.length
            headers["Content-Range"] = outcome.content_range()
    headers["Content-Length"] = str(length)
    head = request.method == "HEAD"
    if not head:
        cdn.stats.requests += 1
        client = request.client.host if request.client else "local"
        cdn.hit(cid, f"http:{client}")
    return VerifiedBody(
        cdn, manifest, base + start, length, status_code=status, headers=headers, head=head
    )


def status_of(cdn: Cdn) -> dict[str, Any]:
    import attrs

    return {
        **attrs.asdict(cdn.stats),
        "active_transfers": sum(cdn.active.values()),
        "bad_peers": len(cdn.bad_peers),
        "max_bytes": cdn.config.max_bytes,
    }
