"""The signed storage manifest: how a file was striped, coded, encrypted and first placed.

It is the payload of an ordinary `zeone.content` content (so it is fetched chunk-verified from any
holder and announced in the DHT); the content id of that wrapper is the file's id. The manifest
itself is signed too, by the same publisher, so a holder or downloader that gets only these bytes
(the `commit` message) can check them without the wrapper.

Encoding: canonical CBOR map, fragment roots and placement packed into byte strings so a 1 GB
file (256 stripes of 6 fragments) costs ~52 KB, not tens of thousands of CBOR items.
"""

from __future__ import annotations

from typing import Any

import attrs

from zeone.identity import Identity, NodeId, verify_signature
from zeone.wire.frame import encode_cbor
from zeone_storage.codec import EC_TYPES, LEAF_SIZE, SALT_BYTES

VERSION = 1
SIGNATURE_CONTEXT = b"zeone-storage-manifest-v1\0"
MAX_MANIFEST_BYTES = 3 * 1024 * 1024
"""Fits one RPC frame (the commit message carries it): ~15 000 stripes, 60 GB at 4 MiB stripes."""
MAX_NODES = 65535
KEYS = {"v", "name", "size", "type", "stripe", "k", "m", "ec", "leaf", "fsize", "lsize",
        "roots", "nodes", "place", "enc", "publisher", "sig"}  # fmt: skip


class ManifestError(Exception):
    """Untrusted manifest bytes were refused; the message says which check failed."""


@attrs.frozen
class StorageManifest:
    name: str
    size: int
    media_type: str
    stripe_size: int
    k: int
    m: int
    ec_type: str
    fragment_size: int
    """Bytes per fragment of a full stripe."""
    last_fragment_size: int
    """Bytes per fragment of the last (possibly short) stripe."""
    roots: bytes
    """32-byte Merkle root of every fragment, stripe-major: position p = stripe * n + index."""
    nodes: tuple[bytes, ...]
    """Distinct node ids of the initial placement."""
    place: bytes
    """uint16 big-endian index into `nodes` per position."""
    salt: bytes | None
    """Set iff the stripes are encrypted (XChaCha20-Poly1305, nonce = salt || stripe)."""
    publisher: bytes
    signature: bytes = b""

    @property
    def n(self) -> int:
        return self.k + self.m

    @property
    def stripes(self) -> int:
        return -(-self.size // self.stripe_size)

    @property
    def positions(self) -> int:
        return self.stripes * self.n

    @property
    def encrypted(self) -> bool:
        return self.salt is not None

    @property
    def publisher_id(self) -> NodeId:
        return NodeId.from_public_key(self.publisher)

    def root(self, position: int) -> bytes:
        return self.roots[position * 32 : position * 32 + 32]

    def stripe_length(self, stripe: int) -> int:
        """Plaintext bytes of `stripe`."""
        return min(self.stripe_size, self.size - stripe * self.stripe_size)

    def fragment_length(self, stripe: int) -> int:
        return self.last_fragment_size if stripe == self.stripes - 1 else self.fragment_size

    def holder(self, position: int) -> NodeId:
        index = int.from_bytes(self.place[position * 2 : position * 2 + 2], "big")
        return NodeId(self.nodes[index])

    def _map(self, *, signed: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "v": VERSION, "name": self.name, "size": self.size, "type": self.media_type,
            "stripe": self.stripe_size, "k": self.k, "m": self.m, "ec": self.ec_type,
            "leaf": LEAF_SIZE, "fsize": self.fragment_size, "lsize": self.last_fragment_size,
            "roots": self.roots, "nodes": list(self.nodes), "place": self.place,
            "publisher": self.publisher,
        }  # fmt: skip
        if self.salt is not None:
            data["enc"] = {"alg": "xchacha20poly1305", "salt": self.salt}
        if signed:
            data["sig"] = self.signature
        return data

    def signed_bytes(self) -> bytes:
        return SIGNATURE_CONTEXT + encode_cbor(self._map(signed=False))

    def sign(self, identity: Identity) -> StorageManifest:
        unsigned = attrs.evolve(self, publisher=identity.public_key, signature=b"")
        return attrs.evolve(unsigned, signature=identity.sign(unsigned.signed_bytes()))

    def encode(self) -> bytes:
        return encode_cbor(self._map(signed=True))

    @classmethod
    def decode(cls, data: bytes) -> StorageManifest:
        """Decode untrusted bytes: exact keys, types, ranges, consistency, canonical form and
        signature. Raises only ManifestError."""
        from zeone.wire.frame import decode_cbor

        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest is {len(data)} bytes, at most {MAX_MANIFEST_BYTES}")
        try:
            raw = decode_cbor(data)
        except Exception as exc:
            raise ManifestError(str(exc)) from None
        if type(raw) is not dict:
            raise ManifestError("manifest is not a map")
        keys = set(raw)
        if not keys <= KEYS or not (KEYS - {"enc"}) <= keys:
            raise ManifestError(f"manifest keys {sorted(keys)} are not the version 1 set")

        def num(key: str, low: int, high: int) -> int:
            value = raw[key]
            if type(value) is not int or not low <= value <= high:
                raise ManifestError(f"{key} must be an integer in {low}..{high}")
            return value

        def blob(value: Any, what: str, length: int | None = None) -> bytes:
            if type(value) is not bytes or (length is not None and len(value) != length):
                raise ManifestError(f"{what} must be {length or 'some'} bytes")
            return value

        if num("v", VERSION, VERSION) != VERSION or num("leaf", LEAF_SIZE, LEAF_SIZE) < 0:
            raise ManifestError("unsupported version")  # pragma: no cover - num() raised
        for key in ("name", "type", "ec"):
            if type(raw[key]) is not str or len(raw[key]) > 255:
                raise ManifestError(f"{key} must be a string of at most 255 characters")
        if raw["ec"] not in EC_TYPES:
            raise ManifestError(f"unknown erasure code {raw['ec'][:40]!r}")
        nodes = raw["nodes"]
        if type(nodes) is not list or not 0 < len(nodes) <= MAX_NODES:
            raise ManifestError("nodes must be a non-empty list")
        salt = None
        if "enc" in raw:
            enc = raw["enc"]
            if type(enc) is not dict or set(enc) != {"alg", "salt"}:
                raise ManifestError("enc must be {alg, salt}")
            if enc["alg"] != "xchacha20poly1305":
                raise ManifestError("unknown encryption algorithm")
            salt = blob(enc["salt"], "enc.salt", SALT_BYTES)
        manifest = cls(
            name=raw["name"], size=num("size", 1, 2**53), media_type=raw["type"],
            stripe_size=num("stripe", 4096, 64 * 1024 * 1024), k=num("k", 1, 32),
            m=num("m", 1, 16), ec_type=raw["ec"], fragment_size=num("fsize", 1, 2**31),
            last_fragment_size=num("lsize", 1, 2**31), roots=blob(raw["roots"], "roots"),
            nodes=tuple(blob(node, "node id", 20) for node in nodes),
            place=blob(raw["place"], "place"), salt=salt,
            publisher=blob(raw["publisher"], "publisher", 32),
            signature=blob(raw["sig"], "sig", 64),
        )  # fmt: skip
        if len(manifest.roots) != manifest.positions * 32:
            raise ManifestError(f"roots must hold {manifest.positions} hashes")
        if len(manifest.place) != manifest.positions * 2:
            raise ManifestError(f"place must hold {manifest.positions} entries")
        if len(set(manifest.nodes)) != len(manifest.nodes):
            raise ManifestError("nodes are not distinct")
        for position in range(manifest.positions):
            if int.from_bytes(manifest.place[position * 2 : position * 2 + 2], "big") >= len(nodes):
                raise ManifestError(f"place of position {position} is out of range")
        for stripe in range(manifest.stripes):
            held = {manifest.holder(stripe * manifest.n + i) for i in range(manifest.n)}
            if len(held) != manifest.n:
                raise ManifestError(f"stripe {stripe} has two fragments on one node")
        if manifest.encode() != data:
            raise ManifestError("manifest is not in canonical form")
        if not verify_signature(manifest.publisher, manifest.signed_bytes(), manifest.signature):
            raise ManifestError("manifest signature is not valid for its publisher key")
        return manifest
