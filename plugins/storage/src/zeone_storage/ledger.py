"""What this node knows as a publisher: its files, where each fragment lives now, peer standing.

The manifest records the first placement; repairs move fragments, so the current placement lives
here (and, for other nodes, in the holders' provider records). Scores persist across restarts:
a node that failed audits yesterday is not trusted with new fragments today.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    cid BLOB PRIMARY KEY, name TEXT NOT NULL, size INTEGER NOT NULL, stripes INTEGER NOT NULL,
    n INTEGER NOT NULL, k INTEGER NOT NULL, encrypted INTEGER NOT NULL, added REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS placement (
    cid BLOB NOT NULL, position INTEGER NOT NULL, node BLOB NOT NULL, alive INTEGER NOT NULL,
    PRIMARY KEY (cid, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scores (
    node BLOB PRIMARY KEY, score REAL NOT NULL, passed INTEGER NOT NULL, failed INTEGER NOT NULL,
    updated REAL NOT NULL
) WITHOUT ROWID;
"""
INITIAL_SCORE = 1.0
PASS_GAIN = 0.05
FAIL_PENALTY = 0.3


class Ledger:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def add_file(self, cid: bytes, manifest: Any, placement: dict[int, bytes]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (cid, manifest.name, manifest.size, manifest.stripes, manifest.n, manifest.k,
                 int(manifest.encrypted), time.time()),
            )  # fmt: skip
            for position, node in placement.items():
                self._db.execute(
                    "INSERT OR REPLACE INTO placement VALUES (?, ?, ?, 1)", (cid, position, node)
                )
            self._db.execute("COMMIT")

    def files(self) -> list[dict[str, Any]]:
        rows = self._q(
            "SELECT f.cid, f.name, f.size, f.stripes, f.n, f.k, f.encrypted, f.added,"
            " (SELECT COUNT(*) FROM placement p WHERE p.cid = f.cid AND p.alive = 1)"
            " FROM files f ORDER BY f.added"
        )
        return [
            {"cid": r[0], "name": r[1], "size": r[2], "stripes": r[3], "n": r[4], "k": r[5],
             "encrypted": bool(r[6]), "added": r[7], "alive": r[8]}
            for r in rows
        ]  # fmt: skip

    def is_own(self, cid: bytes) -> bool:
        return bool(self._q("SELECT 1 FROM files WHERE cid = ?", (cid,)))

    def placement(self, cid: bytes) -> dict[int, tuple[bytes, bool]]:
        rows = self._q("SELECT position, node, alive FROM placement WHERE cid = ?", (cid,))
        return {r[0]: (r[1], bool(r[2])) for r in rows}

    def set_holder(self, cid: bytes, position: int, node: bytes, alive: bool = True) -> None:
        self._q(
            "INSERT OR REPLACE INTO placement VALUES (?, ?, ?, ?)",
            (cid, position, node, int(alive)),
        )

    def mark_lost(self, cid: bytes, position: int) -> None:
        self._q("UPDATE placement SET alive = 0 WHERE cid = ? AND position = ?", (cid, position))

    def score(self, node: bytes) -> float:
        rows = self._q("SELECT score FROM scores WHERE node = ?", (node,))
        return rows[0][0] if rows else INITIAL_SCORE

    def record_audit(self, node: bytes, passed: bool) -> float:
        """Update and return `node`'s standing: slow to earn, quick to lose, within 0..1."""
        with self._lock:
            row = self._db.execute(
                "SELECT score, passed, failed FROM scores WHERE node = ?", (node,)
            ).fetchone()
            score, ok, bad = row if row else (INITIAL_SCORE, 0, 0)
            if passed:
                score, ok = min(1.0, score + PASS_GAIN), ok + 1
            else:
                score, bad = max(0.0, score - FAIL_PENALTY), bad + 1
            self._db.execute(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)",
                (node, score, ok, bad, time.time()),
            )
            return score

    def scores(self) -> list[dict[str, Any]]:
        rows = self._q("SELECT node, score, passed, failed, updated FROM scores ORDER BY score")
        return [
            {"node": r[0], "score": r[1], "passed": r[2], "failed": r[3], "updated": r[4]}
            for r in rows
        ]
