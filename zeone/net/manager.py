"""The connection manager: listeners, dials, one connection per peer, limits, bootstrap, PEX.

Every protocol shares one connection per peer pair. When both sides dial each other at once, both
keep the connection dialed by the node with the smaller NodeId and drain the other (GOAWAY, then
close when idle), so the outcome is the same on both ends without any extra round trip. Failed
dials back off exponentially per peer. Connections beyond ``max_connections`` are refused right
after accept, before the handshake costs any CPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Iterable
from typing import Any

import attrs
import trio

from zeone.config import NetworkSection
from zeone.errors import ProtocolError, ZeoneError
from zeone.identity import Identity, NodeId
from zeone.net.connection import Connection, ConnectionClosed, ConnectionLimits
from zeone.net.noise import Hello, secure_accept, secure_dial
from zeone.net.peers import PeerAddress
from zeone.net.transport import Address, DialError, TransportRegistry, parse_address
from zeone.replay import ReplayGuard
from zeone.rpc import RemoteError, RequestTimeout, Router
from zeone.wire.frame import WIRE_VERSION

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0
BOOTSTRAP_INTERVAL = 5.0
BOOTSTRAP_RETRY = 0.5
#: Failed bootstrap rounds (no connection at all) before the DNS seed lists are consulted.
DNS_FALLBACK_AFTER = 4
MAINTENANCE_INTERVAL = 15.0
KEEPALIVE_INTERVAL = 30.0
DRAIN_TIMEOUT = 10.0
#: PEX: how many peers to ask a bootstrap peer for, and how many connections we aim for.
DISCOVER_LIMIT = 32
TARGET_PEERS = 16
UNSPECIFIED_HOSTS = {"0.0.0.0", "::", ""}
MAX_ADDRESSES_PER_PEER = 16
#: Address-book entries kept for peers we are not connected to (oldest forgotten first).
MAX_BOOK_ENTRIES = 4096
#: Dials to peers learned through PEX that may run at once.
DISCOVERY_DIALS = 8
#: PEX dials wait this long after the answer: a joining node's DHT lookups make the connections it
#: needs first (each handshake costs CPU on both ends), and PEX then tops up what is missing.
PEX_DIAL_DELAY = 1.0
#: Served by the core plugin; any answer to it proves a connection alive.
KEEPALIVE_PROTOCOL = "/zeone/core/keepalive/1"


@attrs.define
class _Backoff:
    failures: int = 0
    retry_at: float = 0.0


class ConnectionManager:
    """Kernel service owning every connection of one node."""

    name = "network"

    def __init__(
        self,
        identity: Identity,
        settings: NetworkSection,
        router: Router,
        transports: TransportRegistry,
        replay: ReplayGuard | None = None,
    ) -> None:
        self.identity = identity
        self.node_id = identity.node_id
        self.settings = settings
        self.router = router
        self.transports = transports
        self.replay = replay
        #: Extra HELLO capabilities (kernel services such as the DHT add theirs).
        self.capabilities: list[str] = []
        #: Frame handlers for kernel protocols with their own frame types (the DHT).
        self.frame_handlers: dict[Any, Any] = {}
        #: Called with each newly adopted connection (the DHT feeds its routing table).
        self.on_connected: list[Any] = []
        #: ``async (node_id) -> [addresses]`` for peers with no known address (the DHT's peer
        #: records); None until the DHT runs.
        self.resolver: Any = None
        self.limits = ConnectionLimits(
            max_frame_size=settings.max_frame_size,
            max_inflight=settings.max_requests_per_peer,
            max_streams=settings.max_streams_per_peer,
            stream_window=settings.stream_window,
            request_rate=settings.max_request_rate,
        )
        self.bootstrap = [PeerAddress.parse(text) for text in settings.bootstrap]
        self.connections: dict[NodeId, Connection] = {}
        self.book: dict[NodeId, list[str]] = {}
        self.listen_addresses: list[str] = []
        self.handshake_failures = 0
        self._maintaining: set[Connection] = set()
        self._discovery_dials = trio.CapacityLimiter(DISCOVERY_DIALS)
        self._handshaking = 0
        self.refused = 0
        self._dialing: dict[NodeId, trio.Event] = {}
        self._backoff: dict[NodeId, _Backoff] = {}
        self._all: set[Connection] = set()
        self._nursery: trio.Nursery | None = None
        self._random = random.Random()
        for peer in self.bootstrap:
            if peer.node_id is not None:
                self.book.setdefault(peer.node_id, []).append(peer.address)

    # -- service ----------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await self._run(task_status)
        finally:
            if self.replay is not None:
                self.replay.close()

    async def _run(self, task_status: trio.TaskStatus[list[str]]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for text in self.settings.listen:
                bound = await nursery.start(self.transports.listen, text, self._accept)
                self.listen_addresses.append(str(bound))
                log.info("listening on %s", bound)
            if self.bootstrap or self.settings.bootstrap_dns:
                nursery.start_soon(self._bootstrap_loop)
            nursery.start_soon(self._maintenance_loop)
            task_status.started(self.listen_addresses)
            await trio.sleep_forever()

    def hello(self) -> Hello:
        return Hello(
            versions=(WIRE_VERSION,),
            capabilities=tuple(sorted({*self.router.protocols(), *self.capabilities})),
            listen=tuple(self.listen_addresses),
        )

    # -- accepting --------------------------------------------------------------------------

    async def _accept(self, stream: trio.abc.Stream) -> None:
        if len(self._all) + self._handshaking >= self.settings.max_connections:
            self.refused += 1
            log.debug("refusing inbound connection: %d connections open", len(self._all))
            return
        remote, display = _remote(stream)
        self._handshaking += 1
        try:
            with trio.fail_after(self.settings.handshake_timeout):
                channel = await secure_accept(stream, self.identity, self.hello())
        except (ProtocolError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            self.handshake_failures += 1
            reason = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
            log.info("inbound handshake from %s failed: %s", display, reason)
            return
        finally:
            self._handshaking -= 1
        conn = self._connection(channel, outbound=False, address=display)
        await self._run_connection(conn, remote)

    # -- dialing ----------------------------------------------------------------------------

    async def connect(
        self, peer: NodeId | PeerAddress | str, *, resolve: bool = True
    ) -> Connection:
        """The open connection to ``peer``, dialing it if needed (one dial at a time per peer).

        A peer with no known address is looked up through ``resolver`` (the DHT's peer records)
        unless ``resolve`` is False (the DHT's own RPCs, which must not recurse into lookups).
        """
        target = PeerAddress.parse(peer) if isinstance(peer, str) else peer
        if isinstance(target, NodeId):
            target = PeerAddress("", target)
        node_id = target.node_id
        if node_id is not None:
            if node_id == self.node_id:
                raise DialError(target.address or "self", "refusing to dial this node itself")
            while True:  # re-check after every wait: another waiter may have started a dial
                existing = self._usable(node_id)
                if existing is not None:
                    return existing
                dialing = self._dialing.get(node_id)
                if dialing is None:
                    break
                await dialing.wait()
            mine = self._dialing[node_id] = trio.Event()
        try:
            if resolve and node_id is not None and not self._addresses(target):
                await self._resolve(node_id)
            return await self._dial(target)
        finally:
            if node_id is not None:
                if self._dialing.get(node_id) is mine:
                    del self._dialing[node_id]
                mine.set()

    def _addresses(self, target: PeerAddress) -> list[str]:
        known = [target.address] if target.address else []
        if target.node_id is not None:
            known += self.book.get(target.node_id, [])
        return known

    async def _resolve(self, node_id: NodeId) -> None:
        if self.resolver is None:
            return
        try:
            found = await self.resolver(node_id)
        except ZeoneError as exc:
            log.debug("could not resolve %s: %s", node_id.short(), exc)
            return
        usable = usable_addresses(found)
        if usable:
            self.book[node_id] = usable

    def _usable(self, node_id: NodeId) -> Connection | None:
        conn = self.connections.get(node_id)
        if conn is not None and not conn.closed.is_set() and not conn.draining:
            return conn
        return None

    async def _dial(self, target: PeerAddress) -> Connection:
        node_id = target.node_id
        addresses = list(dict.fromkeys(self._addresses(target)))
        if not addresses:
            raise DialError(str(node_id), "no known address for this peer")
        backoff = self._backoff.get(node_id) if node_id else None
        now = trio.current_time()
        if backoff is not None and now < backoff.retry_at:
            raise DialError(
                str(node_id),
                f"backing off {backoff.retry_at - now:.1f}s after {backoff.failures} failed dials",
            )
        errors: list[str] = []
        for address in self._by_preference(addresses):
            try:
                conn = await self._dial_address(address, node_id)
            except (DialError, ProtocolError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                if isinstance(exc, DialError):
                    errors.append(str(exc))
                elif isinstance(exc, trio.TooSlowError):
                    errors.append(f"{address}: handshake timed out")
                else:
                    errors.append(f"{address}: {exc}")
                continue
            if node_id is not None:
                self._backoff.pop(node_id, None)
            return conn
        if node_id is not None:
            entry = self._backoff.setdefault(node_id, _Backoff())
            entry.failures += 1
            delay = min(BACKOFF_INITIAL * 2 ** (entry.failures - 1), BACKOFF_MAX)
            entry.retry_at = trio.current_time() + delay * (0.75 + self._random.random() / 2)
        raise DialError(str(node_id or target.address), "; ".join(errors) or "no usable address")

    async def _dial_address(self, text: str, node_id: NodeId | None) -> Connection:
        try:
            address = parse_address(text)
        except ValueError as exc:
            raise DialError(text, str(exc)) from None
        with trio.fail_after(self.settings.handshake_timeout):
            stream = await self.transports.dial(address)
            try:
                channel = await secure_dial(
                    stream, self.identity, self.hello(), expected_peer=node_id
                )
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        conn = self._connection(channel, outbound=True, address=str(address))
        assert self._nursery is not None, "the connection manager is not running"
        await self._nursery.start(self._run_connection_task, conn, address.host)
        return self.connections.get(conn.peer_id, conn)

    def _by_preference(self, addresses: Iterable[str]) -> list[str]:
        order = {scheme: i for i, scheme in enumerate(self.settings.transports)}
        usable = [a for a in addresses if a.partition("://")[0] in self.transports]
        return sorted(usable, key=lambda a: order.get(a.partition("://")[0], math.inf))

    # -- connection lifetime ----------------------------------------------------------------

    def _connection(self, channel: Any, *, outbound: bool, address: str) -> Connection:
        return Connection(
            channel,
            outbound=outbound,
            address=address,
            router=self.router,
            limits=self.limits,
            peer_list=self.peer_list,
            replay=self.replay,
            frame_handlers=self.frame_handlers,
        )

    async def _run_connection_task(
        self, conn: Connection, remote_host: str | None, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Outbound connections run in the manager's nursery: one must never take it down."""
        try:
            await self._run_connection(conn, remote_host, task_status=task_status)
        except Exception:
            log.exception("connection to %s failed", conn.peer_id.short())

    async def _run_connection(
        self,
        conn: Connection,
        remote_host: str | None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._all.add(conn)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(conn.run)
                self._adopt(conn, remote_host)
                for callback in self.on_connected:
                    callback(conn)
                log.info(
                    "connected to %s (%s, %s)",
                    conn.peer_id.short(),
                    "outbound" if conn.outbound else "inbound",
                    conn.address,
                )
                task_status.started()
        finally:
            self._all.discard(conn)
            if self.connections.get(conn.peer_id) is conn:
                del self.connections[conn.peer_id]
                log.info("disconnected from %s: %s", conn.peer_id.short(), conn.close_reason)

    def _adopt(self, conn: Connection, remote_host: str | None) -> None:
        advertised = usable_addresses(_substitute_host(a, remote_host) for a in conn.peer_listen)
        if advertised:
            self.book[conn.peer_id] = advertised
        existing = self.connections.get(conn.peer_id)
        if existing is None or existing.closed.is_set() or existing.draining:
            self.connections[conn.peer_id] = conn
            return
        keep, drop = self._tie_break(existing, conn)
        self.connections[conn.peer_id] = keep
        assert self._nursery is not None
        self._nursery.start_soon(self._drain, drop, "duplicate connection")

    def _tie_break(self, a: Connection, b: Connection) -> tuple[Connection, Connection]:
        """Keep the connection whose dialer has the smaller id; both ends agree without talking."""

        def dialer(c: Connection) -> NodeId:
            return self.node_id if c.outbound else c.peer_id

        if dialer(a) == dialer(b):  # the same side dialed twice: the newer one wins
            return b, a
        return (a, b) if dialer(a) < dialer(b) else (b, a)

    async def _drain(self, conn: Connection, reason: str) -> None:
        """GOAWAY, let in-flight work finish, close: bounded, even if the peer never reads."""
        with trio.move_on_after(DRAIN_TIMEOUT):
            with contextlib.suppress(ConnectionClosed):
                await conn.go_away(reason)
                await conn.wait_idle()
        await conn.close(reason)

    # -- bootstrap, discovery, keepalive ------------------------------------------------------

    async def _bootstrap_loop(self) -> None:
        failed_rounds = 0
        while True:
            if self.settings.bootstrap_dns and failed_rounds == DNS_FALLBACK_AFTER:
                await self._add_dns_seeds()
            for index, peer in enumerate(self.bootstrap):
                if peer.node_id is not None and self._usable(peer.node_id):
                    continue
                try:
                    conn = await self.connect(peer)
                except (DialError, ZeoneError) as exc:
                    log.debug("bootstrap peer %s unreachable: %s", peer, exc)
                    continue
                if peer.node_id is None:
                    # An address-only entry: from now on it is that node (no redial, no drain).
                    log.warning(
                        "bootstrap entry %s is node %s; pin it as %s@%s",
                        peer.address,
                        conn.peer_id,
                        conn.peer_id,
                        peer.address,
                    )
                    self.bootstrap[index] = PeerAddress(peer.address, conn.peer_id)
                self._nursery.start_soon(self._discover_from, conn)
            # Alone, retry soon (dial backoff still spaces real attempts); else just check in.
            failed_rounds = 0 if self.connections else failed_rounds + 1
            await trio.sleep(BOOTSTRAP_INTERVAL if self.connections else BOOTSTRAP_RETRY)

    async def _add_dns_seeds(self) -> None:
        """No configured seed answered: ask DNS for more (seed 004 section 8.1)."""
        from zeone.net.dns_seeds import make_resolver, resolve_seeds

        try:
            resolver = make_resolver(self.settings.dns_server)
        except ValueError as exc:
            log.warning("bad dns_server %r: %s", self.settings.dns_server, exc)
            return
        seeds = await resolve_seeds(list(self.settings.bootstrap_dns), resolver)
        known = {(p.address, p.node_id) for p in self.bootstrap}
        fresh = [s for s in seeds if (s.address, s.node_id) not in known]
        if fresh:
            log.info("found %d seed peers in DNS", len(fresh))
        for seed in fresh:
            self.bootstrap.append(seed)
            if seed.node_id is not None:
                self.book.setdefault(seed.node_id, []).append(seed.address)

    async def _discover_from(self, conn: Connection) -> None:
        try:
            entries = await conn.discover(DISCOVER_LIMIT)
        except (RequestTimeout, ConnectionClosed):
            return
        seen: list[NodeId] = []
        for raw_id, addresses in entries[:DISCOVER_LIMIT]:  # a peer may answer more than asked
            node_id = NodeId(raw_id)
            if node_id == self.node_id or node_id in seen:
                continue
            seen.append(node_id)
            known = self.book.setdefault(node_id, [])
            known.extend(a for a in usable_addresses(addresses) if a not in known)
            del known[MAX_ADDRESSES_PER_PEER:]
        await trio.sleep(PEX_DIAL_DELAY)
        for node_id in seen:
            if len(self.connections) < TARGET_PEERS and not self._usable(node_id):
                self._nursery.start_soon(self._try_connect, node_id)

    async def _try_connect(self, node_id: NodeId) -> None:
        try:
            async with self._discovery_dials:
                await self.connect(node_id)
        except (DialError, ZeoneError) as exc:
            log.debug("could not reach discovered peer %s: %s", node_id.short(), exc)

    def peer_list(self, limit: int, asking: NodeId) -> list[Any]:
        """Answer to DISCOVER: connected peers that can be dialed (never the asker)."""
        entries = []
        for node_id, conn in self.connections.items():
            if len(entries) >= limit:
                break
            if node_id == asking or conn.draining:
                continue
            addresses = self.book.get(node_id, [])[:MAX_ADDRESSES_PER_PEER]
            if addresses:
                entries.append([node_id.raw, addresses])
        return entries

    async def _maintenance_loop(self) -> None:
        while True:
            await trio.sleep(MAINTENANCE_INTERVAL)
            now = trio.current_time()
            bootstrap_ids = {p.node_id for p in self.bootstrap}
            # Spawned, not awaited: one stuck peer must not stall maintenance for the others.
            for conn in list(self.connections.values()):
                if conn in self._maintaining:
                    continue
                idle = now - conn.last_activity
                if (
                    idle > self.settings.idle_timeout
                    and not conn.busy
                    and conn.peer_id not in bootstrap_ids
                ):
                    self._nursery.start_soon(self._maintain, self._drain, conn, "idle")
                elif idle > KEEPALIVE_INTERVAL:
                    self._nursery.start_soon(self._maintain, self._keepalive, conn)
            self._forget_stale(now)

    async def _maintain(self, job: Any, conn: Connection, *args: Any) -> None:
        self._maintaining.add(conn)
        try:
            await job(conn, *args)
        finally:
            self._maintaining.discard(conn)

    async def _keepalive(self, conn: Connection) -> None:
        """Any answer proves the peer alive; this does not count as activity for idle_timeout.

        A request rather than a PING: PINGs are checked against the peer's clock (replay window),
        and a skewed clock must not cost honest peers their connections.
        """
        try:
            await conn.request(
                KEEPALIVE_PROTOCOL,
                None,
                timeout=self.settings.handshake_timeout,
                counts_as_activity=False,
            )
        except RemoteError:
            pass  # an error answer is an answer
        except RequestTimeout:
            log.info("peer %s stopped answering; closing", conn.peer_id.short())
            await conn.close("keepalive timeout")
        except ConnectionClosed:
            pass

    def _forget_stale(self, now: float) -> None:
        """Bound what strangers can make us remember: expired backoffs, the oldest addresses."""
        for node_id in [n for n, b in self._backoff.items() if b.retry_at < now - BACKOFF_MAX]:
            del self._backoff[node_id]
        keep = {p.node_id for p in self.bootstrap} | set(self.connections)
        excess = len(self.book) - MAX_BOOK_ENTRIES
        for node_id in list(self.book):
            if excess <= 0:
                break
            if node_id not in keep:
                del self.book[node_id]
                excess -= 1

    # -- RPC --------------------------------------------------------------------------------

    async def request(
        self,
        peer: NodeId | PeerAddress | str,
        protocol: str,
        body: Any = None,
        *,
        timeout: float = 10.0,
    ) -> Any:
        """Send ``body`` to ``peer``'s handler for ``protocol`` and return its answer.

        Raises RemoteError (the handler's error), RequestTimeout, DialError or ConnectionClosed.
        The timeout covers dialing too.
        """
        deadline = trio.current_time() + timeout
        with trio.move_on_at(deadline) as scope:
            conn = await self.connect(peer)
        if scope.cancelled_caught:
            raise RequestTimeout(f"could not reach {peer} within {timeout}s")
        return await conn.request(
            protocol, body, timeout=max(deadline - trio.current_time(), 0.001)
        )

    async def open_stream(self, peer: NodeId | PeerAddress | str, protocol: str) -> Any:
        """A new multiplexed stream to ``peer``'s stream handler for ``protocol``.

        The stream is a ``trio.abc.HalfCloseableStream`` with per-stream flow control: a slow
        reader at the other end slows ``send_all`` here. Raises DialError, or
        ``trio.BrokenResourceError`` if the peer refuses the stream (unknown protocol, too many
        streams) on first use.
        """
        conn = await self.connect(peer)
        return await conn.open_stream(protocol)

    async def ping(
        self, peer: NodeId | PeerAddress | str, *, timeout: float = 10.0
    ) -> tuple[NodeId, float]:
        conn = await self.connect(peer)
        return conn.peer_id, await conn.ping(timeout=timeout)

    # -- introspection ----------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        """Connections in any state, handshakes done (draining ones included)."""
        return len(self._all)

    def peers(self) -> list[dict[str, Any]]:
        return [conn.snapshot() for conn in self.connections.values()]

    def statistics(self) -> dict[str, Any]:
        return {
            "connections": self.open_connections,
            "peers": len(self.connections),
            "listen": list(self.listen_addresses),
            "known_peers": len(self.book),
            "handshake_failures": self.handshake_failures,
            "refused": self.refused,
            "dials_backing_off": sum(
                1 for b in self._backoff.values() if b.retry_at > trio.current_time()
            ),
        }


def _remote(stream: trio.abc.Stream) -> tuple[str | None, str]:
    """The remote host (for address substitution) and a display address of an accepted stream."""
    socket = getattr(stream, "socket", None)
    if socket is None:
        name = getattr(stream, "remote_name", None)
        return name, f"memory://{name}" if name else "?"
    try:
        host, port = socket.getpeername()[:2]
    except OSError:
        return None, "?"
    return str(host), f"tcp://[{host}]:{port}" if ":" in str(host) else f"tcp://{host}:{port}"


def _substitute_host(text: str, remote_host: str | None) -> str:
    """A peer listening on 0.0.0.0 is reachable at the address we see it connect from."""
    try:
        address = parse_address(text)
    except ValueError:
        return text
    if address.host in UNSPECIFIED_HOSTS and remote_host and address.port is not None:
        return str(Address.build(address.scheme, remote_host, address.port, address.path))
    return text


def usable_addresses(addresses: Iterable[str]) -> list[str]:
    """The well-formed addresses among those a peer told us, deduplicated, at most 16.

    Peers' addresses are hostile input: a malformed one must not reach a dial later.
    """
    out: list[str] = []
    for text in addresses:
        try:
            canonical = str(parse_address(text))
        except (ValueError, TypeError):
            continue
        if canonical not in out:
            out.append(canonical)
        if len(out) >= MAX_ADDRESSES_PER_PEER:
            break
    return out


__all__ = ["ConnectionManager", "PeerAddress"]
