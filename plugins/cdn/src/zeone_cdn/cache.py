"""The CDN node: a bounded, popularity-evicted cache of verified content, and transfers.

`Cdn` owns the node's `ContentStore` (under `<data dir>/cdn`), the popularity counters and the
bookkeeping of transfers in flight. Content is served from the store when complete; otherwise the
missing chunks come from holders found in the DHT (a `Swarm`), are verified before anything is
delivered, and are written to the store as they arrive when the content fits in the cache, so the
next request is local. A complete cached content is announced as a provider record.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from zeone.content import (
    ChunkVerificationError,
    ContentError,
    ContentId,
    ContentNotFound,
    ContentStore,
    Manifest,
    announce,
    fetch_leaves,
    fetch_manifest,
    find_holders,
    stop_announcing,
)
from zeone.errors import ZeoneError
from zeone.identity import NodeId
from zeone_cdn.config import CdnConfig
from zeone_cdn.popularity import Popularity
from zeone_cdn.swarm import Holder, Swarm, ordered_chunks

log = logging.getLogger(__name__)

Deliver = Callable[[bytes], Awaitable[None]]
BAD_PEER_SECONDS = 600.0
LOOKUP_TIMEOUT = 15.0
WRITE_BATCH = 16
HOLDERS_FRESH = 60.0
"""Seconds a holder list found for a manifest is reused for the chunk transfer that follows."""
MANIFEST_MEMORY = 256
"""Manifests of content not kept in the store (larger than the cache) remembered in memory."""
FLUSH_TIMEOUT = 30.0


class NotAvailable(ContentError):
    """The content could not be obtained: `holders` says whether anyone claimed to have it."""

    def __init__(self, message: str, *, holders: int) -> None:
        super().__init__(message)
        self.holders = holders


@attrs.define
class Stats:
    requests: int = 0
    bytes_served: int = 0
    chunks_from_peers: int = 0
    bytes_from_peers: int = 0
    bad_chunks: int = 0
    bad_manifests: int = 0
    aborted: int = 0
    evictions: int = 0
    replicas_requested: int = 0
    replicas_accepted: int = 0
    replicas_declined: int = 0
    replicas_fetched: int = 0


class Cdn:
    """One node's CDN state; created by the plugin, driven by its service and the gateway."""

    def __init__(self, node: Any, config: CdnConfig, directory: Path) -> None:
        self.node = node
        self.config = config
        self.store = ContentStore(directory)
        self.popularity = Popularity(config.half_life)
        self.stats = Stats()
        self.active: dict[ContentId, int] = {}
        self.bad_peers: dict[NodeId, float] = {}
        self.announced: set[ContentId] = set()
        self._nursery: trio.Nursery | None = None
        self._fetching: set[ContentId] = set()
        self._room_lock = trio.Lock()
        self._manifests: OrderedDict[ContentId, Manifest] = OrderedDict()
        self._holders: dict[ContentId, tuple[float, list[Holder]]] = {}

    # -- background work ----------------------------------------------------------------------

    def attach(self, nursery: trio.Nursery | None) -> None:
        self._nursery = nursery

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        """Run `fn` in the service's nursery (False if the service is not running)."""
        if self._nursery is None:
            return False
        self._nursery.start_soon(fn, *args)
        return True

    # -- popularity ------------------------------------------------------------------------------

    def hit(self, cid: ContentId, requester: str) -> None:
        self.popularity.hit(str(cid), requester, time.time())

    def mark_bad(self, peer: NodeId, error: Exception) -> None:
        self.bad_peers[peer] = time.monotonic() + BAD_PEER_SECONDS
        if isinstance(error, ChunkVerificationError):
            self.stats.bad_chunks += 1
        else:
            self.stats.bad_manifests += 1

    def is_bad(self, peer: NodeId) -> bool:
        until = self.bad_peers.get(peer)
        if until is None:
            return False
        if until < time.monotonic():
            del self.bad_peers[peer]
            return False
        return True

    # -- publishing ------------------------------------------------------------------------------

    async def publish(
        self,
        path: Path,
        *,
        name: str | None = None,
        media_type: str | None = None,
        chunk_size: int | None = None,
        pin: bool | None = None,
    ) -> Manifest:
        """Import a file or directory into the store (one pass), pin it and announce it."""
        pin = self.config.pin_published if pin is None else pin
        options: dict[str, Any] = {"chunk_size": chunk_size or self.config.chunk_size}
        if name is not None:
            options["name"] = name
        if await trio.to_thread.run_sync(path.is_dir):
            built = await self.store.import_directory(
                path, self.node.identity, pinned=pin, **options
            )
        elif await trio.to_thread.run_sync(path.is_file):
            if media_type is not None:
                options["media_type"] = media_type
            built = await self.store.import_file(path, self.node.identity, pinned=pin, **options)
        else:
            raise ContentError(f"{path}: not a regular file or directory")
        cid = built.manifest.content_id
        if pin:
            await self.store.set_pinned(cid, True)
        await self.enforce_bound()
        self.spawn(self.announce, cid)
        return built.manifest

    async def announce(self, cid: ContentId) -> None:
        try:
            with trio.fail_after(LOOKUP_TIMEOUT):
                await announce(self.node, cid, meta={"cdn": True})
            self.announced.add(cid)
        except (ZeoneError, OSError, trio.TooSlowError, ValueError) as exc:
            # the DHT keeps republishing our own record, so a failed first push is not fatal
            self.announced.add(cid)
            log.info("announcing %s did not reach peers yet: %s", cid, exc)

    async def announce_held(self) -> None:
        """Announce every complete content in the store (at start)."""
        for item in await self.store.list_contents():
            if item.complete and item.cid not in self.announced:
                await self.announce(item.cid)

    # -- resolving -------------------------------------------------------------------------------

    async def holders(self, cid: ContentId, first: NodeId | None = None) -> list[Holder]:
        """Holders of `cid` from the DHT (`first` ahead of them), minus known liars.

        A list found in the last `HOLDERS_FRESH` seconds is reused (with fresh per-transfer
        state), so a request costs one lookup, not one for the manifest and one for the chunks.
        """
        cached = self._holders.get(cid)
        if first is None and cached is not None and time.monotonic() - cached[0] < HOLDERS_FRESH:
            return [Holder(h.node_id, h.target) for h in cached[1] if not self.is_bad(h.node_id)]
        found: list[Holder] = []
        if first is not None:
            found.append(Holder.of(first))
        try:
            with trio.fail_after(LOOKUP_TIMEOUT):
                providers = await find_holders(self.node, cid, count=self.config.max_holders)
        except (ZeoneError, OSError, trio.TooSlowError) as exc:
            log.info("looking up holders of %s failed: %s", cid, exc)
            providers = []
        for provider in providers:
            node_id = provider.contact.node_id
            if node_id == first or self.is_bad(node_id):
                continue
            found.append(Holder.of(node_id, provider.contact.addresses))
        if found:
            self._holders[cid] = (time.monotonic(), found)
            while len(self._holders) > MANIFEST_MEMORY:
                self._holders.pop(next(iter(self._holders)))
        return [Holder(h.node_id, h.target) for h in found]

    async def resolve(self, cid: ContentId, *, first: NodeId | None = None) -> Manifest:
        """The manifest of `cid`: from the store, else from a holder (checked, then cached).

        When the content fits in the cache, its leaf hashes are fetched and the manifest added
        to the store (unpinned) so that chunks can be cached as they are fetched.
        """
        if await self.store.has_manifest(cid):
            return await self.store.get_manifest(cid)
        remembered = self._manifests.get(cid)
        if remembered is not None and first is None:
            self._manifests.move_to_end(cid)
            return remembered
        holders = await self.holders(cid, first)
        if not holders:
            raise NotAvailable(f"no holder of {cid} found", holders=0)
        errors = []
        for holder in holders:
            try:
                with trio.fail_after(self.config.chunk_timeout):
                    manifest = await fetch_manifest(
                        self.node, holder.target, cid, timeout=self.config.chunk_timeout
                    )
            except ContentNotFound as exc:
                errors.append(str(exc))
                continue
            except ContentError as exc:  # a bad signature, hash or encoding: a lying holder
                self.mark_bad(holder.node_id, exc)
                log.warning("holder %s sent a bad manifest: %s", holder.node_id.short(), exc)
                errors.append(str(exc))
                continue
            except (ZeoneError, OSError, trio.TooSlowError) as exc:
                errors.append(f"{holder.node_id.short()}: {exc or 'timed out'}")
                continue
            if manifest.size <= self.config.max_bytes:
                await self._cache_manifest(manifest, holder)
            else:
                self._manifests[cid] = manifest
                while len(self._manifests) > MANIFEST_MEMORY:
                    self._manifests.popitem(last=False)
            return manifest
        raise NotAvailable(
            f"no holder of {cid} supplied a valid manifest ({'; '.join(errors)[:500]})",
            holders=len(holders),
        )

    async def _cache_manifest(self, manifest: Manifest, holder: Holder) -> None:
        try:
            with trio.fail_after(self.config.chunk_timeout):
                leaves = await fetch_leaves(
                    self.node, holder.target, manifest, timeout=self.config.chunk_timeout
                )
            await self.store.add_manifest(manifest, leaves)
        except (ZeoneError, OSError, trio.TooSlowError) as exc:
            log.info("not caching %s: %s", manifest.content_id, exc)

    # -- cache bound -------------------------------------------------------------------------------

    async def make_room(
        self, needed: int, *, protect: ContentId | None = None, below: float | None = None
    ) -> bool:
        """Evict unpinned, idle content, least popular first, until `needed` more bytes fit.

        With `below`, only content scoring under it may go. Returns whether it fits.
        """
        async with self._room_lock:
            used = await self.store.used_bytes()
            if used + needed <= self.config.max_bytes:
                return True
            now = time.time()
            candidates = []
            for item in await self.store.list_contents():
                if item.pinned or item.cid == protect or item.cid in self.active:
                    continue
                value = self.popularity.score(str(item.cid), now, item.added)
                if below is not None and value >= below:
                    continue
                candidates.append((value, item.accessed, item))
            candidates.sort(key=lambda c: (c[0], c[1]))
            for _value, _accessed, item in candidates:
                if used + needed <= self.config.max_bytes:
                    break
                used -= await self.store.delete(item.cid)
                stop_announcing(self.node, item.cid)
                self.announced.discard(item.cid)
                self.popularity.forget(str(item.cid))
                self.stats.evictions += 1
                log.info("evicted %s (%d bytes)", item.cid, item.stored_bytes)
            return used + needed <= self.config.max_bytes

    async def enforce_bound(self) -> None:
        await self.make_room(0)

    # -- reading -----------------------------------------------------------------------------------

    async def stream(self, manifest: Manifest, offset: int, length: int, deliver: Deliver) -> None:
        """Deliver verified bytes `offset .. offset+length` of `manifest`, in order.

        Raises (after delivering only verified bytes) if some chunk cannot be obtained.
        """
        cid = manifest.content_id
        self.active[cid] = self.active.get(cid, 0) + 1
        try:
            if await self.store.has(cid):
                await self._read_local(manifest, offset, length, deliver)
            else:
                await self._read_through(manifest, offset, length, deliver)
        finally:
            self.active[cid] -= 1
            if not self.active[cid]:
                del self.active[cid]

    async def _read_local(
        self, manifest: Manifest, offset: int, length: int, deliver: Deliver
    ) -> None:
        """Complete content: large reads of the blob (its chunks were verified on the way in)."""
        path = self.store.blob_path(manifest.content_id)
        fd = await trio.to_thread.run_sync(os.open, path, os.O_RDONLY)
        try:
            position, end, block = offset, offset + length, self.config.read_block
            while position < end:
                size = min(block, end - position)
                data = await trio.to_thread.run_sync(os.pread, fd, size, position)
                if len(data) != size:
                    raise ContentError(f"blob of {manifest.content_id} is truncated")
                position += size
                await deliver(data)
        finally:
            os.close(fd)

    async def _read_through(
        self, manifest: Manifest, offset: int, length: int, deliver: Deliver
    ) -> None:
        """Some chunks are missing: take held ones from the store, the rest from holders."""
        cid = manifest.content_id
        span = manifest.chunk_span(offset, length)
        cached = await self.store.has_manifest(cid)
        missing = set(await self.store.missing_chunks(cid)) if cached else set(span)
        if cached and missing & set(span):
            cached = await self.make_room(
                manifest.chunk_size * len(missing & set(span)), protect=cid
            )
        swarm: Swarm | None = None
        swarm_lock = trio.Lock()

        async def get_swarm() -> Swarm:
            nonlocal swarm
            async with swarm_lock:
                if swarm is None:
                    holders = await self.holders(cid)
                    if not holders:
                        raise NotAvailable(f"no holder of {cid} found", holders=0)
                    swarm = Swarm(
                        self.node,
                        manifest,
                        holders,
                        timeout=self.config.chunk_timeout,
                        on_bad=self.mark_bad,
                    )
                return swarm

        async def get(index: int) -> bytes:
            if index not in missing:
                try:
                    return await self.store.get_chunk(cid, index)
                except ContentNotFound:  # evicted meanwhile
                    pass
            data = await (await get_swarm()).chunk(index)
            self.stats.chunks_from_peers += 1
            self.stats.bytes_from_peers += len(data)
            return data

        send_write, receive_write = trio.open_memory_channel[tuple[int, bytes]](WRITE_BATCH)

        async def writer() -> None:
            # Chunks handed over here are verified and may already be at the client, which can
            # hang up the moment it has its last byte: what was handed over is still written
            # (shielded, bounded), so a finished download always leaves a complete cache.
            batch: list[tuple[int, bytes]] = []

            def take() -> None:
                while len(batch) < WRITE_BATCH:
                    try:
                        batch.append(receive_write.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        return

            with receive_write:
                try:
                    async for item in receive_write:
                        batch.append(item)
                        take()
                        with trio.CancelScope(shield=True):
                            await self._write(cid, batch)
                        batch.clear()
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_TIMEOUT):
                        take()
                        while batch:
                            await self._write(cid, batch)
                            batch.clear()
                            take()

        async def deliver_chunk(index: int, chunk: bytes) -> None:
            start = index * manifest.chunk_size
            lo, hi = max(offset - start, 0), min(offset + length - start, len(chunk))
            if cached and index in missing:
                await send_write.send((index, chunk))
            await deliver(chunk[lo:hi] if (lo, hi) != (0, len(chunk)) else chunk)

        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            async with send_write:
                try:
                    await ordered_chunks(span, get, self.config.parallel, deliver_chunk)
                except (ZeoneError, OSError) as exc:
                    failure = exc
        if failure is not None:
            raise failure
        if cached and cid not in self.announced and await self.store.has(cid):
            self.spawn(self.announce, cid)

    async def _write(self, cid: ContentId, batch: list[tuple[int, bytes]]) -> None:
        try:
            await self.store.put_chunks(cid, batch, source="verified transfer")
        except ContentNotFound:
            pass  # evicted while we were fetching: nothing to cache into
        except ContentError as exc:
            log.warning("caching chunks of %s failed: %s", cid, exc)

    async def fetch_all(
        self,
        cid: ContentId,
        *,
        pin: bool = False,
        first: NodeId | None = None,
        below: float | None = None,
    ) -> bool:
        """Make the store hold all of `cid` (pinned if asked); False if it cannot be cached."""
        if cid in self._fetching:
            return False
        self._fetching.add(cid)
        try:
            manifest = await self.resolve(cid, first=first)
            if not await self.store.has_manifest(cid):
                return False  # larger than the cache, or the leaves could not be fetched
            if pin:
                await self.store.set_pinned(cid, True)
            if not await self.store.has(cid):
                missing = await self.store.missing_chunks(cid)
                need = sum(manifest.chunk_length(i) for i in missing)
                if not pin and not await self.make_room(need, protect=cid, below=below):
                    await self.store.delete(cid)
                    return False

                async def discard(_data: bytes) -> None:
                    return None

                await self.stream(manifest, 0, manifest.size, discard)
            if cid not in self.announced:
                await self.announce(cid)
            return await self.store.has(cid)
        finally:
            self._fetching.discard(cid)

    async def fetch_in_background(self, cid: ContentId, pin: bool) -> None:
        """`fetch_all` for a spawned task: failures are logged, never crash the service."""
        try:
            await self.fetch_all(cid, pin=pin)
        except (ZeoneError, OSError, trio.TooSlowError) as exc:
            log.info("fetching %s failed: %s", cid, exc)

    def close(self) -> None:
        self.store.close()
