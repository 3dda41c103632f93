"""Records and the store: every kind of bad input with its outcome, and the storage policies."""

import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeone_forum.config import ForumConfig
from zeone_forum.records import (
    EditBody,
    ForumRecord,
    InvalidForumRecord,
    PostBody,
    ThreadBody,
    TombstoneBody,
    VoteBody,
)
from zeone_forum.store import ACCEPTED, DUPLICATE, IGNORED, PENDING, REJECTED, ForumStore

from zeone.identity import Identity

ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)
T0 = 1_700_000_000.0


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def make_store(tmp_path, clock, **config):
    defaults = {"pow_bits": 4, "new_identity_rate": 100}
    return ForumStore(tmp_path / "f.sqlite3", ForumConfig(**{**defaults, **config}), clock=clock)


_slots = {}


@pytest.fixture(autouse=True)
def _fresh_slots():
    _slots.clear()


def rec(identity, body, at=T0, bits=4, slot=None):
    """A record with the author's next free slot in its 60 s window (as `Forum.publish` does)."""
    created = int(at * 1000)
    key = (identity.public_key, created // 60_000)
    if slot is None:
        slot = _slots[key] = _slots.get(key, -1) + 1
    return ForumRecord.create(identity, body, pow_bits=bits, created=created, slot=slot)


def thread_and_post(identity=ALICE, at=T0):
    thread = rec(identity, ThreadBody(title="t"), at)
    post = rec(identity, PostBody(thread=thread.id, content="hello"), at + 1)
    return thread, post


def test_accepts_and_dedupes_replays(tmp_path, clock):
    store = make_store(tmp_path, clock)
    thread, post = thread_and_post()
    assert [r.status for r in store.ingest_many([thread.wire, post.wire])] == [ACCEPTED] * 2
    assert store.ingest(post.wire).status == DUPLICATE  # a replay changes nothing
    assert store.counts()["posts"] == 1


def test_forged_and_tampered_records_are_rejected(tmp_path, clock):
    store = make_store(tmp_path, clock)
    thread, post = thread_and_post()
    store.ingest(thread)
    item = cbor2.loads(post.wire)
    item[5]["content"] = "forged"
    result = store.ingest(cbor2.dumps(item, canonical=True))
    assert (result.status, result.reason) == (REJECTED, "bad signature")
    item = cbor2.loads(post.wire)
    item[2] = BOB.public_key  # claim someone else wrote it
    assert store.ingest(cbor2.dumps(item, canonical=True)).reason == "bad signature"
    assert store.ingest(b"\xff\x00").status == REJECTED
    assert store.ingest(post.wire + b"\x00").status == REJECTED
    loose = cbor2.dumps(
        [
            *cbor2.loads(post.wire)[:5],
            dict(reversed(cbor2.loads(post.wire)[5].items())),
            *cbor2.loads(post.wire)[6:],
        ]
    )
    assert store.ingest(loose).reason == "record is not in canonical CBOR"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_never_crashes_on_garbage(data):
    with contextlib.suppress(InvalidForumRecord):
        ForumRecord.decode(data)


def test_oversized_posts_are_rejected(tmp_path, clock):
    store = make_store(tmp_path, clock, max_post_bytes=1000)
    thread, _ = thread_and_post()
    store.ingest(thread)
    big = rec(ALICE, PostBody(thread=thread.id, content="x" * 1001), T0 + 1)
    result = store.ingest(big.wire)
    assert result.status == REJECTED and "1001 bytes" in result.reason
    with pytest.raises(InvalidForumRecord, match="at most"):
        ForumRecord.decode(b"\x00" * (64 * 1024 + 1))


def test_posts_into_nonexistent_threads_wait_then_apply_or_are_refused(tmp_path, clock):
    store = make_store(tmp_path, clock)
    thread, post = thread_and_post()
    reply = rec(BOB, PostBody(thread=thread.id, content="r", parent=post.id), T0 + 2)
    # out of order from a peer: parked, not visible
    assert store.ingest(reply.wire).status == PENDING
    assert store.ingest(post.wire).status == PENDING
    assert store.counts()["posts"] == 0
    # from the local user: a clear error
    assert store.ingest(post, local=True).reason == "no such thread"
    # the thread arrives: everything waiting for it (and for its posts) applies
    assert store.ingest(thread.wire).status == ACCEPTED
    assert store.counts() | {"bytes": 0} == store.counts() | {
        "posts": 2,
        "pending": 0,
        "bytes": 0,
        "records": 3,
        "threads": 1,
        "evicted": 0,
    }


def test_backdated_and_future_records_are_rejected(tmp_path, clock):
    store = make_store(tmp_path, clock)
    thread, _ = thread_and_post()
    store.ingest(thread)
    early = rec(ALICE, PostBody(thread=thread.id, content="before"), T0 - 10)
    assert store.ingest(early).reason == "record predates its thread"
    future = rec(ALICE, PostBody(thread=thread.id, content="later"), T0 + 3600)
    assert store.ingest(future).reason == "created in the future"


def test_proof_of_work_is_required(tmp_path, clock):
    store = make_store(tmp_path, clock, pow_bits=10)
    cheap = rec(ALICE, ThreadBody(title="cheap"), bits=0)
    if cheap.work < 10:
        assert "proof of work" in store.ingest(cheap).reason
    assert store.ingest(rec(ALICE, ThreadBody(title="paid"), bits=10)).status == ACCEPTED


def test_spam_flood_from_one_identity_is_cut_off(tmp_path, clock):
    store = make_store(tmp_path, clock, new_identity_rate=5, rate_window=60.0)
    thread = rec(BOB, ThreadBody(title="t"))
    store.ingest(thread)
    start = T0 - T0 % 60 + 60  # the start of one rate window after the thread
    flood = [
        rec(ALICE, PostBody(thread=thread.id, content=f"spam {i}"), start + i) for i in range(50)
    ]
    results = store.ingest_many([r.wire for r in reversed(flood)])  # order does not matter
    assert sum(r.status == ACCEPTED for r in results) == 5
    assert {r.record.slot for r in results if r.status == ACCEPTED} == set(range(5))
    assert all("rate limit" in r.reason for r in results if r.status != ACCEPTED)
    # reusing a slot with different content (equivocation) gets nothing more in
    again = rec(ALICE, PostBody(thread=thread.id, content="sneaky"), start + 1, slot=0)
    assert "equivocation" in store.ingest(again).reason
    # the verdict depends on the records' own timestamps: a minute later Alice may post again
    later = rec(ALICE, PostBody(thread=thread.id, content="later"), T0 + 200)
    assert store.ingest(later).status == ACCEPTED


def test_tombstones_are_honoured_and_final(tmp_path, clock):
    store = make_store(tmp_path, clock)
    thread, post = thread_and_post()
    store.ingest_many([thread, post])
    forged = rec(BOB, TombstoneBody(thread=thread.id, target=post.id), T0 + 5)
    assert store.ingest(forged).reason == "only the author may delete it"
    tomb = rec(ALICE, TombstoneBody(thread=thread.id, target=post.id), T0 + 5)
    assert store.ingest(tomb).status == ACCEPTED
    assert store.counts()["posts"] == 0 and store.search("hello") == []
    assert not store.has(post.id)
    assert store.ingest(post.wire).reason == "deleted by its author"  # replay after delete
    vote = rec(BOB, VoteBody(thread=thread.id, target=post.id, value=1), T0 + 6)
    assert store.ingest(vote).reason == "target was deleted by its author"


def test_tombstone_arriving_before_its_target_still_wins(tmp_path, clock):
    store = make_store(tmp_path, clock)
    thread, post = thread_and_post()
    tomb = rec(ALICE, TombstoneBody(thread=thread.id, target=post.id), T0 + 5)
    store.ingest(thread)
    assert store.ingest(tomb.wire).status == PENDING  # waits for its target (authorship check)
    store.ingest(post.wire)
    assert store.counts()["posts"] == 0 and store.is_deleted(post.id)


def test_whole_thread_deletion(tmp_path, clock):
    store = make_store(tmp_path, clock)
    thread, post = thread_and_post()
    store.ingest_many([thread, post])
    store.ingest(rec(ALICE, TombstoneBody(thread=thread.id, target=thread.id), T0 + 3))
    assert store.thread(thread.id) is None and store.list_threads() == []
    late = rec(BOB, PostBody(thread=thread.id, content="late"), T0 + 4)
    assert store.ingest(late.wire).reason == "the thread was deleted by its author"


def test_edits_supersede_only_by_the_author_and_latest_wins(tmp_path, clock):
    store = make_store(tmp_path, clock)
    thread, post = thread_and_post()
    store.ingest_many([thread, post])
    e2 = rec(ALICE, EditBody(thread=thread.id, target=post.id, content="second"), T0 + 20)
    e1 = rec(ALICE, EditBody(thread=thread.id, target=post.id, content="first"), T0 + 10)
    assert store.ingest(e2).status == ACCEPTED
    assert store.ingest(e1).status == ACCEPTED  # out of order: valid, but older
    assert store.thread(thread.id)["messages"][0]["content"] == "second"
    assert store.search("second")[0]["id"] == post.id.hex()
    bob = rec(BOB, EditBody(thread=thread.id, target=post.id, content="mine"), T0 + 30)
    assert store.ingest(bob).reason == "only the author may edit it"


def test_votes_latest_per_author_and_weighted_by_standing(tmp_path, clock):
    store = make_store(tmp_path, clock, standing_full_after=7 * 86400.0)
    thread, post = thread_and_post()
    store.ingest_many([thread, post])  # Alice first seen at T0
    clock.now = T0 + 7 * 86400  # a week later Alice has full standing
    up = rec(ALICE, VoteBody(thread=thread.id, target=post.id, value=1), clock.now)
    sybils = [Identity.from_seed(bytes([i]) * 32) for i in range(10, 30)]
    store.ingest(up)
    for sybil in sybils:  # twenty fresh identities vote it down
        store.ingest(rec(sybil, VoteBody(thread=thread.id, target=post.id, value=-1), clock.now))
    tally = store.thread(thread.id)["messages"][0]["votes"]
    assert tally["up"] == 1 and tally["down"] == 20
    assert tally["weighted"] == pytest.approx(1 - 20 * 0.05)
    # a replayed older vote does not override a newer one
    down = rec(ALICE, VoteBody(thread=thread.id, target=post.id, value=-1), clock.now - 5)
    store.ingest(down)
    assert store.thread(thread.id)["messages"][0]["votes"]["up"] == 1


def test_search_and_listing(tmp_path, clock):
    store = make_store(tmp_path, clock)
    t1 = rec(ALICE, ThreadBody(title="Kademlia routing", tags=("dht",)))
    t2 = rec(BOB, ThreadBody(title="Cooking", category="food"))
    store.ingest_many(
        [
            t1,
            t2,
            rec(ALICE, PostBody(thread=t1.id, content="XOR metric and k-buckets"), T0 + 1),
            rec(BOB, PostBody(thread=t2.id, content="boil the pasta"), T0 + 1),
        ]
    )
    assert store.search("buckets")[0]["thread"] == t1.id.hex()
    assert store.search("kademlia")[0]["id"] == t1.id.hex()
    assert store.search('") OR (x') == []  # FTS syntax in a query is just words
    assert [t["title"] for t in store.list_threads(tag="dht")] == ["Kademlia routing"]
    assert [t["title"] for t in store.list_threads(category="food")] == ["Cooking"]


def test_ttl_classes_read_extension_and_expiry(tmp_path, clock):
    store = make_store(tmp_path, clock, min_retention=3600.0)
    thread, post = thread_and_post()
    store.ingest_many([thread, post])
    before = store.list_threads()[0]["expires_in"]
    assert before == pytest.approx(86400)
    store.note_read(thread.id, "local")
    assert store.list_threads()[0]["expires_in"] == pytest.approx(86400 * 1.1)
    clock.now += 86400 * 1.2
    assert store.enforce_policy() == [thread.id]
    assert store.counts()["posts"] == 0 and store.counts()["evicted"] == 1
    # evicted threads are not re-filled by sync
    again = rec(ALICE, PostBody(thread=thread.id, content="more"), clock.now)
    assert store.ingest(again.wire).status == IGNORED


def test_quota_evicts_least_popular_but_not_young_pinned_or_protected(tmp_path, clock):
    store = make_store(tmp_path, clock, quota_bytes=3000, min_retention=3600.0)
    threads = []
    for i in range(6):
        t = rec(ALICE, ThreadBody(title=f"t{i}"), T0 + i)
        store.ingest_many([t, rec(ALICE, PostBody(thread=t.id, content="x" * 400), T0 + i)])
        threads.append(t.id)
    assert store.enforce_policy() == []  # all younger than the minimum retention
    clock.now += 7200
    for _ in range(20):
        store.note_read(threads[0], "local")  # the popular one
    store.pin(threads[1])
    store.rescore()
    evicted = store.enforce_policy(protected=lambda t: t == threads[2])
    assert set(evicted) <= set(threads[3:])  # least popular first; never pinned or protected
    assert evicted and store.used_bytes() <= 3000


def test_seed_never_evicts_its_mandatory_set(tmp_path, clock):
    store = ForumStore(
        tmp_path / "seed.sqlite3",
        ForumConfig(pow_bits=4, quota_bytes=1024),
        clock=clock,
        is_seed=True,
    )
    popular, plain = (rec(ALICE, ThreadBody(title=t)) for t in ("popular", "plain"))
    store.ingest_many([popular, plain])
    for t in (popular, plain):
        store.ingest(rec(ALICE, PostBody(thread=t.id, content="x" * 900), T0 + 1))
    store.db.execute("UPDATE threads SET score = 8.0 WHERE id = ?", (popular.id,))
    clock.now += 40 * 86400  # far past every TTL, and over the quota
    assert store.enforce_policy() == [plain.id]
    assert store.thread(popular.id)["held"] and store.list_threads()[0]["expires_in"] > 86400


def test_dht_namespace_validators():
    from zeone_forum.service import holder_key, thread_key, validate_holder, validate_meta

    from zeone.dht import InvalidRecord
    from zeone.dht.records import Record
    from zeone.wire.frame import encode_cbor

    node = Identity.from_seed(b"n" * 32)
    thread = rec(ALICE, ThreadBody(title="t"))
    validate_meta(Record.create(node, thread_key(thread.id), thread.wire, 1))
    other = rec(ALICE, ThreadBody(title="other"))
    for key, value in [
        (thread_key(other.id), thread.wire),  # the value must hash to the key
        (thread_key(thread.id), b"junk"),
        (b"forum:x", thread.wire),
        (thread_key(thread.id), rec(ALICE, PostBody(thread=thread.id, content="p")).wire),
    ]:
        with pytest.raises(InvalidRecord):
            validate_meta(Record.create(node, key, value, 1))
    good = encode_cbor({"score": 1.5, "role": "seed"})
    validate_holder(Record.create(node, holder_key(thread.id), good, 1))
    for value in (
        b"\xff",
        encode_cbor({"score": "x", "role": "seed"}),
        encode_cbor({"score": 1, "role": "king"}),
    ):
        with pytest.raises(InvalidRecord):
            validate_holder(Record.create(node, holder_key(thread.id), value, 1))
