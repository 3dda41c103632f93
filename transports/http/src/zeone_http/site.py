"""The cover website: what every request that is not our WebSocket upgrade gets.

A static file server with the behaviour people (and scanners) expect from a plain web server:
index files, a redirect for directories without a trailing slash, ETag/Last-Modified with 304s,
405 for methods a static site does not take, and nginx-style error pages. Without a configured
directory it serves a small built-in page. Synchronous and socket-free, so it is tested directly;
the server calls it in a worker thread because it touches the filesystem.
"""

from __future__ import annotations

import email.utils
import hashlib
import mimetypes
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote_to_bytes

import attrs

ALLOWED_METHODS = (b"GET", b"HEAD")

REASONS = {
    200: "OK",
    301: "Moved Permanently",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Not Allowed",
    408: "Request Time-out",
    413: "Request Entity Too Large",
    414: "Request-URI Too Large",
    431: "Request Header Or Cookie Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Temporarily Unavailable",
    505: "HTTP Version Not Supported",
}

_BUILTIN_INDEX = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Field notes</title>
<style>
body { max-width: 42rem; margin: 3rem auto; padding: 0 1rem; font: 17px/1.6 Georgia, serif;
       color: #222; background: #fdfdfb; }
h1 { font-weight: normal; } footer { margin-top: 3rem; color: #777; font-size: 14px; }
</style>
</head>
<body>
<h1>Field notes</h1>
<p>A small place for notes on gardening, bread and the odd bicycle repair. Nothing here changes
very often; the archive moved offline while the site is being rebuilt.</p>
<p>If you were looking for the old recipe pages, they will be back after the move.</p>
<footer>Updated occasionally.</footer>
</body>
</html>
"""

_BUILTIN_ROBOTS = "User-agent: *\nDisallow:\n"
# A fixed modification time keeps the built-in page's validators stable across restarts.
_BUILTIN_MTIME = 1_704_103_200.0


@attrs.frozen
class Reply:
    """One response: status, headers (Server/Date/Connection are the server's), and a body.

    The body is either `body` or the first `length` bytes of `file`. For HEAD the server sends
    the headers only.
    """

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    file: Path | None = None
    length: int = 0

    @property
    def content_length(self) -> int:
        return self.length if self.file is not None else len(self.body)


@attrs.frozen
class _Builtin:
    content: bytes
    content_type: str


_BUILTINS = {
    "/index.html": _Builtin(_BUILTIN_INDEX.encode(), "text/html"),
    "/robots.txt": _Builtin(_BUILTIN_ROBOTS.encode(), "text/plain"),
}


class BadTarget(ValueError):
    """The request target cannot be a path on this site (400)."""


def error_page(status: int, server: str) -> Reply:
    """An nginx-style error page; the footer names the configured server software."""
    title = f"{status} {REASONS.get(status, 'Error')}"
    footer = f"<hr><center>{server}</center>\r\n" if server else ""
    html = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n{footer}</body>\r\n</html>\r\n"
    )
    return Reply(status, (("Content-Type", "text/html"),), html.encode())


def normalize_target(target: bytes) -> tuple[str, bool]:
    """The decoded, dot-segment-free path of a request target and whether it ended with '/'.

    Raises BadTarget for what a web server answers with 400: not origin- or absolute-form, bad
    percent-encoding or UTF-8, NUL bytes, or '..' climbing above the root.
    """
    if target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        after = target.split(b"//", 1)[1]
        slash = after.find(b"/")
        target = after[slash:] if slash >= 0 else b"/"
    if not target.startswith(b"/"):
        raise BadTarget("the request target is not an absolute path")
    raw = target.split(b"?", 1)[0].split(b"#", 1)[0]
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise BadTarget("the request path is not UTF-8") from None
    if "\x00" in text or "\\" in text:
        raise BadTarget("the request path contains NUL or a backslash")
    segments: list[str] = []
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                raise BadTarget("the request path climbs above the root")
            segments.pop()
            continue
        segments.append(segment)
    trailing = text.endswith("/") or text.endswith("/.") or text.endswith("/..")
    return "/" + "/".join(segments), trailing


@attrs.frozen
class Site:
    """Static files under `root`, or the built-in page when `root` is None."""

    root: Path | None = None
    server: str = "nginx"

    def respond(
        self, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> Reply:
        try:
            path, trailing = normalize_target(target)
        except BadTarget:
            return error_page(400, self.server)
        if any(segment.startswith(".") for segment in path.split("/")):
            return error_page(404, self.server)  # dotfiles (.git, .env) never exist here
        if self.root is None:
            return self._builtin(method, path, trailing, headers)
        return self._static(method, path, trailing, headers)

    def _builtin(
        self, method: bytes, path: str, trailing: bool, headers: Sequence[tuple[bytes, bytes]]
    ) -> Reply:
        item = _BUILTINS.get("/index.html" if path == "/" else path)
        if item is None or (trailing and path != "/"):
            return error_page(404, self.server)
        if method not in ALLOWED_METHODS:
            return error_page(405, self.server)
        etag = '"' + hashlib.sha256(item.content).hexdigest()[:16] + '"'
        return self._ok(item.content_type, item.content, None, _BUILTIN_MTIME, etag, headers)

    def _static(
        self, method: bytes, path: str, trailing: bool, headers: Sequence[tuple[bytes, bytes]]
    ) -> Reply:
        assert self.root is not None
        root = self.root.resolve()
        candidate = (root / path.lstrip("/")).resolve() if path != "/" else root
        if candidate != root and root not in candidate.parents:
            return error_page(404, self.server)  # a symlink pointing out of the site
        try:
            info = candidate.stat()
        except (OSError, ValueError):
            return error_page(404, self.server)
        if stat.S_ISDIR(info.st_mode):
            if not trailing and path != "/":
                location = path + "/"
                reply = error_page(301, self.server)
                return attrs.evolve(reply, headers=(*reply.headers, ("Location", location)))
            candidate = candidate / "index.html"
            try:
                info = candidate.stat()
            except OSError:
                return error_page(403, self.server)  # a directory without an index
        elif trailing:
            return error_page(404, self.server)
        if not stat.S_ISREG(info.st_mode):
            return error_page(404, self.server)
        if not os.access(candidate, os.R_OK):
            return error_page(403, self.server)
        if method not in ALLOWED_METHODS:
            return error_page(405, self.server)
        content_type = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
        etag = f'"{int(info.st_mtime):x}-{info.st_size:x}"'
        return self._ok(content_type, None, candidate, info.st_mtime, etag, headers, info.st_size)

    def _ok(
        self,
        content_type: str,
        body: bytes | None,
        file: Path | None,
        mtime: float,
        etag: str,
        request_headers: Sequence[tuple[bytes, bytes]],
        size: int = 0,
    ) -> Reply:
        last_modified = email.utils.formatdate(mtime, usegmt=True)
        validators = (("Last-Modified", last_modified), ("ETag", etag))
        if _not_modified(request_headers, etag, mtime):
            return Reply(304, validators)
        headers = (("Content-Type", content_type), *validators, ("Accept-Ranges", "bytes"))
        if file is not None:
            return Reply(200, headers, file=file, length=size)
        return Reply(200, headers, body=body or b"")


def _not_modified(headers: Sequence[tuple[bytes, bytes]], etag: str, mtime: float) -> bool:
    """RFC 9110 section 13.2.2: If-None-Match wins over If-Modified-Since."""
    values = {name.lower(): value for name, value in headers}
    if b"if-none-match" in values:
        wanted = {v.strip() for v in values[b"if-none-match"].decode("latin-1").split(",")}
        return "*" in wanted or etag in wanted or f"W/{etag}" in wanted
    since = values.get(b"if-modified-since")
    if since is None:
        return False
    try:
        parsed = email.utils.parsedate_to_datetime(since.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return False
    return int(mtime) <= parsed.timestamp()
