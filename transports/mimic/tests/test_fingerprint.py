"""Every generated hello has Chrome's JA4, a JA3 that varies like Chrome's, Chrome's layout."""

from __future__ import annotations

import collections
import os

from zeone_mimic import chrome, fingerprint, wire

N = 1000


def generate(n: int = N) -> list[wire.ClientHello]:
    return [
        wire.parse_client_hello(
            chrome.build_client_hello(
                server_name="www.example.com",
                random=os.urandom(32),
                session_id=os.urandom(32),
                x25519_public=os.urandom(32),
            ).encode()
        )
        for _ in range(n)
    ]


def test_ja4_of_every_hello_is_chromes() -> None:
    assert chrome.CHROME_JA4 == "t13d1516h2_8daaf6152771_d8a2da3f94cd"
    assert {fingerprint.ja4(h) for h in generate()} == {chrome.CHROME_JA4}


def test_ja3_varies_across_connections_as_chromes_does() -> None:
    hellos = generate()
    ja3s = collections.Counter(fingerprint.ja3(h) for h in hellos)
    # 16! orders: repeats among 1,000 connections are essentially impossible.
    assert len(ja3s) > 0.99 * N
    # ...while everything but the extension order stays Chrome's.
    parts = {tuple(fingerprint.ja3_string(h).split(",")[i] for i in (0, 1, 3, 4)) for h in hellos}
    assert parts == {
        (
            "771",
            "4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53",
            "4588-29-23-24",
            "0",
        )
    }


def test_ja4_matches_a_hand_computed_reference() -> None:
    # Independent check of the JA4 code against the FoxIO definition on a tiny hello.
    hello = wire.ClientHello(
        legacy_version=0x0303,
        random=bytes(32),
        session_id=b"",
        cipher_suites=(0x1A1A, 0x1302, 0x1301),
        compression_methods=b"\x00",
        extensions=(
            (0x2A2A, b""),
            (wire.EXT_ALPN, wire.vec(2, wire.vec(1, b"http/1.1"))),
            (wire.EXT_SIGNATURE_ALGORITHMS, wire.u16_list((0x0804, 0x0403))),
            (wire.EXT_SUPPORTED_VERSIONS, wire.vec(1, b"\x03\x04\x03\x03")),
        ),
    )
    import hashlib

    b = hashlib.sha256(b"1301,1302").hexdigest()[:12]
    c = hashlib.sha256(b"000d,002b_0804,0403").hexdigest()[:12]
    assert fingerprint.ja4(hello) == f"t13i0203h1_{b}_{c}"
    assert fingerprint.ja3_string(hello) == "771,4866-4865,16-13-43,,"


def test_structure_is_chromes() -> None:
    for hello in generate(200):
        types = [t for t, _ in hello.extensions]
        # GREASE at both ends, distinct, nothing else GREASE; no padding (hello > 511 bytes).
        assert wire.is_grease(types[0]) and wire.is_grease(types[-1]) and types[0] != types[-1]
        assert not any(wire.is_grease(t) for t in types[1:-1])
        assert wire.EXT_PADDING not in types
        assert hello.extensions[-1][1] == b"\x00" and hello.extensions[0][1] == b""
        assert wire.is_grease(hello.cipher_suites[0])
        assert len(hello.session_id) == 32
        groups = wire.parse_u16_vector(hello.extension(wire.EXT_SUPPORTED_GROUPS), 2, "g")
        shares = wire.parse_key_shares(hello.extension(wire.EXT_KEY_SHARE))
        assert wire.is_grease(groups[0]) and groups[1:] == (0x11EC, 0x001D, 0x0017, 0x0018)
        assert [(g, len(k)) for g, k in shares] == [(groups[0], 1), (0x11EC, 1216), (0x001D, 32)]
        assert chrome.mlkem768_key_is_well_formed(shares[1][1][:1184])
        assert wire.parse_alpn(hello.extension(wire.EXT_ALPN)) == (b"h2", b"http/1.1")
        assert hello.extension(wire.EXT_ALPS) == b"\x00\x03\x02h2"
        assert wire.parse_server_name(hello.extension(wire.EXT_SERVER_NAME)) == "www.example.com"
        versions = wire.parse_supported_versions_client(
            hello.extension(wire.EXT_SUPPORTED_VERSIONS)
        )
        assert wire.is_grease(versions[0]) and versions[1:] == (0x0304, 0x0303)
        ech = hello.extension(wire.EXT_ECH)
        assert len(ech) - 42 - 16 in chrome.ECH_GREASE_PAYLOADS


def test_extension_order_is_uniformly_shuffled() -> None:
    # Each real extension should land first roughly equally often (1/16 of the time).
    firsts = collections.Counter(h.extensions[1][0] for h in generate(1600))
    assert len(firsts) == 16
    assert min(firsts.values()) > 40


def test_random_bytes_are_not_a_well_formed_mlkem_key() -> None:
    # The check the ML-KEM shaping defends against really does catch plain random bytes.
    assert not chrome.mlkem768_key_is_well_formed(os.urandom(1184))
