"""The server state file: created once, reloaded identically, malformed files named clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from zeone_obfs.state import StateError, load, load_or_create


def test_created_once_then_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "obfs_state.json"
    keys = load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create(path) == keys == load(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ("[]", "must be an object"),
        ('{"node_id": "00"}', "must be an object"),
        ('{"node_id": "zz", "private_key": "00"}', "must be hex"),
        ('{"node_id": "00", "private_key": "00"}', "must be 20 bytes"),
    ],
)
def test_malformed_state_is_explained(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "obfs_state.json"
    path.write_text(text)
    with pytest.raises(StateError, match=message) as info:
        load_or_create(path)
    assert str(path) in str(info.value)
