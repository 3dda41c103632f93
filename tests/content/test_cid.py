"""Content id text form: round trips, and clear errors for anything else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zeone.content.cid import TEXT_LENGTH, ContentId
from zeone.content.errors import ContentError


@given(st.binary(min_size=32, max_size=32))
def test_text_form_round_trips(digest: bytes) -> None:
    cid = ContentId(digest)
    text = str(cid)
    assert len(text) == TEXT_LENGTH and text.startswith("z") and text == text.lower()
    assert ContentId.parse(text) == cid
    assert ContentId.parse(text.upper().replace("Z", "z", 1)) == cid  # base32 is case-insensitive


@given(st.text(max_size=80))
def test_arbitrary_text_parses_or_raises_content_error(text: str) -> None:
    try:
        cid = ContentId.parse(text)
    except ContentError:
        return
    assert str(cid) == text.strip().lower()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "does not start with"),
        ("Qm" + "a" * 51, "does not start with"),
        ("z" + "a" * 51, "has 52 characters"),
        ("z" + "1" * 52, "not valid base32"),
        ("z" + "a" * 51 + "b", "not in canonical form"),  # padding bits set
    ],
)
def test_bad_ids_are_named(text: str, message: str) -> None:
    with pytest.raises(ContentError, match=message):
        ContentId.parse(text)


def test_raw_ids_are_checked() -> None:
    with pytest.raises(ContentError):
        ContentId.from_bytes(b"x" * 31)
    with pytest.raises(ContentError):
        ContentId.from_bytes("x" * 32)
