"""Fragments this node holds for others: one file per fragment plus an SQLite index, bounded.

Durability order: the fragment is written to a temp file, fsynced, renamed into place, the
directory fsynced, and only then the index row is committed (WAL, synchronous=FULL); the store
RPC is answered after that, so an acknowledged fragment survives a crash or power loss.
Fragments are addressed by their Merkle root, so a wrong write is impossible to index.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from zeone_storage.codec import fragment_root, fragment_tree, leaf_of

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fragments (
    root BLOB PRIMARY KEY, size INTEGER NOT NULL, added REAL NOT NULL, committed INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holdings (
    cid BLOB NOT NULL, position INTEGER NOT NULL, root BLOB NOT NULL,
    PRIMARY KEY (cid, position)
) WITHOUT ROWID;
"""


class QuotaExceeded(Exception):
    """Storing this fragment would exceed the configured quota."""


class FragmentMismatch(Exception):
    """The bytes do not hash to the claimed root."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FragmentStore:
    def __init__(self, directory: Path, quota: int) -> None:
        self.directory = Path(directory)
        self.quota = quota
        self._files = self.directory / "fragments"
        self._tmp = self.directory / "tmp"
        for path in (self.directory, self._files, self._tmp):
            path.mkdir(parents=True, exist_ok=True)
        for stale in self._tmp.iterdir():
            stale.unlink(missing_ok=True)
        self._db = sqlite3.connect(
            self.directory / "fragments.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._used = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM fragments").fetchone()[0]
        self._reserved = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args)

    def path(self, root: bytes) -> Path:
        text = root.hex()
        return self._files / text[:2] / text

    @property
    def used(self) -> int:
        return self._used

    def _has(self, root: bytes) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM fragments WHERE root = ?", (root,)).fetchone()
        return row is not None

    async def has(self, root: bytes) -> bool:
        return await self._run(self._has, root)

    def _put(self, root: bytes, data: bytes) -> bool:
        if fragment_root(data) != root:
            raise FragmentMismatch("fragment bytes do not match its root")
        if self._has(root):
            return False
        with self._lock:
            if self._used + self._reserved + len(data) > self.quota:
                raise QuotaExceeded(
                    f"quota of {self.quota} bytes reached ({self._used} used), refusing "
                    f"{len(data)} more"
                )
            self._reserved += len(data)
        try:
            path = self.path(root)
            path.parent.mkdir(exist_ok=True)
            tmp = self._tmp / f"{secrets.token_hex(8)}.frag"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
            with self._lock:
                self._db.execute(
                    "INSERT OR IGNORE INTO fragments VALUES (?, ?, ?, 0)",
                    (root, len(data), time.time()),
                )
                self._used += len(data)
        finally:
            with self._lock:
                self._reserved -= len(data)
        return True

    async def put(self, root: bytes, data: bytes) -> bool:
        """Store durably; False if already held. Raises FragmentMismatch or QuotaExceeded."""
        return await self._run(self._put, root, data)

    def _get(self, root: bytes) -> bytes | None:
        if not self._has(root):
            return None
        try:
            return self.path(root).read_bytes()
        except FileNotFoundError:
            return None

    async def get(self, root: bytes) -> bytes | None:
        return await self._run(self._get, root)

    async def audit_answer(self, root: bytes, index: int) -> tuple[bytes, list[bytes]] | None:
        """Leaf `index` of the fragment and its Merkle proof, read from disk now."""

        def answer() -> tuple[bytes, list[bytes]] | None:
            data = self._get(root)
            if data is None:
                return None
            tree = fragment_tree(data)
            if not 0 <= index < tree.count:
                raise IndexError(f"leaf {index} outside 0..{tree.count - 1}")
            return leaf_of(data, index), tree.proof(index)

        return await self._run(answer)

    async def commit(self, cid: bytes, positions: dict[int, bytes]) -> None:
        def write() -> None:
            with self._lock:
                self._db.execute("BEGIN")
                for position, root in positions.items():
                    self._db.execute(
                        "INSERT OR REPLACE INTO holdings VALUES (?, ?, ?)", (cid, position, root)
                    )
                    self._db.execute("UPDATE fragments SET committed = 1 WHERE root = ?", (root,))
                self._db.execute("COMMIT")

        await self._run(write)

    async def holdings(self, cid: bytes) -> dict[int, bytes]:
        def read() -> dict[int, bytes]:
            with self._lock:
                rows = self._db.execute(
                    "SELECT position, root FROM holdings WHERE cid = ?", (cid,)
                ).fetchall()
            return dict(rows)

        return await self._run(read)

    async def all_cids(self) -> list[bytes]:
        def read() -> list[bytes]:
            with self._lock:
                return [r[0] for r in self._db.execute("SELECT DISTINCT cid FROM holdings")]

        return await self._run(read)

    async def collect_uncommitted(self, older_than: float) -> int:
        """Drop fragments whose upload was never committed (a publisher that died mid-put)."""

        def collect() -> int:
            with self._lock:
                rows = self._db.execute(
                    "SELECT root, size FROM fragments WHERE committed = 0 AND added < ?",
                    (time.time() - older_than,),
                ).fetchall()
                for root, size in rows:
                    self._db.execute("DELETE FROM fragments WHERE root = ?", (root,))
                    self._used -= size
            for root, _size in rows:
                self.path(root).unlink(missing_ok=True)
            return len(rows)

        return await self._run(collect)

    def drop(self, root: bytes) -> None:
        """Lose a fragment on purpose (tests, and the benchmark's churn): file and row."""
        with self._lock:
            row = self._db.execute("SELECT size FROM fragments WHERE root = ?", (root,)).fetchone()
            self._db.execute("DELETE FROM fragments WHERE root = ?", (root,))
            if row:
                self._used -= row[0]
        self.path(root).unlink(missing_ok=True)

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM fragments").fetchone()[0]
