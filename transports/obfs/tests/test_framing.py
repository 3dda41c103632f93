"""Frame codec: roundtrips under any split, padding to the target, tamper detection."""

from __future__ import annotations

import contextlib
import itertools
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeone_obfs.framing import (
    MAX_PAYLOAD,
    MSS,
    FrameDecoder,
    FrameEncoder,
    FrameError,
    LengthDistribution,
)

DETERMINISTIC = settings(derandomize=True, deadline=None, max_examples=150)
KEY, PREFIX, LEN_KEY = b"k" * 16, b"n" * 8, b"l" * 32


def pair() -> tuple[FrameEncoder, FrameDecoder]:
    return FrameEncoder(KEY, PREFIX, LEN_KEY), FrameDecoder(KEY, PREFIX, LEN_KEY)


def feed_in_pieces(decoder: FrameDecoder, wire: bytes, cuts: list[int]) -> bytes:
    out = bytearray()
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    for start, end in itertools.pairwise(points):
        for payload in decoder.feed(wire[start:end]):
            out += payload
    return bytes(out)


@DETERMINISTIC
@given(
    writes=st.lists(st.binary(max_size=3000), min_size=1, max_size=8),
    targets=st.lists(st.none() | st.integers(0, MSS - 1), min_size=8, max_size=8),
    cuts=st.lists(st.integers(0, 10**6), max_size=12),
)
def test_roundtrip_under_any_split(writes: list[bytes], targets: list, cuts: list[int]) -> None:
    encoder, decoder = pair()
    wire = b"".join(encoder.encode(w, t) for w, t in zip(writes, targets, strict=False))
    assert feed_in_pieces(decoder, wire, cuts) == b"".join(writes)
    assert decoder.buffered == 0


@DETERMINISTIC
@given(size=st.integers(0, 3 * MAX_PAYLOAD), target=st.integers(0, MSS - 1))
def test_each_write_is_padded_to_its_target_length(size: int, target: int) -> None:
    encoder, decoder = pair()
    data = os.urandom(size)
    wire = encoder.encode(data, target)
    assert len(wire) % MSS == target
    assert b"".join(decoder.feed(wire)) == data


def test_large_writes_use_few_large_frames() -> None:
    encoder, _ = pair()
    wire = encoder.encode(bytes(64 * 1024), None)
    assert len(wire) < 64 * 1024 + 100  # two frames of overhead, no padding


@DETERMINISTIC
@given(position=st.integers(0, 10**6), bit=st.integers(0, 7))
def test_any_flipped_bit_is_detected(position: int, bit: int) -> None:
    encoder, decoder = pair()
    wire = bytearray(encoder.encode(b"payload" * 50, 700))
    wire[position % len(wire)] ^= 1 << bit
    with pytest.raises(FrameError):
        decoder.feed(bytes(wire))
        # a corrupted length may leave the decoder waiting for more: give it more
        decoder.feed(os.urandom(70000))


@DETERMINISTIC
@given(st.binary(min_size=1, max_size=5000))
def test_random_bytes_never_decode_to_payload(data: bytes) -> None:
    _, decoder = pair()
    with contextlib.suppress(FrameError):
        assert decoder.feed(data) == []


def test_frames_with_other_keys_or_out_of_order_fail() -> None:
    encoder, _ = pair()
    first, second = encoder.encode(b"one", 0), encoder.encode(b"two", 0)
    _, decoder = pair()
    with pytest.raises(FrameError):
        decoder.feed(second + first)
    other = FrameDecoder(b"x" * 16, PREFIX, LEN_KEY)
    with pytest.raises(FrameError):
        other.feed(first)


def test_a_truncated_frame_stays_buffered() -> None:
    encoder, decoder = pair()
    wire = encoder.encode(b"x" * 100, None)
    assert decoder.feed(wire[:-1]) == []
    assert decoder.buffered > 0
    assert decoder.feed(wire[-1:]) == [b"x" * 100]


@DETERMINISTIC
@given(st.binary(min_size=1, max_size=64), st.integers(2, 5000))
def test_length_distribution_is_deterministic_per_seed_and_in_range(
    seed: bytes, maximum: int
) -> None:
    dist = LengthDistribution.from_seed(seed, maximum)
    assert dist == LengthDistribution.from_seed(seed, maximum)
    rng = random.Random(1)
    samples = {dist.sample(rng) for _ in range(200)}
    assert samples <= set(dist.values)
    assert all(0 <= s < maximum for s in samples)


def test_servers_get_different_length_distributions() -> None:
    dists = {LengthDistribution.from_seed(os.urandom(16), MSS).values for _ in range(20)}
    assert len(dists) == 20
