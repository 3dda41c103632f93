"""Fetching one content's chunks from several holders at once, verifying each before use.

A `Swarm` spreads chunk requests over the holders it was given (least busy first), verifies every
chunk against the signed manifest with its Merkle proof, and stops asking a holder for the rest of
the transfer as soon as it sends one bad chunk (a verification failure is proof of misbehaviour).
A holder that fails for other reasons (timeout, gone, does not have the chunk) is skipped after
`MAX_FAILURES` such failures in a row, since those can be honest. `ordered_chunks` turns any
per-chunk getter into an in-order stream with a window of chunks in flight.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import attrs
import trio

from zeone.content import (
    ChunkVerificationError,
    ContentError,
    Manifest,
    request_chunk,
)
from zeone.content.verify import verify_chunk_async
from zeone.errors import ZeoneError
from zeone.identity import NodeId
from zeone.net.peers import PeerAddress

log = logging.getLogger(__name__)

MAX_FAILURES = 6
"""Consecutive failures (timeouts, refusals, missing chunks) after which a holder is skipped."""


class ChunkUnavailable(ContentError):
    """No holder could supply a verified copy of a chunk."""


@attrs.define(eq=False)
class Holder:
    node_id: NodeId
    target: NodeId | PeerAddress
    busy: int = 0
    failures: int = 0
    bad: bool = False

    @classmethod
    def of(cls, node_id: NodeId, addresses: Iterable[str] = ()) -> Holder:
        addresses = list(addresses)
        target: NodeId | PeerAddress = PeerAddress(addresses[0], node_id) if addresses else node_id
        return cls(node_id, target)


@attrs.define(eq=False)
class Swarm:
    """Verified chunks of `manifest` from `holders`; `on_bad(node_id, error)` reports cheaters."""

    node: Any
    manifest: Manifest
    holders: list[Holder]
    timeout: float = 20.0
    on_bad: Callable[[NodeId, ChunkVerificationError], None] | None = None
    fetched_bytes: int = 0

    def usable(self) -> list[Holder]:
        return [h for h in self.holders if not h.bad and h.failures < MAX_FAILURES]

    def _pick(self, tried: set[int]) -> Holder | None:
        """The least busy usable holder, preferring those not tried for this chunk yet (an
        honest holder that timed out once may be asked again, up to MAX_FAILURES)."""
        usable = self.usable()
        fresh = [h for h in usable if id(h) not in tried]
        candidates = fresh or usable
        if not candidates:
            return None
        return min(candidates, key=lambda h: (h.busy, h.failures))

    async def chunk(self, index: int) -> bytes:
        """Chunk `index`, verified; raises ChunkUnavailable when every holder has failed."""
        tried: set[int] = set()
        last: Exception | None = None
        for _attempt in range(MAX_FAILURES * len(self.holders) + 1):
            holder = self._pick(tried)
            if holder is None:
                break
            tried.add(id(holder))
            holder.busy += 1
            try:
                with trio.fail_after(self.timeout):
                    data, proof = await request_chunk(
                        self.node,
                        holder.target,
                        self.manifest.content_id,
                        index,
                        timeout=self.timeout,
                    )
                    await verify_chunk_async(
                        self.manifest, index, data, proof, source=str(holder.node_id)
                    )
            except ChunkVerificationError as exc:
                holder.bad = True
                last = exc
                log.warning("holder %s sent a bad chunk: %s", holder.node_id.short(), exc)
                if self.on_bad is not None:
                    self.on_bad(holder.node_id, exc)
                continue
            except (ZeoneError, OSError, trio.TooSlowError) as exc:
                holder.failures += 1
                last = exc
                continue
            finally:
                holder.busy -= 1
            holder.failures = 0
            self.fetched_bytes += len(data)
            return bytes(data)
        raise ChunkUnavailable(
            f"chunk {index} of {self.manifest.content_id}: no holder supplied a valid copy"
            + (f" (last error: {last})" if last else "")
        )


@attrs.define(eq=False)
class _Slot:
    index: int
    done: trio.Event = attrs.Factory(trio.Event)
    result: bytes = b""
    error: BaseException | None = None


async def ordered_chunks(
    indices: Iterable[int],
    get: Callable[[int], Awaitable[bytes]],
    window: int,
    deliver: Callable[[int, bytes], Awaitable[None]],
) -> None:
    """Call `deliver(index, chunk)` in index order while up to `window` `get`s run ahead.

    The first failing `get` (in index order) is raised and everything in flight is cancelled.
    """

    async def run(slot: _Slot) -> None:
        try:
            slot.result = await get(slot.index)
        except Exception as exc:  # re-raised in order by the consumer
            slot.error = exc
        finally:
            slot.done.set()

    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        send, receive = trio.open_memory_channel[_Slot](max(window - 1, 0))

        async def start_all() -> None:
            async with send:
                for index in indices:
                    slot = _Slot(index)
                    nursery.start_soon(run, slot)
                    await send.send(slot)

        nursery.start_soon(start_all)
        async with receive:
            async for slot in receive:
                await slot.done.wait()
                if slot.error is not None:
                    failure = slot.error
                    break
                await deliver(slot.index, slot.result)
                slot.result = b""
        nursery.cancel_scope.cancel()
    if failure is not None:  # raised here, not inside the nursery, to stay a plain exception
        raise failure


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    """Join an async byte iterator (tests and small reads)."""
    return b"".join([part async for part in stream])
