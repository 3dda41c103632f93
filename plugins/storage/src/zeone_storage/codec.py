"""Sans-IO core of the pipeline: stripes -> (encrypt) -> k+m fragments -> Merkle roots, and back.

Everything here is synchronous and CPU-bound; the service runs it in worker threads (pyeclib,
hashlib and libsodium release the GIL on large buffers, so stripes are coded on both cores).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence

import attrs
import blake3
import nacl.bindings as sodium
from pyeclib.ec_iface import ECDriver

LEAF_SIZE = 64 * 1024
"""Fragments are hashed as a Merkle tree of 64 KiB leaves: an audit answer is one leaf and a
proof of a few hashes, and a 1 MiB fragment has only 16 leaves to hash."""
EC_TYPES = ("isa_l_rs_cauchy", "isa_l_rs_vand", "liberasurecode_rs_vand")
DEFAULT_EC_TYPE = "isa_l_rs_cauchy"
"""Measured (benchmarks/storage.py) fastest encoder of the three; and with a Cauchy matrix every
k x k submatrix is invertible, which ISA-L's Vandermonde construction does not guarantee."""
TAG_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES
KEY_BYTES = 32
SALT_BYTES = 16


class CodecError(Exception):
    """A stripe could not be coded or decoded (too few or inconsistent fragments, bad tag)."""


def _leaf_hash(data: bytes | memoryview) -> bytes:
    h = blake3.blake3(b"\x00")
    h.update(data)
    return h.digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return blake3.blake3(b"\x01" + left + right).digest()


class FragmentTree:
    """Merkle tree over a fragment's 64 KiB leaves (RFC 6962 shape: an odd last node is
    promoted), hashed with BLAKE3 with 0x00/0x01 leaf/node prefixes.

    BLAKE3 rather than the content layer's SHA-256: every fragment byte is hashed on put, get,
    repair and audit, and BLAKE3 measured ~3x faster here (benchmarks/storage.py), which is
    what keeps the pipeline near raw pyeclib speed.
    """

    def __init__(self, fragment: bytes | memoryview) -> None:
        view = memoryview(fragment)
        leaves = [_leaf_hash(view[i : i + LEAF_SIZE]) for i in range(0, len(view), LEAF_SIZE)]
        self.levels = [leaves or [_leaf_hash(b"")]]
        while len(self.levels[-1]) > 1:
            level = self.levels[-1]
            up = [_node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                up.append(level[-1])
            self.levels.append(up)

    @property
    def count(self) -> int:
        return len(self.levels[0])

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    def proof(self, index: int) -> list[bytes]:
        path = []
        for level in self.levels[:-1]:
            if index ^ 1 < len(level):
                path.append(level[index ^ 1])
            index >>= 1
        return path


def fragment_tree(fragment: bytes) -> FragmentTree:
    return FragmentTree(fragment)


def fragment_root(fragment: bytes) -> bytes:
    """The id of a fragment: the Merkle root of its leaves (checked on every fetch)."""
    return FragmentTree(fragment).root


def leaf_count(size: int) -> int:
    return max(1, -(-size // LEAF_SIZE))


def leaf_of(fragment: bytes, index: int) -> bytes:
    return fragment[index * LEAF_SIZE : (index + 1) * LEAF_SIZE]


def check_leaf(root: bytes, size: int, index: int, leaf: bytes, proof: Sequence[bytes]) -> bool:
    """True if `leaf` is leaf `index` of a `size`-byte fragment with Merkle root `root`."""
    count = leaf_count(size)
    if not 0 <= index < count or len(leaf) != min(LEAF_SIZE, size - index * LEAF_SIZE):
        return False
    node, width, used = _leaf_hash(leaf), count, 0
    while width > 1:
        sibling = index ^ 1
        if sibling < width:
            if used >= len(proof) or type(proof[used]) is not bytes or len(proof[used]) != 32:
                return False
            other = proof[used]
            used += 1
            node = _node_hash(other, node) if index & 1 else _node_hash(node, other)
        index >>= 1
        width = (width + 1) // 2
    return used == len(proof) and node == root


def audit_tag(nonce: bytes, leaf: bytes) -> bytes:
    """Binds an audit answer to the auditor's fresh nonce (no replay of an older answer)."""
    return hashlib.sha256(b"zeone-storage-audit\0" + nonce + leaf).digest()


@attrs.frozen
class Cipher:
    """XChaCha20-Poly1305 per stripe under one per-file key.

    The nonce is salt || stripe index (unique per key: one key per file, one nonce per stripe),
    and the associated data binds the stripe index, so stripes cannot be swapped or reordered.
    """

    key: bytes = attrs.field(repr=False)
    salt: bytes

    def _nonce(self, stripe: int) -> bytes:
        return self.salt + stripe.to_bytes(8, "big")

    def encrypt(self, stripe: int, plain: bytes) -> bytes:
        nonce = self._nonce(stripe)
        return sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plain, nonce, nonce, self.key)

    def decrypt(self, stripe: int, sealed: bytes) -> bytes:
        nonce = self._nonce(stripe)
        try:
            return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, nonce, nonce, self.key)
        except Exception:
            raise CodecError(f"stripe {stripe}: authentication failed (wrong key?)") from None


@attrs.frozen
class EncodedStripe:
    fragments: list[bytes]
    roots: list[bytes]


class StripeCodec:
    """k data + m parity fragments per stripe with one pyeclib driver."""

    def __init__(self, k: int, m: int, ec_type: str = DEFAULT_EC_TYPE) -> None:
        if ec_type not in EC_TYPES:
            raise CodecError(f"unknown erasure code {ec_type!r}, use one of {', '.join(EC_TYPES)}")
        if not (1 <= k <= 32 and 1 <= m <= 16):
            raise CodecError(f"k={k}, m={m}: need 1 <= k <= 32 and 1 <= m <= 16")
        self.k, self.m, self.n = k, m, k + m
        self.ec_type = ec_type
        self.driver = ECDriver(k=k, m=m, ec_type=ec_type)

    def encode(self, data: bytes) -> list[bytes]:
        if not data:
            raise CodecError("cannot encode an empty stripe")
        return list(self.driver.encode(data))

    def encode_stripe(self, data: bytes) -> EncodedStripe:
        fragments = self.encode(data)
        return EncodedStripe(fragments, [fragment_root(f) for f in fragments])

    def fragment_size(self, stripe_bytes: int) -> int:
        return len(self.encode(bytes(stripe_bytes))[0])

    def decode(self, fragments: Sequence[bytes]) -> bytes:
        if len(fragments) < self.k:
            raise CodecError(f"{len(fragments)} fragments, {self.k} needed")
        try:
            return bytes(self.driver.decode(list(fragments)))
        except Exception as exc:
            raise CodecError(f"decode failed: {exc}") from None

    def reconstruct(self, fragments: Sequence[bytes], missing: Sequence[int]) -> list[bytes]:
        try:
            return list(self.driver.reconstruct(list(fragments), list(missing)))
        except Exception as exc:
            raise CodecError(f"reconstruct failed: {exc}") from None

    def loss_patterns(self) -> list[tuple[int, ...]]:
        """Every set of surviving fragment indices with at least k members."""
        return [
            subset
            for size in range(self.k, self.n + 1)
            for subset in itertools.combinations(range(self.n), size)
        ]
