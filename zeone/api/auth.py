"""Bearer-token protection for the local API.

The token is a random secret kept in the data dir with 0600 permissions; anything on the machine
that can read it can drive the node, nothing else can. Every request without the exact token gets
the same bare 401, whatever the path, so the API reveals nothing (not even which routes exist).
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path
from urllib.parse import parse_qsl

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from zeone.errors import ConfigError

TOKEN_BYTES = 32


def ensure_token(path: Path) -> str:
    """Read the API token, creating it (0600) on first start."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return read_token(path)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token
    return read_token(path)


def read_token(path: Path) -> str:
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{path}: API token file is readable by other users (mode {mode:04o})"
            )
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the API token: {exc}") from None
    if len(token) < 16:
        raise ConfigError(f"{path}: API token file is empty or too short")
    return token


COOKIE_NAME = "zeone_token"
"""Browser UIs carry the token in this HttpOnly, SameSite=Strict cookie (set by a plugin's
``/<plugin>/ui/login`` endpoint), because a page cannot add an Authorization header to navigations
or WebSocket handshakes."""
LOGIN_SUFFIX = "/ui/login"


def _supplied_credentials(scope: Scope) -> bytes:
    """``Bearer <token>`` from the Authorization header; else from the cookie; else, only for a
    ``.../ui/login`` path (the Jupyter-style exchange of the token for the cookie), from the
    ``token`` query parameter."""
    headers = dict(scope.get("headers") or [])
    header = headers.get(b"authorization")
    if header is not None:
        return header
    for part in headers.get(b"cookie", b"").split(b";"):
        name, _, value = part.strip().partition(b"=")
        if name == COOKIE_NAME.encode() and value:
            return b"Bearer " + value
    if str(scope.get("path", "")).endswith(LOGIN_SUFFIX):
        for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
            if key == "token":
                return b"Bearer " + value.encode("latin-1")
    return b""


class BearerAuth:
    """ASGI middleware: only requests carrying ``Authorization: Bearer <token>`` (or the token in
    the UI cookie, or on a ``/ui/login`` URL) get through."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            supplied = _supplied_credentials(scope)
            if not hmac.compare_digest(supplied, self._expected):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                response = PlainTextResponse(
                    "unauthorized\n", status_code=401, headers={"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
