"""One authenticated connection to a peer, carrying RPC requests in both directions.

Inbound frames are read by a single task and dispatched: requests run as handler tasks (bounded by
``max_requests_per_peer`` and a per-peer token-bucket rate limit, both answered with an error rather
than queued, so a flooding peer costs us little), responses wake the waiting caller, PINGs are
answered at once. Anything malformed raises ProtocolError, which closes this connection only, with
the reason logged.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from zeone.errors import ProtocolError, ZeoneError
from zeone.identity import NodeId
from zeone.net.mux import Mux, MuxStream
from zeone.net.noise import SecureChannel
from zeone.replay import ReplayGuard, ReplayRejected
from zeone.rpc import RemoteError, Request, RequestTimeout, Router
from zeone.wire.frame import Frame, FrameDecoder, MessageType, encode_frame
from zeone.wire.messages import (
    Discover,
    GoAway,
    PeerList,
    Ping,
    Pong,
    ServiceRequest,
    ServiceResponse,
    WireMessage,
)
from zeone.wire.stream_messages import STREAM_MESSAGES

log = logging.getLogger(__name__)

RECEIVE_CHUNK = 256 * 1024
MAX_DATA_CHUNK = 64 * 1024


class ConnectionClosed(ZeoneError):
    """The connection closed before the answer arrived."""


@attrs.frozen
class ConnectionLimits:
    max_frame_size: int = 4 * 1024 * 1024
    max_inflight: int = 256
    request_rate: float = 200.0
    #: Concurrent streams per direction; memory per peer is bounded by streams x window.
    max_streams: int = 256
    stream_window: int = 256 * 1024


class TokenBucket:
    """``rate`` events per second with bursts up to ``burst``; time from ``trio.current_time``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated: float | None = None

    def take(self) -> bool:
        now = trio.current_time()
        if self.updated is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@attrs.define
class ConnectionStats:
    bytes_in: int = 0
    bytes_out: int = 0
    requests_in: int = 0
    requests_out: int = 0
    refused: int = 0
    replays: int = 0
    rtt: float | None = None


@attrs.define(eq=False)
class _Pending:
    done: trio.Event = attrs.Factory(trio.Event)
    response: Any = None
    error: BaseException | None = None
    #: The frame type that must answer (SERVICE_RESPONSE, or a kernel protocol's response type).
    expect: MessageType = MessageType.SERVICE_RESPONSE


#: Kernel protocols with frame types of their own (seed 003): request type -> response type.
#: Both payloads are arrays whose first item is the request id chosen by the requester.
KERNEL_REQUESTS: dict[MessageType, MessageType] = {
    MessageType.DHT_FIND_NODE: MessageType.DHT_FIND_NODE_RESP,
    MessageType.DHT_FIND_VALUE: MessageType.DHT_FIND_VALUE_RESP,
    MessageType.DHT_STORE: MessageType.DHT_STORE_RESP,
}
KERNEL_RESPONSES = frozenset(KERNEL_REQUESTS.values())

#: Answers a kernel request frame: (connection, raw payload) -> response payload, or None to send
#: no answer, or an awaitable of the response payload for work that must not run inside the read
#: loop (a durable write); awaitables run in their own task, within the peer's in-flight limit.
#: Raises ProtocolError (synchronously) for a malformed request.
FrameHandler = Callable[["Connection", Any], Any]


class Connection:
    """An established secure connection; create with a handshaken channel, then ``run()`` it."""

    def __init__(
        self,
        channel: SecureChannel,
        *,
        outbound: bool,
        address: str,
        router: Router,
        limits: ConnectionLimits,
        peer_list: Callable[[int, NodeId], list[Any]] | None = None,
        replay: ReplayGuard | None = None,
        frame_handlers: Mapping[MessageType, FrameHandler] | None = None,
    ) -> None:
        self.channel = channel
        self.outbound = outbound
        self.address = address
        self.router = router
        self.limits = limits
        self.peer_list = peer_list
        self.replay = replay
        self.frame_handlers = dict(frame_handlers or {})
        self.peer_id: NodeId = channel.peer_id
        self.opened_at = time.time()
        self.last_activity = trio.current_time()
        self.stats = ConnectionStats()
        self.draining = False
        self.closed = trio.Event()
        self.close_reason: str | None = None
        self._decoder = FrameDecoder(limits.max_frame_size)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._pings: dict[bytes, _Pending] = {}
        self._inflight = 0
        self._idle = trio.lowlevel.ParkingLot()
        self._refusing = 0
        self._bucket = TokenBucket(limits.request_rate, 2 * limits.request_rate)
        self._nursery: trio.Nursery | None = None
        self._discover_reply: _Pending | None = None
        self._discover_lock = trio.Lock()
        self._replies = 0
        self.mux = Mux(
            self._send,
            outbound=outbound,
            max_streams=limits.max_streams,
            initial_window=limits.stream_window,
            max_chunk=min(MAX_DATA_CHUNK, limits.max_frame_size - 64),
            on_stream=self._on_stream,
            rtt=lambda: self.stats.rtt,
        )

    def __repr__(self) -> str:
        direction = "out" if self.outbound else "in"
        return f"<Connection {direction} {self.peer_id.short()} {self.address}>"

    @property
    def peer_listen(self) -> tuple[str, ...]:
        return tuple(self.channel.peer_hello.listen)

    @property
    def peer_capabilities(self) -> tuple[str, ...]:
        return tuple(self.channel.peer_hello.capabilities)

    @property
    def busy(self) -> bool:
        return bool(
            self._pending or self._inflight or self._pings or self.mux.statistics().open_streams
        )

    async def wait_idle(self) -> None:
        """Return once no request is in flight in either direction."""
        while self.busy:
            await self._idle.park()

    def _maybe_idle(self) -> None:
        if self._idle and not self.busy:
            self._idle.unpark_all()

    # -- running ----------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the connection until EOF, a protocol error, close() or cancellation."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.mux.run)
                task_status.started(self)
                try:
                    await self._read_loop()
                except ProtocolError as exc:
                    self.close_reason = f"protocol error: {exc}"
                    log.warning("closing connection to %s: %s", self.peer_id.short(), exc)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self.close_reason = self.close_reason or f"connection lost: {exc or 'reset'}"
                nursery.cancel_scope.cancel()
        except trio.Cancelled:
            self.close_reason = self.close_reason or "node stopping"
            raise
        finally:
            closed = ConnectionClosed(f"connection to {self.peer_id.short()} closed")
            self.mux.close_all(closed)
            self._fail_pending(closed)
            self.closed.set()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.channel.aclose()

    async def close(self, reason: str = "closed") -> None:
        self.close_reason = self.close_reason or reason
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        else:
            await self.channel.aclose()
            self.closed.set()

    async def _read_loop(self) -> None:
        while True:
            data = await self.channel.receive_some(RECEIVE_CHUNK)
            if not data:
                if self._decoder.buffered:
                    raise ProtocolError(
                        f"connection closed in the middle of a frame "
                        f"({self._decoder.buffered} bytes of it received)"
                    )
                self.close_reason = self.close_reason or "closed by peer"
                return
            self.stats.bytes_in += len(data)
            for frame in self._decoder.feed(data):
                await self._dispatch(frame)

    async def _dispatch(self, frame: Frame) -> None:
        kind = frame.type
        if kind == MessageType.SERVICE_REQUEST:
            self._on_request(ServiceRequest.from_wire(frame.payload))
        elif kind == MessageType.SERVICE_RESPONSE:
            self._on_response(ServiceResponse.from_wire(frame.payload))
        elif kind in STREAM_MESSAGES:
            self.last_activity = trio.current_time()
            await self.mux.handle(STREAM_MESSAGES[kind].from_wire(frame.payload))
        elif kind == MessageType.PING:
            await self._on_ping(Ping.from_wire(frame.payload))
        elif kind == MessageType.PONG:
            pong = Pong.from_wire(frame.payload)
            waiter = self._pings.pop(pong.nonce, None)
            if waiter is not None:
                waiter.done.set()
        elif kind == MessageType.DISCOVER:
            discover = Discover.from_wire(frame.payload)
            if not self._bucket.take():
                self.stats.refused += 1
                return
            peers = self.peer_list(discover.limit, self.peer_id) if self.peer_list else []
            self._reply(PeerList(peers))
        elif kind == MessageType.PEER_LIST:
            reply = PeerList.from_wire(frame.payload)
            if self._discover_reply is not None:
                self._discover_reply.response = reply  # type: ignore[assignment]
                self._discover_reply.done.set()
        elif kind in KERNEL_REQUESTS:
            self._on_kernel_request(kind, frame.payload)
        elif kind in KERNEL_RESPONSES:
            self._on_kernel_response(kind, frame.payload)
        elif kind == MessageType.GOAWAY:
            GoAway.from_wire(frame.payload)
            self.draining = True
        else:
            raise ProtocolError(f"unexpected {kind.name} frame on an RPC connection")

    async def _on_ping(self, ping: Ping) -> None:
        """Answer a PING unless it is replayed, stale or over the rate (silently dropped)."""
        if not self._bucket.take():
            self.stats.refused += 1
            return
        if self.replay is not None:
            try:
                self.replay.check(self.peer_id.raw, ping.nonce, ping.timestamp / 1000)
            except ReplayRejected as exc:
                self.stats.replays += 1
                log.info("dropped PING from %s: %s", self.peer_id.short(), exc)
                return
        self._reply(Pong(ping.nonce, ping.timestamp))

    def _reply(self, message: WireMessage) -> None:
        """Send a control reply from its own task, so the read loop never waits on the network
        (two peers both blocked sending while neither reads would deadlock)."""
        self._reply_frame(Frame(message.TYPE, message.to_wire()))

    def _reply_frame(self, frame: Frame) -> None:
        if self._replies >= self.limits.max_inflight:
            raise ProtocolError("peer sends requests without reading the replies")
        self._replies += 1
        self._nursery.start_soon(self._send_reply, self._encode_frame(frame))

    async def _send_reply(self, data: bytes) -> None:
        try:
            with contextlib.suppress(ConnectionClosed):
                await self._send_raw(data)
        finally:
            self._replies -= 1

    # -- streams ----------------------------------------------------------------------------

    async def open_stream(self, protocol: str) -> MuxStream:
        """A new stream to the peer's handler for ``protocol`` (a trio HalfCloseableStream)."""
        self.last_activity = trio.current_time()
        return await self.mux.open_stream(protocol)

    def _on_stream(self, stream: MuxStream) -> None:
        route = self.router.stream_route(stream.protocol)
        if route is None:
            stream.reset("unknown-protocol")
            return
        self._nursery.start_soon(self._serve_stream, route, stream)

    async def _serve_stream(self, route: Any, stream: MuxStream) -> None:
        try:
            await route.handler(self.peer_id, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer reset or the connection went away: routine
        except Exception:
            log.exception("stream handler for %s (plugin %s) failed", stream.protocol, route.owner)
            stream.reset("internal-error")
        finally:
            await trio.aclose_forcefully(stream)
            self.last_activity = trio.current_time()
            self._maybe_idle()

    # -- inbound requests -------------------------------------------------------------------

    def _on_request(self, request: ServiceRequest) -> None:
        self.last_activity = trio.current_time()
        self.stats.requests_in += 1
        if self._inflight >= self.limits.max_inflight:
            code = "busy"
        elif not self._bucket.take():
            code = "rate-limited"
        else:
            self._inflight += 1
            self._nursery.start_soon(self._serve, request)
            return
        self.stats.refused += 1
        if self._refusing >= self.limits.max_inflight:
            # The peer keeps sending while not reading our refusals: it is flooding, not busy.
            raise ProtocolError("peer floods requests without reading the answers")
        self._refusing += 1
        self._nursery.start_soon(self._refuse, request.request_id, code)

    async def _refuse(self, request_id: int, code: str) -> None:
        try:
            with contextlib.suppress(ConnectionClosed):
                await self._send(ServiceResponse(request_id, False, [code, "request refused"]))
        finally:
            self._refusing -= 1

    async def _serve(self, request: ServiceRequest) -> None:
        try:
            frame = await self._answer(request)
            with contextlib.suppress(ConnectionClosed):  # the peer left; nothing to answer
                await self._send_raw(frame)
        finally:
            self._inflight -= 1
            self.last_activity = trio.current_time()
            self._maybe_idle()

    async def _answer(self, request: ServiceRequest) -> bytes:
        """The encoded response: the handler's result, its RemoteError, or internal-error."""
        request_id = request.request_id
        try:
            result = await self.router.dispatch(
                Request(self.peer_id, request.protocol, request.body)
            )
            return self._encode(ServiceResponse(request_id, True, result))
        except RemoteError as exc:
            body = [str(exc.code)[:64], str(exc.message)[:1000]]
        except Exception as exc:  # an unsendable result or a bug: never the peer's problem
            log.error("cannot answer %s from %s: %r", request.protocol, self.peer_id.short(), exc)
            body = ["internal-error", "the handler failed"]
        return self._encode(ServiceResponse(request_id, False, body))

    # -- outbound requests ------------------------------------------------------------------

    async def request(
        self, protocol: str, body: Any, *, timeout: float = 10.0, counts_as_activity: bool = True
    ) -> Any:
        """Send a request and wait for the answer; RemoteError, RequestTimeout, ConnectionClosed."""
        if self.closed.is_set():
            raise ConnectionClosed(f"connection to {self.peer_id.short()} is closed")
        request_id = next(self._ids)
        pending = _Pending()
        self._pending[request_id] = pending
        self.stats.requests_out += 1
        if counts_as_activity:
            self.last_activity = trio.current_time()
        try:
            with trio.move_on_after(timeout) as scope:
                await self._send(ServiceRequest(request_id, protocol, body))
                await pending.done.wait()
        finally:
            self._pending.pop(request_id, None)
            if counts_as_activity:
                self.last_activity = trio.current_time()
            self._maybe_idle()
        if scope.cancelled_caught:
            raise RequestTimeout(f"{protocol} to {self.peer_id.short()} timed out after {timeout}s")
        if pending.error is not None:
            raise pending.error
        response = pending.response
        assert response is not None
        if not response.ok:
            code, message = response.body
            raise RemoteError(code, message)
        return response.body

    def _on_response(self, response: ServiceResponse) -> None:
        self._resolve(MessageType.SERVICE_RESPONSE, response.request_id, response)

    def _resolve(self, kind: MessageType, request_id: int, response: Any) -> None:
        pending = self._pending.get(request_id)
        if pending is None:
            return  # the caller gave up (timeout or cancellation); drop the late answer
        if pending.expect != kind:
            raise ProtocolError(f"{kind.name} answers request {request_id}, which was not one")
        pending.response = response
        pending.done.set()

    # -- kernel protocols with their own frame types (the DHT) -------------------------------

    def _on_kernel_request(self, kind: MessageType, payload: Any) -> None:
        self.stats.requests_in += 1
        handler = self.frame_handlers.get(kind)
        if handler is None or not self._bucket.take():
            self.stats.refused += 1
            return  # not served here, or over the rate: the requester times out
        answer = handler(self, payload)
        if inspect.isawaitable(answer):
            if self._inflight >= self.limits.max_inflight:
                answer.close()  # type: ignore[attr-defined]
                self.stats.refused += 1
                return
            self._inflight += 1
            self._nursery.start_soon(self._serve_kernel, kind, answer)
        elif answer is not None:
            self._reply_frame(Frame(KERNEL_REQUESTS[kind], answer))

    async def _serve_kernel(self, kind: MessageType, answer: Awaitable[Any]) -> None:
        try:
            frame = self._encode_frame(Frame(KERNEL_REQUESTS[kind], await answer))
            with contextlib.suppress(ConnectionClosed):
                await self._send_raw(frame)
        except Exception:
            log.exception("answering %s from %s failed", kind.name, self.peer_id.short())
        finally:
            self._inflight -= 1
            self.last_activity = trio.current_time()
            self._maybe_idle()

    def _on_kernel_response(self, kind: MessageType, payload: Any) -> None:
        if type(payload) is not list or not payload or type(payload[0]) is not int:
            raise ProtocolError(f"malformed {kind.name}: no request id")
        self._resolve(kind, payload[0], payload)

    async def call(
        self, kind: MessageType, build: Callable[[int], list[Any]], *, timeout: float = 10.0
    ) -> list[Any]:
        """Send a kernel request frame ``build(request_id)`` and return the raw response payload.

        The caller validates the payload (it is hostile input). RequestTimeout or ConnectionClosed.
        """
        if self.closed.is_set():
            raise ConnectionClosed(f"connection to {self.peer_id.short()} is closed")
        request_id = next(self._ids)
        pending = _Pending(expect=KERNEL_REQUESTS[kind])
        self._pending[request_id] = pending
        self.stats.requests_out += 1
        try:
            with trio.move_on_after(timeout) as scope:
                await self._send_raw(self._encode_frame(Frame(kind, build(request_id))))
                await pending.done.wait()
        finally:
            self._pending.pop(request_id, None)
            self._maybe_idle()
        if scope.cancelled_caught:
            raise RequestTimeout(f"{kind.name} to {self.peer_id.short()} timed out")
        if pending.error is not None:
            raise pending.error
        return pending.response

    async def ping(self, *, timeout: float = 10.0) -> float:
        """Round-trip time in seconds."""
        nonce = os.urandom(16)
        waiter = _Pending()
        self._pings[nonce] = waiter
        started = trio.current_time()
        try:
            with trio.fail_after(timeout):
                await self._send(Ping(nonce, int(time.time() * 1000)))
                await waiter.done.wait()
        except trio.TooSlowError:
            raise RequestTimeout(f"ping to {self.peer_id.short()} timed out") from None
        finally:
            self._pings.pop(nonce, None)
            self._maybe_idle()
        if waiter.error is not None:
            raise waiter.error
        self.stats.rtt = trio.current_time() - started
        return self.stats.rtt

    async def discover(self, limit: int = 32, *, timeout: float = 10.0) -> list[Any]:
        """Ask the peer for the peers it knows: ``[[node_id bytes, [addresses]], ...]``."""
        try:
            with trio.fail_after(timeout):
                async with self._discover_lock:  # one DISCOVER in flight: answers carry no id
                    waiter = self._discover_reply = _Pending()
                    try:
                        await self._send(Discover(limit))
                        await waiter.done.wait()
                    finally:
                        self._discover_reply = None
        except trio.TooSlowError:
            raise RequestTimeout(f"discover to {self.peer_id.short()} timed out") from None
        if waiter.error is not None:
            raise waiter.error
        return waiter.response.peers  # type: ignore[union-attr]

    async def go_away(self, reason: str) -> None:
        self.draining = True
        await self._send(GoAway(reason[:256]))

    # -- sending ----------------------------------------------------------------------------

    def _encode(self, message: WireMessage) -> bytes:
        return self._encode_frame(Frame(message.TYPE, message.to_wire()))

    def _encode_frame(self, frame: Frame) -> bytes:
        return encode_frame(frame, max_frame_size=self.limits.max_frame_size)

    async def _send(self, message: WireMessage) -> None:
        await self._send_raw(self._encode(message))

    async def _send_raw(self, data: bytes) -> None:
        try:
            await self.channel.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # A send cut off half-way desynchronises the Noise nonces: the connection is dead,
            # so tear it down now instead of leaving a zombie in the peer table.
            self.close_reason = self.close_reason or f"send failed: {exc or 'broken'}"
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            raise ConnectionClosed(f"connection to {self.peer_id.short()} is closed") from exc
        self.stats.bytes_out += len(data)

    def _fail_pending(self, error: BaseException) -> None:
        for waiter in [*self._pending.values(), *self._pings.values()]:
            waiter.error = error
            waiter.done.set()
        if self._discover_reply is not None:
            self._discover_reply.error = error
            self._discover_reply.done.set()

    def snapshot(self) -> dict[str, Any]:
        return {
            "node_id": str(self.peer_id),
            "address": self.address,
            "direction": "outbound" if self.outbound else "inbound",
            "since": round(self.opened_at, 3),
            "rtt_ms": None if self.stats.rtt is None else round(self.stats.rtt * 1000, 3),
            "bytes_in": self.stats.bytes_in,
            "bytes_out": self.stats.bytes_out,
            "requests_in": self.stats.requests_in,
            "requests_out": self.stats.requests_out,
            "version": self.channel.version,
            "draining": self.draining,
        }
