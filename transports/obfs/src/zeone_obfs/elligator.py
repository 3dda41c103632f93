"""Elligator 2 for Curve25519: X25519 public keys that look like uniform random bytes.

An X25519 public key is a field element below 2^255 that is a valid curve point: about half of
all 255-bit strings, which a censor can test. Elligator 2 maps field elements ("representatives")
to curve points such that the inverse exists for about half of all points; a key pair is drawn
until its public key has a representative. Three further details matter, all handled here:

- the representative is at most (p-1)/2 (254 bits): the top two bits are filled with randomness;
- a clean X25519 key is always in the prime-order subgroup, but the map's images cover the
  whole curve, so clean keys are distinguishable (the flaw of early obfs4). `generate_keypair`
  adds a random low-order point ("dirty" key); X25519 clamps scalars to multiples of 8, so the
  shared secret is unchanged;
- of the two representatives of a point's u-coordinate, one is picked at random.

Field arithmetic is plain Python integers: a handshake needs a few exponentiations, not a bulk
path. Scalar multiplication and point addition use libsodium through pynacl.
"""

from __future__ import annotations

import os
import secrets

import attrs
from nacl import bindings

P = 2**255 - 19
A = 486662
HALF = (P - 1) // 2
_SQRT_M1 = pow(2, (P - 1) // 4, P)  # a square root of -1 mod p
_MASK_254 = (1 << 254) - 1
_D = -121665 * pow(121666, P - 2, P) % P  # edwards25519 d


def _inv(x: int) -> int:
    return pow(x, -1, P)  # extended Euclid: several times faster than x^(p-2)


def _is_square(x: int) -> bool:
    x %= P
    return x == 0 or pow(x, HALF, P) == 1


def _sqrt(x: int) -> int | None:
    """A square root of x mod p, or None (p = 5 mod 8: Atkin's method)."""
    x %= P
    root = pow(x, (P + 3) // 8, P)
    if root * root % P == x:
        return root
    root = root * _SQRT_M1 % P
    if root * root % P == x:
        return root
    return None


def map_to_curve(representative: int) -> int:
    """The Elligator 2 map (RFC 9380 section 6.7.1, Z = 2): field element -> u-coordinate."""
    r2 = 2 * representative * representative % P
    if r2 == P - 1:  # the exceptional case 1 + 2r^2 = 0 is mapped as r = 0
        r2 = 0
    w = (-A * _inv(1 + r2)) % P
    gw = w * (w * w + A * w + 1) % P
    return w if _is_square(gw) else (-w - A) % P


def inverse_map(u: int, alternate: bool, *, verify: bool = True) -> int | None:
    """A representative r in [0, (p-1)/2] with map_to_curve(r) == u, or None if u has none.

    Each encodable u has two such representatives; `alternate` picks which. Only u-coordinates
    of points on the curve (not its twist) are encodable; `verify=False` skips the check that
    tells them apart, for callers whose u is a curve point by construction.
    """
    u %= P
    if u == 0:
        return 0
    if (u + A) % P == 0 or not _is_square(-2 * u * (u + A)):
        return None
    # alternate: the preimage for which the map's w equals u; otherwise the one with w = -u - A
    ratio = -(u + A) * _inv(2 * u) if alternate else -u * _inv(2 * (u + A))
    root = _sqrt(ratio)
    if root is None:
        return None
    if root > HALF:
        root = P - root
    # Points on the twist pass the square test above for one branch only: check the result.
    return root if not verify or map_to_curve(root) == u else None


def decode_representative(data: bytes) -> bytes:
    """The X25519 public key (32 bytes) that a 32-byte representative stands for."""
    if len(data) != 32:
        raise ValueError(f"a representative is 32 bytes, not {len(data)}")
    r = int.from_bytes(data, "little") & _MASK_254
    return map_to_curve(r).to_bytes(32, "little")


def encode_representative(r: int, tweak: int) -> bytes:
    """32 bytes for representative `r`, the two unused top bits taken from `tweak`."""
    return (r | ((tweak & 3) << 254)).to_bytes(32, "little")


# -- low-order points and dirty keys ------------------------------------------------------------


def _edwards_add(p1: tuple[int, int], p2: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = p1, p2
    t = _D * x1 * x2 * y1 * y2 % P
    x3 = (x1 * y2 + x2 * y1) * _inv(1 + t) % P
    y3 = (y1 * y2 + x1 * x2) * _inv(1 - t) % P  # a = -1: y1*y2 - a*x1*x2
    return x3, y3


def _compress(point: tuple[int, int]) -> bytes:
    x, y = point
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _low_order_points() -> list[bytes]:
    """The 8 points of order dividing 8 on edwards25519, as k*T for a generator T of order 8.

    T satisfies 2T = (sqrt(-1), 0), hence y^2 = -x^2 and, from the curve equation,
    d*x^4 - 2*x^2 - 1 = 0, i.e. x^2 = (1 +- sqrt(1 + d)) / d.
    """
    root = _sqrt(1 + _D)
    assert root is not None
    for x2 in ((1 + root) * _inv(_D) % P, (1 - root) * _inv(_D) % P):
        x = _sqrt(x2)
        if x is None:
            continue
        y = x * _SQRT_M1 % P
        if (-x * x + y * y - 1 - _D * x * x * y * y) % P != 0:
            y = P - y
        generator = (x, y)
        break
    else:  # pragma: no cover - arithmetic fact
        raise AssertionError("no point of order 8 found")
    points = [(0, 1)]
    for _ in range(7):
        points.append(_edwards_add(points[-1], generator))
    assert _edwards_add(points[-1], generator) == (0, 1), "generator does not have order 8"
    return [_compress(p) for p in points]


LOW_ORDER_POINTS: tuple[bytes, ...] = tuple(_low_order_points())


def clamp(secret: bytes) -> bytes:
    """The X25519 scalar of a 32-byte secret (RFC 7748): a multiple of 8 in [2^254, 2^255)."""
    scalar = bytearray(secret)
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    return bytes(scalar)


def dirty_public_key(secret: bytes, low_order_index: int) -> bytes:
    """X25519 public key of `secret` plus the low-order point number `low_order_index` (0..7)."""
    point = bindings.crypto_scalarmult_ed25519_base_noclamp(clamp(secret))
    if low_order_index % 8:
        point = bindings.crypto_core_ed25519_add(point, LOW_ORDER_POINTS[low_order_index % 8])
    y = int.from_bytes(point, "little") & ((1 << 255) - 1)
    u = (1 + y) * _inv(1 - y) % P  # edwards25519 -> Curve25519 (RFC 7748 section 4.1)
    return u.to_bytes(32, "little")


@attrs.frozen(repr=False)
class HiddenKeyPair:
    """An X25519 key pair whose public key travels as a uniform-looking representative."""

    secret: bytes  # use with X25519 (crypto_scalarmult) as usual
    public: bytes  # the dirty public key: what decode_representative(representative) gives
    representative: bytes


def generate_keypair() -> HiddenKeyPair:
    """Draw key pairs until one is encodable (each try succeeds with probability about 1/2)."""
    while True:
        secret = os.urandom(32)
        tweak = secrets.randbits(6)  # 3 bits low-order point, 1 bit root choice, 2 top bits
        public = dirty_public_key(secret, tweak & 7)
        # public is a curve point by construction (libsodium computed it), not a twist point
        r = inverse_map(int.from_bytes(public, "little"), bool(tweak & 8), verify=False)
        if r is not None:
            return HiddenKeyPair(secret, public, encode_representative(r, tweak >> 4))
