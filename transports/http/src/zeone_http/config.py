"""`[plugins.http]` settings, and the secret path generated once and kept in the data dir."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

import attrs
from attrs import validators as v

from zeone.net.transport import parse_address
from zeone_http.handshake import CHROME_USER_AGENT

#: Characters that never need percent-encoding in a path (RFC 3986 unreserved, plus '/').
SECRET_PATH_RE = re.compile(r"/[A-Za-z0-9._~/-]{7,255}")
SECRET_FILE = "http_secret_path"


def _secret_path(_instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if value and not SECRET_PATH_RE.fullmatch(value):
        raise ValueError(
            f"{attribute.name} must be '' (generate one) or '/' followed by 7-255 of "
            f"A-Z a-z 0-9 . _ ~ / -, got {value!r}"
        )


def _public_address(_instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not value:
        return
    address = parse_address(value)
    if address.scheme not in ("ws", "wss") or not address.host or not address.path:
        raise ValueError(
            f"{attribute.name} must be a ws:// or wss:// URL with a host and the secret path, "
            f"e.g. wss://example.org/updates/4f2a9c, got {value!r}"
        )


def _header_value(_instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if any(ch in value for ch in "\r\n\x00"):
        raise ValueError(f"{attribute.name} must not contain CR, LF or NUL")


@attrs.frozen
class HttpConfig:
    """[plugins.http]"""

    #: The WebSocket path; '' generates a random one, kept in <data_dir>/http_secret_path.
    secret_path: str = attrs.field(default="", validator=_secret_path)
    #: Directory of static files served on every other path; '' serves a built-in page.
    site_dir: str = ""
    #: Address announced to peers instead of the bound one (the reverse proxy's public URL).
    public_address: str = attrs.field(default="", validator=_public_address)
    #: Host header when dialing; '' uses the dialed host (and port if not the default).
    host_header: str = attrs.field(default="", validator=_header_value)
    #: Origin header when dialing; '' uses http(s)://<host header>.
    origin: str = attrs.field(default="", validator=_header_value)
    user_agent: str = attrs.field(
        default=CHROME_USER_AGENT, validator=[v.min_len(1), _header_value]
    )
    #: Server header (and error page footer) of the cover site and the 101 response; '' omits it.
    server_header: str = attrs.field(default="nginx", validator=_header_value)
    #: Certificate and key (PEM) for listening on wss:// directly, without a proxy in front.
    tls_cert: str = ""
    tls_key: str = ""
    #: Extra CA bundle (PEM) trusted when dialing wss:// (a self-signed proxy, tests).
    tls_ca_file: str = ""
    #: Verify the server's certificate and host name when dialing wss://.
    tls_verify: bool = True
    header_timeout: float = attrs.field(default=10.0, validator=v.gt(0))
    keepalive_timeout: float = attrs.field(default=30.0, validator=v.gt(0))
    max_header_bytes: int = attrs.field(default=16 * 1024, validator=[v.ge(1024), v.le(1 << 20)])
    max_connections: int = attrs.field(default=256, validator=v.ge(1))


def resolve_path(base: Path, text: str) -> Path | None:
    return (base / Path(text).expanduser()).resolve() if text else None


def load_or_create_secret_path(data_dir: Path) -> str:
    """The persisted secret path, created (0600) on first use so it survives restarts."""
    path = data_dir / SECRET_FILE
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        if not SECRET_PATH_RE.fullmatch(existing):
            raise ValueError(f"{path} holds a malformed secret path {existing!r}; fix or delete it")
        return existing
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = "/" + secrets.token_urlsafe(18)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return load_or_create_secret_path(data_dir)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret
