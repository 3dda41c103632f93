"""The Wu et al. (2023) rules, and what they say about obfs first packets."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeone_obfs.framing import MSS
from zeone_obfs.gfw import classify, evaluate
from zeone_obfs.handshake import ClientHandshake, PaddingStyle, ServerKeys

KEYS = ServerKeys.generate()


@pytest.mark.parametrize(
    ("packet", "exemption"),
    [
        (b"\x16\x03\x01\x02\x00" + os.urandom(200), "ex5-protocol"),
        (b"GET / HTTP/1.1\r\n" + os.urandom(200), "ex2-printable-prefix"),
        (b"\x00" * 100, "ex1-popcount"),
        (b"\xff" * 100, "ex1-popcount"),
        (os.urandom(10) + b"A" * 25 + os.urandom(10), "ex4-printable-run"),
        (b"a\x80" * 10 + b"abcdefghijklmnopq" * 2, "ex3-mostly-printable"),
    ],
)
def test_each_exemption(packet: bytes, exemption: str) -> None:
    assert exemption in classify(packet).exemptions


def test_random_bytes_are_blocked() -> None:
    verdict = classify(random.Random(7).randbytes(1000))
    assert verdict.blocked and 3.4 < verdict.popcount < 4.6


@settings(derandomize=True, deadline=None)
@given(st.binary(min_size=1, max_size=2000))
def test_classify_accepts_any_packet(packet: bytes) -> None:
    verdict = classify(packet)
    assert 0 <= verdict.popcount <= 8
    assert verdict.blocked == (not verdict.exemptions)


def first_packets(style: PaddingStyle, count: int) -> list[bytes]:
    return [ClientHandshake(KEYS.identity, padding=style).message[:MSS] for _ in range(count)]


def test_uniform_first_packets_are_caught_like_obfs4s() -> None:
    report = evaluate(first_packets(PaddingStyle.UNIFORM, 1000))
    assert report["blocked_share"] > 0.95


def test_low_popcount_first_packets_are_all_exempt() -> None:
    report = evaluate(first_packets(PaddingStyle.LOW_POPCOUNT, 1000))
    assert report["blocked"] == 0
    assert report["popcount_max"] <= 3.4
