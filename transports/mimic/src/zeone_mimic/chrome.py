"""A ClientHello laid out byte for byte like current desktop Chrome's (BoringSSL, Chrome 133+).

Facts carried over from public captures and the uTLS / curl-impersonate Chrome specs: 16 cipher
suites (GREASE first), 16 real extensions plus a GREASE extension at each end, the real ones
shuffled on every connection (Chrome >= 110), supported groups GREASE, X25519MLKEM768, x25519,
P-256, P-384 with key shares GREASE(1 byte), X25519MLKEM768 (1216 bytes) and x25519, ALPS under
the new code point 17613, a GREASE ECH extension, and no padding extension (the hello is longer
than the 256..511 byte window in which BoringSSL pads). JA4: `t13d1516h2_8daaf6152771_d8a2da3f94cd`.
"""

from __future__ import annotations

import secrets
import struct

from zeone_mimic import wire
from zeone_mimic.wire import ClientHello, u16_list, vec

#: The JA4 fingerprint of Chrome 133+ on desktop, as published by FoxIO-style databases.
CHROME_JA4 = "t13d1516h2_8daaf6152771_d8a2da3f94cd"

CIPHER_SUITES = (
    0x1301, 0x1302, 0x1303,  # TLS 1.3 AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305
    0xC02B, 0xC02F, 0xC02C, 0xC030,  # ECDHE-{ECDSA,RSA} AES-GCM
    0xCCA9, 0xCCA8,  # ECDHE-{ECDSA,RSA} ChaCha20-Poly1305
    0xC013, 0xC014,  # ECDHE-RSA AES-CBC-SHA
    0x009C, 0x009D, 0x002F, 0x0035,  # RSA AES-GCM / CBC
)  # fmt: skip
SIGNATURE_ALGORITHMS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
GROUPS = (wire.GROUP_X25519MLKEM768, wire.GROUP_X25519, 0x0017, 0x0018)
ALPN = (b"h2", b"http/1.1")

#: ML-KEM-768 encapsulation key: 3 polynomials x 256 coefficients mod q, 12 bits each, + rho.
MLKEM768_EK = 1184
#: ML-KEM-768 ciphertext (the server's half of the hybrid share, before its x25519 key).
MLKEM768_CT = 1088
MLKEM_Q = 3329
#: BoringSSL's GREASE ECH payload sizes before the 16-byte AEAD tag.
ECH_GREASE_PAYLOADS = (128, 160, 192, 224)


def grease_value(rng: secrets.SystemRandom) -> int:
    nibble = rng.randrange(16)
    return (nibble << 12) | 0x0A00 | (nibble << 4) | 0x0A


def mlkem768_public_key_shape() -> bytes:
    """1184 bytes with the structure of an ML-KEM-768 encapsulation key.

    A real key's 768 coefficients are uniform mod q (MLWE), and a censor can check that every
    12-bit value is below q, which plain random bytes fail 19% of the time per coefficient. We
    never decapsulate (the server answers with x25519), so a well-formed uniform key is exactly
    as informative on the wire as a real one and costs no lattice arithmetic.
    """
    # Coefficients from the OS CSPRNG in bulk, by rejection sampling.
    coefficients: list[int] = []
    while len(coefficients) < 768:
        block = secrets.token_bytes(1536)
        for i in range(0, 1536, 3):
            packed = int.from_bytes(block[i : i + 3], "little")
            for value in (packed & 0xFFF, packed >> 12):
                if value < MLKEM_Q:
                    coefficients.append(value)
    out = bytearray()
    for i in range(0, 768, 2):  # once per handshake, well under 1 ms: not on the data path
        out += (coefficients[i] | (coefficients[i + 1] << 12)).to_bytes(3, "little")
    return bytes(out) + secrets.token_bytes(32)


def mlkem768_key_is_well_formed(ek: bytes) -> bool:
    """Every 12-bit coefficient of the encoded vector is below q (what a censor could check)."""
    if len(ek) != MLKEM768_EK:
        return False
    for i in range(0, 1152, 3):
        packed = int.from_bytes(ek[i : i + 3], "little")
        if packed & 0xFFF >= MLKEM_Q or packed >> 12 >= MLKEM_Q:
            return False
    return True


def build_client_hello(
    *,
    server_name: str,
    random: bytes,
    session_id: bytes,
    x25519_public: bytes,
    hybrid_x25519_public: bytes | None = None,
    rng: secrets.SystemRandom | None = None,
) -> ClientHello:
    """A fresh Chrome-shaped hello; `random`/`session_id` are the caller's (they carry the token).

    `x25519_public` is the client's real ephemeral key: the server uses it for the token and,
    if it picks x25519, for the session keys. `hybrid_x25519_public` is the (separate, as in
    BoringSSL) x25519 half of the X25519MLKEM768 share, used if the server picks that group.
    """
    rng = rng or secrets.SystemRandom()
    if len(random) != 32 or len(session_id) != 32 or len(x25519_public) != 32:
        raise ValueError("random, session_id and the x25519 key are 32 bytes each")
    # BoringSSL draws its GREASE values independently per slot; the two GREASE extensions are
    # forced apart when they collide.
    g_cipher, g_group, g_version, g_ext1, g_ext2 = (grease_value(rng) for _ in range(5))
    if g_ext1 == g_ext2:
        g_ext2 ^= 0x1010
    host = server_name.encode("ascii")
    hybrid = mlkem768_public_key_shape() + (hybrid_x25519_public or _x25519_public_shape())
    key_shares = (
        struct.pack(">H", g_group) + vec(2, b"\x00")
        + struct.pack(">H", wire.GROUP_X25519MLKEM768) + vec(2, hybrid)
        + struct.pack(">H", wire.GROUP_X25519) + vec(2, x25519_public)
    )  # fmt: skip
    ech_payload = rng.choice(ECH_GREASE_PAYLOADS) + 16
    ech = (
        b"\x00"  # outer ClientHello
        + struct.pack(">HH", 0x0001, 0x0001)  # HKDF-SHA256, AES-128-GCM
        + bytes([rng.randrange(256)])  # config_id
        + vec(2, _x25519_public_shape())  # enc
        + vec(2, secrets.token_bytes(ech_payload))
    )
    shuffled: list[tuple[int, bytes]] = [
        (wire.EXT_SERVER_NAME, vec(2, b"\x00" + vec(2, host))),
        (wire.EXT_EXTENDED_MASTER_SECRET, b""),
        (wire.EXT_RENEGOTIATION_INFO, b"\x00"),
        (wire.EXT_SUPPORTED_GROUPS, u16_list((g_group, *GROUPS))),
        (wire.EXT_EC_POINT_FORMATS, b"\x01\x00"),
        (wire.EXT_SESSION_TICKET, b""),
        (wire.EXT_ALPN, vec(2, b"".join(vec(1, p) for p in ALPN))),
        (wire.EXT_STATUS_REQUEST, b"\x01\x00\x00\x00\x00"),
        (wire.EXT_SIGNATURE_ALGORITHMS, u16_list(SIGNATURE_ALGORITHMS)),
        (wire.EXT_SCT, b""),
        (wire.EXT_KEY_SHARE, vec(2, key_shares)),
        (wire.EXT_PSK_KEY_EXCHANGE_MODES, b"\x01\x01"),
        (wire.EXT_SUPPORTED_VERSIONS, vec(1, struct.pack(">HHH", g_version, 0x0304, 0x0303))),
        (wire.EXT_COMPRESS_CERTIFICATE, b"\x02\x00\x02"),
        (wire.EXT_ALPS, vec(2, vec(1, b"h2"))),
        (wire.EXT_ECH, ech),
    ]
    rng.shuffle(shuffled)
    extensions = ((g_ext1, b""), *shuffled, (g_ext2, b"\x00"))
    return ClientHello(
        legacy_version=wire.LEGACY_VERSION,
        random=random,
        session_id=session_id,
        cipher_suites=(g_cipher, *CIPHER_SUITES),
        compression_methods=b"\x00",
        extensions=extensions,
    )


def _x25519_public_shape() -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.generate().public_key().public_bytes_raw()
