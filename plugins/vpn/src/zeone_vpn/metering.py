"""Byte metering per peer and direction, and the seam a settlement plugin charges through.

Every flow (a TCP connection or a UDP association) is counted on each node it crosses: at the
entry against the exit it used, at a relay against the entry, at the exit against the node that
sent it the flow. Counters are plain integer
additions in the relay loop; everything else (Prometheus, status, usage records) reads them.

**Settlement seam.** A plugin that wants to charge or pay for traffic registers a `UsageSink`::

    from zeone_vpn.metering import Usage, register_usage_sink

    class Settle:
        def record_usage(self, usage: Usage) -> None:
            ...  # e.g. issue an IOU to usage.peer for usage.sent + usage.received bytes

    register_usage_sink(node, Settle())   # from the settlement plugin's zeone_services hook

The VPN plugin then calls ``record_usage`` with a `Usage` record for every flow: one interim
record per ``usage_interval`` seconds while the flow carries bytes, and a final record
(``final=True``) when it ends. Each record holds the bytes since the previous record of that
flow, so summing records never double-counts. Calls are synchronous, in the node's Trio thread,
and must not block; an exception in a sink is logged and does not affect the flow or other sinks.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Literal, Protocol, runtime_checkable

import attrs
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from zeone.identity import NodeId

log = logging.getLogger(__name__)

Role = Literal["entry", "relay", "exit"]
Kind = Literal["tcp", "udp"]

MAX_LABELLED_PEERS = 256
"""Prometheus series per peer are capped; the rest are summed under peer="other"."""


@attrs.frozen
class Usage:
    """Bytes carried for one flow since its previous record.

    ``peer`` is the neighbouring node: the exit (at the entry), the entry (at a relay) or the
    node that sent the flow (at the exit: the entry, or the relay of a two-hop flow).
    ``sent`` are bytes this node sent to ``peer`` over the flow's stream, ``received`` bytes it
    received from ``peer``; at an exit, ``received`` is the client's upload and ``sent`` its
    download.
    """

    peer: NodeId
    role: Role
    kind: Kind
    flow_id: int
    sent: int
    received: int
    final: bool
    started: float
    at: float


@runtime_checkable
class UsageSink(Protocol):
    def record_usage(self, usage: Usage) -> None: ...


@attrs.define(eq=False)
class PeerTotals:
    sent: int = 0
    received: int = 0
    flows: int = 0
    active: int = 0


@attrs.define(eq=False)
class Flow:
    """One relayed flow; the relay loop adds to ``sent``/``received`` directly."""

    flow_id: int
    peer: NodeId
    role: Role
    kind: Kind
    target: str
    totals: PeerTotals
    started: float = attrs.Factory(time.time)
    sent: int = 0
    received: int = 0
    reported_sent: int = 0
    reported_received: int = 0

    def add_sent(self, size: int) -> None:
        self.sent += size
        self.totals.sent += size

    def add_received(self, size: int) -> None:
        self.received += size
        self.totals.received += size

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.flow_id,
            "peer": str(self.peer),
            "role": self.role,
            "kind": self.kind,
            "target": self.target,
            "sent": self.sent,
            "received": self.received,
            "age_s": round(time.time() - self.started, 1),
        }


class Meter:
    """Per-node flow registry, per-peer totals, throughput samples and usage sinks."""

    def __init__(self) -> None:
        self.peers: dict[tuple[Role, NodeId], PeerTotals] = {}
        self.flows: dict[int, Flow] = {}
        self.sinks: list[UsageSink] = []
        self._ids = itertools.count(1)
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=11)
        self.refused: dict[str, int] = {}

    def add_sink(self, sink: UsageSink) -> None:
        if not callable(getattr(sink, "record_usage", None)):
            raise TypeError(f"{sink!r} has no record_usage(usage) method")
        self.sinks.append(sink)

    def remove_sink(self, sink: UsageSink) -> None:
        self.sinks.remove(sink)

    def open(self, peer: NodeId, role: Role, kind: Kind, target: str) -> Flow:
        totals = self.peers.get((role, peer))
        if totals is None:
            totals = self.peers[(role, peer)] = PeerTotals()
        totals.flows += 1
        totals.active += 1
        flow = Flow(next(self._ids), peer, role, kind, target, totals)
        self.flows[flow.flow_id] = flow
        return flow

    def close(self, flow: Flow) -> None:
        if self.flows.pop(flow.flow_id, None) is None:
            return
        flow.totals.active -= 1
        self._emit(flow, final=True)

    def count_refusal(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def flush(self) -> None:
        """Interim usage records for live flows that carried bytes since their last record."""
        for flow in list(self.flows.values()):
            if flow.sent != flow.reported_sent or flow.received != flow.reported_received:
                self._emit(flow, final=False)

    def _emit(self, flow: Flow, *, final: bool) -> None:
        sent = flow.sent - flow.reported_sent
        received = flow.received - flow.reported_received
        flow.reported_sent, flow.reported_received = flow.sent, flow.received
        if not self.sinks:
            return
        usage = Usage(
            flow.peer, flow.role, flow.kind, flow.flow_id, sent, received, final,
            flow.started, time.time(),
        )  # fmt: skip
        for sink in list(self.sinks):
            try:
                sink.record_usage(usage)
            except Exception:
                log.exception("VPN usage sink %r failed", sink)

    # -- reading ----------------------------------------------------------------------------

    def totals(self) -> tuple[int, int]:
        sent = sum(t.sent for t in self.peers.values())
        received = sum(t.received for t in self.peers.values())
        return sent, received

    def sample(self) -> None:
        sent, received = self.totals()
        self._samples.append((trio.current_time(), sent, received))

    def throughput(self) -> dict[str, float]:
        """Bytes per second over the last (up to) 10 s of samples."""
        if len(self._samples) < 2:
            return {"sent_bps": 0.0, "received_bps": 0.0}
        (t0, s0, r0), (t1, s1, r1) = self._samples[0], self._samples[-1]
        span = max(t1 - t0, 1e-9)
        return {"sent_bps": round((s1 - s0) / span, 1), "received_bps": round((r1 - r0) / span, 1)}

    def peer_rows(self) -> list[dict[str, Any]]:
        return [
            {"peer": str(peer), "role": role, "sent": t.sent, "received": t.received,
             "flows": t.flows, "active": t.active}
            for (role, peer), t in self.peers.items()
        ]  # fmt: skip

    def collect(self) -> Iterator[Any]:
        """Prometheus collector protocol."""
        counter = CounterMetricFamily(
            "zeone_vpn_bytes",
            "Bytes relayed for VPN flows, by role, peer node and direction.",
            labels=["role", "peer", "direction"],
        )
        flows = CounterMetricFamily(
            "zeone_vpn_flows", "VPN flows opened, by role.", labels=["role"]
        )
        active = GaugeMetricFamily("zeone_vpn_active_flows", "VPN flows open now.", labels=["role"])
        refused = CounterMetricFamily(
            "zeone_vpn_refused", "VPN flows refused, by reason.", labels=["reason"]
        )
        other: dict[tuple[str, str], int] = {}
        by_role: dict[str, list[int]] = {"entry": [0, 0], "relay": [0, 0], "exit": [0, 0]}
        for index, ((role, peer), t) in enumerate(self.peers.items()):
            by_role[role][0] += t.flows
            by_role[role][1] += t.active
            if index < MAX_LABELLED_PEERS:
                counter.add_metric([role, str(peer), "sent"], t.sent)
                counter.add_metric([role, str(peer), "received"], t.received)
            else:
                other[(role, "sent")] = other.get((role, "sent"), 0) + t.sent
                other[(role, "received")] = other.get((role, "received"), 0) + t.received
        for (role, direction), value in other.items():
            counter.add_metric([role, "other", direction], value)
        for role, (opened, live) in by_role.items():
            flows.add_metric([role], opened)
            active.add_metric([role], live)
        for reason, count in self.refused.items():
            refused.add_metric([reason], count)
        yield counter
        yield flows
        yield active
        yield refused


def meter_of(node: Any) -> Meter:
    from zeone_vpn.state import state

    return state(node).meter


def register_usage_sink(node: Any, sink: UsageSink) -> None:
    """Have ``sink.record_usage(usage)`` called for every VPN flow on ``node`` (see module doc)."""
    meter_of(node).add_sink(sink)
