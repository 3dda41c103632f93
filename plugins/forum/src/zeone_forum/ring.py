"""Linkable ring signatures (LSAG, Liu-Wei-Wong) over members' Ed25519 keys, with a scoped image.

A member of a ring of Ed25519 public keys signs without revealing which key is theirs. The key
image is `I = a * H_p(scope)`, where `a` is the member's Ed25519 secret scalar and `H_p` hashes
the scope (a thread id) to a point of the prime-order subgroup. The same member signing twice in
one scope produces the same image, whatever ring they pick (so a thread can allow one anonymous
vote per member); in another scope the image is unrelated (unlinkable across threads, under
DDH). Group operations are libsodium's `crypto_core_ed25519_*` through PyNaCl.

Signature: `(c0, s_0..s_{n-1}, I)`; verification walks the ring
`L_i = s_i*B + c_i*A_i`, `R_i = s_i*H + c_i*I`, `c_{i+1} = H_s(ctx, ring, I, m, L_i, R_i)` and
checks that it closes on `c0`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

import attrs
import nacl.bindings as sodium
import nacl.exceptions
import nacl.signing

CONTEXT = b"zeone/forum-lsag/v1\x00"
MIN_RING = 2
MAX_RING = 64


class RingError(ValueError):
    """A ring or signature that cannot be used."""


def _scalar(data: bytes) -> bytes:
    return sodium.crypto_core_ed25519_scalar_reduce(hashlib.sha512(data).digest())


def scope_point(scope: bytes) -> bytes:
    """H_p(scope): a point of the main subgroup nobody knows the discrete log of."""
    return sodium.crypto_core_ed25519_from_uniform(
        hashlib.sha512(CONTEXT + b"scope" + scope).digest()[:32]
    )


def secret_scalar(signing_key: nacl.signing.SigningKey) -> bytes:
    """The Ed25519 secret scalar `a` (clamped SHA-512 of the seed, reduced mod L)."""
    digest = bytearray(hashlib.sha512(bytes(signing_key)).digest()[:32])
    digest[0] &= 248
    digest[31] &= 127
    digest[31] |= 64
    return sodium.crypto_core_ed25519_scalar_reduce(bytes(digest) + bytes(32))


def _mul(scalar: bytes, point: bytes) -> bytes:
    return sodium.crypto_scalarmult_ed25519_noclamp(scalar, point)


def _base(scalar: bytes) -> bytes:
    return sodium.crypto_scalarmult_ed25519_base_noclamp(scalar)


def _add(p: bytes, q: bytes) -> bytes:
    return sodium.crypto_core_ed25519_add(p, q)


def _challenge(
    ring_digest: bytes, image: bytes, message: bytes, left: bytes, right: bytes
) -> bytes:
    return _scalar(CONTEXT + ring_digest + image + message + left + right)


def _ring_digest(ring: Sequence[bytes], scope: bytes) -> bytes:
    return hashlib.sha512(CONTEXT + scope + b"".join(ring)).digest()


def check_ring(ring: Sequence[bytes]) -> None:
    if not MIN_RING <= len(ring) <= MAX_RING:
        raise RingError(f"a ring has {MIN_RING}-{MAX_RING} members, got {len(ring)}")
    if len(set(ring)) != len(ring):
        raise RingError("ring members must be distinct")
    for member in ring:
        if type(member) is not bytes or len(member) != 32:
            raise RingError("a ring member is a 32-byte Ed25519 public key")
        if not sodium.crypto_core_ed25519_is_valid_point(member):
            raise RingError("a ring member is not a valid Ed25519 public key")


@attrs.frozen
class RingSignature:
    ring: tuple[bytes, ...]
    image: bytes
    c0: bytes
    s: tuple[bytes, ...]

    def to_wire(self) -> dict[str, object]:
        return {"ring": list(self.ring), "image": self.image, "c0": self.c0, "s": list(self.s)}


def key_image(signing_key: nacl.signing.SigningKey, scope: bytes) -> bytes:
    return _mul(secret_scalar(signing_key), scope_point(scope))


def sign(
    message: bytes,
    ring: Sequence[bytes],
    signing_key: nacl.signing.SigningKey,
    scope: bytes,
) -> RingSignature:
    """Sign `message` as one (unnamed) member of `ring` (which must contain our public key)."""
    ring = tuple(ring)
    check_ring(ring)
    public = bytes(signing_key.verify_key)
    try:
        me = ring.index(public)
    except ValueError:
        raise RingError("our own key must be in the ring") from None
    n = len(ring)
    a = secret_scalar(signing_key)
    h = scope_point(scope)
    image = _mul(a, h)
    digest = _ring_digest(ring, scope)
    alpha = sodium.crypto_core_ed25519_scalar_reduce(secrets.token_bytes(64))
    c: list[bytes] = [b""] * n
    s: list[bytes] = [b""] * n
    c[(me + 1) % n] = _challenge(digest, image, message, _base(alpha), _mul(alpha, h))
    i = (me + 1) % n
    while i != me:
        s[i] = sodium.crypto_core_ed25519_scalar_reduce(secrets.token_bytes(64))
        left = _add(_base(s[i]), _mul(c[i], ring[i]))
        right = _add(_mul(s[i], h), _mul(c[i], image))
        c[(i + 1) % n] = _challenge(digest, image, message, left, right)
        i = (i + 1) % n
    s[me] = sodium.crypto_core_ed25519_scalar_sub(
        alpha, sodium.crypto_core_ed25519_scalar_mul(c[me], a)
    )
    return RingSignature(ring, image, c[0], tuple(s))


def verify(message: bytes, signature: RingSignature, scope: bytes) -> bool:
    """True if some member of the ring signed `message` in `scope` with this image."""
    try:
        check_ring(signature.ring)
        n = len(signature.ring)
        if len(signature.s) != n or not all(
            type(x) is bytes and len(x) == 32 for x in (signature.c0, *signature.s)
        ):
            return False
        if not sodium.crypto_core_ed25519_is_valid_point(signature.image):
            return False  # also refuses small-order and non-main-subgroup images
        h = scope_point(scope)
        digest = _ring_digest(signature.ring, scope)
        c = signature.c0
        for i in range(n):
            left = _add(_base(signature.s[i]), _mul(c, signature.ring[i]))
            right = _add(_mul(signature.s[i], h), _mul(c, signature.image))
            c = _challenge(digest, signature.image, message, left, right)
        return c == signature.c0
    except (RingError, nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, TypeError):
        return False
