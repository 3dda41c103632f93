"""An in-process network: the transport that tests, `zeone.testing` and the simulator run on.

A `MemoryNetwork` stands for one internet; `MemoryTransport(network, name="a")` is one node's
interface to it, with addresses `memory://NAME`. Links have conditions — latency with jitter, loss,
bandwidth — set for the whole network and overridable per ordered pair of names, and the network
can be partitioned and healed, or a node's connections reset, while traffic flows.

Streams behave like TCP connections, which is what the layers above are written against:

- Reliable and ordered. A "lost" segment is not dropped: it arrives `rto` seconds later for each
  time it was lost (like a retransmission), and everything behind it waits for it (head-of-line
  blocking). Jitter never reorders either. A segment is one `send_all` call, or 64 KiB of it.
- Flow-controlled. At most `window` bytes (default 256 KiB) per direction are unacknowledged —
  in flight or unread by the receiver — so a writer whose reader does not read blocks in
  `send_all`, and memory stays bounded. An acknowledgement reaches the writer one base latency
  after the reader consumes the data, so throughput is limited by window / round trip, as in TCP.
- `bandwidth` is per direction of each connection; it is not shared between a node's connections.
- While two names are in different partition groups, dials between them fail at once and data
  between them stalls (held, as TCP would keep retransmitting) until `heal()`, when it is
  delivered immediately. `disconnect(name)` or `partition(..., break_links=True)` resets
  connections instead: both ends then get `trio.BrokenResourceError`. A graceful `aclose` or
  `send_eof` gives the peer end-of-file after all data sent before it.
- Dialing takes one round trip of base latency (no jitter or loss on the handshake).

There are no background tasks at all: a segment's arrival time is computed when it is sent, and
the reader sleeps until it is due. An idle connection is a few small objects, so 10,000 nodes fit
in one process, and with ideal conditions delivery costs one scheduling step. Everything works on
`trio.testing.MockClock` (use `autojump_threshold=0` to make simulated time free).

Randomness is deterministic: each direction of each connection draws from its own generator seeded
from the network's `seed`, both names and the dialer's dial count, so a run replays exactly even
though Trio's scheduler may interleave different connections differently.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import math
import operator
from collections.abc import Iterable
from typing import Any

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

DEFAULT_WINDOW = 256 * 1024
"""Unacknowledged bytes allowed per direction: large enough for a full-size wire frame in flight."""

SEGMENT_SIZE = 64 * 1024
"""Largest unit a write is split into; loss and bandwidth apply per segment."""

DEFAULT_RECEIVE_SIZE = 64 * 1024
DEFAULT_RTO = 0.2
_MASK64 = (1 << 64) - 1


def _non_negative(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _positive(_instance: object, attribute: attrs.Attribute, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _probability(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{attribute.name} must be in [0, 1), got {value!r}")


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


@attrs.frozen
class LinkConditions:
    """How one direction of a link behaves. Times are seconds, bandwidth is bytes per second."""

    latency: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    """One-way delay."""
    jitter: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    """Each segment's delay is latency ± a uniform draw up to this (never below zero)."""
    loss: float = attrs.field(default=0.0, converter=float, validator=_probability)
    """Probability that a segment (or its retransmission) is lost and resent after `rto`."""
    rto: float = attrs.field(default=DEFAULT_RTO, converter=float, validator=_positive)
    """Retransmission delay added for each loss."""
    bandwidth: float | None = attrs.field(
        default=None, converter=_optional_float, validator=_positive
    )
    """Bytes per second per direction of a connection; None is unlimited."""
    ideal: bool = attrs.field(init=False, eq=False, repr=False)

    @ideal.default
    def _ideal(self) -> bool:
        return not (self.latency or self.jitter or self.loss or self.bandwidth)


@attrs.frozen
class NetworkStatistics:
    listeners: int
    connections_open: int
    connections_total: int
    bytes_sent: int
    bytes_delivered: int
    dials_failed: int


class MemoryNetwork:
    """One simulated internet: listeners by name, link conditions, partitions and counters.

    Create one per test or simulation. `seed` makes loss and jitter reproducible; `window` bounds
    the unacknowledged bytes per direction of every connection. The other arguments set
    `default`, the conditions of every link without a `set_link` override.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        latency: float = 0.0,
        jitter: float = 0.0,
        loss: float = 0.0,
        rto: float = DEFAULT_RTO,
        bandwidth: float | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        window = operator.index(window)
        if window < 1:
            raise ValueError(f"window must be at least 1 byte, got {window}")
        self.seed = seed
        self.window = window
        self.default = LinkConditions(
            latency=latency, jitter=jitter, loss=loss, rto=rto, bandwidth=bandwidth
        )
        self._links: dict[tuple[str, str], LinkConditions] = {}
        self._listeners: dict[str, _Listener] = {}
        self._connections: set[_Connection] = set()
        self._by_name: dict[str, set[_Connection]] = {}
        self._group_of: dict[str, int] = {}
        self._name_counter = itertools.count(1)
        self._pair_counter = itertools.count(1)
        self._connections_total = 0
        self._dials_failed = 0
        self._bytes_sent = 0
        self._bytes_delivered = 0

    def __repr__(self) -> str:
        return (
            f"<MemoryNetwork seed={self.seed} listeners={len(self._listeners)} "
            f"connections={len(self._connections)}>"
        )

    # -- link conditions ------------------------------------------------------------------------

    def link(self, src: str, dst: str) -> LinkConditions:
        """The conditions data from `src` to `dst` currently experiences."""
        if self._links:
            return self._links.get((src, dst), self.default)
        return self.default

    def set_link(
        self,
        a: str,
        b: str,
        conditions: LinkConditions | None = None,
        *,
        symmetric: bool = True,
        **changes: Any,
    ) -> None:
        """Override the link a→b (and b→a unless `symmetric=False`).

        Start from `conditions`, or else from the link's current conditions, and apply `changes`
        (`latency=`, `jitter=`, `loss=`, `rto=`, `bandwidth=`). Segments already sent keep the
        timing they were given.
        """
        pairs = [(a, b), (b, a)] if symmetric and a != b else [(a, b)]
        for pair in pairs:
            base = conditions if conditions is not None else self.link(*pair)
            self._links[pair] = attrs.evolve(base, **changes)

    def clear_link(self, a: str, b: str, *, symmetric: bool = True) -> None:
        """Return the link to the network default."""
        self._links.pop((a, b), None)
        if symmetric:
            self._links.pop((b, a), None)

    # -- faults ---------------------------------------------------------------------------------

    def partition(self, *groups: Iterable[str], break_links: bool = False) -> None:
        """Split the network: names in different groups cannot reach each other.

        Names not listed in any group form one more group together. Replaces any earlier
        partition. With `break_links`, connections across groups are reset rather than stalled.
        """
        group_of: dict[str, int] = {}
        for index, group in enumerate(groups):
            if isinstance(group, str):
                raise TypeError(f"partition groups are sets of names, got the string {group!r}")
            for name in group:
                if group_of.setdefault(name, index) != index:
                    raise ValueError(f"{name!r} is in more than one partition group")
        self._group_of = group_of
        if break_links:
            for connection in list(self._connections):
                if not self.reachable(connection.dialer, connection.listener):
                    connection.reset()
        self._wake_readers()

    def heal(self) -> None:
        """Remove the partition; held data is delivered at once."""
        self._group_of = {}
        self._wake_readers()

    def reachable(self, a: str, b: str) -> bool:
        """Whether the current partition lets `a` and `b` talk."""
        group_of = self._group_of
        return not group_of or group_of.get(a, -1) == group_of.get(b, -1)

    def disconnect(self, name: str) -> int:
        """Reset every connection that `name` is an end of; returns how many were reset.

        The node's listeners stay up, so it can be dialed again (a link flap, not a crash: to
        crash a node, cancel its listener).
        """
        connections = list(self._by_name.get(name, ()))
        for connection in connections:
            connection.reset()
        return len(connections)

    # -- introspection --------------------------------------------------------------------------

    def statistics(self) -> NetworkStatistics:
        return NetworkStatistics(
            listeners=len(self._listeners),
            connections_open=len(self._connections),
            connections_total=self._connections_total,
            bytes_sent=self._bytes_sent,
            bytes_delivered=self._bytes_delivered,
            dials_failed=self._dials_failed,
        )

    def listening(self) -> list[str]:
        """Names that currently accept connections."""
        return sorted(self._listeners)

    def stream_pair(self, a: str = "left", b: str = "right") -> tuple[MemoryStream, MemoryStream]:
        """A connected pair of streams between names `a` and `b`, without any listener.

        For protocol tests that need two ends of a connection with this network's conditions,
        partitions and counters, but no dial. Neither name needs to be listening.
        """
        return self._connect(a, b, next(self._pair_counter), "pair")

    # -- internals used by MemoryTransport --------------------------------------------------------

    def _auto_name(self, prefix: str) -> str:
        while True:
            name = f"{prefix}-{next(self._name_counter)}"
            if name not in self._listeners:
                return name

    def _bind(self, name: str, handler: Handler) -> _Listener:
        address = Address.build("memory", name)
        if name in self._listeners:
            raise ListenError(address, "name already in use")
        listener = _Listener(address, handler)
        self._listeners[name] = listener
        return listener

    def _unbind(self, listener: _Listener) -> None:
        if self._listeners.get(listener.address.host) is listener:
            del self._listeners[listener.address.host]

    def _find_listener(self, local: str, address: Address) -> _Listener:
        listener = self._listeners.get(address.host)
        if listener is None or listener.nursery is None:
            self._dials_failed += 1
            raise DialError(address, "connection refused (nobody listens on that name)")
        if not self.reachable(local, address.host):
            self._dials_failed += 1
            raise DialError(address, f"network unreachable from {local!r} (partitioned)")
        return listener

    def _connect(
        self, dialer: str, listener: str, dial_number: int, kind: str
    ) -> tuple[MemoryStream, MemoryStream]:
        key = f"{self.seed}/{kind}/{dialer}/{listener}/{dial_number}"
        forward = _Pipe(self, dialer, listener, _seed64(key + "/fwd"))
        backward = _Pipe(self, listener, dialer, _seed64(key + "/back"))
        connection = _Connection(self, dialer, listener, (forward, backward))
        self._connections.add(connection)
        self._connections_total += 1
        self._by_name.setdefault(dialer, set()).add(connection)
        self._by_name.setdefault(listener, set()).add(connection)
        client = MemoryStream(connection, forward, backward, dialer, listener)
        server = MemoryStream(connection, backward, forward, listener, dialer)
        return client, server

    def _forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        for name in (connection.dialer, connection.listener):
            connections = self._by_name.get(name)
            if connections is not None:
                connections.discard(connection)
                if not connections:
                    del self._by_name[name]

    def _wake_readers(self) -> None:
        for connection in self._connections:
            for pipe in connection.pipes:
                pipe.wake_reader()


@attrs.define(eq=False)
class _Listener:
    address: Address
    handler: Handler
    nursery: trio.Nursery | None = None  # set once the listener's nursery is open


@attrs.define(eq=False)
class _Connection:
    """Both directions of one connection; the network tracks it until both ends are closed."""

    network: MemoryNetwork
    dialer: str
    listener: str
    pipes: tuple[_Pipe, _Pipe]
    open_ends: int = 2

    def end_closed(self) -> None:
        self.open_ends -= 1
        if self.open_ends == 0:
            self.network._forget(self)

    def reset(self) -> None:
        for pipe in self.pipes:
            pipe.reset()
        self.network._forget(self)


def _seed64(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


@attrs.define(eq=False)
class _Pipe:
    """One direction of a connection: segments in flight or unread, and the window accounting.

    `segments` holds (arrival time, data) in order; b"" marks end-of-file. It is created on first
    use, since an empty deque costs more than the rest of an idle connection. `outstanding` counts
    bytes the writer has not yet seen acknowledged, which is what the window limits.
    """

    network: MemoryNetwork
    src: str
    dst: str
    rng: int
    segments: collections.deque[tuple[float, bytes]] | None = None
    head_offset: int = 0
    outstanding: int = 0
    acks: collections.deque[tuple[float, int]] | None = None
    last_arrival: float = -math.inf
    link_free_at: float = -math.inf
    reader_gone: bool = False
    is_reset: bool = False
    reader: trio.lowlevel.Task | None = None
    writer: trio.lowlevel.Task | None = None

    # -- writer side

    def space(self, now: float) -> int:
        acks = self.acks
        while acks and acks[0][0] <= now:
            self.outstanding -= acks.popleft()[1]
        return self.network.window - self.outstanding

    def next_ack_time(self) -> float:
        return self.acks[0][0] if self.acks else math.inf

    def push(self, data: bytes, now: float) -> None:
        """Queue a segment (b"" for end-of-file), timing its arrival by the link's conditions."""
        conditions = self.network.link(self.src, self.dst)
        arrival = now if conditions.ideal else self._arrival(conditions, len(data), now)
        if arrival < self.last_arrival:
            arrival = self.last_arrival  # a stream never reorders
        self.last_arrival = arrival
        if self.segments is None:
            self.segments = collections.deque()
        self.segments.append((arrival, data))
        if data:
            self.outstanding += len(data)
            self.network._bytes_sent += len(data)
        self.wake_reader()

    def _arrival(self, conditions: LinkConditions, size: int, now: float) -> float:
        start = now
        if conditions.bandwidth is not None:
            start = max(now, self.link_free_at) + size / conditions.bandwidth
            self.link_free_at = start
        delay = conditions.latency
        if conditions.jitter:
            delay = max(0.0, delay + (2.0 * self._random() - 1.0) * conditions.jitter)
        if conditions.loss:
            while self._random() < conditions.loss:
                delay += conditions.rto
        return start + delay

    def _random(self) -> float:
        """splitmix64: a full-quality stream from one int of state, so every pipe can own one."""
        self.rng = z = (self.rng + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return ((z ^ (z >> 31)) >> 11) * (1.0 / (1 << 53))

    # -- reader side

    def due(self, now: float) -> float | None:
        """None if a segment can be read now, else when to look again (inf: wait for a wakeup)."""
        if not self.segments:
            return math.inf
        if not self.network.reachable(self.src, self.dst):
            return math.inf
        arrival = self.segments[0][0]
        return None if arrival <= now else arrival

    def take(self, limit: int, now: float) -> bytes:
        """Read up to `limit` bytes of arrived data (b"" at end-of-file) and acknowledge them."""
        segments = self.segments
        assert segments, "take() is only called when due() said a segment is ready"
        data = segments[0][1]
        if not data:
            return b""  # end-of-file stays queued: every later read sees it too
        offset = self.head_offset
        available = len(data) - offset
        if available > limit:
            out = data[offset : offset + limit]
            self.head_offset += limit
            taken = limit
        else:
            out = data[offset:] if offset else data
            segments.popleft()
            self.head_offset = 0
            taken = available
            if taken < limit and segments:
                parts = [out]
                while segments and taken < limit:
                    arrival, data = segments[0]
                    if not data or arrival > now:
                        break
                    if len(data) <= limit - taken:
                        parts.append(data)
                        segments.popleft()
                        taken += len(data)
                    else:
                        parts.append(data[: limit - taken])
                        self.head_offset = limit - taken
                        taken = limit
                if len(parts) > 1:
                    out = b"".join(parts)
        self._acknowledge(taken, now)
        self.network._bytes_delivered += taken
        return out

    def _acknowledge(self, size: int, now: float) -> None:
        delay = self.network.link(self.dst, self.src).latency
        if delay <= 0 and not self.acks:
            self.outstanding -= size
        else:
            if self.acks is None:
                self.acks = collections.deque()
            self.acks.append((now + delay, size))
        self.wake_writer()

    def drop(self) -> None:
        """Discard everything queued; nothing can be read any more."""
        self.segments = None
        self.head_offset = 0
        self.outstanding = 0
        self.acks = None

    def reset(self) -> None:
        self.is_reset = True
        self.drop()
        self.wake_reader()
        self.wake_writer()

    # -- waiting: at most one reader and one writer task, enforced by MemoryStream

    async def wait_reader(self, deadline: float) -> None:
        self.reader = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self.reader = None
            return trio.lowlevel.Abort.SUCCEEDED

        await _wait(abort, deadline)

    async def wait_writer(self, deadline: float) -> None:
        self.writer = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self.writer = None
            return trio.lowlevel.Abort.SUCCEEDED

        await _wait(abort, deadline)

    def wake_reader(self) -> None:
        task, self.reader = self.reader, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def wake_writer(self) -> None:
        task, self.writer = self.writer, None
        if task is not None:
            trio.lowlevel.reschedule(task)


async def _wait(abort: Any, deadline: float) -> None:
    if deadline == math.inf:
        await trio.lowlevel.wait_task_rescheduled(abort)
    else:
        with trio.move_on_at(deadline):
            await trio.lowlevel.wait_task_rescheduled(abort)


class MemoryStream(trio.abc.HalfCloseableStream):
    """One end of a memory connection; see the module docstring for its TCP-like behaviour."""

    __slots__ = (
        "_closed",
        "_connection",
        "_eof_sent",
        "_inbound",
        "_outbound",
        "_receiving",
        "_sending",
        "local_name",
        "remote_name",
    )

    def __init__(
        self,
        connection: _Connection,
        outbound: _Pipe,
        inbound: _Pipe,
        local_name: str,
        remote_name: str,
    ) -> None:
        self._connection = connection
        self._outbound = outbound
        self._inbound = inbound
        self.local_name = local_name
        self.remote_name = remote_name
        self._closed = False
        self._eof_sent = False
        self._sending = False
        self._receiving = False

    def __repr__(self) -> str:
        return f"<MemoryStream {self.local_name} -> {self.remote_name}>"

    @property
    def local_address(self) -> Address:
        return Address.build("memory", self.local_name)

    @property
    def remote_address(self) -> Address:
        return Address.build("memory", self.remote_name)

    # -- sending

    def _check_sendable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed")
        if self._eof_sent:
            raise trio.ClosedResourceError("send_eof() was called on this stream")
        if self._outbound.is_reset:
            raise trio.BrokenResourceError("connection reset")
        if self._outbound.reader_gone:
            raise trio.BrokenResourceError("the peer closed the connection")

    def _claim_send(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._sending = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._claim_send()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            pipe = self._outbound
            if type(data) is bytes and len(data) <= SEGMENT_SIZE:
                view, total = None, len(data)  # the common small write: no copy at all
            else:
                view = memoryview(data)
                if view.ndim != 1 or view.itemsize != 1:
                    view = view.cast("B")
                total = view.nbytes
            offset = 0
            waited = False
            while True:
                self._check_sendable()
                if offset >= total:
                    break
                now = trio.current_time()
                space = pipe.space(now)
                if space <= 0:
                    await pipe.wait_writer(pipe.next_ack_time())
                    waited = True
                    continue
                size = min(space, total - offset, SEGMENT_SIZE)
                if view is None and size == total:
                    segment = data
                else:
                    if view is None:
                        view = memoryview(data)
                    segment = bytes(view[offset : offset + size])
                pipe.push(segment, now)  # type: ignore[arg-type]
                offset += size
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        self._claim_send()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            pipe = self._outbound
            waited = False
            while True:
                if self._closed or self._eof_sent:
                    self._check_sendable()
                if pipe.is_reset or pipe.reader_gone or pipe.space(trio.current_time()) > 0:
                    break  # a broken stream does not block: send_all will raise at once
                await pipe.wait_writer(pipe.next_ack_time())
                waited = True
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        self._claim_send()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._closed:
                raise trio.ClosedResourceError("this stream was closed")
            if not self._eof_sent:
                if self._outbound.is_reset:
                    raise trio.BrokenResourceError("connection reset")
                self._eof_sent = True
                if not self._outbound.reader_gone:
                    self._outbound.push(b"", trio.current_time())
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    # -- receiving

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            limit = DEFAULT_RECEIVE_SIZE
        else:
            limit = operator.index(max_bytes)
            if limit < 1:
                raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            pipe = self._inbound
            waited = False
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("this stream was closed")
                if pipe.is_reset:
                    raise trio.BrokenResourceError("connection reset")
                now = trio.current_time()
                deadline = pipe.due(now)
                if deadline is None:
                    data = pipe.take(limit, now)
                    break
                await pipe.wait_reader(deadline)
                waited = True
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receiving = False

    # -- closing

    async def aclose(self) -> None:
        """Close both directions: the peer reads what was sent, then end-of-file; its writes
        fail with BrokenResourceError. Unread incoming data is discarded."""
        if not self._closed:
            self._closed = True
            outbound, inbound = self._outbound, self._inbound
            if not self._eof_sent and not outbound.is_reset and not outbound.reader_gone:
                outbound.push(b"", trio.current_time())
            self._eof_sent = True
            inbound.reader_gone = True
            inbound.drop()
            inbound.wake_writer()  # the peer's blocked send_all fails
            inbound.wake_reader()  # our own blocked receive_some fails
            outbound.wake_writer()  # our own blocked send_all fails
            self._connection.end_closed()
        await trio.lowlevel.checkpoint()


@attrs.define(eq=False)
class MemoryTransport(Transport):
    """One node's attachment to a `MemoryNetwork` (scheme "memory").

    `name` is the node's name for partitions and per-pair link conditions, on the connections it
    dials as well as those it accepts. Without one, dials use the name of the first listener this
    transport runs, or else an automatic "dialer-N".
    """

    scheme = "memory"

    network: MemoryNetwork
    name: str | None = None
    _bound: list[str] = attrs.field(factory=list, init=False)
    _auto_name: str | None = attrs.field(default=None, init=False)
    _dials: int = attrs.field(default=0, init=False)

    @property
    def local_name(self) -> str:
        if self.name:
            return self.name
        if self._bound:
            return self._bound[0]
        if self._auto_name is None:
            self._auto_name = self.network._auto_name("dialer")
        return self._auto_name

    async def dial(self, address: Address) -> MemoryStream:
        self.check_address(address)
        if not address.host:
            raise DialError(address, "a memory address to dial needs a name")
        network, local, remote = self.network, self.local_name, address.host
        network._find_listener(local, address)
        self._dials += 1
        dial_number = self._dials
        await _sleep(network.link(local, remote).latency)  # SYN
        listener = network._find_listener(local, address)
        client, server = network._connect(local, remote, dial_number, "dial")
        assert listener.nursery is not None  # _find_listener only returns open listeners
        listener.nursery.start_soon(
            serve_connection, listener.handler, server, listener.address, name=repr(server)
        )
        try:
            await _sleep(network.link(remote, local).latency)  # SYN-ACK
        except BaseException:
            client._connection.reset()  # the accepting side sees a reset, as after a lost ACK
            raise
        return client

    async def listen(
        self,
        address: Address,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections on `memory://NAME` until cancelled.

        An empty name takes this transport's `name`, or else a fresh "node-N". Cancelling closes
        every accepted connection (their handlers are cancelled) and frees the name.
        """
        self.check_address(address)
        name = address.host or self.name or self.network._auto_name("node")
        listener = self.network._bind(name, handler)  # raises here, not inside the nursery
        self._bound.append(name)

        def unbind() -> None:  # before the nursery waits for its handlers, so no new arrivals
            if name in self._bound:
                self._bound.remove(name)
                self.network._unbind(listener)

        try:
            async with trio.open_nursery() as nursery:
                listener.nursery = nursery
                try:
                    task_status.started(listener.address)
                    await trio.sleep_forever()
                finally:
                    unbind()
        finally:
            unbind()


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await trio.sleep(seconds)
    else:
        await trio.lowlevel.checkpoint()
