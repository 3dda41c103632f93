"""A replay window that survives restarts (seed 001 section 2.4).

A message carrying a (nonce, timestamp) pair is accepted once: its timestamp must be within
``window`` seconds of our clock, and its nonce must not have been seen from the same sender within
the window. Seen nonces live in SQLite (WAL) in the node's data dir, so a restart does not reopen
the window -- the gap the seed calls out. Entries older than the window are swept lazily.

Inside one Noise session replays are impossible anyway (AEAD nonces); this guards the messages that
are meant to be checked on their own: PINGs today, signed records and IOUs later.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import attrs

DEFAULT_WINDOW = 30.0
SWEEP_EVERY = 1000
#: Checks per second across all senders (each is one SQLite write on the event loop, and
#: identities are free): beyond it messages are rejected, which bounds both CPU and the table
#: (at most rate x 2 x window rows).
DEFAULT_MAX_RATE = 200.0


class ReplayRejected(Exception):
    """The message is too old, from the future, or a replay; ``str()`` says which."""


@attrs.define(eq=False)
class ReplayGuard:
    path: Path | None
    window: float = DEFAULT_WINDOW
    clock: Callable[[], float] = time.time
    max_rate: float = DEFAULT_MAX_RATE
    _tokens: float = attrs.field(default=0.0, init=False)
    _refilled: float | None = attrs.field(default=None, init=False)
    _db: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _checks: int = attrs.field(default=0, init=False)

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            target = ":memory:" if self.path is None else str(self.path)
            if self.path is not None:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS seen_nonces ("
                " scope BLOB NOT NULL, nonce BLOB NOT NULL, expires REAL NOT NULL,"
                " PRIMARY KEY (scope, nonce)) WITHOUT ROWID"
            )
            db.execute("CREATE INDEX IF NOT EXISTS seen_nonces_expiry ON seen_nonces (expires)")
            self._db = db
        return self._db

    def check(self, scope: bytes, nonce: bytes, timestamp: float) -> None:
        """Accept (and remember) the message or raise ReplayRejected.

        ``scope`` is the sender (a node id); ``timestamp`` is the sender's clock in seconds.
        """
        now = self.clock()
        skew = timestamp - now
        if skew > self.window:
            raise ReplayRejected(f"timestamp {skew:.1f}s in the future (window {self.window}s)")
        if -skew > self.window:
            raise ReplayRejected(f"timestamp {-skew:.1f}s old (window {self.window}s)")
        if not self._take_token(now):
            raise ReplayRejected(f"more than {self.max_rate:.0f} checks per second; try later")
        db = self._connect()
        self._checks += 1
        if self._checks % SWEEP_EVERY == 0:
            db.execute("DELETE FROM seen_nonces WHERE expires < ?", (now,))
        try:
            # Remembered until the timestamp itself falls out of the window.
            db.execute(
                "INSERT INTO seen_nonces (scope, nonce, expires) VALUES (?, ?, ?)",
                (scope, nonce, timestamp + self.window),
            )
        except sqlite3.IntegrityError:
            row = db.execute(
                "SELECT expires FROM seen_nonces WHERE scope = ? AND nonce = ?", (scope, nonce)
            ).fetchone()
            if row is not None and row[0] >= now:
                raise ReplayRejected("nonce already seen (replay)") from None
            db.execute(
                "UPDATE seen_nonces SET expires = ? WHERE scope = ? AND nonce = ?",
                (timestamp + self.window, scope, nonce),
            )

    def _take_token(self, now: float) -> bool:
        burst = 2 * self.max_rate
        if self._refilled is None:
            self._tokens = burst
        else:
            self._tokens = min(burst, self._tokens + max(0.0, now - self._refilled) * self.max_rate)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
