"""Range-based set reconciliation (sans IO): exact differences, bounded messages, hostile input."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeone_forum.reconcile import PREFIX, ReconcileError, SyncIndex, initiate, process

from zeone.wire.frame import encode_cbor


def reconcile(a: SyncIndex, b: SyncIndex):
    message, need, have, sent = initiate(a), set(), set(), 0
    while message:
        sent += len(encode_cbor(message))
        reply = process(b, message, initiator=False).reply
        sent += len(encode_cbor(reply))
        if not reply:
            break
        outcome = process(a, reply, initiator=True)
        need |= outcome.need
        have |= outcome.have
        message = outcome.reply
    return need, have, sent


keys = st.tuples(st.integers(0, 10**6), st.binary(min_size=32, max_size=32))


@settings(max_examples=60, deadline=None)
@given(st.sets(keys, max_size=300), st.sets(keys, max_size=60), st.sets(keys, max_size=60))
def test_finds_exactly_the_difference(common, only_a, only_b):
    only_b -= common | only_a
    only_a -= common
    need, have, _ = reconcile(SyncIndex(common | only_a), SyncIndex(common | only_b))
    assert need == {rid[:PREFIX] for _, rid in only_b}
    assert have == {rid for _, rid in only_a}


def test_equal_sets_cost_one_round_and_little():
    rng = random.Random(1)
    items = [(rng.randrange(10**9), rng.randbytes(32)) for _ in range(20000)]
    need, have, sent = reconcile(SyncIndex(items), SyncIndex(items))
    assert not need and not have and sent < 1000


def test_small_difference_in_a_large_set_is_cheap():
    rng = random.Random(2)
    items = [(rng.randrange(10**9), rng.randbytes(32)) for _ in range(20000)]
    extra = [(rng.randrange(10**9), rng.randbytes(32)) for _ in range(20)]
    need, have, sent = reconcile(SyncIndex(items), SyncIndex(items + extra))
    assert len(need) == 20 and not have
    assert sent < 32 * len(items) / 10  # far less than sending every id


@pytest.mark.parametrize(
    "message",
    [
        "x",
        [[0, b"", 9, None]],
        [[0, b"", 1, b"short"]],
        [[-1, b"", 0, None]],
        [[5, b"", 0, None], [0, b"", 0, None]],  # bounds must increase
        [[0, b"", 2, [b"x" * 7]]],
        [[0, b"", 2, [b"x" * 8] * 500]],
        [[0, b""]] * 5000,
    ],
)
def test_hostile_messages_are_refused(message):
    with pytest.raises(ReconcileError):
        process(SyncIndex([(1, b"a" * 32)]), message, initiator=False)
