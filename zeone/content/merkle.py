"""A Merkle tree over chunk hashes with RFC 6962 (Certificate Transparency) shape and proofs.

Leaves are `leaf_hash(chunk)`, inner nodes `node_hash(left, right)`: the prefixes stop a leaf from
passing as an inner node (second-preimage attacks). Building by levels, with an odd last node
carried up unchanged, gives exactly the RFC 6962 tree (split at the largest power of two), so
audit paths and their verification (RFC 9162 §2.1.3.2) are the standard ones.

A proof for chunk `i` of `n` is the list of sibling hashes from the leaf upwards; its length is
fully determined by `(i, n)`, so verification rejects a wrong index, count or proof length.
"""

from __future__ import annotations

from collections.abc import Sequence

from zeone.content.errors import ContentError
from zeone.content.hashing import HASH_BYTES, empty_root, node_hash

MAX_LEAVES = 2**32
"""More chunks than any manifest may have (limits proof length to 32 hashes)."""


def split_leaves(blob: bytes) -> list[bytes]:
    """Concatenated 32-byte leaf hashes (as stored or sent) to a list."""
    if len(blob) % HASH_BYTES:
        raise ContentError(f"leaf hash list is not a multiple of {HASH_BYTES} bytes")
    return [blob[i : i + HASH_BYTES] for i in range(0, len(blob), HASH_BYTES)]


def proof_length(index: int, count: int) -> int:
    """How many hashes the audit path of leaf `index` in a tree of `count` leaves has."""
    if not 0 <= index < count:
        raise ContentError(f"chunk index {index} is outside 0..{count - 1}")
    length = 0
    while count > 1:
        if index ^ 1 < count:
            length += 1
        index >>= 1
        count = (count + 1) >> 1
    return length


class MerkleTree:
    """All levels of the tree over `leaves`: O(n) to build, O(log n) per proof.

    Memory is about twice the leaf list (64 bytes per chunk), a few MB for a terabyte.
    """

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if len(leaves) > MAX_LEAVES:
            raise ContentError(f"more than {MAX_LEAVES} chunks")
        for leaf in leaves:
            if type(leaf) is not bytes or len(leaf) != HASH_BYTES:
                raise ContentError(f"leaf hashes are {HASH_BYTES} bytes")
        self.levels: list[list[bytes]] = [list(leaves)]
        level = self.levels[0]
        while len(level) > 1:
            nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            self.levels.append(nxt)
            level = nxt

    @property
    def count(self) -> int:
        return len(self.levels[0])

    @property
    def root(self) -> bytes:
        return self.levels[-1][0] if self.count else empty_root()

    def proof(self, index: int) -> list[bytes]:
        """The audit path of leaf `index` (siblings from the bottom up)."""
        if not 0 <= index < self.count:
            raise ContentError(f"chunk index {index} is outside 0..{self.count - 1}")
        path = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index >>= 1
        return path

    def proofs(self, start: int, stop: int) -> list[list[bytes]]:
        """Proofs of leaves `start..stop-1` (for serving or auditing a chunk range)."""
        if not 0 <= start <= stop <= self.count:
            raise ContentError(f"chunk range {start}..{stop} is outside 0..{self.count}")
        return [self.proof(i) for i in range(start, stop)]


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The root over `leaves`, in O(log n) extra memory beyond the list."""
    return MerkleTree(leaves).root if leaves else empty_root()


def root_from_proof(index: int, count: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """Recompute the root from a leaf and its audit path (RFC 9162 §2.1.3.2).

    Raises ContentError if the index is out of range or the path has the wrong length.
    """
    if not 0 <= index < count:
        raise ContentError(f"chunk index {index} is outside 0..{count - 1}")
    expected = proof_length(index, count)
    if len(proof) != expected:
        raise ContentError(
            f"proof has {len(proof)} hashes, chunk {index} of {count} needs {expected}"
        )
    fn, sn, r = index, count - 1, leaf
    for p in proof:
        if type(p) is not bytes or len(p) != HASH_BYTES:
            raise ContentError(f"proof hashes are {HASH_BYTES} bytes")
        if sn == 0:  # pragma: no cover - excluded by the length check
            raise ContentError("proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # pragma: no cover - excluded by the length check
        raise ContentError("proof is too short")
    return r


def verify_proof(root: bytes, index: int, count: int, leaf: bytes, proof: Sequence[bytes]) -> bool:
    """True if `leaf` is leaf `index` of the `count`-leaf tree with `root`."""
    try:
        return root_from_proof(index, count, leaf, proof) == root
    except ContentError:
        return False
