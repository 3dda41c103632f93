"""The handshake, sans-IO: agreement, rejection of everything invalid, replays, wire statistics."""

from __future__ import annotations

import contextlib
import os
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeone_obfs.handshake import (
    CLIENT_MIN_LEN,
    EPOCH_SECONDS,
    MAX_HANDSHAKE,
    SERVER_MIN_LEN,
    ClientHandshake,
    HandshakeError,
    PaddingStyle,
    ReplayFilter,
    ServerHandshake,
    ServerKeys,
)

DETERMINISTIC = settings(derandomize=True, deadline=None, max_examples=60)
KEYS = ServerKeys.generate()
NOW = 1_800_000_000.0


def server(replay: ReplayFilter | None = None, now: float = NOW) -> ServerHandshake:
    return ServerHandshake(
        KEYS, replay if replay is not None else ReplayFilter(), clock=lambda: now
    )


def complete(client: ClientHandshake, srv: ServerHandshake) -> None:
    assert srv.feed(client.message) is True
    assert srv.reply is not None
    assert client.feed(srv.reply) == b""


def test_both_sides_derive_mirrored_keys() -> None:
    client, srv = ClientHandshake(KEYS.identity, now=NOW), server()
    complete(client, srv)
    c, s = client.keys, srv.keys
    assert c is not None and s is not None
    assert (c.send_key, c.send_nonce, c.send_len_key) == (s.recv_key, s.recv_nonce, s.recv_len_key)
    assert (c.recv_key, c.recv_nonce, c.recv_len_key) == (s.send_key, s.send_nonce, s.send_len_key)
    assert c.send_key != c.recv_key


def test_byte_by_byte_delivery_and_trailing_frames() -> None:
    client, srv = ClientHandshake(KEYS.identity, now=NOW, pad_len=300), server()
    done = [srv.feed(client.message[i : i + 1]) for i in range(len(client.message))]
    assert done[-1] is True and not any(done[:-1])
    assert srv.reply is not None
    reply = srv.reply + b"first frame bytes"
    results = [client.feed(reply[i : i + 1]) for i in range(len(reply) - 17)]
    assert results[-1] == b"" and all(r is None for r in results[:-1])


@pytest.mark.parametrize("skew", [-1, 0, 1])
def test_adjacent_epoch_hours_are_accepted(skew: int) -> None:
    client = ClientHandshake(KEYS.identity, now=NOW + skew * EPOCH_SECONDS)
    complete(client, server())


@pytest.mark.parametrize("skew", [-2, 2])
def test_distant_epoch_hours_are_rejected(skew: int) -> None:
    client = ClientHandshake(KEYS.identity, now=NOW + skew * EPOCH_SECONDS)
    with pytest.raises(HandshakeError, match="MAC"):
        server().feed(client.message)


def test_a_replayed_handshake_is_rejected() -> None:
    replay = ReplayFilter()
    client = ClientHandshake(KEYS.identity, now=NOW)
    assert server(replay).feed(client.message)
    with pytest.raises(HandshakeError, match="replayed"):
        server(replay, now=NOW + 60).feed(client.message)


def test_a_handshake_for_another_server_is_not_accepted() -> None:
    other = ServerKeys.generate()
    client = ClientHandshake(other.identity, now=NOW)
    srv = server()
    with pytest.raises(HandshakeError):
        srv.feed(client.message + os.urandom(MAX_HANDSHAKE))


@DETERMINISTIC
@given(position=st.integers(0, 10**6), bit=st.integers(0, 7))
def test_a_flipped_bit_anywhere_is_rejected(position: int, bit: int) -> None:
    client = ClientHandshake(KEYS.identity, now=NOW, pad_len=200)
    message = bytearray(client.message)
    message[position % len(message)] ^= 1 << bit
    srv = server()
    with pytest.raises(HandshakeError):
        # a damaged mark leaves the server waiting: the rest of the connection cannot help
        srv.feed(bytes(message))
        srv.feed(os.urandom(MAX_HANDSHAKE))


@DETERMINISTIC
@given(st.binary(max_size=MAX_HANDSHAKE + 100))
def test_random_bytes_of_any_length_are_never_accepted(data: bytes) -> None:
    srv = server()
    with contextlib.suppress(HandshakeError):
        assert srv.feed(data) is False
    assert srv.reply is None


def test_data_after_the_client_handshake_is_rejected() -> None:
    client = ClientHandshake(KEYS.identity, now=NOW)
    with pytest.raises(HandshakeError, match="after"):
        server().feed(client.message + b"x")


def test_client_rejects_a_tampered_or_impostor_reply() -> None:
    client, srv = ClientHandshake(KEYS.identity, now=NOW), server()
    assert srv.feed(client.message) and srv.reply is not None
    tampered = bytearray(srv.reply)
    tampered[40] ^= 1  # inside AUTH
    with pytest.raises(HandshakeError, match="MAC"):
        client.feed(bytes(tampered))
    # an impostor that knows the bridge line (B, ID) but not b cannot produce AUTH
    impostor = ServerKeys(KEYS.identity, os.urandom(32))
    client = ClientHandshake(KEYS.identity, now=NOW)
    fake = ServerHandshake(impostor, ReplayFilter(), clock=lambda: NOW)
    assert fake.feed(client.message) and fake.reply is not None
    with pytest.raises(HandshakeError, match="prove"):
        client.feed(fake.reply)


def test_replay_filter_ages_and_bounds_its_entries() -> None:
    replay = ReplayFilter(capacity=3, ttl=100)
    assert replay.check_and_add(b"a", 0) and not replay.check_and_add(b"a", 99)
    assert replay.check_and_add(b"a", 100)  # expired, then remembered again
    for mac in (b"b", b"c", b"d"):
        assert replay.check_and_add(mac, 101)
    assert len(replay) == 3  # b"a" was evicted as the oldest
    with pytest.raises(ValueError):
        ReplayFilter(capacity=0)


# -- what an observer sees across many connections ----------------------------------------------


def _max_share_at_fixed_offsets(messages: list[bytes], offsets: range, from_end: bool) -> float:
    worst = 0
    for offset in offsets:
        column = Counter(m[-1 - offset] if from_end else m[offset] for m in messages)
        worst = max(worst, column.most_common(1)[0][1])
    return worst / len(messages)


def test_no_fixed_bytes_at_fixed_offsets_across_1000_connections() -> None:
    hellos, replies = [], []
    for _ in range(1000):
        client, srv = ClientHandshake(KEYS.identity), ServerHandshake(KEYS, ReplayFilter())
        assert srv.feed(client.message) and srv.reply is not None
        hellos.append(client.message)
        replies.append(srv.reply)
    # Uniform bytes: the commonest value at an offset shows up ~4/1000 times (rarely above 15);
    # a fixed byte would show up 1000 times, a biased one far above 30.
    assert _max_share_at_fixed_offsets(hellos, range(CLIENT_MIN_LEN), False) < 0.03
    assert _max_share_at_fixed_offsets(hellos, range(32), True) < 0.03
    assert _max_share_at_fixed_offsets(replies, range(SERVER_MIN_LEN), False) < 0.03
    assert _max_share_at_fixed_offsets(replies, range(32), True) < 0.03
    # every bit of every leading byte is a fair coin (5 sigma is 79 either way of 500)
    for offset in range(64):
        for bit in range(8):
            ones = sum((m[offset] >> bit) & 1 for m in hellos)
            assert 400 < ones < 600, (offset, bit, ones)
    # and lengths vary: no fixed handshake size to match either
    assert len({len(m) for m in hellos}) > 800
    assert len({len(m) for m in replies}) > 800


def test_low_popcount_padding_still_has_no_fixed_bytes() -> None:
    hellos = [
        ClientHandshake(KEYS.identity, padding=PaddingStyle.LOW_POPCOUNT).message
        for _ in range(1000)
    ]
    # The key and MACs stay uniform; padding bytes are skewed towards 0 (0x00 ~ 10%), never fixed.
    assert _max_share_at_fixed_offsets(hellos, range(32), False) < 0.03
    assert _max_share_at_fixed_offsets(hellos, range(32, CLIENT_MIN_LEN - 32), False) < 0.2
    assert _max_share_at_fixed_offsets(hellos, range(32), True) < 0.03
