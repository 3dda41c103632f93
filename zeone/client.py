"""A small synchronous client for a running node's local API (used by CLI commands).

It finds the node through the config: the runtime file the node writes into its data dir (which
has the real URL even when the API is bound to port 0), else ``[api] bind``; and it reads the
token from the data dir. It speaks plain HTTP/1.1 to loopback, so the standard library is enough.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

from zeone.api.auth import read_token
from zeone.config import Config, parse_host_port
from zeone.errors import ApiUnavailable, ZeoneError
from zeone.node import RUNTIME_FILE


class ApiClient:
    def __init__(self, url: str, token: str, *, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_config(cls, config: Config) -> ApiClient:
        url = None
        runtime = config.data_dir / RUNTIME_FILE
        if runtime.is_file():
            try:
                url = json.loads(runtime.read_text()).get("api_url")
            except (OSError, ValueError):
                url = None
        if not url:
            host, port = parse_host_port(config.api.bind)
            host = f"[{host}]" if ":" in host else host
            url = f"http://{host}:{port}"
        if not config.token_file.exists():
            raise ApiUnavailable(
                f"no node has run with data dir {config.data_dir} (no API token at "
                f"{config.token_file}); start one with `zeone run`"
            )
        try:
            token = read_token(config.token_file)
        except OSError as exc:
            raise ApiUnavailable(f"cannot read API token {config.token_file}: {exc}") from None
        return cls(url, token)

    def get_json(self, path: str) -> Any:
        return json.loads(self.get(path))

    def post_json(self, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else b""
        return json.loads(self.get(path, method="POST", data=data))

    def get(self, path: str, *, method: str = "GET", data: bytes | None = None) -> bytes:
        headers = {"Authorization": f"Bearer {self.token}"}
        if data:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise ZeoneError(f"the node at {self.url} rejected the API token") from None
            detail = _error_detail(exc) or f"HTTP {exc.code} {exc.reason}"
            raise ZeoneError(detail) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiUnavailable(f"no node is running at {self.url} ({reason})") from None


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The ``error`` field of a JSON error body, if the endpoint sent one."""
    try:
        body = json.loads(exc.read(4096))
    except (ValueError, OSError):
        return ""
    return str(body["error"]) if isinstance(body, dict) and "error" in body else ""
