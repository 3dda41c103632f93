"""The `obfs` transport: TCP carrying an obfs handshake and frames, with probe resistance.

Probe resistance. A censor that suspects a server connects and sends something: random bytes,
a recorded client handshake, a recorded one with a few bytes changed. To every such probe the
server behaves identically: it sends nothing, keeps reading (and discarding) whatever arrives,
and closes the connection normally (FIN) when the connection's deadline passes. The deadline is
the accept time plus the server's close delay, a constant drawn once per server from its secret
key within [close_delay_min, close_delay_max]; it does not depend on what or how much the probe
sent, nor on when the server decided it was invalid. Because the server drains its receive
buffer until that moment, the close is a FIN rather than an RST in every case.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import ClassVar

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
from zeone_obfs.bridge import bridge_query, parse_params
from zeone_obfs.handshake import (
    MAX_HANDSHAKE,
    ClientHandshake,
    HandshakeError,
    PaddingStyle,
    ReplayFilter,
    ServerHandshake,
    ServerIdentity,
    ServerKeys,
)
from zeone_obfs.stream import ObfsStream

log = logging.getLogger(__name__)

SCHEME = "obfs"


def shaping_seed(identity: ServerIdentity) -> bytes:
    """Both ends derive the server's length and timing distributions from its bridge line."""
    return hashlib.blake2b(
        identity.node_id + identity.public_key, person=b"zeone-obfs-shape"
    ).digest()


def close_delay(keys: ServerKeys, low: float, high: float) -> float:
    """The server's fixed delay before closing a connection that never became valid."""
    fraction = int.from_bytes(hmac.digest(keys.private_key, b"close-delay", "sha256")[:8], "big")
    return low + (high - low) * fraction / 2**64


@attrs.define(eq=False)
class ObfsTransport(Transport):
    """Dials and serves `obfs://host:port?cert=...&iat=...` addresses.

    `keys` (the server's state) is needed only to listen. `padding` is how this node pads the
    handshakes it sends as a client; `iat_mode` is how the server paces its own writes (clients
    follow the `iat` of the address they dial).
    """

    scheme: ClassVar[str] = SCHEME

    keys: ServerKeys | None = None
    iat_mode: int = 0
    padding: PaddingStyle = PaddingStyle.UNIFORM
    close_delay_min: float = 15.0
    close_delay_max: float = 60.0
    publish_cert: bool = True
    replay: ReplayFilter = attrs.Factory(ReplayFilter)
    #: Connections allowed to sit in the handshake (or in the silent wait of a probe) at once.
    #: Past it, new connections are closed at once: the one case where a server answers a probe
    #: differently, and only while it is flooded.
    max_pending: int = 1024
    clock: Callable[[], float] = time.time
    #: Counters for status and tests: handshakes accepted, probes (invalid/replayed) rejected.
    accepted: int = 0
    rejected: int = 0
    overflowed: int = 0
    pending: int = 0

    def __attrs_post_init__(self) -> None:
        if self.iat_mode not in (0, 1, 2):
            raise ValueError(f"iat_mode must be 0, 1 or 2, not {self.iat_mode}")
        if not 0 <= self.close_delay_min <= self.close_delay_max:
            raise ValueError("need 0 <= close_delay_min <= close_delay_max")

    @property
    def close_delay(self) -> float:
        if self.keys is None:
            raise RuntimeError("an obfs transport without server keys cannot listen")
        return close_delay(self.keys, self.close_delay_min, self.close_delay_max)

    def bridge_address(self, host: str, port: int) -> Address:
        """The full bridge line of this server at host:port."""
        assert self.keys is not None
        return Address.build(SCHEME, host, port, bridge_query(self.keys.identity, self.iat_mode))

    # -- client -------------------------------------------------------------------------------

    async def dial(self, address: Address) -> trio.abc.Stream:
        self.check_address(address)
        try:
            params = parse_params(address)
        except ValueError as exc:
            raise DialError(address, str(exc)) from None
        if params.server is None:
            raise DialError(
                address, "no ?cert= in the address: get the bridge line from the node's operator"
            )
        if address.port is None or address.port == 0:
            raise DialError(address, "an obfs address needs a port")
        try:
            tcp = await trio.open_tcp_stream(address.host, address.port)
        except OSError as exc:
            raise DialError(address, exc.strerror or str(exc)) from exc
        try:
            handshake = ClientHandshake(params.server, padding=self.padding)
            await tcp.send_all(handshake.message)
            rest = None
            while rest is None:
                data = await tcp.receive_some(MAX_HANDSHAKE)
                if not data:
                    raise DialError(
                        address,
                        "the server closed the connection during the obfs handshake "
                        "(wrong cert, or not an obfs server)",
                    )
                rest = handshake.feed(data)
        except HandshakeError as exc:
            await trio.aclose_forcefully(tcp)
            raise DialError(address, f"obfs handshake failed: {exc}") from None
        except (OSError, trio.BrokenResourceError) as exc:
            await trio.aclose_forcefully(tcp)
            raise DialError(address, f"connection lost during the obfs handshake: {exc}") from exc
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        assert handshake.keys is not None
        return ObfsStream(
            tcp,
            handshake.keys,
            shaping_seed(params.server),
            iat_mode=params.iat_mode,
            initial=rest,
        )

    # -- server -------------------------------------------------------------------------------

    async def listen(
        self,
        address: Address,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.check_address(address)
        if self.keys is None:
            raise ListenError(address, "the obfs transport has no server state to listen with")
        try:
            params = parse_params(address)
        except ValueError as exc:
            raise ListenError(address, str(exc)) from None
        if params.server is not None and params.server != self.keys.identity:
            raise ListenError(address, "the cert in the listen address is not this node's")
        if address.port is None:
            raise ListenError(address, "an obfs listen address needs a port (0 for any)")
        try:
            listeners = await trio.open_tcp_listeners(address.port, host=address.host or None)
        except OSError as exc:
            raise ListenError(address, exc.strerror or str(exc)) from exc
        host, port = listeners[0].socket.getsockname()[:2]
        bound = (
            self.bridge_address(host, port)
            if self.publish_cert
            else Address.build(SCHEME, host, port)
        )
        delay = self.close_delay
        seed = shaping_seed(self.keys.identity)

        async def handle(tcp: trio.SocketStream) -> None:
            if self.pending >= self.max_pending:
                self.overflowed += 1
                await trio.aclose_forcefully(tcp)
                return
            self.pending += 1
            try:
                stream = await self._accept(tcp, delay, seed)
            except BaseException:
                await trio.aclose_forcefully(tcp)
                raise
            finally:
                self.pending -= 1
            if stream is None:
                await trio.aclose_forcefully(tcp)
                return
            await serve_connection(handler, stream, bound)

        task_status.started(bound)
        await trio.serve_listeners(handle, listeners)

    async def _accept(self, tcp: trio.SocketStream, delay: float, seed: bytes) -> ObfsStream | None:
        """Run the server handshake; None (at the connection's deadline) unless it succeeds."""
        assert self.keys is not None
        deadline = trio.current_time() + delay
        handshake = ServerHandshake(self.keys, self.replay, clock=self.clock)
        valid_so_far = True
        with trio.move_on_at(deadline):
            try:
                while True:
                    data = await tcp.receive_some(65536)
                    if not data:  # the peer gave up: still close at the same moment
                        await trio.sleep_until(deadline)
                        break
                    if not valid_so_far:
                        continue  # drain and discard until the deadline
                    try:
                        if handshake.feed(data):
                            assert handshake.reply is not None and handshake.keys is not None
                            await tcp.send_all(handshake.reply)
                            self.accepted += 1
                            return ObfsStream(tcp, handshake.keys, seed, iat_mode=self.iat_mode)
                    except HandshakeError as exc:
                        valid_so_far = False
                        self.rejected += 1
                        log.debug("obfs: rejecting a connection: %s", exc)
            except (trio.BrokenResourceError, OSError):
                await trio.sleep_until(deadline)  # reset by the peer: nothing left to say
        if valid_so_far:
            self.rejected += 1  # incomplete at the deadline, or the peer hung up early
        return None
