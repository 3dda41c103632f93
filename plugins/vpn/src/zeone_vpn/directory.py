"""Entry-side exit selection: find exits in the DHT, probe them, rank them, remember failures.

Exits publish provider records under ``service:vpn_exit`` with a policy summary. The directory
refreshes that list, probes each exit with ``/zeone/vpn/info/1`` (round-trip time and current
load), and for a flow returns candidates in order: up, policy allows the destination, then by
``rtt * (1 + load)``. A failed exit is put in a growing backoff so the next flows go elsewhere.

Stream isolation: flows with an isolation key (SOCKS credentials) stick to one exit per key, and
a new key gets the exit with the fewest keys already, so different credentials use different
exits while there are enough of them (like Tor's IsolateSOCKSAuth).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from typing import Any

import attrs
import trio

from zeone.errors import ZeoneError
from zeone.identity import NodeId
from zeone.net.manager import usable_addresses
from zeone_vpn.exit import EXIT_KEY, RELAY_KEY
from zeone_vpn.policy import ExitPolicy, PolicyError
from zeone_vpn.wire import INFO_PROTOCOL

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0
BACKOFF_BASE = 2.0
BACKOFF_MAX = 120.0
MAX_EXITS = 64
MAX_KEYS = 4096


@attrs.define(eq=False)
class ExitInfo:
    node_id: NodeId
    policy: ExitPolicy
    udp: bool = True
    rtt: float | None = None
    load: float = 0.0
    flows: int = 0
    failures: int = 0
    down_until: float = 0.0
    keys: int = 0
    pinned: bool = False
    onion_key: bytes | None = None

    def up(self, now: float) -> bool:
        return now >= self.down_until

    def score(self) -> float:
        return (self.rtt if self.rtt is not None else 1.0) * (1.0 + self.load)

    def allows(self, host: str, port: int) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return self.policy.may_allow_port(port)
        return self.policy.check(address, port).allowed

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "node_id": str(self.node_id),
            "up": self.up(now),
            "rtt_ms": round(self.rtt * 1000, 2) if self.rtt is not None else None,
            "load": round(self.load, 3),
            "flows": self.flows,
            "failures": self.failures,
            "isolation_keys": self.keys,
            "policy": self.policy.summary(),
        }


class ExitDirectory:
    def __init__(self, node: Any, pinned: list[str], probe_interval: float, hops: int = 1) -> None:
        self.node = node
        self.hops = hops
        self.exits: dict[NodeId, ExitInfo] = {}
        self.relays: dict[NodeId, ExitInfo] = {}
        """Two-hop mode: middle nodes (their policy field is unused)."""
        self._next_relay = 0
        self.pinned = [NodeId.parse(text) for text in pinned]
        self.probe_interval = probe_interval
        self.sticky: dict[Any, NodeId] = {}
        self.last_refresh = -1e9
        self._lock = trio.Lock()
        for node_id in self.pinned:
            self.exits[node_id] = ExitInfo(node_id, ExitPolicy.parse(["allow *:*"]), pinned=True)

    # -- discovery and probing ----------------------------------------------------------------

    async def refresh(self) -> None:
        """Find exits in the DHT and probe every known one (serialised: callers share a run)."""
        started = trio.current_time()
        async with self._lock:
            if self.last_refresh >= started:
                return  # someone refreshed while we waited
            try:
                providers = await self.node.dht.find_providers(EXIT_KEY, count=MAX_EXITS)
            except (ZeoneError, OSError) as exc:
                log.info("VPN exit lookup failed: %s", exc)
                providers = []
            for provider in providers:
                self._learn(provider)
            if self.hops > 1:
                try:
                    relays = await self.node.dht.find_providers(RELAY_KEY, count=MAX_EXITS)
                except (ZeoneError, OSError) as exc:
                    log.info("VPN relay lookup failed: %s", exc)
                    relays = []
                for provider in relays:
                    self._learn_relay(provider)
            async with trio.open_nursery() as nursery:
                # With two hops the exit must not learn who we are: no direct probes to exits.
                if self.hops > 1:
                    for info in list(self.relays.values()):
                        nursery.start_soon(self.ping, info)
                else:
                    for info in list(self.exits.values()):
                        nursery.start_soon(self.probe, info)
            self.last_refresh = trio.current_time()

    def _learn(self, provider: Any) -> None:
        node_id = provider.contact.node_id
        if node_id == self.node.node_id:
            return
        meta = provider.info.meta
        try:
            rules = meta.get("policy", [])
            if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
                raise PolicyError("policy is not a list of strings")
            policy = ExitPolicy.parse(rules)
        except PolicyError as exc:
            log.info("ignoring VPN exit %s: bad policy summary: %s", node_id.short(), exc)
            return
        info = self.exits.get(node_id)
        if info is None:
            if len(self.exits) >= MAX_EXITS:
                return
            info = self.exits[node_id] = ExitInfo(node_id, policy)
        elif not info.pinned:
            info.policy = policy
        info.udp = meta.get("udp", True) is not False
        onion_key = meta.get("onion_key")
        if isinstance(onion_key, bytes) and len(onion_key) == 32:
            info.onion_key = onion_key
        self._remember(provider)

    def _learn_relay(self, provider: Any) -> None:
        node_id = provider.contact.node_id
        if node_id == self.node.node_id or node_id in self.relays:
            return
        if len(self.relays) < MAX_EXITS:
            self.relays[node_id] = ExitInfo(node_id, ExitPolicy(()))
            self._remember(provider)

    def _remember(self, provider: Any) -> None:
        node_id = provider.contact.node_id
        known = self.node.network.book.setdefault(node_id, [])
        known.extend(a for a in usable_addresses(provider.contact.addresses) if a not in known)

    def relay_for(self, exit: NodeId) -> ExitInfo | None:
        """A middle node for a two-hop flow to ``exit``: up, not the exit, rotating."""
        now = trio.current_time()
        usable = [r for r in self.relays.values() if r.node_id != exit]
        up = [r for r in usable if r.up(now)] or sorted(usable, key=lambda r: r.down_until)
        if not up:
            return None
        self._next_relay += 1
        return up[self._next_relay % len(up)]

    def relay_snapshot(self) -> list[dict[str, Any]]:
        now = trio.current_time()
        return [
            {"node_id": str(r.node_id), "up": r.up(now), "failures": r.failures,
             "rtt_ms": round(r.rtt * 1000, 2) if r.rtt is not None else None}
            for r in self.relays.values()
        ]  # fmt: skip

    async def ping(self, info: ExitInfo) -> None:
        try:
            _, info.rtt = await self.node.rpc.ping(info.node_id, timeout=PROBE_TIMEOUT)
        except (ZeoneError, OSError) as exc:
            log.debug("VPN relay %s did not answer a ping: %s", info.node_id.short(), exc)
            self.failed(info.node_id)
            return
        self.succeeded(info.node_id)

    async def probe(self, info: ExitInfo) -> None:
        started = trio.current_time()
        try:
            answer = await self.node.rpc.request(
                info.node_id, INFO_PROTOCOL, None, timeout=PROBE_TIMEOUT
            )
        except (ZeoneError, OSError) as exc:
            log.debug("VPN exit %s did not answer a probe: %s", info.node_id.short(), exc)
            self.failed(info.node_id)
            return
        info.rtt = trio.current_time() - started
        if isinstance(answer, dict):
            flows, max_flows = answer.get("flows"), answer.get("max_flows")
            if type(flows) is int and type(max_flows) is int and max_flows > 0 and flows >= 0:
                info.flows = flows
                info.load = min(flows / max_flows, 1.0)
            onion_key = answer.get("onion_key")
            if isinstance(onion_key, bytes) and len(onion_key) == 32:
                info.onion_key = onion_key
            rules = answer.get("policy")
            if isinstance(rules, list) and all(isinstance(r, str) for r in rules):
                with contextlib.suppress(PolicyError):
                    info.policy = ExitPolicy.parse(rules)
        self.succeeded(info.node_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.refresh()
            await trio.sleep(self.probe_interval if self.exits else min(self.probe_interval, 2.0))

    # -- health ------------------------------------------------------------------------------

    def failed(self, node_id: NodeId) -> None:
        info = self.exits.get(node_id) or self.relays.get(node_id)
        if info is None:
            return
        info.failures += 1
        delay = min(BACKOFF_BASE * 2 ** min(info.failures - 1, 10), BACKOFF_MAX)
        info.down_until = trio.current_time() + delay

    def succeeded(self, node_id: NodeId) -> None:
        info = self.exits.get(node_id) or self.relays.get(node_id)
        if info is not None:
            info.failures = 0
            info.down_until = 0.0

    # -- selection ---------------------------------------------------------------------------

    def candidates(
        self, host: str, port: int, *, key: Any = None, udp: bool = False
    ) -> tuple[list[ExitInfo], bool]:
        """Exits to try in order, and whether any exit's policy allowed the destination at all
        (False means: refuse with "not allowed", not "unreachable")."""
        now = trio.current_time()
        usable = [
            i
            for i in self.exits.values()
            if (not udp or i.udp) and (self.hops == 1 or i.onion_key is not None)
        ]
        # UDP destinations are per datagram: the exit checks each one.
        allowed = usable if udp else [i for i in usable if i.allows(host, port)]
        up = sorted((i for i in allowed if i.up(now)), key=ExitInfo.score)
        if not up:
            # Everything is backing off: try them anyway, least recently failed first.
            up = sorted(allowed, key=lambda i: i.down_until)
        if key is not None and up:
            chosen = self._sticky(key, up)
            up.remove(chosen)
            up.insert(0, chosen)
        return up, bool(allowed) or not usable

    def _sticky(self, key: Any, ranked: list[ExitInfo]) -> ExitInfo:
        current = self.sticky.get(key)
        for info in ranked:
            if info.node_id == current:
                return info
        chosen = min(ranked, key=lambda i: (i.keys, ranked.index(i)))
        old = self.exits.get(current) if current is not None else None
        if old is not None:
            old.keys -= 1
        if len(self.sticky) >= MAX_KEYS and key not in self.sticky:
            self.sticky.pop(next(iter(self.sticky)))
        self.sticky[key] = chosen.node_id
        chosen.keys += 1
        return chosen

    def rebind(self, key: Any, node_id: NodeId) -> None:
        """A failover moved ``key`` to ``node_id``: keep it there."""
        if key is None or self.sticky.get(key) == node_id:
            return
        old = self.exits.get(self.sticky.get(key))  # type: ignore[arg-type]
        if old is not None:
            old.keys -= 1
        self.sticky[key] = node_id
        new = self.exits.get(node_id)
        if new is not None:
            new.keys += 1

    def snapshot(self) -> list[dict[str, Any]]:
        now = trio.current_time()
        return [info.snapshot(now) for info in self.exits.values()]
