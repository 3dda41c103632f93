"""Merkle proofs: RFC 6962 shape, every index of random trees, tampering of every kind rejected."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zeone.content.errors import ContentError
from zeone.content.hashing import empty_root, leaf_hash, node_hash
from zeone.content.merkle import (
    MerkleTree,
    proof_length,
    root_from_proof,
    split_leaves,
    verify_proof,
)


def rfc6962_root(leaves: list[bytes]) -> bytes:
    """MTH of RFC 6962 §2.1, written recursively as the RFC states it."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(rfc6962_root(leaves[:k]), rfc6962_root(leaves[k:]))


def leaves_of(n: int, salt: int = 0) -> list[bytes]:
    return [leaf_hash(f"{salt}:{i}".encode()) for i in range(n)]


def test_known_small_trees() -> None:
    a, b, c = leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")
    assert MerkleTree([]).root == empty_root()
    assert MerkleTree([a]).root == a
    assert MerkleTree([a, b]).root == node_hash(a, b)
    assert MerkleTree([a, b, c]).root == node_hash(node_hash(a, b), c)
    assert MerkleTree([a, b, c]).proof(2) == [node_hash(a, b)]
    # leaf and node hashing are domain-separated: a leaf cannot pose as an inner node
    assert leaf_hash(a + b) != node_hash(a, b)


@given(st.integers(min_value=1, max_value=300), st.integers(min_value=0, max_value=10))
def test_every_index_proves_against_the_rfc6962_root(n: int, salt: int) -> None:
    leaves = leaves_of(n, salt)
    tree = MerkleTree(leaves)
    assert tree.root == rfc6962_root(leaves)
    for i in range(n):
        proof = tree.proof(i)
        assert len(proof) == proof_length(i, n)
        assert verify_proof(tree.root, i, n, leaves[i], proof)
    assert tree.proofs(0, n) == [tree.proof(i) for i in range(n)]


@given(st.integers(min_value=2, max_value=200), st.data())
def test_tampering_is_rejected(n: int, data: st.DataObject) -> None:
    leaves = leaves_of(n)
    tree = MerkleTree(leaves)
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    proof = tree.proof(i)
    # a different chunk
    assert not verify_proof(tree.root, i, n, leaf_hash(b"evil"), proof)
    # the right chunk claimed at another index
    j = data.draw(st.integers(min_value=0, max_value=n - 1).filter(lambda j: j != i))
    assert not verify_proof(tree.root, j, n, leaves[i], proof)
    # a flipped bit anywhere in the proof
    if proof:
        k = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bit = data.draw(st.integers(min_value=0, max_value=255))
        bad = bytearray(proof[k])
        bad[bit // 8] ^= 1 << (bit % 8)
        assert not verify_proof(
            tree.root, i, n, leaves[i], [*proof[:k], bytes(bad), *proof[k + 1 :]]
        )
    # proofs that are too long or too short
    assert not verify_proof(tree.root, i, n, leaves[i], [*proof, leaves[0]])
    if proof:
        assert not verify_proof(tree.root, i, n, leaves[i], proof[:-1])
    # a wrong leaf count whose proof shape differs (the count itself comes from the signed
    # manifest; counts with the same path shape are indistinguishable, as in RFC 6962)
    other = data.draw(st.integers(min_value=1, max_value=400).filter(lambda m: m != n))
    if i < other and proof_length(i, other) != len(proof):
        assert not verify_proof(tree.root, i, other, leaves[i], proof)


def test_out_of_range_and_malformed_inputs_raise_content_error() -> None:
    tree = MerkleTree(leaves_of(5))
    for index in (-1, 5):
        with pytest.raises(ContentError, match="outside"):
            tree.proof(index)
        with pytest.raises(ContentError, match="outside"):
            root_from_proof(index, 5, leaf_hash(b"x"), [])
    with pytest.raises(ContentError, match="needs 3"):
        root_from_proof(0, 5, leaf_hash(b"x"), [])
    with pytest.raises(ContentError, match="32 bytes"):
        root_from_proof(0, 2, leaf_hash(b"x"), [b"short"])
    with pytest.raises(ContentError, match="multiple of 32"):
        split_leaves(b"x" * 33)
    with pytest.raises(ContentError, match="32 bytes"):
        MerkleTree([b"x"])
    with pytest.raises(ContentError, match="range"):
        tree.proofs(3, 6)
