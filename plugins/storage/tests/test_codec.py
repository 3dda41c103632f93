"""The coding core without a network: any k of n, encryption, fragment roots and audits."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeone_storage.codec import (
    LEAF_SIZE,
    Cipher,
    CodecError,
    StripeCodec,
    audit_tag,
    check_leaf,
    fragment_root,
    fragment_tree,
    leaf_of,
)
from zeone_storage.config import StorageConfig


def test_any_k_of_n_fragments_rebuild_every_stripe_for_the_defaults() -> None:
    """Every loss pattern the default code must survive (up to m of n lost), on full, short and
    tiny stripes, decodes to the exact stripe; every lost fragment is also rebuilt bit-exact."""
    cfg = StorageConfig()
    codec = StripeCodec(cfg.k, cfg.m, cfg.ec_type)
    patterns = codec.loss_patterns()
    assert len(patterns) == 15 + 6 + 1  # C(6,4) + C(6,5) + C(6,6)
    stripes = [os.urandom(256 * 1024), os.urandom(100_003), os.urandom(1), b"\0" * 4096]
    for stripe in stripes:
        fragments = codec.encode(stripe)
        assert len(fragments) == codec.n
        for survivors in patterns:
            kept = [fragments[i] for i in survivors]
            assert codec.decode(kept) == stripe, survivors
            lost = [i for i in range(codec.n) if i not in survivors]
            if lost:
                rebuilt = codec.reconstruct(kept[: codec.k], lost)
                assert rebuilt == [fragments[i] for i in lost]


def test_fewer_than_k_fragments_is_an_error() -> None:
    codec = StripeCodec(4, 2)
    fragments = codec.encode(os.urandom(10_000))
    with pytest.raises(CodecError, match="3 fragments, 4 needed"):
        codec.decode(fragments[:3])


def test_every_backend_codes_round_trip() -> None:
    for ec_type in ("isa_l_rs_cauchy", "isa_l_rs_vand", "liberasurecode_rs_vand"):
        codec = StripeCodec(4, 2, ec_type)
        data = os.urandom(50_000)
        assert codec.decode(codec.encode(data)[2:]) == data
    with pytest.raises(CodecError, match="unknown erasure code"):
        StripeCodec(4, 2, "rot13")


def test_cipher_binds_key_and_stripe_index() -> None:
    cipher = Cipher(os.urandom(32), os.urandom(16))
    sealed = cipher.encrypt(3, b"secret stripe")
    assert b"secret" not in sealed
    assert cipher.decrypt(3, sealed) == b"secret stripe"
    with pytest.raises(CodecError, match="stripe 4"):
        cipher.decrypt(4, sealed)  # moved to another stripe
    with pytest.raises(CodecError):
        Cipher(os.urandom(32), cipher.salt).decrypt(3, sealed)  # wrong key
    tampered = bytearray(sealed)
    tampered[0] ^= 1
    with pytest.raises(CodecError):
        cipher.decrypt(3, bytes(tampered))


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 5 * LEAF_SIZE), data=st.data())
def test_audit_answers_verify_only_with_the_real_leaf(size: int, data: st.DataObject) -> None:
    fragment = os.urandom(size)
    root = fragment_root(fragment)
    tree = fragment_tree(fragment)
    index = data.draw(st.integers(0, tree.count - 1))
    leaf, proof = leaf_of(fragment, index), tree.proof(index)
    assert check_leaf(root, size, index, leaf, proof)
    assert audit_tag(b"n" * 16, leaf) != audit_tag(b"m" * 16, leaf)
    forged = bytes([leaf[0] ^ 1]) + leaf[1:]
    assert not check_leaf(root, size, index, forged, proof)
    assert not check_leaf(root, size, index, leaf[:-1], proof)
    if tree.count > 1:
        other = (index + 1) % tree.count
        assert not check_leaf(root, size, other, leaf, proof)
