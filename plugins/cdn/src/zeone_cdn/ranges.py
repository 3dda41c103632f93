"""HTTP range and conditional-request logic (RFC 9110 §13, §14), sans-IO.

Pure functions over header strings, so every rule is tested without a server. Decisions:

- A `Range` in another unit than `bytes` is ignored (200), as RFC 9110 §14.2 requires.
- A syntactically invalid `bytes` range, or one that cannot be satisfied (start past the end,
  zero-length suffix, an empty representation), is answered 416 with `Content-Range: bytes */size`
  (nginx does the same for invalid syntax).
- Several ranges are answered with the whole representation (200): RFC 9110 lets a server ignore
  `Range`, and multipart/byteranges buys nothing for the clients that matter (resuming downloads,
  media players) while costing a lot of complexity.
- `If-Range` is honoured only with a strong entity-tag equal to ours; a date never matches (the
  gateway sends no Last-Modified), so the full representation is sent.
"""

from __future__ import annotations

import re
from enum import Enum

import attrs

MAX_HEADER = 4096
_SPEC = re.compile(r"^([0-9]{0,19})-([0-9]{0,19})$")
_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')


@attrs.frozen
class ByteRange:
    """Bytes `start .. stop` (stop exclusive) of a representation of `size` bytes."""

    start: int
    stop: int
    size: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{self.size}"


class RangeOutcome(Enum):
    FULL = "full"
    UNSATISFIABLE = "unsatisfiable"


def parse_range(header: str | None, size: int) -> ByteRange | RangeOutcome:
    """What a GET with this `Range` header gets: one range, the full body, or 416."""
    if header is None:
        return RangeOutcome.FULL
    if len(header) > MAX_HEADER:
        return RangeOutcome.UNSATISFIABLE
    unit, sep, specs = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return RangeOutcome.FULL  # unknown unit (or not a range at all): ignore it
    parts = [p.strip() for p in specs.split(",")]
    parsed = []
    for part in parts:
        match = _SPEC.match(part)
        if match is None or match.group(0) == "-":
            return RangeOutcome.UNSATISFIABLE
        parsed.append((match.group(1), match.group(2)))
    if len(parsed) > 1:
        for first, last in parsed:  # still refuse garbage hidden in a multi-range
            if first and last and int(first) > int(last):
                return RangeOutcome.UNSATISFIABLE
        return RangeOutcome.FULL
    first, last = parsed[0]
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            return RangeOutcome.UNSATISFIABLE
        return ByteRange(max(size - suffix, 0), size, size)
    start = int(first)
    if last and int(last) < start:
        return RangeOutcome.UNSATISFIABLE
    if start >= size:
        return RangeOutcome.UNSATISFIABLE
    stop = size if not last else min(int(last) + 1, size)
    return ByteRange(start, stop, size)


def parse_etags(header: str) -> list[tuple[bool, str]] | None:
    """`If-None-Match` / `If-Match` / `If-Range` value as (weak, opaque-tag) pairs.

    None for `*`; an empty list for a malformed value (which then matches nothing).
    """
    header = header.strip()
    if header == "*":
        return None
    tags: list[tuple[bool, str]] = []
    position = 0
    while position < len(header):
        match = _TAG.match(header, position)
        if match is None:
            return []
        tags.append((bool(match.group(1)), match.group(2)))
        position = match.end()
    return tags


def none_match(header: str | None, etag: str) -> bool:
    """True if `If-None-Match` matches `etag` (weak comparison): answer 304."""
    if header is None:
        return False
    tags = parse_etags(header)
    return tags is None or any(tag == etag for _weak, tag in tags)


def if_match_fails(header: str | None, etag: str) -> bool:
    """True if `If-Match` is present and does not match (strong comparison): answer 412."""
    if header is None:
        return False
    tags = parse_etags(header)
    if tags is None:
        return False
    return not any(tag == etag and not weak for weak, tag in tags)


def if_range_allows(header: str | None, etag: str) -> bool:
    """True if the `Range` may be applied given `If-Range` (strong comparison; dates never)."""
    if header is None:
        return True
    tags = parse_etags(header)
    return bool(tags) and len(tags) == 1 and tags[0] == (False, etag)
