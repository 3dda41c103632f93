"""The signed manifest that describes one piece of content, and its canonical encoding.

A manifest holds only the Merkle root and chunk count, never the chunk hashes, so it stays a few
hundred bytes for a file of any size (directories add one entry per file). Its encoding is
canonical CBOR (RFC 8949 §4.2) of a map with a fixed key set; decoding refuses anything that would
not re-encode to the very same bytes, so one piece of content has exactly one id.

Directory model: a directory is published as ONE content whose bytes are its files concatenated in
path order; `entries` map each relative path to its (offset, size) in those bytes. There are no
sub-manifests: one Merkle tree covers everything, and a file is served as a byte range. Paths are
validated here (relative, `/`-separated, no `.`/`..`/empty components, no backslash, NUL or
control characters), so a gateway can never be led outside the content by a manifest.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

import attrs

from zeone.content.cid import ContentId
from zeone.content.errors import ContentError
from zeone.content.hashing import HASH_BYTES, manifest_digest
from zeone.errors import ProtocolError
from zeone.identity import Identity, verify_signature
from zeone.wire.frame import decode_cbor, encode_cbor

FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 256 * 1024
"""256 KiB: a 1 GB file is 4096 chunks with 12-hash (384 B) proofs; small enough for fine Range
requests and parallel fetching, large enough that per-chunk overhead (one request, one proof) is
under 0.5%."""
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 2 * 1024 * 1024
"""A chunk plus its proof must fit in one 4 MiB wire frame."""
MAX_SIZE = 2**62
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_ENTRIES = 10_000
MAX_PATH_LENGTH = 1024
MAX_COMPONENT_LENGTH = 255
MAX_MEDIA_TYPE_LENGTH = 255
MAX_NAME_LENGTH = 255
SIGNATURE_CONTEXT = b"zeone-manifest-signature-v1\x00"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64

_REQUIRED = {"v", "chunk_size", "size", "chunks", "root", "type", "publisher", "signature"}
_OPTIONAL = {"name", "entries"}


def check_path(path: str) -> str:
    """Validate a directory entry path; returns it or raises ContentError naming the problem."""
    if type(path) is not str:
        raise ContentError("an entry path must be a string")
    if not 0 < len(path.encode()) <= MAX_PATH_LENGTH:
        raise ContentError(f"entry path must be 1-{MAX_PATH_LENGTH} bytes: {path[:60]!r}")
    if unicodedata.normalize("NFC", path) != path:
        raise ContentError(f"entry path {path[:60]!r} is not NFC-normalised")
    if path.startswith("/"):
        raise ContentError(f"entry path {path[:60]!r} is absolute")
    for ch in path:
        if ch == "\\" or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            raise ContentError(f"entry path {path[:60]!r} contains a forbidden character")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ContentError(f"entry path {path[:60]!r} has an empty, '.' or '..' component")
        if len(part.encode()) > MAX_COMPONENT_LENGTH:
            raise ContentError(f"entry path {path[:60]!r} has a component over 255 bytes")
    return path


def _check_media_type(value: str) -> None:
    if (
        type(value) is not str
        or not 0 < len(value) <= MAX_MEDIA_TYPE_LENGTH
        or not value.isascii()
        or not value.isprintable()
        or "/" not in value
    ):
        raise ContentError(
            f"media type must be a printable ASCII type/subtype: {str(value)[:60]!r}"
        )


@attrs.frozen
class Entry:
    """One file of a directory: its bytes are `offset .. offset+size` of the content."""

    path: str
    offset: int
    size: int
    media_type: str = "application/octet-stream"

    def __attrs_post_init__(self) -> None:
        check_path(self.path)
        for name in ("offset", "size"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= MAX_SIZE:
                raise ContentError(f"entry {self.path!r}: {name} must be an integer in 0..2^62")
        _check_media_type(self.media_type)

    @property
    def end(self) -> int:
        return self.offset + self.size


def _check_entries(entries: tuple[Entry, ...], size: int) -> None:
    if len(entries) > MAX_ENTRIES:
        raise ContentError(f"a directory has at most {MAX_ENTRIES} entries")
    paths = [e.path for e in entries]
    if paths != sorted(paths) or len(set(paths)) != len(paths):
        raise ContentError("directory entries must be sorted by path without duplicates")
    files = set(paths)
    for entry in entries:
        if entry.end > size:
            raise ContentError(f"entry {entry.path!r} ends after the content ({size} bytes)")
        parts = entry.path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in files:
                raise ContentError(f"entry {entry.path!r} is inside file {'/'.join(parts[:i])!r}")


def _int(data: dict[str, Any], key: str, low: int, high: int) -> int:
    value = data[key]
    if type(value) is not int or not low <= value <= high:
        raise ContentError(f"manifest field {key!r} must be an integer in {low}..{high}")
    return value


def _bytes(data: dict[str, Any], key: str, length: int) -> bytes:
    value = data[key]
    if type(value) is not bytes or len(value) != length:
        raise ContentError(f"manifest field {key!r} must be {length} bytes")
    return value


@attrs.frozen
class Manifest:
    """What a content id names. Construct with `Manifest.create` (signs) or `Manifest.decode`.

    Invariants checked on construction: chunk_count == ceil(size / chunk_size), sane limits, valid
    directory entries. The signature is checked by `verify_signature()` (and by `decode`).
    """

    chunk_size: int
    size: int
    chunk_count: int
    root: bytes
    media_type: str
    publisher: bytes
    signature: bytes
    name: str | None = None
    entries: tuple[Entry, ...] = ()
    version: int = FORMAT_VERSION

    def __attrs_post_init__(self) -> None:
        if self.version != FORMAT_VERSION:
            raise ContentError(f"unsupported manifest version {self.version}")
        if type(self.chunk_size) is not int or not (
            MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE
        ):
            raise ContentError(f"chunk size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
        if type(self.size) is not int or not 0 <= self.size <= MAX_SIZE:
            raise ContentError("size must be an integer in 0..2^62")
        expected = -(-self.size // self.chunk_size)
        if self.chunk_count != expected:
            raise ContentError(
                f"chunk count {self.chunk_count} does not match size {self.size} "
                f"at chunk size {self.chunk_size} (expected {expected})"
            )
        if type(self.root) is not bytes or len(self.root) != HASH_BYTES:
            raise ContentError(f"Merkle root must be {HASH_BYTES} bytes")
        _check_media_type(self.media_type)
        if type(self.publisher) is not bytes or len(self.publisher) != PUBLIC_KEY_BYTES:
            raise ContentError(f"publisher key must be {PUBLIC_KEY_BYTES} bytes")
        if type(self.signature) is not bytes or len(self.signature) != SIGNATURE_BYTES:
            raise ContentError(f"signature must be {SIGNATURE_BYTES} bytes")
        if self.name is not None and (
            type(self.name) is not str or not 0 < len(self.name) <= MAX_NAME_LENGTH
        ):
            raise ContentError(f"name must be 1-{MAX_NAME_LENGTH} characters")
        if type(self.entries) is not tuple or not all(type(e) is Entry for e in self.entries):
            raise ContentError("entries must be a tuple of Entry")
        _check_entries(self.entries, self.size)

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        identity: Identity,
        *,
        chunk_size: int,
        size: int,
        root: bytes,
        media_type: str = "application/octet-stream",
        name: str | None = None,
        entries: Sequence[Entry] = (),
    ) -> Manifest:
        """Build and sign a manifest as `identity` (Ed25519; deterministic, so same input, same
        id)."""
        unsigned = cls(
            chunk_size=chunk_size,
            size=size,
            chunk_count=-(-size // chunk_size) if isinstance(chunk_size, int) and chunk_size else 0,
            root=root,
            media_type=media_type,
            publisher=identity.public_key,
            signature=bytes(SIGNATURE_BYTES),
            name=name,
            entries=tuple(entries),
        )
        return attrs.evolve(unsigned, signature=identity.sign(unsigned.signed_bytes()))

    # -- encoding --------------------------------------------------------------------------

    def _map(self, *, signed: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "v": self.version,
            "chunk_size": self.chunk_size,
            "size": self.size,
            "chunks": self.chunk_count,
            "root": self.root,
            "type": self.media_type,
            "publisher": self.publisher,
        }
        if signed:
            data["signature"] = self.signature
        if self.name is not None:
            data["name"] = self.name
        if self.entries:
            data["entries"] = [[e.path, e.offset, e.size, e.media_type] for e in self.entries]
        return data

    def signed_bytes(self) -> bytes:
        """What the publisher signs: a context string and the canonical map without signature."""
        return SIGNATURE_CONTEXT + encode_cbor(self._map(signed=False))

    def encode(self) -> bytes:
        """The canonical encoding; its hash is the content id."""
        return encode_cbor(self._map(signed=True))

    @property
    def content_id(self) -> ContentId:
        return ContentId(manifest_digest(self.encode()))

    def verify_signature(self) -> None:
        """Raise ContentError unless the publisher's signature is valid."""
        if not verify_signature(self.publisher, self.signed_bytes(), self.signature):
            raise ContentError("manifest signature is not valid for its publisher key")

    @classmethod
    def decode(cls, data: bytes, *, expected: ContentId | None = None) -> Manifest:
        """Decode untrusted bytes; checks size, structure, canonical form and signature.

        With `expected`, also checks that the bytes hash to that id (do it for anything fetched).
        Raises only ContentError.
        """
        if type(data) is not bytes:
            raise ContentError("a manifest is a byte string")
        if len(data) > MAX_MANIFEST_BYTES:
            raise ContentError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
        if expected is not None and manifest_digest(data) != expected.digest:
            raise ContentError(f"manifest does not hash to the requested id {expected}")
        try:
            raw = decode_cbor(data, max_depth=4)
        except ProtocolError as exc:
            raise ContentError(f"manifest: {exc}") from None
        if not isinstance(raw, dict):
            raise ContentError("manifest is not a CBOR map")
        keys = set(raw)
        if missing := _REQUIRED - keys:
            raise ContentError(f"manifest lacks field(s) {', '.join(sorted(missing))}")
        if unknown := keys - _REQUIRED - _OPTIONAL:
            raise ContentError(
                f"manifest has unknown field(s) {', '.join(sorted(map(str, unknown)))}"
            )
        if type(raw["v"]) is not int or raw["v"] != FORMAT_VERSION:
            raise ContentError(f"unsupported manifest version {raw['v']!r}")
        if type(raw["type"]) is not str:
            raise ContentError("manifest field 'type' must be a string")
        name = raw.get("name")
        if "name" in raw and type(name) is not str:
            raise ContentError("manifest field 'name' must be a string")
        entries = raw.get("entries", [])
        if type(entries) is not list or ("entries" in raw and not entries):
            raise ContentError("manifest field 'entries' must be a non-empty array")
        if len(entries) > MAX_ENTRIES:
            raise ContentError(f"a directory has at most {MAX_ENTRIES} entries")
        parsed = []
        for item in entries:
            if (
                type(item) is not list
                or len(item) != 4
                or type(item[0]) is not str
                or type(item[3]) is not str
            ):
                raise ContentError("a directory entry is [path, offset, size, media type]")
            parsed.append(Entry(item[0], item[1], item[2], item[3]))
        manifest = cls(
            chunk_size=_int(raw, "chunk_size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
            size=_int(raw, "size", 0, MAX_SIZE),
            chunk_count=_int(raw, "chunks", 0, MAX_SIZE),
            root=_bytes(raw, "root", HASH_BYTES),
            media_type=raw["type"],
            publisher=_bytes(raw, "publisher", PUBLIC_KEY_BYTES),
            signature=_bytes(raw, "signature", SIGNATURE_BYTES),
            name=name,
            entries=tuple(parsed),
        )
        if manifest.encode() != data:
            raise ContentError("manifest is not in canonical CBOR form")
        manifest.verify_signature()
        return manifest

    # -- helpers for readers ---------------------------------------------------------------

    def chunk_length(self, index: int) -> int:
        """Exact length of chunk `index` (the last one may be short)."""
        if not 0 <= index < self.chunk_count:
            raise ContentError(f"chunk index {index} is outside 0..{self.chunk_count - 1}")
        if index == self.chunk_count - 1:
            return self.size - index * self.chunk_size
        return self.chunk_size

    def chunk_span(self, offset: int, length: int) -> range:
        """The chunk indices covering bytes `offset .. offset+length` (empty for length 0)."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ContentError(f"byte range {offset}+{length} is outside 0..{self.size}")
        if length == 0:
            return range(0)
        return range(offset // self.chunk_size, (offset + length - 1) // self.chunk_size + 1)

    def entry(self, path: str) -> Entry:
        """The directory entry for `path`; raises ContentNotFound (or ContentError if invalid)."""
        from zeone.content.errors import ContentNotFound

        check_path(path)
        for entry in self.entries:
            if entry.path == path:
                return entry
        raise ContentNotFound(f"no entry {path!r} in this directory")

    @property
    def is_directory(self) -> bool:
        return bool(self.entries)
