"""The `mimic` transport: `mimic://host:port?sni=NAME&pk=SERVER_KEY`.

Dialing opens TCP and runs the client handshake; listening reads each connection's ClientHello,
serves authenticated ZEONE clients and splices everything else to the cover site. The address a
listener reports carries its `sni` and `pk`, so peers learn a dialable address the usual way.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import ClassVar
from urllib.parse import parse_qs, quote

import attrs
import trio

from zeone.net.transport import (
    Address,
    DialError,
    Handler,
    ListenError,
    Transport,
    serve_connection,
)
from zeone_mimic import auth
from zeone_mimic.fallback import FallbackTarget, forward
from zeone_mimic.handshake import (
    ClientHelloRead,
    HandshakeFailed,
    HelloReader,
    authenticate,
    client_handshake,
    server_respond,
)
from zeone_mimic.profile import ProfileError, ServerProfile, learn_profile
from zeone_mimic.records import MimicStream

log = logging.getLogger(__name__)


@attrs.frozen
class DialParams:
    host: str
    port: int
    server_name: str
    server_public: bytes


def parse_params(address: Address, default_sni: str) -> DialParams:
    """Host, port, SNI and server key of a mimic address; DialError naming what is wrong."""
    if address.port is None or address.port == 0 or not address.host:
        raise DialError(address, "a mimic address needs host and port: mimic://HOST:PORT?pk=KEY")
    path, _, query = address.path.partition("?")
    if path not in ("", "/"):
        raise DialError(address, f"a mimic address takes no path ({path!r})")
    params = parse_qs(query.partition("#")[0], keep_blank_values=True)
    unknown = set(params) - {"sni", "pk"}
    if unknown:
        raise DialError(address, f"unknown mimic parameter(s) {sorted(unknown)}; use sni, pk")
    pk = params.get("pk", [""])
    if len(pk) != 1 or not pk[0]:
        raise DialError(address, "a mimic address needs the server's key: ?pk=<base64url key>")
    try:
        public = auth.decode_public_key(pk[0])
    except auth.KeyFormatError as exc:
        raise DialError(address, str(exc)) from None
    sni = params.get("sni", [default_sni])[-1] or default_sni
    try:
        sni.encode("ascii")
    except UnicodeEncodeError:
        raise DialError(address, f"sni {sni!r} must be an ASCII host name") from None
    if not 0 < len(sni) <= 253:
        raise DialError(address, "sni must be a host name of 1-253 characters")
    return DialParams(address.host, address.port, sni, public)


@attrs.define
class MimicStats:
    accepted: int = 0
    fallback: int = 0
    handshake_failed: int = 0
    dialed: int = 0
    refused_busy: int = 0
    reasons: dict[str, int] = attrs.Factory(dict)


@attrs.define(eq=False)
class MimicTransport(Transport):
    """TLS 1.3 mimicry. `server_key` is this node's listening identity (generated if absent)."""

    scheme: ClassVar[str] = "mimic"
    server_key: auth.ServerKey = attrs.Factory(auth.ServerKey.generate)
    server_name: str = "www.example.com"
    fallback: FallbackTarget | None = None
    handshake_timeout: float = 10.0
    replay: auth.ReplayFilter = attrs.Factory(auth.ReplayFilter)
    #: Connections at once that are not yet authenticated or are spliced to the cover site; a
    #: flood beyond this is closed on accept instead of holding memory and file descriptors.
    max_pending: int = 1024
    #: Learn the handshake's shape from the fallback site (see `profile`), and how often.
    learn_profile: bool = True
    profile_refresh: float = 3600.0
    stats: MimicStats = attrs.Factory(MimicStats)
    profile: ServerProfile = attrs.field(init=False)
    _pending: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self.profile = ServerProfile.default(self.server_key.public)

    async def refresh_profile(self) -> bool:
        """Learn the cover site's handshake shape now; False (default kept) if it fails."""
        if self.fallback is None:
            return False
        default = ServerProfile.default(self.server_key.public)
        with trio.move_on_after(self.handshake_timeout):
            try:
                learned = await learn_profile(self.fallback, self.server_name)
            except (ProfileError, trio.BrokenResourceError, OSError) as exc:
                log.warning("mimic: cannot learn the cover site's TLS profile: %s", exc)
                return False
            self.profile = learned.with_tickets_from(default)
            log.info("mimic: handshake profile %s", self.profile)
            return True
        log.warning("mimic: the cover site %s did not answer in time", self.fallback)
        return False

    async def _keep_profile_fresh(self) -> None:
        while True:
            await self.refresh_profile()
            await trio.sleep(self.profile_refresh)

    def address_for(self, host: str, port: int) -> Address:
        query = f"?sni={quote(self.server_name, safe='')}&pk={self.server_key.public_text}"
        return Address.build(self.scheme, host, port, query)

    async def dial(self, address: Address) -> trio.abc.Stream:
        self.check_address(address)
        params = parse_params(address, self.server_name)
        try:
            tcp = await trio.open_tcp_stream(params.host, params.port)
        except OSError as exc:
            raise DialError(address, exc.strerror or str(exc)) from exc
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        try:
            stream = await client_handshake(tcp, params.server_public, params.server_name)
        except HandshakeFailed as exc:
            await trio.aclose_forcefully(tcp)
            raise DialError(address, str(exc)) from None
        except (trio.BrokenResourceError, OSError) as exc:
            await trio.aclose_forcefully(tcp)
            raise DialError(address, f"connection lost during the TLS handshake: {exc}") from None
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        self.stats.dialed += 1
        return stream

    async def listen(
        self,
        address: Address,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.check_address(address)
        if address.port is None:
            raise ListenError(
                address, "a mimic listen address needs a port, e.g. mimic://0.0.0.0:443"
            )
        try:
            listeners = await trio.open_tcp_listeners(address.port, host=address.host or None)
        except OSError as exc:
            raise ListenError(address, exc.strerror or str(exc)) from exc
        sockname = listeners[0].socket.getsockname()
        bound = self.address_for(sockname[0], sockname[1])

        async def handle(tcp: trio.SocketStream) -> None:
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
            try:
                await self.serve(tcp, handler, bound)
            finally:
                await trio.aclose_forcefully(tcp)

        async with trio.open_nursery() as nursery:
            if self.learn_profile and self.fallback is not None:
                nursery.start_soon(self._keep_profile_fresh)
            task_status.started(bound)
            await trio.serve_listeners(handle, listeners)

    async def serve(self, tcp: trio.abc.Stream, handler: Handler, where: object) -> None:
        """One accepted connection: ZEONE if it authenticates, the cover site otherwise."""
        if self._pending >= self.max_pending:
            self.stats.refused_busy += 1
            await trio.lowlevel.checkpoint()
            return
        self._pending += 1
        try:
            stream = await self._pre_auth(tcp)
        finally:
            self._pending -= 1
        if stream is not None:
            self.stats.accepted += 1
            await serve_connection(handler, stream, where)

    async def _pre_auth(self, tcp: trio.abc.Stream) -> MimicStream | None:
        """Read and judge the hello; forward or finish the handshake. None: nothing for ZEONE."""
        reader = HelloReader()
        read: ClientHelloRead | None = None
        with trio.move_on_after(self.handshake_timeout):
            try:
                read = await reader.read(tcp)
            except (trio.BrokenResourceError, OSError):
                return None
        if read is None:
            read = ClientHelloRead(bytes(reader.raw), None, None, "timed out")
        verdict = authenticate(read, self.server_key, self.replay, time.time())
        if not verdict.accepted:
            self.stats.fallback += 1
            self.stats.reasons[verdict.reason] = self.stats.reasons.get(verdict.reason, 0) + 1
            log.debug(
                "mimic: forwarding a connection to the cover site: %s %s",
                verdict.reason,
                verdict.detail,
            )
            await forward(tcp, read.raw, self.fallback, connect_timeout=self.handshake_timeout)
            return None
        stream = None
        with trio.move_on_after(self.handshake_timeout):
            try:
                stream = await server_respond(tcp, read, self.server_key, self.profile)
            except (HandshakeFailed, trio.BrokenResourceError, OSError) as exc:
                log.debug("mimic: handshake with an authenticated client failed: %s", exc)
        if stream is None:
            self.stats.handshake_failed += 1
        return stream
