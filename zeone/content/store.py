"""A durable local chunk store: an SQLite index plus one sparse blob file per content.

Chunk `i` of a content lives at byte `i * chunk_size` of its blob file. Writes are made durable
(file fsync, then an SQLite commit with synchronous=FULL) before a call returns, in that order, so
the index never claims a chunk the disk does not have. All file and database work runs in worker
threads (`trio.to_thread.run_sync`), serialised on one SQLite connection by a lock.

The store keeps each content's leaf hashes (32 bytes per chunk) to serve Merkle proofs and to check
incoming chunks without proofs. Eviction policy is the caller's: `list_contents()` reports sizes
and last access times, `delete()` frees space.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from zeone.content.cid import ContentId
from zeone.content.errors import ChunkVerificationError, ContentError, ContentNotFound
from zeone.content.hashing import HASH_BYTES, leaf_hash
from zeone.content.importer import (
    BuiltContent,
    OnChunk,
    build_directory_manifest,
    build_manifest,
)
from zeone.content.manifest import Manifest
from zeone.content.merkle import MerkleTree, split_leaves
from zeone.content.verify import Fetch
from zeone.identity import Identity

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS contents (
    cid BLOB PRIMARY KEY,
    manifest BLOB NOT NULL,
    leaves BLOB NOT NULL,
    size INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    complete INTEGER NOT NULL,
    stored INTEGER NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0,
    added REAL NOT NULL,
    accessed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    cid BLOB NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (cid, idx)
) WITHOUT ROWID;
"""
_TREE_CACHE = 16
_TOUCH_EVERY = 60.0


@attrs.frozen
class StoredContent:
    """One content as the store holds it (for listings and eviction decisions)."""

    cid: ContentId
    size: int
    stored_bytes: int
    chunk_count: int
    chunks_held: int
    complete: bool
    pinned: bool
    added: float
    accessed: float


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ContentStore:
    """Chunks of manifests on local disk: `ContentStore(directory)`, `close()` when done.

    Every method that touches disk is async and runs its IO in a thread.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._blobs = self.directory / "blobs"
        self._tmp = self.directory / "tmp"
        for path in (self.directory, self._blobs, self._tmp):
            path.mkdir(parents=True, exist_ok=True)
        for stale in self._tmp.iterdir():  # imports interrupted by a crash
            stale.unlink(missing_ok=True)
        self._db = sqlite3.connect(
            self.directory / "index.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._tree_lock = threading.Lock()
        self._trees: OrderedDict[bytes, tuple[Manifest, MerkleTree]] = OrderedDict()
        self._touched: dict[bytes, float] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args)

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _transaction(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def blob_path(self, cid: ContentId) -> Path:
        hexid = cid.digest.hex()
        return self._blobs / hexid[:2] / f"{hexid}.data"

    def _row(self, cid: ContentId) -> tuple[Any, ...]:
        rows = self._query(
            "SELECT manifest, complete, chunk_count FROM contents WHERE cid = ?", (cid.digest,)
        )
        if not rows:
            raise ContentNotFound(f"content {cid} is not in the store")
        return rows[0]

    def _tree(self, cid: ContentId) -> tuple[Manifest, MerkleTree]:
        with self._tree_lock:
            return self._tree_locked(cid)

    def _tree_locked(self, cid: ContentId) -> tuple[Manifest, MerkleTree]:
        cached = self._trees.get(cid.digest)
        if cached is not None:
            self._trees.move_to_end(cid.digest)
            return cached
        rows = self._query("SELECT manifest, leaves FROM contents WHERE cid = ?", (cid.digest,))
        if not rows:
            raise ContentNotFound(f"content {cid} is not in the store")
        manifest = Manifest.decode(rows[0][0])
        entry = (manifest, MerkleTree(split_leaves(rows[0][1])))
        self._trees[cid.digest] = entry
        while len(self._trees) > _TREE_CACHE:
            self._trees.popitem(last=False)
        return entry

    # -- adding content ---------------------------------------------------------------------

    async def add_manifest(
        self, manifest: Manifest, leaves: bytes, *, pinned: bool = False
    ) -> ContentId:
        """Start holding `manifest` (no chunks yet): checks that `leaves` lead to its root.

        Idempotent. The leaves come from the importer or, for a cache, from `fetch_leaves`.
        """
        manifest.verify_signature()
        if len(leaves) != manifest.chunk_count * HASH_BYTES:
            raise ContentError(f"expected {manifest.chunk_count} leaf hashes")
        tree = await self._run(MerkleTree, split_leaves(leaves))
        if tree.root != manifest.root:
            raise ContentError("leaf hashes do not match the manifest's Merkle root")
        cid = manifest.content_id
        now = time.time()
        complete = 1 if manifest.chunk_count == 0 else 0
        await self._run(
            self._transaction,
            [
                (
                    "INSERT OR IGNORE INTO contents VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                    (
                        cid.digest,
                        manifest.encode(),
                        leaves,
                        manifest.size,
                        manifest.chunk_count,
                        complete,
                        int(pinned),
                        now,
                        now,
                    ),
                )
            ],
        )
        return cid

    async def _import(self, build: Callable[[OnChunk], Any], *, pinned: bool) -> BuiltContent:
        tmp = self._tmp / f"{secrets.token_hex(8)}.data"
        handle = await self._run(open, tmp, "wb")
        try:

            async def write(_index: int, chunk: bytes, _digest: bytes) -> None:
                await self._run(handle.write, chunk)

            built: BuiltContent = await build(write)
            await self._run(handle.flush)
            await self._run(os.fsync, handle.fileno())
            handle.close()
            manifest = built.manifest
            cid = manifest.content_id
            if await self.has(cid):
                return built
            target = self.blob_path(cid)

            def place() -> None:
                target.parent.mkdir(exist_ok=True)
                os.replace(tmp, target)
                _fsync_dir(target.parent)

            await self._run(place)
            now = time.time()
            await self._run(
                self._transaction,
                [
                    ("DELETE FROM chunks WHERE cid = ?", (cid.digest,)),
                    (
                        "INSERT OR REPLACE INTO contents VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
                        (
                            cid.digest,
                            manifest.encode(),
                            built.leaves,
                            manifest.size,
                            manifest.chunk_count,
                            manifest.size,
                            int(pinned),
                            now,
                            now,
                        ),
                    ),
                ],
            )
            return built
        finally:
            handle.close()
            tmp.unlink(missing_ok=True)

    async def import_file(
        self,
        source: str | os.PathLike[str] | Any,
        identity: Identity,
        *,
        pinned: bool = False,
        **options: Any,
    ) -> BuiltContent:
        """Import a file path or async byte iterator in one pass: chunk, hash, sign, store.

        `options` go to `build_manifest` (chunk_size, media_type, name). Durable on return.
        """
        return await self._import(
            lambda on_chunk: build_manifest(source, identity, on_chunk=on_chunk, **options),
            pinned=pinned,
        )

    async def import_stream(
        self, stream: Any, identity: Identity, *, pinned: bool = False, **options: Any
    ) -> BuiltContent:
        """`import_file` for an async byte iterator (an upload, a pipe)."""
        return await self.import_file(stream, identity, pinned=pinned, **options)

    async def import_directory(
        self,
        root: str | os.PathLike[str],
        identity: Identity,
        *,
        pinned: bool = False,
        **options: Any,
    ) -> BuiltContent:
        """Import a directory (see `build_directory_manifest`) in one pass. Durable on return."""
        return await self._import(
            lambda on_chunk: build_directory_manifest(root, identity, on_chunk=on_chunk, **options),
            pinned=pinned,
        )

    async def put_chunk(self, cid: ContentId, index: int, data: bytes, *, source: str = "") -> None:
        """Store chunk `index` after checking it against the content's leaf hash.

        The content must have been added (`add_manifest`). Raises ChunkVerificationError naming
        `source` for a wrong chunk. Durable on return.
        """
        await self.put_chunks(cid, [(index, data)], source=source)

    async def put_chunks(
        self, cid: ContentId, items: Sequence[tuple[int, bytes]], *, source: str = ""
    ) -> None:
        """`put_chunk` for several chunks with one fsync and one commit (much faster)."""
        manifest, tree = await self._run(self._tree, cid)
        for index, data in items:
            if type(index) is not int or not 0 <= index < manifest.chunk_count:
                raise ChunkVerificationError(index, source, "index outside the content")
            if len(data) != manifest.chunk_length(index):
                raise ChunkVerificationError(
                    index, source, f"{len(data)} bytes, expected {manifest.chunk_length(index)}"
                )
        digests = await self._run(lambda: [leaf_hash(data) for _i, data in items])
        for (index, _data), digest in zip(items, digests, strict=True):
            if digest != tree.levels[0][index]:
                raise ChunkVerificationError(index, source, "hash does not match the manifest")
        path = self.blob_path(cid)

        def write() -> None:
            path.parent.mkdir(exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                for index, data in items:
                    os.pwrite(fd, data, index * manifest.chunk_size)
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(path.parent)

            with self._lock:
                db = self._db
                db.execute("BEGIN IMMEDIATE")
                try:
                    row = db.execute(
                        "SELECT complete FROM contents WHERE cid = ?", (cid.digest,)
                    ).fetchone()
                    if row is None:  # deleted meanwhile
                        db.execute("ROLLBACK")
                        return
                    if row[0]:
                        db.execute("COMMIT")
                        return
                    added = 0
                    for index, data in items:
                        cur = db.execute(
                            "INSERT OR IGNORE INTO chunks VALUES (?, ?)", (cid.digest, index)
                        )
                        added += len(data) if cur.rowcount else 0
                    held = db.execute(
                        "SELECT COUNT(*) FROM chunks WHERE cid = ?", (cid.digest,)
                    ).fetchone()[0]
                    db.execute(
                        "UPDATE contents SET stored = stored + ? WHERE cid = ?", (added, cid.digest)
                    )
                    if held == manifest.chunk_count:
                        db.execute("DELETE FROM chunks WHERE cid = ?", (cid.digest,))
                        db.execute("UPDATE contents SET complete = 1 WHERE cid = ?", (cid.digest,))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise

        await self._run(write)

    # -- reading ----------------------------------------------------------------------------

    async def has(self, cid: ContentId) -> bool:
        """True if every chunk of `cid` is held."""
        rows = await self._run(
            self._query, "SELECT complete FROM contents WHERE cid = ?", (cid.digest,)
        )
        return bool(rows and rows[0][0])

    async def has_manifest(self, cid: ContentId) -> bool:
        rows = await self._run(self._query, "SELECT 1 FROM contents WHERE cid = ?", (cid.digest,))
        return bool(rows)

    def _has_chunk(self, cid: ContentId, index: int) -> bool:
        _manifest, complete, count = self._row(cid)
        if not 0 <= index < count:
            return False
        if complete:
            return True
        return bool(
            self._query("SELECT 1 FROM chunks WHERE cid = ? AND idx = ?", (cid.digest, index))
        )

    async def has_chunk(self, cid: ContentId, index: int) -> bool:
        try:
            return await self._run(self._has_chunk, cid, index)
        except ContentNotFound:
            return False

    async def missing_chunks(self, cid: ContentId) -> list[int]:
        """Indices not held yet (raises ContentNotFound if the manifest is unknown)."""

        def missing() -> list[int]:
            _manifest, complete, count = self._row(cid)
            if complete:
                return []
            held = {
                r[0] for r in self._query("SELECT idx FROM chunks WHERE cid = ?", (cid.digest,))
            }
            return [i for i in range(count) if i not in held]

        return await self._run(missing)

    async def get_manifest(self, cid: ContentId) -> Manifest:
        manifest, _tree = await self._run(self._tree, cid)
        return manifest

    async def get_manifest_bytes(self, cid: ContentId) -> bytes:
        return (await self._run(self._row, cid))[0]

    async def get_leaves(self, cid: ContentId) -> bytes:
        """The concatenated leaf hashes (what `fetch_leaves` transfers)."""
        rows = await self._run(
            self._query, "SELECT leaves FROM contents WHERE cid = ?", (cid.digest,)
        )
        if not rows:
            raise ContentNotFound(f"content {cid} is not in the store")
        return rows[0][0]

    async def get_chunk(self, cid: ContentId, index: int) -> bytes:
        """Chunk `index`; raises ContentNotFound if it is not held."""

        def read() -> bytes:
            if not self._has_chunk(cid, index):
                raise ContentNotFound(f"chunk {index} of {cid} is not in the store")
            manifest, _tree = self._tree(cid)
            length = manifest.chunk_length(index)
            with open(self.blob_path(cid), "rb") as handle:
                handle.seek(index * manifest.chunk_size)
                data = handle.read(length)
            if len(data) != length:
                raise ContentError(f"blob of {cid} is truncated at chunk {index}")
            self._touch(cid)
            return data

        return await self._run(read)

    def _touch(self, cid: ContentId) -> None:
        now = time.time()
        if now - self._touched.get(cid.digest, 0.0) >= _TOUCH_EVERY:
            self._touched[cid.digest] = now
            self._query("UPDATE contents SET accessed = ? WHERE cid = ?", (now, cid.digest))

    async def proof(self, cid: ContentId, index: int) -> list[bytes]:
        """The Merkle proof of chunk `index` (available even if the chunk itself is not held)."""
        _manifest, tree = await self._run(self._tree, cid)
        return tree.proof(index)

    async def get_chunk_with_proof(self, cid: ContentId, index: int) -> tuple[bytes, list[bytes]]:
        return await self.get_chunk(cid, index), await self.proof(cid, index)

    def fetcher(self, cid: ContentId) -> Fetch:
        """A `Fetch` reading from this store (for `stream_verified` / `export_to_file`)."""

        async def fetch(index: int) -> tuple[bytes, list[bytes]]:
            return await self.get_chunk_with_proof(cid, index)

        return fetch

    async def read(
        self, cid: ContentId, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Yield bytes `offset .. offset+length` of a content held here (no re-verification)."""
        manifest = await self.get_manifest(cid)
        if length is None:
            length = manifest.size - offset
        for index in manifest.chunk_span(offset, length):
            chunk = await self.get_chunk(cid, index)
            start = index * manifest.chunk_size
            yield chunk[max(offset - start, 0) : min(offset + length - start, len(chunk))]

    # -- accounting and removal ---------------------------------------------------------------

    async def used_bytes(self) -> int:
        """Bytes of chunk data held (what a cache size bound is compared against)."""
        rows = await self._run(self._query, "SELECT COALESCE(SUM(stored), 0) FROM contents")
        return int(rows[0][0])

    async def list_contents(self) -> list[StoredContent]:
        """Everything held, least recently accessed first."""

        def rows() -> list[StoredContent]:
            out = []
            for cid, size, count, complete, stored, pinned, added, accessed in self._query(
                "SELECT cid, size, chunk_count, complete, stored, pinned, added, accessed "
                "FROM contents ORDER BY accessed"
            ):
                held = (
                    count
                    if complete
                    else self._query("SELECT COUNT(*) FROM chunks WHERE cid = ?", (cid,))[0][0]
                )
                out.append(
                    StoredContent(
                        ContentId(cid),
                        size,
                        stored,
                        count,
                        held,
                        bool(complete),
                        bool(pinned),
                        added,
                        accessed,
                    )
                )
            return out

        return await self._run(rows)

    async def set_pinned(self, cid: ContentId, pinned: bool) -> None:
        await self._run(
            self._transaction,
            [("UPDATE contents SET pinned = ? WHERE cid = ?", (int(pinned), cid.digest))],
        )

    async def delete(self, cid: ContentId) -> int:
        """Forget `cid` and remove its blob; returns the bytes freed (0 if it was not held)."""

        def remove() -> int:
            rows = self._query("SELECT stored FROM contents WHERE cid = ?", (cid.digest,))
            if not rows:
                return 0
            self._transaction(
                [
                    ("DELETE FROM contents WHERE cid = ?", (cid.digest,)),
                    ("DELETE FROM chunks WHERE cid = ?", (cid.digest,)),
                ]
            )
            with self._tree_lock:
                self._trees.pop(cid.digest, None)
            self.blob_path(cid).unlink(missing_ok=True)
            return int(rows[0][0])

        return await self._run(remove)
