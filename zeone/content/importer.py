"""Streaming import: chunk a file, directory or async byte stream and build its signed manifest.

Memory is bounded by one chunk plus the leaf hashes (32 bytes per chunk). Reading and hashing run
in a worker thread (`trio.to_thread.run_sync`) so a large import never blocks the event loop.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import AsyncIterable, Awaitable, Callable
from pathlib import Path

import attrs
import trio

from zeone.content.cid import ContentId
from zeone.content.errors import ContentError
from zeone.content.hashing import HASH_BYTES, leaf_hash
from zeone.content.manifest import (
    DEFAULT_CHUNK_SIZE,
    MAX_ENTRIES,
    Entry,
    Manifest,
    check_path,
)
from zeone.content.merkle import MerkleTree, split_leaves
from zeone.identity import Identity

#: ``await on_chunk(index, chunk, leaf_hash)``: called for every chunk in order during import,
#: e.g. to write it to a store in the same pass. The chunk buffer is not reused after the call.
OnChunk = Callable[[int, bytes, bytes], Awaitable[None]]


@attrs.frozen
class BuiltContent:
    """The result of an import: the manifest, and the leaf hashes the holder keeps to serve
    proofs (concatenated 32-byte hashes, one per chunk; see `merkle.split_leaves`)."""

    manifest: Manifest
    leaves: bytes

    @property
    def content_id(self) -> ContentId:
        return self.manifest.content_id

    def tree(self) -> MerkleTree:
        return MerkleTree(split_leaves(self.leaves))


def guess_media_type(path: str | os.PathLike[str]) -> str:
    return mimetypes.guess_type(os.fspath(path))[0] or "application/octet-stream"


async def _chunks_of_stream(stream: AsyncIterable[bytes], chunk_size: int) -> AsyncIterable[bytes]:
    buffer = bytearray()
    async for piece in stream:
        buffer += piece
        while len(buffer) >= chunk_size:
            yield bytes(buffer[:chunk_size])
            del buffer[:chunk_size]
    if buffer:
        yield bytes(buffer)


async def _chunks_of_files(paths: list[Path], chunk_size: int) -> AsyncIterable[bytes]:
    """The concatenation of `paths`, re-cut into chunks, read in a worker thread."""
    buffer = bytearray()
    for path in paths:
        handle = await trio.to_thread.run_sync(open, path, "rb")
        try:
            while True:
                piece = await trio.to_thread.run_sync(handle.read, chunk_size - len(buffer))
                if not piece:
                    break
                buffer += piece
                if len(buffer) == chunk_size:
                    yield bytes(buffer)
                    buffer.clear()
        finally:
            handle.close()
    if buffer:
        yield bytes(buffer)


async def _build(
    chunks: AsyncIterable[bytes],
    identity: Identity,
    chunk_size: int,
    media_type: str,
    name: str | None,
    entries: tuple[Entry, ...],
    on_chunk: OnChunk | None,
    expected_size: int | None = None,
) -> BuiltContent:
    leaves = bytearray()
    size = 0
    index = 0
    async for chunk in chunks:
        digest = await trio.to_thread.run_sync(leaf_hash, chunk)
        leaves += digest
        size += len(chunk)
        if on_chunk is not None:
            await on_chunk(index, chunk, digest)
        index += 1
    if expected_size is not None and size != expected_size:
        raise ContentError(
            f"files changed during import ({size} bytes read, {expected_size} expected)"
        )
    blob = bytes(leaves)
    root = await trio.to_thread.run_sync(lambda: MerkleTree(split_leaves(blob)).root)
    manifest = Manifest.create(
        identity,
        chunk_size=chunk_size,
        size=size,
        root=root,
        media_type=media_type,
        name=name,
        entries=entries,
    )
    assert len(blob) == manifest.chunk_count * HASH_BYTES
    return BuiltContent(manifest, blob)


async def build_manifest(
    source: str | os.PathLike[str] | AsyncIterable[bytes],
    identity: Identity,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    media_type: str | None = None,
    name: str | None = None,
    on_chunk: OnChunk | None = None,
) -> BuiltContent:
    """Import one file (a path) or an async byte stream of any size in bounded memory.

    `media_type` defaults to a guess from the file name (or application/octet-stream); `name`
    defaults to the file's base name for paths. Raises ContentError (bad parameters) or OSError.
    """
    Manifest.create(identity, chunk_size=chunk_size, size=0, root=bytes(32))  # validate early
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not await trio.to_thread.run_sync(path.is_file):
            raise ContentError(f"{path} is not a regular file")
        name = name if name is not None else path.name[:255] or None
        chunks = _chunks_of_files([path], chunk_size)
        media_type = media_type or guess_media_type(path)
    else:
        chunks = _chunks_of_stream(source, chunk_size)
    return await _build(
        chunks, identity, chunk_size, media_type or "application/octet-stream", name, (), on_chunk
    )


def scan_directory(root: str | os.PathLike[str]) -> list[tuple[str, Path, int]]:
    """The regular files under `root` as sorted `(entry path, file, size)`.

    Symlinks and special files are refused (a symlink could publish files outside the directory);
    paths are validated with the same rules as decoding.
    """
    base = Path(root)
    if not base.is_dir():
        raise ContentError(f"{base} is not a directory")
    found: list[tuple[str, Path, int]] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        for item in [*dirnames, *filenames]:
            full = Path(dirpath) / item
            if full.is_symlink():
                raise ContentError(f"{full} is a symbolic link; refusing to publish it")
        for filename in filenames:
            full = Path(dirpath) / filename
            if not full.is_file():
                raise ContentError(f"{full} is not a regular file")
            rel = full.relative_to(base).as_posix()
            try:
                check_path(rel)
            except ContentError as exc:
                raise ContentError(f"cannot publish {full}: {exc}") from None
            found.append((rel, full, full.stat().st_size))
        if len(found) > MAX_ENTRIES:
            raise ContentError(f"{base} has more than {MAX_ENTRIES} files")
    found.sort(key=lambda item: item[0])
    return found


async def build_directory_manifest(
    root: str | os.PathLike[str],
    identity: Identity,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    name: str | None = None,
    on_chunk: OnChunk | None = None,
) -> BuiltContent:
    """Import a directory as one content: files concatenated in path order, one entry each
    (media type guessed from the name). Raises ContentError for symlinks, special files, bad
    names, or files that change size during the import."""
    files = await trio.to_thread.run_sync(scan_directory, root)
    if name is None:
        name = (await trio.to_thread.run_sync(lambda: Path(root).resolve().name))[:255] or None
    entries = []
    offset = 0
    for rel, _full, size in files:
        entries.append(Entry(rel, offset, size, guess_media_type(rel)))
        offset += size
    chunks = _chunks_of_files([full for _rel, full, _size in files], chunk_size)
    return await _build(
        chunks,
        identity,
        chunk_size,
        "application/x-zeone-directory",
        name,
        tuple(entries),
        on_chunk,
        expected_size=offset,
    )
