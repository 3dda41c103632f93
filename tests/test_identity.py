"""Identity: the key file is private, never overwritten, never silently regenerated."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zeone.errors import IdentityError
from zeone.identity import KEY_FILE_HEADER, NODE_ID_BYTES, Identity, NodeId, verify_signature

node_ids = st.binary(min_size=NODE_ID_BYTES, max_size=NODE_ID_BYTES).map(NodeId)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_key_text(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_save_load_roundtrip(tmp_path: Path) -> None:
    identity = Identity.generate()
    path = tmp_path / "keys" / "node.key"  # parent is created
    identity.save(path)
    loaded = Identity.load(path)
    assert loaded.public_key == identity.public_key
    assert loaded.node_id == identity.node_id
    assert bytes(loaded.signing_key) == bytes(identity.signing_key)
    assert path.read_text().splitlines()[0] == KEY_FILE_HEADER
    assert str(identity.node_id) in path.read_text()


def test_key_file_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        Identity.generate().save(tmp_path / "node.key")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "node.key") == 0o600


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first = Identity.generate()
    first.save(path)
    before = path.read_bytes()
    with pytest.raises(IdentityError, match="already exists"):
        Identity.generate().save(path)
    assert path.read_bytes() == before
    assert Identity.load(path).node_id == first.node_id


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_readable_by_others_is_refused_with_chmod_hint(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    Identity.generate().save(path)
    path.chmod(mode)
    with pytest.raises(IdentityError) as info:
        Identity.load(path)
    message = str(info.value)
    assert f"chmod 600 {path}" in message
    assert f"{mode:04o}" in message
    assert info.value.exit_code == 2


def test_missing_key_file_says_run_init(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="zeone init"):
        Identity.load(tmp_path / "node.key")


SEED = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "not a ZEONE key file"),
        (f"{KEY_FILE_HEADER}\n", "not a ZEONE key file"),
        (f"zeone-ed25519-secret-key-v2\n{SEED}\n", "not a ZEONE key file"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n", "not a ZEONE key file"),
        (f"{KEY_FILE_HEADER}\nnot base64!\n", "bad base64"),
        (f"{KEY_FILE_HEADER}\n{SEED[:-4]}\n", r"corrupt \(seed is 30 bytes"),
        (f"{KEY_FILE_HEADER}\n{base64.b64encode(bytes(64)).decode()}\n", "seed is 64 bytes"),
    ],
)
def test_corrupt_key_file(tmp_path: Path, text: str, match: str) -> None:
    path = write_key_text(tmp_path / "node.key", text)
    with pytest.raises(IdentityError, match=match) as info:
        Identity.load(path)
    assert str(path) in str(info.value)


def test_undecodable_key_file(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(b"\xff\xfe\x00garbage")
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="cannot read key file"):
        Identity.load(path)


def test_load_or_create_creates_once_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    created = Identity.load_or_create(path)
    assert mode_of(path) == 0o600
    assert Identity.load_or_create(path).node_id == created.node_id


def test_load_or_create_never_regenerates_a_corrupt_key(tmp_path: Path) -> None:
    path = write_key_text(tmp_path / "node.key", f"{KEY_FILE_HEADER}\n@@@@\n")
    before = path.read_bytes()
    with pytest.raises(IdentityError, match="corrupt"):
        Identity.load_or_create(path)
    assert path.read_bytes() == before


def test_load_or_create_never_replaces_an_exposed_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    Identity.generate().save(path)
    path.chmod(0o644)
    before = path.read_bytes()
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load_or_create(path)
    assert path.read_bytes() == before


def test_from_seed_is_deterministic_and_signs() -> None:
    a, b = Identity.from_seed(bytes(range(32))), Identity.from_seed(bytes(range(32)))
    assert a.node_id == b.node_id
    signature = a.sign(b"hello")
    assert verify_signature(a.public_key, b"hello", signature)
    assert not verify_signature(a.public_key, b"hellO", signature)
    assert not verify_signature(Identity.generate().public_key, b"hello", signature)
    assert not verify_signature(a.public_key, b"hello", b"short")
    assert not verify_signature(b"not a key", b"hello", signature)


def test_node_id_is_bound_to_the_public_key() -> None:
    identity = Identity.generate()
    assert identity.node_id == NodeId.from_public_key(identity.public_key)
    assert identity.node_id != Identity.generate().node_id


# -- NodeId ----------------------------------------------------------------------------------


@given(node_ids)
def test_node_id_text_roundtrip(node_id: NodeId) -> None:
    text = str(node_id)
    assert len(text) == 40
    assert text == text.lower()
    assert NodeId.parse(text) == node_id
    assert NodeId.parse(f"  {text.upper()}\n") == node_id
    assert text.startswith(node_id.short())
    assert len(node_id.short()) == 8


@pytest.mark.parametrize("text", ["", "ab", "0" * 39, "0" * 41, "0" * 80])
def test_node_id_parse_rejects_bad_length(text: str) -> None:
    with pytest.raises(ValueError, match="40 hex digits"):
        NodeId.parse(text)


@pytest.mark.parametrize("text", ["g" * 40, "0x" + "0" * 38, "0" * 39 + "z", "00 " * 13 + "0"])
def test_node_id_parse_rejects_non_hex(text: str) -> None:
    with pytest.raises(ValueError, match="hex digits"):
        NodeId.parse(text)


@pytest.mark.parametrize("raw", [b"", bytes(19), bytes(21), "0" * 20])
def test_node_id_needs_20_bytes(raw: object) -> None:
    with pytest.raises(ValueError, match="20 bytes"):
        NodeId(raw)  # type: ignore[arg-type]


@given(node_ids, node_ids, node_ids)
def test_xor_distance_properties(a: NodeId, b: NodeId, c: NodeId) -> None:
    assert a.distance(a) == 0
    assert a.distance(b) == b.distance(a)
    assert (a.distance(b) == 0) == (a == b)
    assert a.distance(b) ^ b.distance(c) == a.distance(c)  # a^b^b^c = a^c
    assert a.int ^ a.distance(b) == b.int  # a^(a^b) = b
    assert 0 <= a.distance(b) < 2 ** (8 * NODE_ID_BYTES)
    # the XOR metric obeys the triangle inequality
    assert a.distance(c) <= a.distance(b) + b.distance(c)


@given(node_ids, node_ids)
def test_node_ids_order_like_their_integers(a: NodeId, b: NodeId) -> None:
    assert (a < b) == (a.int < b.int)
    assert (a == b) == (hash(a) == hash(b) and a.raw == b.raw)
