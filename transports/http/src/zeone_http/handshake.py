"""The WebSocket opening handshake as h11 events, sans-IO: what a browser sends, what we accept.

The client's request copies the header set and order that Chrome sends for `new WebSocket(url)`
(HTTP/1.1, no cookies), so the first bytes on the wire are indistinguishable from a page opening
a WebSocket. The server accepts only a well-formed RFC 6455 upgrade on the secret path; anything
else is left to the website, so a probe learns nothing the site would not tell it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os

import attrs
import h11
from wsproto.utilities import generate_accept_token

#: A current stable Chrome on Windows, the most common browser/OS pair.
CHROME_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
#: What Chrome offers on every WebSocket; the server declines it (compressing ciphertext is
#: pointless), which is a legitimate and common answer.
CHROME_EXTENSIONS = "permessage-deflate; client_max_window_bits"
CHROME_ACCEPT_ENCODING = "gzip, deflate, br, zstd"
CHROME_ACCEPT_LANGUAGE = "en-US,en;q=0.9"


class HandshakeError(Exception):
    """The server's answer to our upgrade request is not a valid WebSocket acceptance."""


@attrs.frozen
class ClientHello:
    """Everything the browser-like upgrade request needs."""

    path: str
    host: str
    origin: str
    user_agent: str = CHROME_USER_AGENT
    key: bytes = attrs.field(factory=lambda: base64.b64encode(os.urandom(16)))


def client_request(hello: ClientHello) -> h11.Request:
    """The upgrade request in Chrome's header order (h11 keeps order and casing on the wire)."""
    headers = [
        ("Host", hello.host),
        ("Connection", "Upgrade"),
        ("Pragma", "no-cache"),
        ("Cache-Control", "no-cache"),
        ("User-Agent", hello.user_agent),
        ("Upgrade", "websocket"),
        ("Origin", hello.origin),
        ("Sec-WebSocket-Version", "13"),
        ("Accept-Encoding", CHROME_ACCEPT_ENCODING),
        ("Accept-Language", CHROME_ACCEPT_LANGUAGE),
        ("Sec-WebSocket-Key", hello.key.decode("ascii")),
        ("Sec-WebSocket-Extensions", CHROME_EXTENSIONS),
    ]
    return h11.Request(method="GET", target=hello.path, headers=headers)


def check_acceptance(response: h11.InformationalResponse | h11.Response, key: bytes) -> None:
    """Raise HandshakeError unless `response` accepts our upgrade with the right token."""
    if response.status_code != 101:
        raise HandshakeError(
            f"server answered HTTP {response.status_code} instead of switching to WebSocket "
            "(wrong secret path, or not a ZEONE endpoint)"
        )
    headers = _header_map(response.headers)
    if "websocket" not in _tokens(headers.get(b"upgrade", b"")):
        raise HandshakeError("101 response without 'Upgrade: websocket'")
    if "upgrade" not in _tokens(headers.get(b"connection", b"")):
        raise HandshakeError("101 response without 'Connection: upgrade'")
    accept = headers.get(b"sec-websocket-accept", b"")
    if not hmac.compare_digest(accept, generate_accept_token(key)):
        raise HandshakeError("101 response with a wrong Sec-WebSocket-Accept")
    if headers.get(b"sec-websocket-extensions"):
        raise HandshakeError("server enabled a WebSocket extension we do not speak")


def upgrade_key(request: h11.Request, secret_path: str) -> bytes | None:
    """The Sec-WebSocket-Key of a valid upgrade request to `secret_path`, else None.

    Compares the path in constant time; the query string, if any, is ignored like a browser
    cache-buster would be.
    """
    if request.method != b"GET" or request.http_version != b"1.1":
        return None
    path = request.target.split(b"?", 1)[0]
    if not hmac.compare_digest(path, secret_path.encode("ascii")):
        return None
    headers = _header_map(request.headers)
    if "websocket" not in _tokens(headers.get(b"upgrade", b"")):
        return None
    if "upgrade" not in _tokens(headers.get(b"connection", b"")):
        return None
    if headers.get(b"sec-websocket-version") != b"13":
        return None
    key = headers.get(b"sec-websocket-key", b"")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except (binascii.Error, ValueError):
        return None
    return key


def accept_response(key: bytes, server: str, date: str) -> h11.InformationalResponse:
    """The 101 a typical reverse-proxied app server sends (no extensions, no subprotocol)."""
    headers = [("Server", server)] if server else []
    headers += [
        ("Date", date),
        ("Connection", "upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Accept", generate_accept_token(key).decode("ascii")),
    ]
    return h11.InformationalResponse(
        status_code=101, headers=headers, reason=b"Switching Protocols"
    )


def _header_map(headers: h11.Headers | list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """Lower-case names to values; repeated headers are joined with commas as RFC 9110 allows."""
    out: dict[bytes, bytes] = {}
    for name, value in headers:
        name = name.lower()
        out[name] = out[name] + b", " + value if name in out else value
    return out


def _tokens(value: bytes) -> set[str]:
    return {t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip()}
