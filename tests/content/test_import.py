"""Streaming import in bounded memory, and verified streaming export with exact error reports."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from zeone.content import (
    BuiltContent,
    ChunkVerificationError,
    ContentError,
    build_directory_manifest,
    build_manifest,
    export_to_file,
    stream_verified,
)
from zeone.content.hashing import leaf_hash
from zeone.identity import Identity

ME = Identity.from_seed(b"p" * 32)
CHUNK = 4096


def fetcher(built: BuiltContent, data: bytes, *, corrupt: int | None = None, bad_proof=None):
    tree = built.tree()
    size = built.manifest.chunk_size

    async def fetch(index: int):
        chunk = data[index * size : (index + 1) * size]
        if index == corrupt:
            chunk = b"X" + chunk[1:]
        proof = tree.proof(index)
        if index == bad_proof:
            proof = proof[::-1] if len(proof) > 1 else [b"\x00" * 32]
        return chunk, proof

    return fetch


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in stream])


async def test_file_and_stream_imports_agree(tmp_path: Path) -> None:
    data = os.urandom(10 * CHUNK + 123)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    seen: list[tuple[int, int, bytes]] = []

    async def on_chunk(index: int, chunk: bytes, digest: bytes) -> None:
        assert digest == leaf_hash(chunk)
        seen.append((index, len(chunk), digest))

    built = await build_manifest(path, ME, chunk_size=CHUNK, on_chunk=on_chunk)
    manifest = built.manifest
    assert (manifest.size, manifest.chunk_count, manifest.name) == (len(data), 11, "clip.mp4")
    assert manifest.media_type == "video/mp4"
    assert [i for i, _n, _d in seen] == list(range(11)) and seen[-1][1] == 123
    assert built.leaves == b"".join(d for _i, _n, d in seen)

    async def pieces() -> AsyncIterator[bytes]:  # odd piece sizes straddle chunk borders
        for start in range(0, len(data), 3000):
            yield data[start : start + 3000]

    streamed = await build_manifest(
        pieces(), ME, chunk_size=CHUNK, media_type="video/mp4", name="clip.mp4"
    )
    assert streamed.content_id == built.content_id
    assert await collect(stream_verified(manifest, fetcher(built, data))) == data


async def test_empty_content() -> None:
    async def nothing() -> AsyncIterator[bytes]:
        return
        yield b""

    built = await build_manifest(nothing(), ME, chunk_size=CHUNK)
    assert (built.manifest.size, built.manifest.chunk_count, built.leaves) == (0, 0, b"")
    assert await collect(stream_verified(built.manifest, fetcher(built, b""))) == b""


async def test_import_memory_is_bounded_by_the_chunk_size(tmp_path: Path) -> None:
    chunk_size = 64 * 1024
    path = tmp_path / "big.bin"
    with path.open("wb") as handle:
        for _ in range(24):
            handle.write(os.urandom(1024 * 1024))
    tracemalloc.start()
    try:
        built = await build_manifest(path, ME, chunk_size=chunk_size)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert built.manifest.size == 24 * 1024 * 1024
    # a few chunk buffers plus the 12 KiB leaf list, never the 24 MiB file
    assert peak < 8 * chunk_size + 256 * 1024, peak


@given(st.data())
@settings(max_examples=40, deadline=None)
async def test_ranges_match_the_source(data: st.DataObject) -> None:
    size = data.draw(st.integers(min_value=1, max_value=6 * 1024))
    blob = bytes(range(256)) * (size // 256 + 1)
    blob = blob[:size]

    async def one() -> AsyncIterator[bytes]:
        yield blob

    built = await build_manifest(one(), ME, chunk_size=1024)
    offset = data.draw(st.integers(min_value=0, max_value=size))
    length = data.draw(st.integers(min_value=0, max_value=size - offset))
    parallel = data.draw(st.integers(min_value=1, max_value=4))
    got = await collect(
        stream_verified(
            built.manifest, fetcher(built, blob), offset=offset, length=length, parallel=parallel
        )
    )
    assert got == blob[offset : offset + length]


@pytest.mark.parametrize("parallel", [1, 3])
async def test_the_first_bad_chunk_is_named_and_nothing_of_it_is_yielded(parallel: int) -> None:
    data = os.urandom(8 * CHUNK)

    async def one() -> AsyncIterator[bytes]:
        yield data

    built = await build_manifest(one(), ME, chunk_size=CHUNK)
    got = []
    with pytest.raises(ChunkVerificationError) as info:
        async for piece in stream_verified(
            built.manifest, fetcher(built, data, corrupt=4), source="peer-x", parallel=parallel
        ):
            got.append(piece)
    assert (info.value.index, info.value.source) == (4, "peer-x")
    assert "chunk 4 from peer-x" in str(info.value)
    assert b"".join(got) == data[: len(got) * CHUNK] and len(got) <= 4

    with pytest.raises(ChunkVerificationError, match=r"chunk 2 .*(bad proof|Merkle)"):
        await collect(stream_verified(built.manifest, fetcher(built, data, bad_proof=2)))

    async def short(index: int):
        chunk, proof = await fetcher(built, data)(index)
        return chunk[:-1], proof

    with pytest.raises(ChunkVerificationError, match="4095 bytes, expected 4096"):
        await collect(stream_verified(built.manifest, short))

    with pytest.raises(ContentError, match="outside"):
        await collect(stream_verified(built.manifest, short, offset=10, length=len(data)))


async def test_export_is_atomic(tmp_path: Path) -> None:
    data = os.urandom(5 * CHUNK + 7)

    async def one() -> AsyncIterator[bytes]:
        yield data

    built = await build_manifest(one(), ME, chunk_size=CHUNK)
    target = tmp_path / "out.bin"
    await export_to_file(built.manifest, fetcher(built, data), target, parallel=2)
    assert target.read_bytes() == data
    bad = tmp_path / "bad.bin"
    with pytest.raises(ChunkVerificationError):
        await export_to_file(built.manifest, fetcher(built, data, corrupt=5), bad)
    assert os.listdir(tmp_path) == ["out.bin"]


async def test_directory_import(tmp_path: Path) -> None:
    root = tmp_path / "site"
    (root / "css").mkdir(parents=True)
    (root / "index.html").write_bytes(b"<h1>hi</h1>")
    (root / "css" / "a.css").write_bytes(b"a" * 5000)
    (root / "empty.txt").write_bytes(b"")
    built = await build_directory_manifest(root, ME, chunk_size=1024)
    manifest = built.manifest
    assert manifest.name == "site" and manifest.is_directory
    assert [(e.path, e.offset, e.size, e.media_type) for e in manifest.entries] == [
        ("css/a.css", 0, 5000, "text/css"),
        ("empty.txt", 5000, 0, "text/plain"),
        ("index.html", 5000, 11, "text/html"),
    ]
    entry = manifest.entry("index.html")
    got = await collect(
        stream_verified(
            manifest,
            fetcher(built, b"a" * 5000 + b"<h1>hi</h1>"),
            offset=entry.offset,
            length=entry.size,
        )
    )
    assert got == b"<h1>hi</h1>"
    with pytest.raises(ContentError):
        manifest.entry("../index.html")

    (root / "link").symlink_to(tmp_path)
    with pytest.raises(ContentError, match="symbolic link"):
        await build_directory_manifest(root, ME)


async def test_bad_import_parameters(tmp_path: Path) -> None:
    with pytest.raises(ContentError, match="chunk size"):
        await build_manifest(tmp_path / "x", ME, chunk_size=100)
    with pytest.raises(ContentError, match="not a regular file"):
        await build_manifest(tmp_path / "missing", ME)
    with pytest.raises(ContentError, match="not a directory"):
        await build_directory_manifest(tmp_path / "missing", ME)
    await trio.lowlevel.checkpoint()


async def test_fetch_errors_surface_plainly_in_parallel_mode() -> None:
    data = os.urandom(6 * CHUNK)
    built = await build_manifest(_gen(data), ME, chunk_size=CHUNK)
    good = fetcher(built, data)

    async def flaky(index: int):
        if index in (2, 3):
            raise ContentNotFoundLike(f"peer lost chunk {index}")
        return await good(index)

    with pytest.raises(ContentNotFoundLike, match="chunk 2"):
        await collect(stream_verified(built.manifest, flaky, parallel=4))


class ContentNotFoundLike(Exception):
    pass


async def _gen(data: bytes) -> AsyncIterator[bytes]:
    yield data
