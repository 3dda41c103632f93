"""Range and conditional-request rules (sans-IO), including property tests."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from zeone_cdn.ranges import (
    ByteRange,
    RangeOutcome,
    if_match_fails,
    if_range_allows,
    none_match,
    parse_etags,
    parse_range,
)

FULL, BAD = RangeOutcome.FULL, RangeOutcome.UNSATISFIABLE


def test_single_ranges():
    assert parse_range("bytes=0-9", 100) == ByteRange(0, 10, 100)
    assert parse_range("bytes=90-", 100) == ByteRange(90, 100, 100)
    assert parse_range("bytes=90-1000", 100) == ByteRange(90, 100, 100)
    assert parse_range("bytes=-10", 100) == ByteRange(90, 100, 100)
    assert parse_range("bytes=-1000", 100) == ByteRange(0, 100, 100)
    assert parse_range("BYTES = 5-5", 100) == ByteRange(5, 6, 100)
    assert parse_range("bytes=99-99", 100).content_range() == "bytes 99-99/100"


def test_unsatisfiable_and_malformed():
    for header in ["bytes=100-", "bytes=100-200", "bytes=-0", "bytes=5-4", "bytes=x-1",
                   "bytes=-", "bytes=", "bytes=1-2-3", "bytes=+1-2", "bytes=1 -2",
                   "bytes=٣-4", "bytes=1-2,", "bytes=" + "9" * 20 + "-"]:  # fmt: skip
        assert parse_range(header, 100) is BAD, header
    assert parse_range("bytes=0-", 0) is BAD  # nothing to select in an empty body
    assert parse_range("bytes=-5", 0) is BAD
    assert parse_range("bytes=0-1," * 1000, 100) is BAD  # oversized header


def test_ignored_ranges():
    assert parse_range(None, 100) is FULL
    assert parse_range("items=0-5", 100) is FULL
    assert parse_range("0-5", 100) is FULL
    assert parse_range("bytes=0-1, 5-6", 100) is FULL  # multi-range: the whole body
    assert parse_range("bytes=0-1, 6-5", 100) is BAD


def test_etags():
    assert parse_etags('"a", W/"b" ,"c"') == [(False, "a"), (True, "b"), (False, "c")]
    assert parse_etags("*") is None
    assert parse_etags("garbage") == []
    assert none_match('W/"a"', "a") and none_match("*", "a") and not none_match('"b"', "a")
    assert not none_match(None, "a") and not none_match("a", "a")
    assert if_match_fails('"b"', "a") and not if_match_fails('"a"', "a")
    assert if_match_fails('W/"a"', "a")  # If-Match uses the strong comparison
    assert not if_match_fails("*", "a") and not if_match_fails(None, "a")
    assert if_range_allows(None, "a") and if_range_allows('"a"', "a")
    assert not if_range_allows('W/"a"', "a") and not if_range_allows('"b"', "a")
    assert not if_range_allows("Wed, 21 Oct 2015 07:28:00 GMT", "a")


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 10**6))
def test_explicit_ranges_stay_inside(first, last, size):
    outcome = parse_range(f"bytes={first}-{last}", size)
    if first > last or first >= size:
        assert outcome is BAD
    else:
        assert outcome == ByteRange(first, min(last + 1, size), size)
        assert 0 < outcome.length <= size


@given(st.integers(0, 10**7), st.integers(0, 10**6))
def test_suffix_ranges(suffix, size):
    outcome = parse_range(f"bytes=-{suffix}", size)
    if suffix == 0 or size == 0:
        assert outcome is BAD
    else:
        assert outcome == ByteRange(max(size - suffix, 0), size, size)


@given(st.text(max_size=60), st.integers(0, 1000))
def test_any_header_gives_a_valid_answer(header, size):
    outcome = parse_range(header, size)
    if isinstance(outcome, ByteRange):
        assert 0 <= outcome.start < outcome.stop <= size
    else:
        assert outcome in (FULL, BAD)


@given(st.text(max_size=60))
def test_any_etag_header_parses_or_refuses(header):
    tags = parse_etags(header)
    assert tags is None or isinstance(tags, list)
