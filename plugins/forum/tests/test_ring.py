"""Linkable ring signatures and anonymous posts and votes."""

import cbor2
import nacl.signing
import pytest
from forum_helpers import FAST, wait_for
from zeone_forum import ring
from zeone_forum.config import ForumConfig
from zeone_forum.records import ForumRecord, PostBody, ThreadBody, VoteBody
from zeone_forum.service import state
from zeone_forum.store import ACCEPTED, REJECTED, ForumStore

from zeone.identity import Identity

KEYS = [nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(8)]
RING = [bytes(k.verify_key) for k in KEYS]
T1, T2 = b"1" * 32, b"2" * 32


def test_sign_verify_and_linkability():
    sig = ring.sign(b"m", RING, KEYS[3], T1)
    assert ring.verify(b"m", sig, T1)
    assert not ring.verify(b"other", sig, T1)
    assert not ring.verify(b"m", sig, T2)  # scoped to the thread
    # same member, same thread, another ring and message: the same image (one vote per thread)
    again = ring.sign(b"n", list(reversed(RING)), KEYS[3], T1)
    assert again.image == sig.image
    # same member in another thread: an unrelated image (unlinkable across threads)
    assert ring.sign(b"m", RING, KEYS[3], T2).image != sig.image
    # another member: another image
    assert ring.sign(b"m", RING, KEYS[4], T1).image != sig.image


def test_forgeries_fail():
    sig = ring.sign(b"m", RING, KEYS[0], T1)
    s = list(sig.s)
    s[2] = bytes(32)
    assert not ring.verify(b"m", ring.RingSignature(sig.ring, sig.image, sig.c0, tuple(s)), T1)
    other = ring.sign(b"m", RING, KEYS[1], T1)
    # swapping in another member's image (to vote twice) breaks the signature
    swapped = ring.RingSignature(sig.ring, other.image, sig.c0, sig.s)
    assert not ring.verify(b"m", swapped, T1)
    # small-order or identity images are refused
    identity_point = (1).to_bytes(32, "little")
    assert not ring.verify(b"m", ring.RingSignature(sig.ring, identity_point, sig.c0, sig.s), T1)
    with pytest.raises(ring.RingError, match="own key"):
        ring.sign(b"m", RING[1:], KEYS[0], T1)
    with pytest.raises(ring.RingError, match="distinct"):
        ring.sign(b"m", [RING[0], RING[0]], KEYS[0], T1)
    with pytest.raises(ring.RingError, match="valid"):
        ring.check_ring([RING[0], identity_point])


def test_anonymous_records_hide_the_author_and_bind_the_content(tmp_path):
    ids = [Identity(k) for k in KEYS]
    thread = ForumRecord.create(ids[0], ThreadBody(title="t"), created=1_700_000_000_000)
    post = ForumRecord.create(
        ids[5],
        PostBody(thread=thread.id, content="whistle"),
        anon_ring=RING,
        created=1_700_000_001_000,
    )
    assert post.author not in RING and post.anon is not None
    assert post.rate_key == ring.key_image(KEYS[5], thread.id)
    # lifting the ring signature onto other content, re-signed with a fresh one-time key
    item = cbor2.loads(post.wire)
    body = dict(item[5], content="forged")
    impostor = Identity.generate()
    fake = ForumRecord.create(
        impostor, PostBody(thread=thread.id, content="forged"), created=item[3]
    )
    fake_item = cbor2.loads(fake.wire)
    fake_item[5] = body
    from zeone_forum.records import InvalidForumRecord

    with pytest.raises(InvalidForumRecord):  # envelope signature no longer matches
        ForumRecord.decode(cbor2.dumps(fake_item, canonical=True))


def test_store_rules_for_anonymous_records(tmp_path):
    ids = [Identity(k) for k in KEYS]
    store = ForumStore(
        tmp_path / "f.sqlite3",
        ForumConfig(pow_bits=0, min_ring_size=8, new_identity_rate=3),
        clock=lambda: 1_700_000_100.0,
    )
    at = 1_700_000_000_000
    thread = ForumRecord.create(ids[0], ThreadBody(title="t"), created=at)
    post = ForumRecord.create(
        ids[0], PostBody(thread=thread.id, content="p"), created=at + 1, slot=1
    )
    other = ForumRecord.create(
        ids[0], PostBody(thread=thread.id, content="q"), created=at + 2, slot=2
    )
    assert [r.status for r in store.ingest_many([thread, post, other])] == [ACCEPTED] * 3
    small = ForumRecord.create(
        ids[1], PostBody(thread=thread.id, content="x"), anon_ring=RING[:4], created=at + 3
    )
    assert "at least 8" in store.ingest(small).reason
    vote = ForumRecord.create(
        ids[2],
        VoteBody(thread=thread.id, target=post.id, value=1),
        anon_ring=RING,
        created=at + 4,
    )
    assert store.ingest(vote).status == ACCEPTED
    # the same member cannot vote anonymously on another post of the thread...
    second = ForumRecord.create(
        ids[2],
        VoteBody(thread=thread.id, target=other.id, value=1),
        anon_ring=RING,
        created=at + 5,
        slot=1,
    )
    result = store.ingest(second)
    assert result.status == REJECTED and "already voted" in result.reason
    # ...and its anonymous vote weighs what the weakest (here: unknown) member's would
    tally = store.thread(thread.id)["messages"][0]["votes"]
    assert tally["up"] == 1 and tally["weighted"] == pytest.approx(0.05)
    # rate limits follow the member (key image), not the one-time keys
    flood = [
        ForumRecord.create(
            ids[3],
            PostBody(thread=thread.id, content=f"a{i}"),
            anon_ring=RING,
            created=at + 10 + i,
            slot=i,
        )
        for i in range(4)
    ]
    assert [r.status for r in store.ingest_many(flood)] == [ACCEPTED, ACCEPTED, ACCEPTED, REJECTED]
    shown = store.thread(thread.id)["messages"][-1]
    assert shown["anonymous"] and shown["nick"].startswith("anonymous #")


async def test_anonymous_reply_across_the_network(zeone_network, autojump_clock):
    settings = {**FAST, "plugins.forum.ring_size": 4, "plugins.forum.min_ring_size": 4}
    nodes = await zeone_network.add_nodes(5, enable=["forum"], settings=settings)
    await zeone_network.connect_all()
    thread, _ = state(nodes[0]).new_thread("Ask anything", "anonymously if you like")
    for node in nodes[1:]:  # everybody has written something, so rings can be formed
        await wait_for(lambda node=node: state(node).store.thread_exists(thread.id))
        state(node).reply(thread.id, f"hi from {node.node_id.short()}")
    await wait_for(lambda: len(state(nodes[3]).store.known_authors(exclude=b"")) >= 5)
    secret = state(nodes[3]).reply(thread.id, "I would rather not say who I am", anonymous=True)
    await wait_for(lambda: all(state(n).store.has(secret.id) for n in nodes))
    shown = state(nodes[1]).store.thread(thread.id)["messages"][-1]
    assert shown["anonymous"] and shown["author"] != nodes[3].identity.public_key.hex()
    assert nodes[3].identity.public_key in secret.anon.ring
    vote = state(nodes[2]).vote(secret.id, 1, anonymous=True)
    await wait_for(lambda: state(nodes[0]).store.has(vote.id))
    with pytest.raises(ValueError, match="already voted"):
        state(nodes[2]).vote(thread.id, 1, anonymous=True)
