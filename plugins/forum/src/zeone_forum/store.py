"""The local forum store: every held record in SQLite (WAL, synchronous=FULL), plus the views the
forum needs (threads, posts, votes, tombstones, profiles), FTS5 full-text search and the storage
policies of seed 004 §4.3.

`ingest` is the single door for records, local or from peers: it decodes, checks everything that
needs context (proof of work, clock, thread existence, authorship of edit/delete targets, rate
limits) and applies the record in one transaction. Records that refer to a thread or parent we do
not have yet are parked (bounded) and retried when it arrives, so sync order does not matter.
A tombstone wins forever: the target's content is erased and the target can never be re-ingested.

All methods are synchronous and short; they run on the Trio thread.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from zeone_forum import popularity
from zeone_forum.config import ForumConfig
from zeone_forum.records import (
    ID_BYTES,
    MAX_CLOCK_SKEW_MS,
    MAX_RECORD_BYTES,
    ForumRecord,
    InvalidForumRecord,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    author BLOB NOT NULL,
    thread BLOB,
    created INTEGER NOT NULL,
    wire BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_thread ON records(thread);
CREATE INDEX IF NOT EXISTS records_author ON records(author, created);
CREATE INDEX IF NOT EXISTS records_order ON records(created, id);
CREATE TABLE IF NOT EXISTS threads (
    id BLOB PRIMARY KEY,
    author BLOB NOT NULL,
    title TEXT NOT NULL,
    category TEXT NOT NULL,
    tags TEXT NOT NULL,
    created INTEGER NOT NULL,
    last_activity INTEGER NOT NULL,
    posts INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    reads INTEGER NOT NULL DEFAULT 0,
    received REAL NOT NULL,
    expires REAL NOT NULL,
    score REAL NOT NULL DEFAULT 0,
    holders INTEGER NOT NULL DEFAULT 0,
    seed_holders INTEGER NOT NULL DEFAULT 0,
    pinned INTEGER NOT NULL DEFAULT 0,
    evicted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS posts (
    id BLOB PRIMARY KEY,
    thread BLOB NOT NULL,
    parent BLOB,
    author BLOB NOT NULL,
    created INTEGER NOT NULL,
    content TEXT NOT NULL,
    attachments TEXT NOT NULL DEFAULT '[]',
    edited INTEGER,
    anon INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS posts_thread ON posts(thread, created);
CREATE TABLE IF NOT EXISTS votes (
    author BLOB NOT NULL,
    target BLOB NOT NULL,
    thread BLOB NOT NULL,
    value INTEGER NOT NULL,
    reaction TEXT NOT NULL,
    created INTEGER NOT NULL,
    ring BLOB,
    PRIMARY KEY (author, target)
);
CREATE INDEX IF NOT EXISTS votes_target ON votes(target);
CREATE TABLE IF NOT EXISTS deleted (target BLOB PRIMARY KEY, thread BLOB, tombstone BLOB);
CREATE TABLE IF NOT EXISTS slots (
    author BLOB NOT NULL, bucket INTEGER NOT NULL, slot INTEGER NOT NULL, id BLOB NOT NULL,
    PRIMARY KEY (author, bucket, slot)
);
CREATE TABLE IF NOT EXISTS authors (author BLOB PRIMARY KEY, first_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS profiles (
    author BLOB PRIMARY KEY, nick TEXT NOT NULL, about TEXT NOT NULL, created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS readers (thread BLOB, reader TEXT, PRIMARY KEY (thread, reader));
CREATE TABLE IF NOT EXISTS pending (
    id BLOB PRIMARY KEY, waiting BLOB NOT NULL, wire BLOB NOT NULL, received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_waiting ON pending(waiting);
CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(
    text, id UNINDEXED, thread UNINDEXED, tokenize = 'unicode61'
);
"""

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
PENDING = "pending"
REJECTED = "rejected"
IGNORED = "ignored"
"""Valid, but for a thread this node chose not to hold (evicted, or a light node's)."""


@attrs.frozen
class Ingest:
    status: str
    reason: str = ""
    record: ForumRecord | None = None

    @property
    def ok(self) -> bool:
        return self.status in (ACCEPTED, DUPLICATE)


class _Wait(Exception):
    def __init__(self, waiting: bytes, reason: str) -> None:
        self.waiting = waiting
        self.reason = reason


class _Reject(Exception):
    pass


class ForumStore:
    def __init__(
        self,
        path: Path | str,
        config: ForumConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        is_seed: bool = False,
        light: bool = False,
    ) -> None:
        self.config = config or ForumConfig()
        self.clock = clock
        self.is_seed = is_seed
        self.light = light
        self.seed_authors = {bytes.fromhex(k) for k in self.config.seed_authors}
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        #: Called with each newly applied record (replication, live UI).
        self.listeners: list[Callable[[ForumRecord], None]] = []
        self.subscribed: set[bytes] = set()
        """Threads a light node holds in full (opened or posted to)."""
        self._sync_index: Any = None

    def close(self) -> None:
        self.db.close()

    # -- ingest ---------------------------------------------------------------------------------

    def ingest(self, item: bytes | ForumRecord, *, local: bool = False) -> Ingest:
        results = self.ingest_many([item], local=local)
        return results[0]

    def ingest_many(
        self, items: Iterable[bytes | ForumRecord], *, local: bool = False
    ) -> list[Ingest]:
        """Apply records in one transaction (one fsync for a batch)."""
        results: list[Ingest] = []
        applied: list[ForumRecord] = []
        now = self.clock()
        # The local user's writes are fsync'd before they are acknowledged (FULL); records from
        # peers survive a crash of the process (WAL, NORMAL) and after a power loss are fetched
        # again by the next sync, so they do not pay an fsync each.
        self.db.execute(f"PRAGMA synchronous={'FULL' if local else 'NORMAL'}")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for item in items:
                result = self._ingest_one(item, now, local)
                results.append(result)
                released: list[bytes | ForumRecord] = []
                if result.status == ACCEPTED and result.record is not None:
                    applied.append(result.record)
                    released.extend(self._release_pending(result.record.id))
                while released:  # records that were waiting for this one, and theirs
                    retry = self._ingest_one(released.pop(), now, False)
                    if retry.status == ACCEPTED and retry.record is not None:
                        applied.append(retry.record)
                        released.extend(self._release_pending(retry.record.id))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        for record in applied:
            if self._sync_index is not None:
                self._sync_index.add(record.created, record.id)
            for listener in self.listeners:
                listener(record)
        return results

    def _release_pending(self, waited_for: bytes) -> list[bytes]:
        rows = self.db.execute(
            "SELECT id, wire FROM pending WHERE waiting = ?", (waited_for,)
        ).fetchall()
        if rows:
            self.db.execute("DELETE FROM pending WHERE waiting = ?", (waited_for,))
        return [wire for _id, wire in rows]

    def _ingest_one(self, item: bytes | ForumRecord, now: float, local: bool) -> Ingest:
        checked = False
        if type(item) is bytes and len(item) <= MAX_RECORD_BYTES:
            checked = True
            # Duplicates are the common case under gossip: answer them before any crypto.
            rid = hashlib.blake2b(item, digest_size=ID_BYTES).digest()
            if self.db.execute("SELECT 1 FROM records WHERE id = ?", (rid,)).fetchone():
                return Ingest(DUPLICATE, "already held")
        try:
            record = item if isinstance(item, ForumRecord) else ForumRecord.decode(item)
        except InvalidForumRecord as exc:
            return Ingest(REJECTED, str(exc))
        if not checked and self.has(record.id):
            return Ingest(DUPLICATE, "already held", record)
        try:
            self._check(record, now)
        except _Reject as exc:
            return Ingest(REJECTED, str(exc), record)
        except _Wait as wait:
            if local:
                return Ingest(REJECTED, wait.reason, record)
            return self._park(record, wait, now)
        if self._ignored(record):
            return Ingest(IGNORED, "thread not held here", record)
        self._apply(record, now)
        return Ingest(ACCEPTED, "", record)

    def _park(self, record: ForumRecord, wait: _Wait, now: float) -> Ingest:
        count = self.db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
        if count >= self.config.max_pending:
            self.db.execute(
                "DELETE FROM pending WHERE id IN"
                " (SELECT id FROM pending ORDER BY received LIMIT ?)",
                (count - self.config.max_pending + 1,),
            )
        if self.config.max_pending == 0:
            return Ingest(REJECTED, wait.reason, record)
        self.db.execute(
            "INSERT OR IGNORE INTO pending (id, waiting, wire, received) VALUES (?, ?, ?, ?)",
            (record.id, wait.waiting, record.wire, now),
        )
        return Ingest(PENDING, wait.reason, record)

    def _ignored(self, record: ForumRecord) -> bool:
        if record.kind in ("thread", "profile"):
            return False
        row = self.db.execute(
            "SELECT evicted FROM threads WHERE id = ?", (record.thread,)
        ).fetchone()
        if row is not None and row[0]:
            return True
        return self.light and record.thread not in self.subscribed

    def _thread_row(self, thread: bytes) -> tuple[int, int] | None:
        return self.db.execute(
            "SELECT created, evicted FROM threads WHERE id = ?", (thread,)
        ).fetchone()

    def _check(self, record: ForumRecord, now: float) -> None:
        config = self.config
        if record.id in self._deleted_ids((record.id,)):
            raise _Reject("deleted by its author")
        if record.work < config.pow_bits:
            raise _Reject(f"proof of work has {record.work} bits; {config.pow_bits} required")
        if record.created > now * 1000 + MAX_CLOCK_SKEW_MS:
            raise _Reject("created in the future")
        body = record.body
        if record.kind in ("post", "edit"):
            size = len(body.content.encode())
            if size > config.max_post_bytes:
                raise _Reject(f"post is {size} bytes; at most {config.max_post_bytes}")
        if record.kind not in ("thread", "profile"):
            thread = self._thread_row(body.thread)
            if thread is None:
                if self._deleted_ids((body.thread,)):
                    raise _Reject("the thread was deleted by its author")
                raise _Wait(body.thread, "no such thread")
            if record.created < thread[0]:
                raise _Reject("record predates its thread")
        if record.kind == "post" and body.parent is not None:
            parent = self.db.execute(
                "SELECT thread FROM posts WHERE id = ?", (body.parent,)
            ).fetchone()
            if parent is None and not self._deleted_ids((body.parent,)):
                raise _Wait(body.parent, "no such parent post")
            if parent is not None and parent[0] != body.thread:
                raise _Reject("parent post is in another thread")
        if record.kind in ("vote", "tombstone", "edit"):
            self._check_target(record)
        if record.anon is not None:
            self._check_anon(record)
        self._check_rate(record, now)

    def _check_anon(self, record: ForumRecord) -> None:
        anon = record.anon
        assert anon is not None
        if len(anon.ring) < self.config.min_ring_size:
            raise _Reject(
                f"ring of {len(anon.ring)} members; at least {self.config.min_ring_size} required"
            )
        if record.kind == "vote":
            other = self.db.execute(
                "SELECT target FROM votes WHERE author = ? AND thread = ? AND target != ?",
                (anon.image, record.body.thread, record.body.target),
            ).fetchone()
            if other is not None:
                raise _Reject("this member already voted anonymously in this thread")

    def _check_target(self, record: ForumRecord) -> None:
        body = record.body
        if body.target == body.thread:
            row = self.db.execute(
                "SELECT author, created FROM threads WHERE id = ?", (body.thread,)
            ).fetchone()
        else:
            row = self.db.execute(
                "SELECT author, created, thread FROM posts WHERE id = ?", (body.target,)
            ).fetchone()
            if row is not None and row[2] != body.thread:
                raise _Reject("target is in another thread")
        if row is None:
            if self._deleted_ids((body.target,)):
                raise _Reject("target was deleted by its author")
            raise _Wait(body.target, "no such target")
        if record.kind in ("tombstone", "edit"):
            if row[0] != record.author:
                raise _Reject(
                    f"only the author may {'delete' if record.kind == 'tombstone' else 'edit'} it"
                )
            if record.kind == "edit" and body.target == body.thread:
                raise _Reject("a thread's title cannot be edited; edit its first post")
        if record.created < row[1]:
            raise _Reject("record predates its target")

    def standing_age(self, author: bytes, now: float | None = None) -> float:
        row = self.db.execute(
            "SELECT first_seen FROM authors WHERE author = ?", (author,)
        ).fetchone()
        if row is None:
            return 0.0
        return (self.clock() if now is None else now) - row[0]

    def rate_limit(self, author: bytes, now: float | None = None) -> int:
        established = (
            self.standing_age(author, now) >= self.config.new_identity_age
            or author in self.seed_authors
        )
        return self.config.identity_rate if established else self.config.new_identity_rate

    def bucket(self, created_ms: int) -> int:
        return created_ms // int(self.config.rate_window * 1000)

    def next_slot(self, author: bytes, created_ms: int) -> int:
        """The slot our own next record in this window takes (its author's count so far)."""
        row = self.db.execute(
            "SELECT COALESCE(MAX(slot) + 1, 0) FROM slots WHERE author = ? AND bucket = ?",
            (author, self.bucket(created_ms)),
        ).fetchone()
        return row[0]

    def _check_rate(self, record: ForumRecord, now: float) -> None:
        """Rate limit by slots: each record names its index among its author's records in the
        same fixed window; a slot at or above the limit is refused, and a slot can hold only one
        record. The verdict depends on the record alone (and on how long we have known its
        author), never on arrival order, so nodes converge; an author who reuses a slot
        (equivocation) gets only the first copy a node sees."""
        limit = self.rate_limit(record.rate_key, now)
        if record.slot >= limit:
            raise _Reject(
                f"rate limit: slot {record.slot} of window is beyond the author's {limit} "
                f"records per {self.config.rate_window:g}s"
            )
        taken = self.db.execute(
            "SELECT id FROM slots WHERE author = ? AND bucket = ? AND slot = ?",
            (record.rate_key, self.bucket(record.created), record.slot),
        ).fetchone()
        if taken is not None and taken[0] != record.id:
            raise _Reject("rate limit: the author already used this slot (equivocation)")

    def is_deleted(self, record_id: bytes) -> bool:
        return bool(self._deleted_ids((record_id,)))

    def _deleted_ids(self, ids: Sequence[bytes]) -> set[bytes]:
        found = set()
        for target in ids:
            if self.db.execute("SELECT 1 FROM deleted WHERE target = ?", (target,)).fetchone():
                found.add(target)
        return found

    def _apply(self, record: ForumRecord, now: float) -> None:
        db = self.db
        body = record.body
        thread = record.thread
        db.execute(
            "INSERT INTO records (id, kind, author, thread, created, wire)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (record.id, record.kind, record.author, thread, record.created, record.wire),
        )
        anon = record.anon
        if anon is None:  # one-time keys of anonymous records are nobody's identity
            db.execute(
                "INSERT OR IGNORE INTO authors (author, first_seen) VALUES (?, ?)",
                (record.author, now),
            )
        db.execute(
            "INSERT OR IGNORE INTO slots (author, bucket, slot, id) VALUES (?, ?, ?, ?)",
            (record.rate_key, self.bucket(record.created), record.slot, record.id),
        )
        ring_blob = b"".join(anon.ring) if anon is not None else None
        size = len(record.wire)
        if record.kind == "thread":
            db.execute(
                "INSERT INTO threads (id, author, title, category, tags, created, last_activity,"
                " bytes, received, expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.author,
                    body.title,
                    body.category,
                    json.dumps(list(body.tags)),
                    record.created,
                    record.created,
                    size,
                    now,
                    now + popularity.DAY,
                ),
            )
            db.execute(
                "INSERT INTO search (text, id, thread) VALUES (?, ?, ?)",
                (f"{body.title} {' '.join(body.tags)} {body.category}", record.id, record.id),
            )
            return
        if record.kind == "profile":
            db.execute(
                "INSERT INTO profiles (author, nick, about, created) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(author) DO UPDATE SET nick = excluded.nick, about = excluded.about,"
                " created = excluded.created WHERE excluded.created > profiles.created",
                (record.author, body.nick, body.about, record.created),
            )
            return
        db.execute(
            "UPDATE threads SET bytes = bytes + ?, last_activity = MAX(last_activity, ?)"
            " WHERE id = ?",
            (size, record.created, thread),
        )
        if record.kind == "post":
            db.execute(
                "INSERT INTO posts (id, thread, parent, author, created, content, attachments,"
                " anon) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    thread,
                    body.parent,
                    record.rate_key,
                    record.created,
                    body.content,
                    json.dumps([a.hex() for a in body.attachments]),
                    int(anon is not None),
                ),
            )
            db.execute("UPDATE threads SET posts = posts + 1 WHERE id = ?", (thread,))
            db.execute(
                "INSERT INTO search (text, id, thread) VALUES (?, ?, ?)",
                (body.content, record.id, thread),
            )
        elif record.kind == "vote":
            db.execute(
                "INSERT INTO votes (author, target, thread, value, reaction, created, ring)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(author, target) DO UPDATE SET"
                " value = excluded.value, reaction = excluded.reaction, created = excluded.created"
                " WHERE excluded.created > votes.created",
                (
                    record.rate_key,
                    body.target,
                    thread,
                    body.value,
                    body.reaction,
                    record.created,
                    ring_blob,
                ),
            )
        elif record.kind == "edit":
            updated = db.execute(
                "UPDATE posts SET content = ?, edited = ? WHERE id = ?"
                " AND (edited IS NULL OR edited < ?)",
                (body.content, record.created, body.target, record.created),
            ).rowcount
            if updated:
                db.execute("DELETE FROM search WHERE id = ?", (body.target,))
                db.execute(
                    "INSERT INTO search (text, id, thread) VALUES (?, ?, ?)",
                    (body.content, body.target, thread),
                )
        elif record.kind == "tombstone":
            self._erase(body.target, thread, record.id)

    def _erase(self, target: bytes, thread: bytes, tombstone: bytes) -> None:
        """Honour a tombstone: the target's content leaves every table; the tombstone stays so
        the deletion replicates and the target is refused if it ever comes back."""
        db = self.db
        db.execute(
            "INSERT OR IGNORE INTO deleted (target, thread, tombstone) VALUES (?, ?, ?)",
            (target, thread, tombstone),
        )
        if target == thread:
            posts = [r[0] for r in db.execute("SELECT id FROM posts WHERE thread = ?", (thread,))]
            for post in posts:
                db.execute(
                    "INSERT OR IGNORE INTO deleted (target, thread) VALUES (?, ?)", (post, thread)
                )
            db.execute("DELETE FROM posts WHERE thread = ?", (thread,))
            db.execute("DELETE FROM votes WHERE thread = ?", (thread,))
            db.execute("DELETE FROM search WHERE thread = ?", (thread,))
            db.execute("DELETE FROM threads WHERE id = ?", (thread,))
            db.execute("DELETE FROM readers WHERE thread = ?", (thread,))
            removed = db.execute(
                "DELETE FROM records WHERE thread = ? AND kind != 'tombstone' RETURNING id",
                (thread,),
            ).fetchall()
        else:
            db.execute("DELETE FROM posts WHERE id = ?", (target,))
            db.execute("DELETE FROM votes WHERE target = ?", (target,))
            db.execute("DELETE FROM search WHERE id = ?", (target,))
            db.execute("UPDATE threads SET posts = posts - 1 WHERE id = ?", (thread,))
            removed = db.execute(
                "DELETE FROM records WHERE id = ? RETURNING id", (target,)
            ).fetchall()
        if self._sync_index is not None:
            for (record_id,) in removed:
                self._sync_index.discard_id(record_id)

    # -- reading --------------------------------------------------------------------------------

    def has(self, record_id: bytes) -> bool:
        return (
            self.db.execute("SELECT 1 FROM records WHERE id = ?", (record_id,)).fetchone()
            is not None
        )

    def thread_exists(self, thread: bytes) -> bool:
        return self._thread_row(thread) is not None

    def get_wires(self, ids: Iterable[bytes]) -> list[bytes]:
        out = []
        for record_id in ids:
            row = self.db.execute("SELECT wire FROM records WHERE id = ?", (record_id,)).fetchone()
            if row is not None:
                out.append(row[0])
        return out

    def records_since(
        self,
        seq: int,
        limit: int,
        *,
        max_bytes: int = 1 << 20,
        threads: set[bytes] | None = None,
        skip: set[bytes] = frozenset(),  # type: ignore[assignment]
        skip_until: int = 0,
    ) -> tuple[list[bytes], int, bool]:
        """Records this node applied after local sequence `seq` (an incremental-sync watermark).

        Returns (records, the new watermark, whether more follow). `threads` restricts the answer
        to those threads (a light node's), plus all thread metadata and profiles; records of
        threads in `skip` with a sequence number up to `skip_until` are left out (the receiver
        fetched those threads whole already). Filtered records still advance the watermark.
        """
        rows = self.db.execute(
            "SELECT seq, kind, thread, wire FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        ).fetchall()
        wires: list[bytes] = []
        size = 0
        last = seq
        for row_seq, kind, thread, wire in rows:
            if wires and size + len(wire) > max_bytes:
                return wires, last, True
            last = row_seq
            if thread in skip and row_seq <= skip_until:
                continue
            if kind not in ("thread", "profile") and threads is not None and thread not in threads:
                continue
            wires.append(wire)
            size += len(wire)
        return wires, last, len(rows) == limit

    def thread_index(self, offset: int, limit: int) -> list[bytes]:
        """Thread metadata records, most popular first (what a new node fetches first)."""
        return [
            r[0]
            for r in self.db.execute(
                "SELECT r.wire FROM threads t JOIN records r ON r.id = t.id"
                " ORDER BY t.score DESC, t.last_activity DESC LIMIT ? OFFSET ?",
                (limit, offset),
            )
        ]

    def max_seq(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]

    def all_keys(self) -> list[tuple[int, bytes]]:
        return self.db.execute("SELECT created, id FROM records ORDER BY created, id").fetchall()

    def record_thread(self, record_id: bytes) -> bytes | None:
        row = self.db.execute("SELECT thread FROM records WHERE id = ?", (record_id,)).fetchone()
        return row[0] if row else None

    def vote_weight(self, author: bytes, now: float) -> float:
        return popularity.vote_weight(
            self.standing_age(author, now),
            is_seed=author in self.seed_authors,
            full_after=self.config.standing_full_after,
        )

    def _weight(self, author: bytes, ring: bytes | None, now: float) -> float:
        """An anonymous vote weighs what the weakest ring member's vote would: a ring padded with
        fresh identities cannot buy weight."""
        if ring is None:
            return self.vote_weight(author, now)
        return min(self.vote_weight(ring[i : i + 32], now) for i in range(0, len(ring), 32))

    def known_authors(self, exclude: bytes, limit: int = 1000) -> list[bytes]:
        """Identities this node has seen write, longest known first (ring candidates)."""
        return [
            r[0]
            for r in self.db.execute(
                "SELECT author FROM authors WHERE author != ? ORDER BY first_seen LIMIT ?",
                (exclude, limit),
            )
        ]

    def _tally(self, target: bytes, now: float) -> dict[str, Any]:
        up = down = weighted = 0.0
        reactions: dict[str, int] = {}
        for author, value, reaction, ring in self.db.execute(
            "SELECT author, value, reaction, ring FROM votes WHERE target = ?", (target,)
        ):
            weight = self._weight(author, ring, now)
            if value > 0:
                up += 1
            elif value < 0:
                down += 1
            weighted += value * weight
            if reaction:
                reactions[reaction] = reactions.get(reaction, 0) + 1
        return {
            "up": int(up),
            "down": int(down),
            "weighted": round(weighted, 3),
            "reactions": reactions,
        }

    def profile(self, author: bytes) -> str | None:
        row = self.db.execute("SELECT nick FROM profiles WHERE author = ?", (author,)).fetchone()
        return row[0] if row else None

    def _thread_dict(self, row: Sequence[Any], now: float) -> dict[str, Any]:
        (
            tid,
            author,
            title,
            category,
            tags,
            created,
            last,
            posts,
            size,
            reads,
            _received,
            expires,
            score,
            holders,
            seed_holders,
            pinned,
            evicted,
        ) = row
        return {
            "id": tid.hex(),
            "title": title,
            "category": category,
            "tags": json.loads(tags),
            "author": author.hex(),
            "nick": self.profile(author),
            "created": created / 1000,
            "last_activity": last / 1000,
            "posts": posts,
            "bytes": size,
            "reads": reads,
            "score": score,
            "holders": holders,
            "seed_holders": seed_holders,
            "expires_in": round(expires - now, 1),
            "pinned": bool(pinned),
            "held": not evicted,
            "votes": self._tally(tid, now),
        }

    THREAD_COLUMNS = (
        "id, author, title, category, tags, created, last_activity, posts, bytes, reads,"
        " received, expires, score, holders, seed_holders, pinned, evicted"
    )

    def list_threads(
        self,
        *,
        order: str = "popular",
        category: str | None = None,
        tag: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        orders = {
            "popular": "score DESC, last_activity DESC",
            "recent": "last_activity DESC",
            "new": "created DESC",
        }
        if order not in orders:
            raise ValueError(f"order is one of {', '.join(orders)}")
        where, args = [], []
        if category:
            where.append("category = ?")
            args.append(category)
        if tag:
            where.append("EXISTS (SELECT 1 FROM json_each(tags) WHERE value = ?)")
            args.append(tag)
        sql = f"SELECT {self.THREAD_COLUMNS} FROM threads"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {orders[order]} LIMIT ?"
        now = self.clock()
        return [self._thread_dict(r, now) for r in self.db.execute(sql, (*args, limit))]

    def thread(self, thread: bytes, *, reader: str | None = None) -> dict[str, Any] | None:
        """A thread with its posts; counts a read (extends TTL by 10%, §4.3)."""
        now = self.clock()
        row = self.db.execute(
            f"SELECT {self.THREAD_COLUMNS} FROM threads WHERE id = ?", (thread,)
        ).fetchone()
        if row is None:
            return None
        if reader is not None:
            self.note_read(thread, reader, now)
        data = self._thread_dict(row, now)
        posts = []
        for pid, parent, author, created, content, attachments, edited, anon in self.db.execute(
            "SELECT id, parent, author, created, content, attachments, edited, anon FROM posts"
            " WHERE thread = ? ORDER BY created, id",
            (thread,),
        ):
            posts.append(
                {
                    "id": pid.hex(),
                    "parent": parent.hex() if parent else None,
                    "author": author.hex(),
                    "anonymous": bool(anon),
                    "nick": f"anonymous #{author.hex()[:6]}" if anon else self.profile(author),
                    "created": created / 1000,
                    "edited": edited / 1000 if edited else None,
                    "content": content,
                    "attachments": json.loads(attachments),
                    "votes": self._tally(pid, now),
                }
            )
        data["messages"] = posts
        return data

    def note_read(self, thread: bytes, reader: str, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        row = self.db.execute(
            "SELECT score, expires FROM threads WHERE id = ?", (thread,)
        ).fetchone()
        if row is None:
            return
        extension = 0.1 * popularity.ttl_for(row[0])
        self.db.execute(
            "UPDATE threads SET reads = reads + 1, expires = MAX(expires, ?) + ? WHERE id = ?",
            (now, extension, thread),
        )
        self.db.execute(
            "INSERT OR IGNORE INTO readers (thread, reader) VALUES (?, ?)", (thread, reader)
        )

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """FTS5 over titles, tags and post bodies; each word is matched as a literal term."""
        terms = [t for t in query.replace('"', " ").split() if t]
        if not terms:
            return []
        match = " ".join(f'"{t}"' for t in terms)
        rows = self.db.execute(
            "SELECT id, thread, snippet(search, 0, '[', ']', '…', 12), bm25(search)"
            " FROM search WHERE search MATCH ? ORDER BY bm25(search) LIMIT ?",
            (match, limit),
        ).fetchall()
        out = []
        for rid, thread, snippet, rank in rows:
            title = self.db.execute("SELECT title FROM threads WHERE id = ?", (thread,)).fetchone()
            out.append(
                {
                    "id": rid.hex(),
                    "thread": thread.hex(),
                    "title": title[0] if title else "",
                    "snippet": snippet,
                    "rank": round(-rank, 3),
                }
            )
        return out

    def author_of(self, record_id: bytes) -> bytes | None:
        row = self.db.execute("SELECT author FROM records WHERE id = ?", (record_id,)).fetchone()
        return row[0] if row else None

    # -- popularity and storage policy ----------------------------------------------------------

    def set_holders(self, thread: bytes, holders: int, seed_holders: int) -> None:
        self.db.execute(
            "UPDATE threads SET holders = ?, seed_holders = ? WHERE id = ?",
            (holders, seed_holders, thread),
        )

    def metrics(self, thread: bytes, now: float) -> popularity.Metrics | None:
        row = self.db.execute(
            "SELECT created, reads, received, holders, seed_holders, posts"
            " FROM threads WHERE id = ?",
            (thread,),
        ).fetchone()
        if row is None:
            return None
        created, reads, received, holders, seed_holders, posts = row
        audience = self.db.execute(
            "SELECT COUNT(*) FROM readers WHERE thread = ?", (thread,)
        ).fetchone()[0]
        weighted = sum(
            abs(value) * self._weight(author, ring, now)
            for author, value, ring in self.db.execute(
                "SELECT author, value, ring FROM votes WHERE thread = ?", (thread,)
            )
        )
        hours = max(1.0, (now - received) / popularity.HOUR)
        return popularity.Metrics(
            request_rate=reads / hours,
            replication=holders,
            age=now - created / 1000,
            audience=audience,
            social=max(0, posts - 1) + weighted,
            seed_holders=seed_holders,
        )

    def rescore(self, now: float | None = None) -> None:
        """Recompute every thread's score; move its expiry up to its class TTL (never down)."""
        now = self.clock() if now is None else now
        for (thread,) in self.db.execute("SELECT id FROM threads").fetchall():
            metrics = self.metrics(thread, now)
            if metrics is None:
                continue
            value = popularity.score(metrics)
            self.db.execute(
                "UPDATE threads SET score = ?, expires = MAX(expires, received + ?) WHERE id = ?",
                (value, popularity.ttl_for(value), thread),
            )

    def pin(self, thread: bytes, pinned: bool = True) -> None:
        self.db.execute("UPDATE threads SET pinned = ? WHERE id = ?", (int(pinned), thread))

    def mandatory(self, thread_row: Sequence[Any]) -> bool:
        """A seed node's mandatory set: pinned threads and popular ones (§4.3, §6.2)."""
        score, pinned = thread_row
        return bool(pinned) or (self.is_seed and score > popularity.POPULAR)

    def used_bytes(self) -> int:
        return self.db.execute("SELECT COALESCE(SUM(LENGTH(wire)), 0) FROM records").fetchone()[0]

    def enforce_policy(
        self, now: float | None = None, *, protected: Callable[[bytes], bool] = lambda _t: False
    ) -> list[bytes]:
        """Expire threads past their TTL, then evict the least popular until under the quota.

        Never touches a thread younger than `min_retention` (counted from when we got it), a
        seed's mandatory set, or a thread `protected` says must stay (we are among its last
        holders). Seeds refresh their mandatory set's TTL instead of expiring it. Returns the
        evicted thread ids.
        """
        now = self.clock() if now is None else now
        config = self.config
        evicted: list[bytes] = []
        rows = self.db.execute(
            "SELECT id, score, pinned, received, expires, bytes FROM threads WHERE evicted = 0"
            " ORDER BY score ASC, last_activity ASC"
        ).fetchall()
        keep_rows = []
        for tid, score, pinned, received, expires, size in rows:
            young = now - received < config.min_retention
            if self.mandatory((score, pinned)):
                if expires < now + popularity.DAY:
                    self.db.execute(
                        "UPDATE threads SET expires = ? WHERE id = ?",
                        (now + popularity.ttl_for(score), tid),
                    )
                continue
            if expires <= now and not young and not protected(tid):
                self.evict(tid)
                evicted.append(tid)
            else:
                keep_rows.append((tid, young, size))
        used = self.used_bytes()
        for tid, young, size in keep_rows:  # least popular first
            if used <= config.quota_bytes:
                break
            if young or protected(tid):
                continue
            self.evict(tid)
            evicted.append(tid)
            used -= size
        return evicted

    def evict(self, thread: bytes) -> None:
        """Drop a thread's content but remember its metadata (so sync does not re-fetch it and
        a reader can fetch it again on demand)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            removed = db.execute(
                "DELETE FROM records WHERE thread = ? AND kind != 'thread' RETURNING id", (thread,)
            ).fetchall()
            db.execute("DELETE FROM posts WHERE thread = ?", (thread,))
            db.execute("DELETE FROM votes WHERE thread = ?", (thread,))
            db.execute("DELETE FROM search WHERE thread = ? AND id != thread", (thread,))
            db.execute(
                "UPDATE threads SET evicted = 1, posts = 0, bytes = 0 WHERE id = ?", (thread,)
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if self._sync_index is not None:
            for (record_id,) in removed:
                self._sync_index.discard_id(record_id)

    def unevict(self, thread: bytes) -> None:
        """We want this thread again (a reader opened it): accept its records from now on."""
        self.db.execute("UPDATE threads SET evicted = 0 WHERE id = ?", (thread,))
        self.subscribed.add(thread)

    def evicted_threads(self, limit: int = 1000) -> list[bytes]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT id FROM threads WHERE evicted = 1 ORDER BY last_activity DESC LIMIT ?",
                (limit,),
            )
        ]

    def held_threads(self) -> list[bytes]:
        return [r[0] for r in self.db.execute("SELECT id FROM threads WHERE evicted = 0")]

    def thread_record_count(self, thread: bytes) -> int:
        return self.db.execute(
            "SELECT COUNT(*) FROM records WHERE thread = ?", (thread,)
        ).fetchone()[0]

    def thread_wires(self, thread: bytes) -> list[bytes]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT wire FROM records WHERE thread = ? ORDER BY kind != 'thread', created, id",
                (thread,),
            )
        ]

    def counts(self) -> dict[str, int]:
        one = self.db.execute
        return {
            "records": one("SELECT COUNT(*) FROM records").fetchone()[0],
            "threads": one("SELECT COUNT(*) FROM threads WHERE evicted = 0").fetchone()[0],
            "evicted": one("SELECT COUNT(*) FROM threads WHERE evicted = 1").fetchone()[0],
            "posts": one("SELECT COUNT(*) FROM posts").fetchone()[0],
            "pending": one("SELECT COUNT(*) FROM pending").fetchone()[0],
            "bytes": self.used_bytes(),
        }

    def expire_pending(self, older_than: float) -> int:
        return self.db.execute("DELETE FROM pending WHERE received < ?", (older_than,)).rowcount
