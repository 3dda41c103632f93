"""Verifying chunks against a manifest, and streaming verified content out of any chunk source.

A chunk is accepted only if its length is exactly what the manifest implies and its leaf hash with
the proof leads to the manifest's root. The first bad chunk stops the stream with a
ChunkVerificationError naming the chunk and the source, before a byte of it is yielded.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import trio

from zeone.content.errors import ChunkVerificationError, ContentError
from zeone.content.hashing import leaf_hash
from zeone.content.manifest import Manifest
from zeone.content.merkle import root_from_proof

#: ``await fetch(index) -> (chunk, proof)``: where verified streaming gets its chunks from.
Fetch = Callable[[int], Awaitable[tuple[bytes, Sequence[bytes]]]]

_THREAD_OVER = 64 * 1024


def verify_chunk(
    manifest: Manifest, index: int, chunk: bytes, proof: Sequence[bytes], *, source: str = ""
) -> None:
    """Raise ChunkVerificationError unless `chunk` with `proof` is chunk `index` of `manifest`."""
    if type(index) is not int or not 0 <= index < manifest.chunk_count:
        raise ChunkVerificationError(index, source, f"index outside 0..{manifest.chunk_count - 1}")
    if not isinstance(chunk, (bytes, bytearray, memoryview)):
        raise ChunkVerificationError(index, source, "chunk is not bytes")
    expected = manifest.chunk_length(index)
    if len(chunk) != expected:
        raise ChunkVerificationError(index, source, f"{len(chunk)} bytes, expected {expected}")
    try:
        root = root_from_proof(index, manifest.chunk_count, leaf_hash(chunk), list(proof))
    except (ContentError, TypeError) as exc:
        raise ChunkVerificationError(index, source, f"bad proof: {exc}") from None
    if root != manifest.root:
        raise ChunkVerificationError(index, source, "hash does not match the Merkle root")


async def verify_chunk_async(
    manifest: Manifest, index: int, chunk: bytes, proof: Sequence[bytes], *, source: str = ""
) -> None:
    """`verify_chunk`, hashing big chunks in a worker thread."""
    if len(chunk) >= _THREAD_OVER:
        await trio.to_thread.run_sync(
            lambda: verify_chunk(manifest, index, chunk, proof, source=source)
        )
    else:
        verify_chunk(manifest, index, chunk, proof, source=source)


async def stream_verified(
    manifest: Manifest,
    fetch: Fetch,
    *,
    source: str = "",
    offset: int = 0,
    length: int | None = None,
    parallel: int = 1,
) -> AsyncIterator[bytes]:
    """Yield the verified bytes `offset .. offset+length` (default: all) in order.

    Chunks are fetched `parallel` at a time (a batch is fetched concurrently, verified, then
    yielded, so memory is `parallel` chunks). Raises ChunkVerificationError at the first bad chunk
    (naming `source`), ContentError for a bad range; errors from `fetch` propagate.
    """
    if length is None:
        length = manifest.size - offset
    span = manifest.chunk_span(offset, length)
    if parallel < 1:
        raise ContentError("parallel must be at least 1")
    position = span.start
    while position < span.stop:
        batch = range(position, min(position + parallel, span.stop))
        results: dict[int, bytes] = {}
        errors: dict[int, Exception] = {}

        async def one(
            index: int, results: dict[int, bytes] = results, errors: dict[int, Exception] = errors
        ) -> None:
            try:
                chunk, proof = await fetch(index)
                await verify_chunk_async(manifest, index, chunk, proof, source=source)
                results[index] = bytes(chunk)
            except Exception as exc:  # reported below, lowest index first, never as a group
                errors[index] = exc

        if len(batch) == 1:
            await one(batch[0])
        else:
            async with trio.open_nursery() as nursery:
                for index in batch:
                    nursery.start_soon(one, index)
        if errors:
            raise errors[min(errors)]
        for index in batch:
            chunk = results[index]
            start = index * manifest.chunk_size
            lo = max(offset - start, 0)
            hi = min(offset + length - start, len(chunk))
            yield chunk[lo:hi] if (lo, hi) != (0, len(chunk)) else chunk
        position = batch.stop


async def export_to_file(
    manifest: Manifest,
    fetch: Fetch,
    path: str | os.PathLike[str],
    *,
    source: str = "",
    parallel: int = 1,
) -> None:
    """Write the verified content to `path` atomically: a temporary file, fsync, rename.

    Nothing is left at `path` if any chunk fails verification.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.partial")
    handle = await trio.to_thread.run_sync(open, tmp, "wb")
    try:
        async for data in stream_verified(manifest, fetch, source=source, parallel=parallel):
            await trio.to_thread.run_sync(handle.write, data)
        await trio.to_thread.run_sync(handle.flush)
        await trio.to_thread.run_sync(os.fsync, handle.fileno())
        handle.close()
        await trio.to_thread.run_sync(os.replace, tmp, target)
    except BaseException:
        handle.close()
        tmp.unlink(missing_ok=True)
        raise
