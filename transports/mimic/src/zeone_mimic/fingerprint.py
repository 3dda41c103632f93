"""JA3 and JA4 fingerprints of a ClientHello, as DPI boxes compute them.

JA3 (Salesforce, 2017): MD5 of version, ciphers, extensions, groups and point formats in wire
order, GREASE removed. JA4 (FoxIO, 2023): a readable prefix plus truncated SHA-256 of the sorted
ciphers and the sorted extensions (without SNI and ALPN) with the signature algorithms in order.
No maintained Python package computes them from raw bytes, and both are a few lines.
"""

from __future__ import annotations

import hashlib

from zeone_mimic import wire
from zeone_mimic.wire import ClientHello, TlsParseError, is_grease

_TLS_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}


def ja3_string(hello: ClientHello) -> str:
    ciphers = [c for c in hello.cipher_suites if not is_grease(c)]
    extensions = [t for t, _ in hello.extensions if not is_grease(t)]
    groups_raw = hello.extension(wire.EXT_SUPPORTED_GROUPS)
    groups = (
        [g for g in wire.parse_u16_vector(groups_raw, 2, "supported_groups") if not is_grease(g)]
        if groups_raw is not None
        else []
    )
    formats_raw = hello.extension(wire.EXT_EC_POINT_FORMATS)
    formats = list(formats_raw[1:]) if formats_raw else []
    return ",".join(
        [
            str(hello.legacy_version),
            "-".join(map(str, ciphers)),
            "-".join(map(str, extensions)),
            "-".join(map(str, groups)),
            "-".join(map(str, formats)),
        ]
    )


def ja3(hello: ClientHello) -> str:
    return hashlib.md5(ja3_string(hello).encode(), usedforsecurity=False).hexdigest()


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else "000000000000"


def ja4(hello: ClientHello, transport: str = "t") -> str:
    versions_raw = hello.extension(wire.EXT_SUPPORTED_VERSIONS)
    versions = (
        [v for v in wire.parse_supported_versions_client(versions_raw) if not is_grease(v)]
        if versions_raw is not None
        else []
    )
    version = _TLS_VERSIONS.get(max(versions) if versions else hello.legacy_version, "00")
    sni = "d" if hello.extension(wire.EXT_SERVER_NAME) is not None else "i"
    ciphers = [c for c in hello.cipher_suites if not is_grease(c)]
    ext_types = [t for t, _ in hello.extensions if not is_grease(t)]
    alpn_raw = hello.extension(wire.EXT_ALPN)
    alpn = "00"
    if alpn_raw is not None:
        protocols = wire.parse_alpn(alpn_raw)
        if protocols:
            first = protocols[0]
            a, b = chr(first[0]), chr(first[-1])
            alpn = (
                a + b
                if (a + b).isascii() and (a + b).isalnum()
                else first.hex()[0] + first.hex()[-1]
            )
    part_a = (
        f"{transport}{version}{sni}{min(len(ciphers), 99):02d}{min(len(ext_types), 99):02d}{alpn}"
    )
    part_b = _hash12(",".join(sorted(f"{c:04x}" for c in ciphers)))
    hashed_exts = sorted(
        f"{t:04x}" for t in ext_types if t not in (wire.EXT_SERVER_NAME, wire.EXT_ALPN)
    )
    sig_raw = hello.extension(wire.EXT_SIGNATURE_ALGORITHMS)
    sigs = (
        [f"{s:04x}" for s in wire.parse_u16_vector(sig_raw, 2, "signature_algorithms")]
        if sig_raw is not None
        else []
    )
    text_c = ",".join(hashed_exts)
    if sigs:
        text_c += "_" + ",".join(sigs)
    part_c = _hash12(text_c) if hashed_exts else "000000000000"
    return f"{part_a}_{part_b}_{part_c}"


__all__ = ["TlsParseError", "ja3", "ja3_string", "ja4"]
