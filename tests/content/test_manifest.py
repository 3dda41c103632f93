"""Manifests: canonical round trips, signatures, directory paths, hostile decoding."""

from __future__ import annotations

import contextlib

import attrs
import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeone.content.errors import ContentError
from zeone.content.manifest import (
    MAX_MANIFEST_BYTES,
    Entry,
    Manifest,
    check_path,
)
from zeone.identity import Identity

ALICE = Identity.from_seed(b"a" * 32)
MALLORY = Identity.from_seed(b"m" * 32)

path_part = st.text(
    alphabet=st.characters(codec="utf-8", categories=["L", "N"], include_characters="-_. "),
    min_size=1,
    max_size=12,
).filter(lambda p: p not in (".", ".."))


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    chunk_size = draw(st.sampled_from([1024, 4096, 256 * 1024, 2 * 1024 * 1024]))
    size = draw(st.integers(min_value=0, max_value=2**40))
    paths = draw(st.lists(st.lists(path_part, min_size=1, max_size=3), max_size=6))
    names = sorted({"/".join(p) for p in paths})
    # drop paths that would sit inside another file
    names = [n for n in names if not any(n.startswith(o + "/") for o in names)]
    import unicodedata

    names = sorted({unicodedata.normalize("NFC", n) for n in names})
    entries = []
    for name in names:
        offset = draw(st.integers(min_value=0, max_value=size))
        length = draw(st.integers(min_value=0, max_value=size - offset))
        entries.append(Entry(name, offset, length, "text/plain"))
    return Manifest.create(
        ALICE,
        chunk_size=chunk_size,
        size=size,
        root=draw(st.binary(min_size=32, max_size=32)),
        media_type=draw(st.sampled_from(["application/octet-stream", "video/mp4"])),
        name=draw(st.none() | st.text(min_size=1, max_size=30)),
        entries=entries,
    )


@given(manifests())
@settings(max_examples=60)
def test_round_trip_is_exact(manifest: Manifest) -> None:
    data = manifest.encode()
    decoded = Manifest.decode(data, expected=manifest.content_id)
    assert decoded == manifest
    assert decoded.encode() == data
    assert decoded.content_id == manifest.content_id


def test_a_terabyte_manifest_is_small() -> None:
    manifest = Manifest.create(ALICE, chunk_size=256 * 1024, size=10**12, root=b"r" * 32)
    assert manifest.chunk_count == 3814698
    assert len(manifest.encode()) < 300


def test_signatures_bind_every_field() -> None:
    manifest = Manifest.create(ALICE, chunk_size=1024, size=5000, root=b"r" * 32, name="a.bin")
    manifest.verify_signature()
    for change in (
        {"size": 4000, "chunk_count": 4},
        {"root": b"s" * 32},
        {"name": "b.bin"},
        {"media_type": "text/html"},
        {"publisher": MALLORY.public_key},
    ):
        forged = attrs.evolve(manifest, **change)
        with pytest.raises(ContentError, match="signature is not valid"):
            forged.verify_signature()
        with pytest.raises(ContentError, match="signature is not valid"):
            Manifest.decode(forged.encode())
    # re-signing by someone else is a valid manifest, but a different id and publisher
    other = Manifest.create(MALLORY, chunk_size=1024, size=5000, root=b"r" * 32, name="a.bin")
    assert other.content_id != manifest.content_id
    # signing is deterministic: the same import gives the same id
    again = Manifest.create(ALICE, chunk_size=1024, size=5000, root=b"r" * 32, name="a.bin")
    assert again.content_id == manifest.content_id


def _raw(manifest: Manifest) -> dict:
    return cbor2.loads(manifest.encode())


def _resign(raw: dict) -> bytes:
    """Build an encoding a publisher could sign: hostile-publisher cases must fail on content."""
    return cbor2.dumps(raw, canonical=True)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("root"), "lacks field"),
        (lambda r: r.update(extra=1), "unknown field"),
        (lambda r: r.update(v=2), "unsupported manifest version"),
        (lambda r: r.update(chunk_size=100), "chunk_size"),
        (lambda r: r.update(chunks=1), "chunk count 1 does not match"),
        (lambda r: r.update(size=-1), "'size'"),
        (lambda r: r.update(root=b"short"), "'root' must be 32 bytes"),
        (lambda r: r.update(type="nonsense"), "media type"),
        (lambda r: r.update(name=""), "name must be"),
        (lambda r: r.update(entries=[]), "non-empty array"),
        (lambda r: r.update(entries=[["../etc/passwd", 0, 1, "text/plain"]]), "'..'"),
        (lambda r: r.update(entries=[["/etc/passwd", 0, 1, "text/plain"]]), "absolute"),
        (lambda r: r.update(entries=[["a", 0, 10**9, "text/plain"]]), "ends after"),
        (lambda r: r.update(entries=[["b", 0, 1, "t/p"], ["a", 0, 1, "t/p"]]), "sorted"),
        (lambda r: r.update(entries=[["a", 0, 1, "t/p"], ["a/b", 0, 1, "t/p"]]), "inside file"),
        (lambda r: r.update(entries=[["a", 0]]), "directory entry is"),
    ],
)
def test_invalid_fields_are_named(mutate, message: str) -> None:
    raw = _raw(Manifest.create(ALICE, chunk_size=1024, size=5000, root=b"r" * 32))
    mutate(raw)
    with pytest.raises(ContentError, match=message):
        Manifest.decode(_resign(raw))


def test_non_canonical_and_oversized_encodings_are_refused() -> None:
    manifest = Manifest.create(ALICE, chunk_size=1024, size=5000, root=b"r" * 32)
    raw = _raw(manifest)
    loose = cbor2.dumps(dict(reversed(list(raw.items()))))  # same map, other key order
    assert loose != manifest.encode()
    with pytest.raises(ContentError, match="canonical"):
        Manifest.decode(loose)
    with pytest.raises(ContentError, match="larger than"):
        Manifest.decode(b"\x00" * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ContentError, match="does not hash to"):
        Manifest.decode(manifest.encode(), expected=attrs.evolve(manifest, name="x").content_id)
    with pytest.raises(ContentError, match="not a CBOR map"):
        Manifest.decode(cbor2.dumps([1, 2]))
    with pytest.raises(ContentError, match="undecodable"):
        Manifest.decode(manifest.encode()[:-3])


@given(st.binary(max_size=600))
def test_random_bytes_only_raise_content_error(data: bytes) -> None:
    with pytest.raises(ContentError):
        Manifest.decode(data)


@given(st.data())
@settings(max_examples=300)
def test_mutated_manifests_only_raise_content_error(data: st.DataObject) -> None:
    encoded = bytearray(
        Manifest.create(
            ALICE,
            chunk_size=1024,
            size=5000,
            root=b"r" * 32,
            name="f",
            entries=[Entry("a/b.txt", 0, 10, "text/plain")],
        ).encode()
    )
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        pos = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
        encoded[pos] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded)))
    with contextlib.suppress(ContentError):
        Manifest.decode(bytes(encoded[:cut]))


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/a",
        "a/",
        "a//b",
        "./a",
        "a/./b",
        "../a",
        "a/../../b",
        "a\\b",
        "a\x00b",
        "a\nb",
        "a\u202eb",
        "e\u0301",
        "x" * 256,
        "/".join(["a"] * 600),
    ],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(ContentError):
        check_path(path)


@pytest.mark.parametrize("path", ["index.html", "a/b/c.txt", "été/ü.md", ".hidden", "a..b", "x y"])
def test_ordinary_paths_are_accepted(path: str) -> None:
    assert check_path(path) == path
