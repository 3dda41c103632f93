"""The storage manifest codec: round trip, and hostile bytes refused with ManifestError only."""

from __future__ import annotations

import os

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeone_storage.manifest import ManifestError, StorageManifest
from zeone_storage.service import StorageError, capability, parse_capability

from zeone.identity import Identity
from zeone.wire.frame import decode_cbor, encode_cbor

IDENTITY = Identity.from_seed(b"s" * 32)
NODES = tuple(os.urandom(20) for _ in range(6))


def manifest(**changes) -> StorageManifest:
    base = StorageManifest(
        name="a.bin", size=10_000, media_type="application/octet-stream", stripe_size=4096, k=4,
        m=2, ec_type="isa_l_rs_cauchy", fragment_size=1104, last_fragment_size=534,
        roots=os.urandom(3 * 6 * 32), nodes=NODES,
        place=b"".join(i.to_bytes(2, "big") for _ in range(3) for i in range(6)),
        salt=os.urandom(16), publisher=IDENTITY.public_key,
    )  # fmt: skip
    return attrs.evolve(base, **changes).sign(IDENTITY)


SIGNED = manifest()


def test_round_trip_and_accessors() -> None:
    m = manifest()
    decoded = StorageManifest.decode(m.encode())
    assert decoded == m and decoded.stripes == 3 and decoded.positions == 18
    assert decoded.stripe_length(2) == 10_000 - 2 * 4096
    assert decoded.holder(7).raw == NODES[1]
    assert decoded.publisher_id == IDENTITY.node_id


def test_inconsistent_manifests_are_refused_even_when_signed() -> None:
    two_on_one_node = b"".join(b"\0\0" for _ in range(18))
    with pytest.raises(ManifestError, match="two fragments on one node"):
        StorageManifest.decode(manifest(place=two_on_one_node).encode())
    with pytest.raises(ManifestError, match="roots must hold 18"):
        StorageManifest.decode(manifest(roots=b"x" * 32).encode())
    with pytest.raises(ManifestError, match="out of range"):
        StorageManifest.decode(manifest(place=b"\0\x09" * 18).encode())
    raw = decode_cbor(manifest().encode())
    raw["extra"] = 1
    with pytest.raises(ManifestError, match="keys"):
        StorageManifest.decode(encode_cbor(raw))
    raw = decode_cbor(manifest().encode())
    raw["ec"] = "rot13"
    with pytest.raises(ManifestError, match="unknown erasure code"):
        StorageManifest.decode(encode_cbor(raw))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_bytes_raise_only_manifest_error(data: st.DataObject) -> None:
    original = SIGNED.encode()
    good = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(good) - 1))
        good[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(good)))
    try:
        StorageManifest.decode(bytes(good[:cut]))
    except ManifestError:
        return
    assert bytes(good[:cut]) == original  # only the untouched bytes decode


def test_capabilities() -> None:
    from zeone.content import ContentId

    cid = ContentId(os.urandom(32))
    key = os.urandom(32)
    assert parse_capability(capability(cid, key)) == (cid, key)
    assert parse_capability(str(cid)) == (cid, None)
    with pytest.raises(StorageError, match="bad file id"):
        parse_capability("z123")
    with pytest.raises(StorageError, match="not base32"):
        parse_capability(f"{cid}.!!!")
    with pytest.raises(StorageError, match="bytes, expected 32"):
        parse_capability(f"{cid}.aaaa")
