"""Popularity-driven replication (seed 004 §6.2) over `/zeone/cdn/1`.

A holder whose request rate for a content passes `replicate_rate` looks the content's holders up
and, if there are fewer than `target_replicas`, asks connected neighbours that do not hold it to
replicate it: ``{"op": "replicate", "cid": <32 bytes>}``. The neighbour answers at once
(``{"accepted": bool, "reason": str}``) and fetches in the background: it checks the signed
manifest like any transfer, declines content larger than `replica_max_fraction` of its cache, and
makes room only by evicting content less popular than the newcomer, so a flood of requests cannot
push out what its own users read. Finished replicas are announced, so later requests spread over
more holders. Seed nodes (`pinned = [...]`) fetch their pinned set and never evict it.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import attrs
import trio

from zeone.content import ContentError, ContentId, find_holders
from zeone.errors import ZeoneError
from zeone.identity import NodeId
from zeone.rpc import RemoteError, Request
from zeone_cdn.cache import Cdn
from zeone_cdn.popularity import score

log = logging.getLogger(__name__)

PROTOCOL = "/zeone/cdn/1"
QUEUE = 8
REPLICA_SCORE_FACTOR = 0.5
"""A replica may evict content scoring below this fraction of the requested rate's score."""


@attrs.define(eq=False)
class ReplicaRequest:
    cid: ContentId
    peer: NodeId


class Replicator:
    """Both sides: answers replica requests, and asks for replicas of what is hot here."""

    def __init__(self, cdn: Cdn) -> None:
        self.cdn = cdn
        self.send, self.receive = trio.open_memory_channel[ReplicaRequest](QUEUE)
        self.last_asked: dict[ContentId, float] = {}

    # -- answering -------------------------------------------------------------------------------

    async def handle(self, request: Request) -> dict[str, Any]:
        body = request.payload
        if not isinstance(body, dict) or body.get("op") != "replicate":
            raise RemoteError("bad-request", "expected {'op': 'replicate', 'cid': <32 bytes>}")
        try:
            cid = ContentId.from_bytes(body.get("cid"))
        except ContentError as exc:
            raise RemoteError("bad-request", str(exc)) from None
        if not self.cdn.config.accept_replicas:
            return {"accepted": False, "reason": "this node does not take replicas"}
        if self.cdn.is_bad(request.peer):
            return {"accepted": False, "reason": "refused"}
        if await self.cdn.store.has(cid):
            return {"accepted": False, "reason": "held"}
        try:
            self.send.send_nowait(ReplicaRequest(cid, request.peer))
        except trio.WouldBlock:
            raise RemoteError("busy", "replication queue is full") from None
        self.cdn.stats.replicas_accepted += 1
        return {"accepted": True, "reason": ""}

    async def worker(self) -> None:
        """Fetch accepted replicas one at a time (bounded work whatever peers ask)."""
        async for item in self.receive:
            cdn = self.cdn
            # The requester's claim of popularity is not trusted: the newcomer counts as one
            # request from it, and may only push out content scoring below half of that.
            cdn.hit(item.cid, f"peer:{item.peer}")
            below = score(1.0, 1, 0.0) * REPLICA_SCORE_FACTOR
            try:
                manifest = await cdn.resolve(item.cid, first=item.peer)
                limit = cdn.config.max_bytes * cdn.config.replica_max_fraction
                if manifest.size > limit:
                    cdn.stats.replicas_declined += 1
                    log.info("declined replica %s: larger than %d bytes", item.cid, limit)
                    if await cdn.store.has_manifest(item.cid) and not await cdn.store.has(item.cid):
                        await cdn.store.delete(item.cid)
                    continue
                if await cdn.fetch_all(item.cid, first=item.peer, below=below):
                    cdn.stats.replicas_fetched += 1
                    log.info("replicated %s for %s", item.cid, item.peer.short())
                else:
                    cdn.stats.replicas_declined += 1
            except (ZeoneError, OSError, trio.TooSlowError) as exc:
                cdn.stats.replicas_declined += 1
                log.info("replica %s failed: %s", item.cid, exc)

    # -- asking ----------------------------------------------------------------------------------

    async def scan(self) -> None:
        """One pass: ask neighbours to replicate content hotter than `replicate_rate`."""
        cdn, config = self.cdn, self.cdn.config
        if config.replicate_rate <= 0:
            return
        now = time.time()
        cooldown = 10 * config.replicate_interval
        for item in await cdn.store.list_contents():
            if not item.complete:
                continue
            rate = cdn.popularity.rate_per_hour(str(item.cid), now)
            if rate < config.replicate_rate:
                continue
            if now - self.last_asked.get(item.cid, 0.0) < cooldown:
                continue
            self.last_asked[item.cid] = now
            await self.ask(item.cid)

    async def ask(self, cid: ContentId) -> int:
        """Ask non-holding neighbours to bring `cid` up to `target_replicas`; returns accepts."""
        cdn, config = self.cdn, self.cdn.config
        try:
            with trio.fail_after(15):
                holders = await find_holders(cdn.node, cid, count=config.target_replicas)
        except (ZeoneError, OSError, trio.TooSlowError):
            holders = []
        holder_ids = {h.contact.node_id for h in holders}
        wanted = config.target_replicas - (len(holder_ids) + 1)
        if wanted <= 0:
            return 0
        peers = [
            p
            for p in list(cdn.node.network.connections)
            if p not in holder_ids and not cdn.is_bad(p)
        ]
        random.shuffle(peers)
        accepted = 0
        for peer in peers:
            if accepted >= wanted:
                break
            cdn.stats.replicas_requested += 1
            try:
                answer = await cdn.node.rpc.request(
                    peer, PROTOCOL, {"op": "replicate", "cid": cid.digest}, timeout=10
                )
            except (ZeoneError, OSError) as exc:  # no CDN plugin there, busy, gone
                log.debug("replica request to %s failed: %s", peer.short(), exc)
                continue
            if isinstance(answer, dict) and answer.get("accepted") is True:
                accepted += 1
        return accepted

    async def sync_pinned(self) -> None:
        """Fetch the configured pinned set (seed nodes) until it is all held."""
        for text in self.cdn.config.pinned:
            cid = ContentId.parse(text)
            if await self.cdn.store.has(cid):
                await self.cdn.store.set_pinned(cid, True)
                continue
            try:
                await self.cdn.fetch_all(cid, pin=True)
            except (ZeoneError, OSError, trio.TooSlowError) as exc:
                log.info("pinned content %s not fetched yet: %s", cid, exc)
