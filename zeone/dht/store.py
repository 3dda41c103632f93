"""The node's durable record store: SQLite in WAL mode, the schema of seed 003 §3.1 adapted.

Seed 003's `dht_store` had one row per key; signed multi-publisher records need one row per
`(key, publisher)`, and republishing needs to know which rows we published ourselves. So:

    dht_store(key, publisher, value, seq, created, ttl, expires, signature,
              is_original_publisher, stored_at, last_republish)   PRIMARY KEY (key, publisher)

Times are integer milliseconds since the epoch. `seq` is a u64 and SQLite integers are signed
64-bit, so it is stored offset by -2**63 (order preserved).

Durability (ARCHITECTURE §8, "every acknowledged write is durable"): every `put` is one
transaction committed before `put` returns, so a STORE is acknowledged only after its commit. With
`durable=True` (the default) the connection runs `synchronous=FULL`: in WAL mode that fsyncs the
WAL on every commit, so an acknowledged record survives power loss as well as `kill -9`. With
`durable=False` it runs `synchronous=NORMAL`, which survives a killed process (the WAL is in the
OS page cache) but may lose the last commits on power loss; simulations and caches use that, or
`path=None` for a private in-memory database (opened lazily, so 10,000 simulated nodes that never
store anything cost nothing).

Every record is checked by the `Validators` before it is written and again when it is read (the
signature check is cached), so expired records, records of namespaces no longer registered and
damaged rows are never served: they are deleted when met.

Methods are synchronous and short and run on the Trio thread, except `put_async`, the write path
of STOREs and of our own puts: a durable commit waits for an fsync (a millisecond or more), which
must not stall every connection of the node, so `put_async` commits in a worker thread on a
connection of its own, and writes that arrive while one commit is in progress share the next
commit (group commit: one fsync for the batch, each write still acknowledged only once durable).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

from zeone.dht.records import InvalidRecord, Record, Validators

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SEQ_OFFSET = 2**63
DEFAULT_MAX_RECORDS = 200_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dht_store (
    key BLOB NOT NULL,
    publisher BLOB NOT NULL,
    value BLOB NOT NULL,
    seq INTEGER NOT NULL,
    created INTEGER NOT NULL,
    ttl INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    signature BLOB NOT NULL,
    is_original_publisher INTEGER NOT NULL DEFAULT 0,
    stored_at INTEGER NOT NULL,
    last_republish INTEGER NOT NULL,
    PRIMARY KEY (key, publisher)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_dht_expires ON dht_store (expires);
CREATE INDEX IF NOT EXISTS idx_dht_republish ON dht_store (last_republish);
"""

_COLUMNS = "key, publisher, value, seq, created, ttl, signature, is_original_publisher"


@attrs.frozen
class PutOutcome:
    """The result of offering a record to the store."""

    accepted: bool
    """The store now holds this record (newly written or already identical)."""
    changed: bool
    """A row was written (False for duplicates and rejections)."""
    reason: str


@attrs.frozen
class StoredRecord:
    record: Record
    original: bool
    """We are the original publisher: republishing means re-signing with a new seq."""


@attrs.define(eq=False)
class _PendingWrite:
    record: Record
    original: bool
    now: float
    outcome: PutOutcome | None = None
    error: BaseException | None = None


def _ms(now: float) -> int:
    return int(now * 1000)


class RecordStore:
    """Records this node holds, as replica or as original publisher."""

    def __init__(
        self,
        path: Path | str | None,
        validators: Validators,
        *,
        durable: bool = True,
        clock: Callable[[], float] = time.time,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.validators = validators
        self.durable = durable
        self.clock = clock
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._db: sqlite3.Connection | None = None
        self._writer_db: sqlite3.Connection | None = None
        self._closed = False
        self._batch_running = False  # a worker thread is using _writer_db
        self._queue: list[_PendingWrite] = []
        self._write_lock = trio.Lock()
        self._records = 0
        self._bytes = 0
        self._counters = {
            "accepted": 0,
            "rejected": 0,
            "duplicates": 0,
            "expired": 0,
            "group_commits": 0,
        }
        if self.path is not None:
            self._connect()  # a file store reports a bad path now, not on the first STORE

    # -- connection -----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        self._closed = False  # reads reopen a closed store lazily, as before
        if self.path is None:
            target = ":memory:"
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            target = str(self.path)
        db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise RuntimeError(
                    f"{target}: DHT store schema version {version} is newer than this code "
                    f"({SCHEMA_VERSION})"
                )
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            count, size = db.execute(
                "SELECT count(*), coalesce(sum(length(key) + length(value) + 120), 0) "
                "FROM dht_store"
            ).fetchone()
        except BaseException:
            db.close()
            raise
        self._records, self._bytes = count, size
        self._db = db
        return db

    def close(self) -> None:
        """Close the database. A group commit still running in a worker thread (a STORE that
        arrived while the node was stopping) finishes first and closes it on its way out:
        closing a connection under a running statement crashes the interpreter."""
        self._closed = True
        if not self._batch_running:
            self._close_connections()

    def _close_connections(self) -> None:
        if self._writer_db is not None:
            self._writer_db.close()
            self._writer_db = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def _writer(self) -> sqlite3.Connection:
        """The connection `put_async` commits on, from worker threads (one at a time)."""
        if self._writer_db is None:
            self._connect()  # creates the file and the schema
            db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA synchronous=FULL")
            self._writer_db = db
        return self._writer_db

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------------

    def put(self, record: Record, *, original: bool = False, now: float | None = None) -> bool:
        """Validate and keep `record`; True if the store now holds it. See `put_detailed`."""
        return self.put_detailed(record, original=original, now=now).accepted

    def put_detailed(
        self, record: Record, *, original: bool = False, now: float | None = None
    ) -> PutOutcome:
        """Check `record` against the validators and the records held for its key, then write it
        in one transaction (committed, and fsynced when `durable`, before this returns).

        `original` marks a record we published ourselves (the Dht passes it for its own puts).
        """
        now = self.clock() if now is None else now
        rejected = self._check(record, now)
        if rejected is not None:
            return rejected
        (outcome,) = self._commit(self._connect(), [_PendingWrite(record, original, now)])
        self._count(outcome)
        return outcome

    async def put_async(self, record: Record, *, original: bool = False) -> PutOutcome:
        """`put_detailed` for the event loop: the commit (and its fsync) runs in a worker thread,
        batched with the writes that queue up meanwhile. Returns only once the record is durable.

        Under a virtual clock (trio.testing.MockClock, the simulator and the autojump tests) it
        writes inline instead: a thread's real time is invisible to such a clock, which would
        jump to the next deadline while the commit runs.
        """
        if self._closed:
            return PutOutcome(False, False, "store is closed")
        if self.path is None or not self.durable or _virtual_clock():
            return self.put_detailed(record, original=original)
        now = self.clock()
        rejected = self._check(record, now)
        if rejected is not None:
            return rejected
        write = _PendingWrite(record, original, now)
        self._queue.append(write)
        async with self._write_lock:
            if write.outcome is None and write.error is None:
                batch, self._queue = self._queue, []
                if self._closed:
                    for pending in batch:
                        pending.outcome = PutOutcome(False, False, "store is closed")
                    return write.outcome  # type: ignore[return-value]
                self._batch_running = True
                try:
                    # Not abandoned on cancellation: the commit finishes either way.
                    outcomes = await trio.to_thread.run_sync(self._write_batch, batch)
                    self._counters["group_commits"] += 1
                except Exception as exc:
                    for pending in batch:
                        pending.error = exc
                else:
                    for pending, outcome in zip(batch, outcomes, strict=True):
                        pending.outcome = outcome
                        self._count(outcome)
                finally:
                    self._batch_running = False
                    if self._closed:
                        self._close_connections()
        if write.error is not None:
            raise write.error
        assert write.outcome is not None
        return write.outcome

    def _write_batch(self, batch: Sequence[_PendingWrite]) -> list[PutOutcome]:
        """One transaction, one commit for every write of `batch` (in a worker thread)."""
        return self._commit(self._writer(), batch)

    def _commit(self, db: sqlite3.Connection, writes: Sequence[_PendingWrite]) -> list[PutOutcome]:
        db.execute("BEGIN IMMEDIATE")
        try:
            outcomes = [
                self._put_locked(db, w.record, w.original, w.now, _ms(w.now)) for w in writes
            ]
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return outcomes

    def _check(self, record: Record, now: float) -> PutOutcome | None:
        """The rejection for a record the validators refuse, before any database work."""
        try:
            self.validators.check(record, now)
        except InvalidRecord as exc:
            self._counters["rejected"] += 1
            return PutOutcome(False, False, exc.reason)
        return None

    def _count(self, outcome: PutOutcome) -> None:
        if outcome.changed:
            self._counters["accepted"] += 1
        elif outcome.accepted:
            self._counters["duplicates"] += 1
        else:
            self._counters["rejected"] += 1

    def _put_locked(
        self, db: sqlite3.Connection, record: Record, original: bool, now: float, now_ms: int
    ) -> PutOutcome:
        existing = [
            stored.record
            for stored in self._rows(
                db.execute(
                    f"SELECT {_COLUMNS} FROM dht_store WHERE key = ? AND expires > ?",
                    (record.key, now_ms),
                ),
                now,
            )
        ]
        selection = self.validators.select(existing, record)
        if not selection.accept:
            return PutOutcome(False, False, selection.reason)
        if selection.duplicate:
            # Kademlia's republish optimisation: whoever re-stored it to us did this hour's
            # republishing, so our own replica republish can wait another interval.
            if not original:
                db.execute(
                    "UPDATE dht_store SET last_republish = ? "
                    "WHERE key = ? AND publisher = ? AND is_original_publisher = 0",
                    (now_ms, record.key, record.publisher),
                )
            return PutOutcome(True, False, selection.reason)
        old = db.execute(
            "SELECT length(key) + length(value) + 120, is_original_publisher FROM dht_store "
            "WHERE key = ? AND publisher = ?",
            (record.key, record.publisher),
        ).fetchone()
        new_bytes = len(record.key) + len(record.value) + 120
        if (
            old is None
            and not original
            and (self._records >= self.max_records or self._bytes + new_bytes > self.max_bytes)
        ):
            return PutOutcome(False, False, "store is full")
        was_original = bool(old[1]) if old is not None else False
        db.execute(
            "INSERT OR REPLACE INTO dht_store (key, publisher, value, seq, created, ttl, expires,"
            " signature, is_original_publisher, stored_at, last_republish)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.key,
                record.publisher,
                record.value,
                record.seq - _SEQ_OFFSET,
                record.created,
                record.ttl,
                record.expires_ms,
                record.signature,
                int(original or was_original),
                now_ms,
                now_ms,
            ),
        )
        if old is None:
            self._records += 1
            self._bytes += new_bytes
        else:
            self._bytes += new_bytes - old[0]
        return PutOutcome(True, True, selection.reason)

    def remove(self, key: bytes, publisher: bytes | None = None) -> int:
        """Delete a key's records (one publisher's, or all); returns how many."""
        db = self._connect()
        if publisher is None:
            where, args = "key = ?", (key,)
        else:
            where, args = "key = ? AND publisher = ?", (key, publisher)
        size = db.execute(
            f"SELECT count(*), coalesce(sum(length(key) + length(value) + 120), 0) "
            f"FROM dht_store WHERE {where}",
            args,
        ).fetchone()
        db.execute(f"DELETE FROM dht_store WHERE {where}", args)
        self._records -= size[0]
        self._bytes -= size[1]
        return size[0]

    def expire(self, now: float | None = None) -> int:
        """Delete every record whose expiry has passed; returns how many."""
        now_ms = _ms(self.clock() if now is None else now)
        if self._db is None and self.path is None:
            return 0
        db = self._connect()
        count, size = db.execute(
            "SELECT count(*), coalesce(sum(length(key) + length(value) + 120), 0) "
            "FROM dht_store WHERE expires <= ?",
            (now_ms,),
        ).fetchone()
        if count:
            db.execute("DELETE FROM dht_store WHERE expires <= ?", (now_ms,))
            self._records -= count
            self._bytes -= size
            self._counters["expired"] += count
        return count

    def mark_republished(self, record: Record, now: float | None = None) -> None:
        db = self._connect()
        db.execute(
            "UPDATE dht_store SET last_republish = ? WHERE key = ? AND publisher = ?",
            (_ms(self.clock() if now is None else now), record.key, record.publisher),
        )

    # -- reads ----------------------------------------------------------------------------------

    def get(self, key: bytes, now: float | None = None) -> list[Record]:
        """The unexpired, valid records held for `key` (freshest first); never raises for bad
        rows, which are deleted instead."""
        if self._db is None and self.path is None:
            return []
        now = self.clock() if now is None else now
        db = self._connect()
        cursor = db.execute(
            f"SELECT {_COLUMNS} FROM dht_store WHERE key = ? AND expires > ? ORDER BY created DESC",
            (key, _ms(now)),
        )
        return [stored.record for stored in self._rows(cursor, now)]

    def get_own(self, key: bytes, publisher: bytes, now: float | None = None) -> Record | None:
        """Our own (or anyone's) record for `key` by `publisher`, if held and valid."""
        for record in self.get(key, now):
            if record.publisher == publisher:
                return record
        return None

    def highest_seq(self, key: bytes, publisher: bytes) -> int | None:
        """The seq of the stored record by `publisher` under `key`, even if expired."""
        if self._db is None and self.path is None:
            return None
        row = (
            self._connect()
            .execute("SELECT seq FROM dht_store WHERE key = ? AND publisher = ?", (key, publisher))
            .fetchone()
        )
        return None if row is None else row[0] + _SEQ_OFFSET

    def due_for_republish(
        self, now: float | None = None, interval: float = 3600.0, *, limit: int = 10_000
    ) -> list[StoredRecord]:
        """Records not republished (or received) for `interval` seconds, oldest first.

        Originals are republished by re-signing (fresh `created` and seq); replicas by storing
        them unchanged at the k closest nodes, so they survive their publisher going away.
        """
        if self._db is None and self.path is None:
            return []
        now = self.clock() if now is None else now
        now_ms = _ms(now)
        interval_ms = int(interval * 1000)
        # Originals are also due once half their TTL has passed since the last republish, so a
        # record with a TTL shorter than the interval never lapses while its publisher runs.
        cursor = self._connect().execute(
            f"SELECT {_COLUMNS} FROM dht_store WHERE expires > ? AND last_republish <= ? - "
            "CASE WHEN is_original_publisher = 1 THEN min(?, ttl * 500) ELSE ? END "
            "ORDER BY last_republish LIMIT ?",
            (now_ms, now_ms, interval_ms, interval_ms, limit),
        )
        return list(self._rows(cursor, now))

    def statistics(self) -> dict[str, Any]:
        originals = 0
        if self._db is not None:
            originals = self._db.execute(
                "SELECT count(*) FROM dht_store WHERE is_original_publisher = 1"
            ).fetchone()[0]
        return {
            "records": self._records,
            "bytes": self._bytes,
            "originals": originals,
            "durable": self.durable,
            **self._counters,
        }

    def __len__(self) -> int:
        return self._records

    # -- internals ------------------------------------------------------------------------------

    def _rows(self, cursor: sqlite3.Cursor, now: float) -> list[StoredRecord]:
        result = []
        bad = []
        for key, publisher, value, seq, created, ttl, signature, original in cursor.fetchall():
            try:
                record = Record(key, value, publisher, seq + _SEQ_OFFSET, created, ttl, signature)
                self.validators.check(record, now)
            except (TypeError, ValueError, InvalidRecord) as exc:
                log.warning("dropping invalid stored DHT record %r: %s", key[:40], exc)
                bad.append((key, publisher))
                continue
            result.append(StoredRecord(record, bool(original)))
        for key, publisher in bad:
            self.remove(key, publisher)
        return result


def _virtual_clock() -> bool:
    try:
        return isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
    except RuntimeError:  # not inside trio.run
        return False
