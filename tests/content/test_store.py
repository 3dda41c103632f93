"""ContentStore on a real disk and SQLite: import, partial fills, proofs, durability, deletion."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from zeone.content import (
    ChunkVerificationError,
    ContentError,
    ContentNotFound,
    ContentStore,
    export_to_file,
    stream_verified,
    verify_chunk,
)
from zeone.identity import Identity

ME = Identity.from_seed(b"s" * 32)
CHUNK = 4096


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
def store(tmp_path: Path):
    store = ContentStore(tmp_path / "store")
    yield store
    store.close()


async def test_import_serve_and_survive_a_reopen(tmp_path: Path) -> None:
    data = os.urandom(7 * CHUNK + 99)
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    store = ContentStore(tmp_path / "store")
    built = await store.import_file(src, ME, chunk_size=CHUNK, pinned=True)
    cid = built.content_id
    assert await store.has(cid) and await store.used_bytes() == len(data)
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    store.close()

    store = ContentStore(tmp_path / "store")  # a new process would see the same
    try:
        manifest = await store.get_manifest(cid)
        assert manifest == built.manifest
        for index in range(manifest.chunk_count):
            chunk, proof = await store.get_chunk_with_proof(cid, index)
            verify_chunk(manifest, index, chunk, proof)
        got = b"".join([p async for p in store.read(cid, 5000, 9000)])
        assert got == data[5000:14000]
        out = tmp_path / "out.bin"
        await export_to_file(manifest, store.fetcher(cid), out)
        assert out.read_bytes() == data
        [info] = await store.list_contents()
        assert (info.cid, info.size, info.complete, info.pinned) == (cid, len(data), True, True)
        # importing the same content again is a no-op
        again = await store.import_file(src, ME, chunk_size=CHUNK)
        assert again.content_id == cid and await store.used_bytes() == len(data)
    finally:
        store.close()


async def test_a_cache_fills_chunk_by_chunk(tmp_path: Path, store: ContentStore) -> None:
    data = os.urandom(5 * CHUNK + 1)
    origin = ContentStore(tmp_path / "origin")
    try:
        built = await origin.import_stream(_one(data), ME, chunk_size=CHUNK)
    finally:
        origin.close()
    cid = built.content_id
    with pytest.raises(ContentNotFound):
        await store.put_chunk(cid, 0, data[:CHUNK])
    with pytest.raises(ContentError, match="do not match"):
        await store.add_manifest(built.manifest, built.leaves[::-1])
    await store.add_manifest(built.manifest, built.leaves)
    assert not await store.has(cid)
    assert await store.missing_chunks(cid) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ContentNotFound, match="chunk 2"):
        await store.get_chunk(cid, 2)
    # proofs are available before the chunk is
    assert len(await store.proof(cid, 2)) == 3

    await store.put_chunk(cid, 2, data[2 * CHUNK : 3 * CHUNK], source="peer-a")
    with pytest.raises(ChunkVerificationError, match=r"chunk 3 from peer-b .*does not match"):
        await store.put_chunk(cid, 3, data[2 * CHUNK : 3 * CHUNK], source="peer-b")
    with pytest.raises(ChunkVerificationError, match="chunk 5 is invalid: 0 bytes, expected 1"):
        await store.put_chunk(cid, 5, b"")  # wrong length
    with pytest.raises(ChunkVerificationError, match="index outside"):
        await store.put_chunk(cid, 6, b"x")
    assert await store.has_chunk(cid, 2) and not await store.has_chunk(cid, 3)
    assert await store.used_bytes() == CHUNK
    await store.put_chunks(cid, [(i, data[i * CHUNK : (i + 1) * CHUNK]) for i in (0, 1, 3, 4)])
    await store.put_chunk(cid, 2, data[2 * CHUNK : 3 * CHUNK])  # duplicates count once
    assert await store.missing_chunks(cid) == [5]
    assert await store.used_bytes() == 5 * CHUNK
    await store.put_chunk(cid, 5, data[5 * CHUNK :])
    assert await store.has(cid) and await store.missing_chunks(cid) == []
    assert await store.used_bytes() == len(data)
    got = b"".join(
        [p async for p in stream_verified(built.manifest, store.fetcher(cid), parallel=3)]
    )
    assert got == data


async def test_delete_frees_space(store: ContentStore) -> None:
    first = await store.import_stream(_one(b"a" * 10000), ME, chunk_size=CHUNK)
    second = await store.import_stream(_one(b"b" * 3000), ME, chunk_size=CHUNK)
    assert await store.used_bytes() == 13000
    assert await store.delete(first.content_id) == 10000
    assert await store.delete(first.content_id) == 0
    assert await store.used_bytes() == 3000
    assert not await store.has(first.content_id)
    assert not store.blob_path(first.content_id).exists()
    with pytest.raises(ContentNotFound):
        await store.get_manifest(first.content_id)
    assert [c.cid for c in await store.list_contents()] == [second.content_id]


async def test_corrupted_blob_is_not_served_silently(store: ContentStore) -> None:
    """Disk rot: the store serves bytes as stored, and the proof exposes them at the reader."""
    data = os.urandom(3 * CHUNK)
    built = await store.import_stream(_one(data), ME, chunk_size=CHUNK)
    path = store.blob_path(built.content_id)
    with path.open("r+b") as handle:
        handle.seek(CHUNK + 10)
        handle.write(b"\xff")
    with pytest.raises(ChunkVerificationError, match="chunk 1"):
        async for _ in stream_verified(built.manifest, store.fetcher(built.content_id)):
            pass
    os.truncate(path, CHUNK + 5)
    with pytest.raises(ContentError, match="truncated at chunk 2"):
        await store.get_chunk(built.content_id, 2)


async def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / "store" / "tmp").mkdir(parents=True)
    (tmp_path / "store" / "tmp" / "dead.data").write_bytes(b"half an import")
    ContentStore(tmp_path / "store").close()
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
