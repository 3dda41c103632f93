"""The SQLite record store: rules applied atomically, expiry, republish bookkeeping, durability."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zeone.dht.namespaces import ProviderInfo, provider_key
from zeone.dht.records import U64_MAX, Namespace, Record, Validators
from zeone.dht.store import RecordStore
from zeone.identity import Identity

NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)
ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)
VALIDATORS = Validators.default([Namespace(b"forum")])


def make(
    identity: Identity = ALICE,
    key: bytes = b"forum:t",
    value: bytes = b"v",
    seq: int = 1,
    ttl: int = 3600,
    created: int = NOW_MS,
) -> Record:
    return Record.create(identity, key, value, seq, ttl, created=created)


@pytest.fixture
def store(tmp_path: Path) -> RecordStore:
    with RecordStore(tmp_path / "dht.sqlite", VALIDATORS, clock=lambda: NOW) as store:
        yield store


def test_put_get_and_selection(store: RecordStore) -> None:
    first = make(seq=1)
    assert store.put_detailed(first).changed
    assert store.get(b"forum:t") == [first]
    duplicate = store.put_detailed(first)
    assert duplicate.accepted and not duplicate.changed
    assert not store.put(make(seq=0))  # stale
    assert not store.put(make(BOB, seq=9))  # owned by Alice
    newer = make(seq=2, value=b"v2")
    assert store.put(newer)
    assert store.get(b"forum:t") == [newer]
    assert store.highest_seq(b"forum:t", ALICE.public_key) == 2
    assert store.get(b"forum:nothing") == []
    stats = store.statistics()
    assert stats["records"] == 1 and stats["accepted"] == 2 and stats["rejected"] == 2
    assert stats["duplicates"] == 1 and stats["bytes"] > 0


def test_invalid_records_are_refused(store: RecordStore) -> None:
    bad = Record(b"forum:t", b"x", ALICE.public_key, 1, NOW_MS, 60, bytes(64))
    outcome = store.put_detailed(bad)
    assert not outcome.accepted and outcome.reason == "bad signature"
    assert not store.put(make(key=b"unknown:t"))
    assert not store.put(make(created=NOW_MS - 3_601_000))  # already expired
    assert len(store) == 0


def test_provider_keys_keep_one_record_per_publisher(store: RecordStore) -> None:
    key = provider_key(b"content")
    value = ProviderInfo().to_value()
    for identity in (ALICE, BOB):
        assert store.put(make(identity, key, value, seq=1))
    assert store.put(make(BOB, key, value, seq=2))
    records = store.get(key)
    assert {(r.publisher, r.seq) for r in records} == {(ALICE.public_key, 1), (BOB.public_key, 2)}


def test_seq_is_a_full_u64(store: RecordStore) -> None:
    assert store.put(make(seq=U64_MAX - 1))
    assert store.put(make(seq=U64_MAX))
    assert store.get(b"forum:t")[0].seq == U64_MAX
    assert not store.put(make(seq=2**63))


def test_expired_records_are_never_served(tmp_path: Path) -> None:
    now = [NOW]
    store = RecordStore(tmp_path / "s.sqlite", VALIDATORS, clock=lambda: now[0])
    store.put(make(ttl=60))
    store.put(make(key=b"forum:long", ttl=3600))
    now[0] += 59.9
    assert len(store.get(b"forum:t")) == 1
    now[0] += 0.1
    assert store.get(b"forum:t") == []  # before any sweep
    assert store.due_for_republish(now[0] + 10_000, 1.0) == []
    assert store.expire() == 1
    assert len(store) == 1 and store.statistics()["expired"] == 1
    # An expired key is free again: someone else may publish under it.
    assert store.put(make(BOB))


def test_republish_bookkeeping(store: RecordStore) -> None:
    store.put(make(key=b"forum:mine", ttl=86400), original=True, now=NOW)
    store.put(make(BOB, key=b"forum:theirs", ttl=86400), now=NOW)
    store.put(make(key=b"forum:short", ttl=600), original=True, now=NOW)
    assert store.due_for_republish(NOW + 100, 3600) == []
    # Originals with a TTL shorter than the interval are due after half their TTL.
    assert [s.record.key for s in store.due_for_republish(NOW + 300, 3600)] == [b"forum:short"]
    due = store.due_for_republish(NOW + 3600, 3600)  # forum:short has expired by now
    assert {(s.record.key, s.original) for s in due} == {
        (b"forum:mine", True),
        (b"forum:theirs", False),
    }
    # Receiving a replica again counts as this interval's republish (Kademlia's optimisation).
    store.put(make(BOB, key=b"forum:theirs", ttl=86400), now=NOW + 3000)
    store.mark_republished(make(key=b"forum:mine", ttl=86400), NOW + 3000)
    assert store.due_for_republish(NOW + 3600, 3600) == []
    assert store.statistics()["originals"] == 2


def test_capacity_limits_protect_the_disk(tmp_path: Path) -> None:
    store = RecordStore(None, VALIDATORS, clock=lambda: NOW, max_records=2)
    assert store.put(make(key=b"forum:1"))
    assert store.put(make(key=b"forum:2"))
    assert store.put_detailed(make(key=b"forum:3")).reason == "store is full"
    assert store.put(make(key=b"forum:1", seq=2))  # replacing does not grow the store
    assert store.put(make(key=b"forum:mine"), original=True)  # our own records always fit
    assert store.remove(b"forum:1") == 1 and len(store) == 2


def test_damaged_rows_are_dropped_not_served(store: RecordStore) -> None:
    store.put(make())
    store._connect().execute("UPDATE dht_store SET value = x'00'")
    assert store.get(b"forum:t") == []
    assert len(store) == 0


def test_records_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "dht.sqlite"
    with RecordStore(path, VALIDATORS, clock=lambda: NOW) as store:
        store.put(make(), original=True)
    with RecordStore(path, VALIDATORS, clock=lambda: NOW) as store:
        assert store.get(b"forum:t") == [make()]
        assert len(store) == 1
        assert store.due_for_republish(NOW + 1800)[0].original  # half its TTL
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        RecordStore(path, VALIDATORS)


def test_memory_store_opens_lazily() -> None:
    store = RecordStore(None, VALIDATORS, clock=lambda: NOW)
    assert store.get(b"forum:t") == [] and store.expire() == 0
    assert store._db is None
    assert store.put(make())
    assert store.get(b"forum:t") == [make()]


WRITER = textwrap.dedent(
    """
    import sys
    from zeone.dht.records import Namespace, Record, Validators
    from zeone.dht.store import RecordStore
    from zeone.identity import Identity

    identity = Identity.from_seed(b"w" * 32)
    store = RecordStore(sys.argv[1], Validators([Namespace(b"forum")]), durable=True)
    print("ready", flush=True)
    for i in range(100_000):
        record = Record.create(identity, b"forum:%d" % i, b"value %d" % i, 1, 3600)
        assert store.put(record)
        print(i, flush=True)  # the acknowledgement: only after the commit returned
    """
)


def test_acknowledged_stores_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "killed.sqlite"
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        acked = -1
        while acked < 40:
            acked = int(process.stdout.readline())
        process.send_signal(signal.SIGKILL)
        rest = process.stdout.read()
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    lines = [int(line) for line in rest.split()]
    acked = max([acked, *lines])
    store = RecordStore(path, Validators([Namespace(b"forum")]))
    for i in range(acked + 1):
        records = store.get(b"forum:%d" % i)
        assert [r.value for r in records] == [b"value %d" % i], f"acknowledged record {i} lost"
    assert len(store) >= acked + 1


async def test_put_async_group_commits_concurrent_writes_off_the_event_loop(
    tmp_path: Path,
) -> None:
    import trio

    path = tmp_path / "dht.sqlite"
    writers = [Identity.from_seed(bytes([i]) * 32) for i in range(1, 41)]
    key = provider_key(b"many")
    records = [make(w, key=key, value=ProviderInfo().to_value()) for w in writers]
    with RecordStore(path, VALIDATORS, clock=lambda: NOW) as store:
        outcomes = {}

        async def put(record: Record) -> None:
            outcomes[record.publisher] = await store.put_async(record)

        async with trio.open_nursery() as nursery:
            for record in records:
                nursery.start_soon(put, record)
        assert all(o.accepted and o.changed for o in outcomes.values())
        stats = store.statistics()
        assert stats["accepted"] == 40
        # Writes that queued behind a commit shared the next one.
        assert 1 <= stats["group_commits"] < 40
        assert (await store.put_async(records[0])).changed is False  # duplicate
        bad = attrs_evolve_signature(records[1])
        outcome = await store.put_async(bad)
        assert not outcome.accepted and "signature" in outcome.reason
    # Everything acknowledged is in the file, read back by a fresh store.
    with RecordStore(path, VALIDATORS, clock=lambda: NOW) as reopened:
        assert {r.publisher for r in reopened.get(key)} == {w.public_key for w in writers}


def attrs_evolve_signature(record: Record) -> Record:
    import attrs

    return attrs.evolve(record, signature=bytes(64))


async def test_close_during_a_group_commit_waits_for_it(tmp_path: Path) -> None:
    """A STORE still committing in its worker thread while the node stops: close() must not pull
    the connection from under the running statement (that crashes the interpreter)."""
    import threading

    import trio

    store = RecordStore(tmp_path / "dht.sqlite", VALIDATORS, clock=lambda: NOW)
    entered, release = threading.Event(), threading.Event()
    original = store._write_batch

    def slow_batch(batch):
        entered.set()
        release.wait(10)
        return original(batch)

    store._write_batch = slow_batch  # type: ignore[method-assign]
    outcomes = []

    async def put() -> None:
        outcomes.append(await store.put_async(make()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put)
        await trio.to_thread.run_sync(entered.wait, 10)
        store.close()  # deferred: the batch is running
        assert store._db is not None
        release.set()
    assert outcomes[0].accepted  # the commit that was under way finished and was acknowledged
    assert store._writer_db is None and store._db is None  # ...and then the store closed
    assert (await store.put_async(make(seq=2))).reason == "store is closed"
    with RecordStore(tmp_path / "dht.sqlite", VALIDATORS, clock=lambda: NOW) as reopened:
        assert reopened.get(b"forum:t")[0].seq == 1
