"""The `ws` and `wss` transports: ZEONE's Noise channel inside a WebSocket on a secret path.

`ws://host:port/<secret>` is plain HTTP (put it behind a TLS-terminating reverse proxy and
announce `wss://...` via `public_address`); `wss://` makes the dialer speak TLS, and the listener
too when `tls_cert`/`tls_key` are set. Listening without a path in the address uses the configured
(or generated) secret path; the bound address reported to the node includes it, so peers learn a
dialable URL.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import attrs
import trio

from zeone.net.transport import (
    Address,
    DialError,
    Handler,
    ListenError,
    Transport,
    parse_address,
    serve_connection,
)
from zeone_http.client import open_websocket
from zeone_http.config import SECRET_PATH_RE
from zeone_http.handshake import ClientHello, HandshakeError
from zeone_http.server import HttpFront, ServerLimits
from zeone_http.site import Site
from zeone_http.wsstream import WebSocketStream

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"ws": 80, "wss": 443}


@attrs.frozen
class HttpSettings:
    """What both transports need, resolved from `[plugins.http]` and the node's directories."""

    secret_path: Callable[[], str]
    site: Site = attrs.Factory(Site)
    limits: ServerLimits = attrs.Factory(ServerLimits)
    public_address: str = ""
    host_header: str = ""
    origin: str = ""
    user_agent: str | None = None
    server_header: str = "nginx"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca_file: Path | None = None
    tls_verify: bool = True


class _WebSocketTransport(Transport):
    tls: ClassVar[bool] = False

    def __init__(self, settings: HttpSettings) -> None:
        self.settings = settings
        self._client_context: ssl.SSLContext | None = None
        self._server_context: ssl.SSLContext | None = None

    # -- dialing ------------------------------------------------------------------------------

    async def dial(self, address: Address) -> trio.abc.Stream:
        self.check_address(address)
        if not address.host:
            raise DialError(address, "a ws/wss address needs a host")
        if not address.path.startswith("/"):
            raise DialError(address, "a ws/wss address needs the server's secret path")
        port = address.port if address.port is not None else DEFAULT_PORTS[self.scheme]
        if port == 0:
            raise DialError(address, "port 0 cannot be dialed")
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(address.host, port)
        except OSError as exc:
            raise DialError(address, exc.strerror or str(exc)) from exc
        try:
            if self.tls:
                stream = trio.SSLStream(
                    stream,
                    self._client_ssl(),
                    server_hostname=self.settings.host_header.split(":")[0] or address.host,
                    https_compatible=True,
                )
                await stream.do_handshake()
            return await open_websocket(stream, self._hello(address, port))
        except HandshakeError as exc:
            await trio.aclose_forcefully(stream)
            raise DialError(address, str(exc)) from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            await trio.aclose_forcefully(stream)
            cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
            raise DialError(address, f"connection failed during the upgrade: {cause!r}") from exc
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise

    def _hello(self, address: Address, port: int) -> ClientHello:
        host = self.settings.host_header
        if not host:
            host = f"[{address.host}]" if ":" in address.host else address.host
            if port != DEFAULT_PORTS[self.scheme]:
                host = f"{host}:{port}"
        origin = self.settings.origin or f"{'https' if self.tls else 'http'}://{host}"
        kwargs = {"user_agent": self.settings.user_agent} if self.settings.user_agent else {}
        return ClientHello(path=address.path, host=host, origin=origin, **kwargs)

    def _client_ssl(self) -> ssl.SSLContext:
        if self._client_context is None:
            context = ssl.create_default_context()
            if self.settings.tls_ca_file is not None:
                context.load_verify_locations(cafile=str(self.settings.tls_ca_file))
            if not self.settings.tls_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(["http/1.1"])
            self._client_context = context
        return self._client_context

    # -- listening ----------------------------------------------------------------------------

    async def listen(
        self,
        address: Address,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.check_address(address)
        if address.port is None:
            raise ListenError(address, "a ws/wss listen address needs a port (0 picks one)")
        try:
            secret = address.path if address.path not in ("", "/") else self.settings.secret_path()
        except (OSError, ValueError) as exc:
            raise ListenError(address, f"no secret path: {exc}") from exc
        if not SECRET_PATH_RE.fullmatch(secret):
            raise ListenError(address, f"secret path {secret!r} has characters a URL would escape")
        server_context = self._server_ssl(address) if self.tls else None
        try:
            listeners = await trio.open_tcp_listeners(address.port, host=address.host or None)
        except OSError as exc:
            raise ListenError(address, exc.strerror or str(exc)) from exc
        sockname = listeners[0].socket.getsockname()
        bound = Address.build(self.scheme, sockname[0], sockname[1], secret)
        front = HttpFront(
            self.settings.site, secret, self.settings.limits, self.settings.server_header
        )

        async def on_websocket(ws: WebSocketStream) -> None:
            await serve_connection(handler, ws, bound)

        async def handle(tcp: trio.SocketStream) -> None:
            stream: trio.abc.Stream = tcp
            if server_context is not None:
                stream = trio.SSLStream(tcp, server_context, server_side=True)
            try:
                await front.serve(stream, on_websocket)
            except Exception:
                log.exception("HTTP connection on %s failed", bound)
            finally:
                await trio.aclose_forcefully(stream)

        announced = bound
        if self.settings.public_address:
            announced = parse_address(self.settings.public_address)
        log.info("WebSocket endpoint %s (announced as %s)", bound, announced)
        task_status.started(announced)
        await trio.serve_listeners(handle, listeners)

    def _server_ssl(self, address: Address) -> ssl.SSLContext:
        if self._server_context is None:
            cert, key = self.settings.tls_cert, self.settings.tls_key
            if cert is None or key is None:
                raise ListenError(
                    address,
                    "listening on wss:// needs [plugins.http] tls_cert and tls_key; or listen on "
                    "ws:// behind a TLS-terminating proxy and set public_address",
                )
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(str(cert), str(key))
            except (OSError, ssl.SSLError) as exc:
                raise ListenError(address, f"cannot load {cert} / {key}: {exc}") from exc
            context.set_alpn_protocols(["http/1.1"])
            self._server_context = context
        return self._server_context


class WsTransport(_WebSocketTransport):
    """Plain-HTTP WebSocket (`ws://`)."""

    scheme: ClassVar[str] = "ws"


class WssTransport(_WebSocketTransport):
    """WebSocket over TLS (`wss://`)."""

    scheme: ClassVar[str] = "wss"
    tls: ClassVar[bool] = True
