"""Test helpers: a real HTTPS cover site (stdlib ssl on trio) with a self-signed certificate."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import attrs
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

COVER_NAME = "www.example.com"
COVER_PAGE = b"<html><body>An ordinary cover website.</body></html>"


def make_certificate(directory: Path, name: str = COVER_NAME) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cover.crt", directory / "cover.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@attrs.define
class CoverSite:
    """A real TLS 1.3 HTTPS server: what a prober must end up talking to."""

    port: int
    cert: Path
    connections: int = 0
    handshakes: int = 0


async def serve_https(site: CoverSite, context: ssl.SSLContext, tcp: trio.SocketStream) -> None:
    site.connections += 1
    stream = trio.SSLStream(tcp, context, server_side=True)
    try:
        await stream.do_handshake()
        site.handshakes += 1
        request = b""
        while b"\r\n\r\n" not in request:
            data = await stream.receive_some(4096)
            if not data:
                return
            request += data
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
            + f"Content-Length: {len(COVER_PAGE)}\r\n\r\n".encode()
            + COVER_PAGE
        )
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(tcp)
