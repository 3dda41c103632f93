"""What our server's handshake looks like: cipher, key-share group, and record sizes.

A censor who suspects a server can open its own connection to the cover site and compare what
it gets with what users' connections showed. So rather than inventing sizes, the server learns
them from the cover site: it sends the cover site the same Chrome ClientHello our clients send
(with no token, so the cover answers as it would any browser) and records the ServerHello's
cipher suite, group and extension order and the lengths of the encrypted first-flight records.
Without a cover site (or before learning finishes) a plausible default stands in, with a
certificate size fixed per server key, as a real site's chain is.
"""

from __future__ import annotations

import hashlib
import logging
import secrets

import attrs
import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from zeone_mimic import chrome, wire
from zeone_mimic.fallback import FallbackTarget

log = logging.getLogger(__name__)

TAG_AND_TYPE = 17
SUITES = (0x1301, 0x1302, 0x1303)
GROUPS = (wire.GROUP_X25519, wire.GROUP_X25519MLKEM768)
#: ServerHello.random of a HelloRetryRequest (RFC 8446 §4.1.3).
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
MAX_FLIGHT_RECORDS = 16


class ProfileError(Exception):
    """The cover site's answer could not be turned into a profile (the message says why)."""


def _check_flight(_instance: object, _attribute: object, value: tuple[int, ...]) -> None:
    if not 1 <= len(value) <= MAX_FLIGHT_RECORDS:
        raise ValueError(f"a first flight has 1-{MAX_FLIGHT_RECORDS} records, not {len(value)}")
    if any(not TAG_AND_TYPE < n <= wire.MAX_CIPHERTEXT for n in value):
        raise ValueError(f"flight record sizes must be in 18..{wire.MAX_CIPHERTEXT}: {value}")


@attrs.frozen
class ServerProfile:
    """The observable shape of our server's side of the handshake."""

    #: Body lengths of the encrypted first-flight records (EncryptedExtensions ... Finished).
    flight: tuple[int, ...] = attrs.field(converter=tuple, validator=_check_flight)
    #: Body lengths of the records sent after the client's Finished (session tickets).
    tickets: tuple[int, ...] = attrs.field(converter=tuple)
    cipher_suite: int = attrs.field(default=0x1301, validator=attrs.validators.in_(SUITES))
    group: int = attrs.field(default=wire.GROUP_X25519, validator=attrs.validators.in_(GROUPS))
    extension_order: tuple[int, ...] = (wire.EXT_SUPPORTED_VERSIONS, wire.EXT_KEY_SHARE)
    source: str = "default"

    @classmethod
    def default(cls, public_key: bytes) -> ServerProfile:
        """An OpenSSL-style server (nginx): one record per message, ECDSA certificate chain."""
        h = hashlib.sha256(b"zeone-mimic profile" + public_key).digest()
        certificate = 2500 + int.from_bytes(h[:2], "big") % 2500  # leaf + intermediate
        ticket = 180 + h[2] % 80
        return cls(
            # EncryptedExtensions with ALPN h2 (15), Certificate, CertificateVerify (ECDSA
            # P-256, 79), Finished (36); each + 17 bytes of inner type and tag.
            flight=(15 + 17, certificate + 17, 79 + 17, 36 + 17),
            tickets=(ticket + 17, ticket + 17),
        )

    def with_tickets_from(self, other: ServerProfile) -> ServerProfile:
        return attrs.evolve(self, tickets=other.tickets)


async def learn_profile(target: FallbackTarget, server_name: str) -> ServerProfile:
    """Ask the cover site for its first flight; ProfileError if it does not answer TLS 1.3.

    Bound the time at the call site. The flight is complete once the site goes quiet waiting for
    our Finished, which we never send.
    """
    ephemeral = X25519PrivateKey.generate()
    hello = chrome.build_client_hello(
        server_name=server_name,
        random=secrets.token_bytes(32),
        session_id=secrets.token_bytes(32),
        x25519_public=ephemeral.public_key().public_bytes_raw(),
    )
    try:
        stream = await trio.open_tcp_stream(target.host, target.port)
    except OSError as exc:
        raise ProfileError(f"cannot reach {target}: {exc}") from None
    async with stream:
        await stream.send_all(
            wire.record(wire.HANDSHAKE, hello.encode(), wire.RECORD_VERSION_HELLO)
        )
        splitter = wire.RecordSplitter()
        records: list[wire.Record] = []
        quiet_after = 0.5
        while True:
            with trio.move_on_after(quiet_after if records else 1e9) as idle:
                data = await stream.receive_some(1 << 16)
            if idle.cancelled_caught or not data:
                break
            splitter.feed(data)
            try:
                while (rec := splitter.next_record()) is not None:
                    records.append(rec)
            except wire.TlsParseError as exc:
                raise ProfileError(f"{target} did not answer TLS: {exc}") from None
    return profile_from_records(records, str(target))


def profile_from_records(records: list[wire.Record], source: str) -> ServerProfile:
    """Build a profile from the records a TLS 1.3 server sent in answer to a ClientHello."""
    if not records or records[0].content_type != wire.HANDSHAKE:
        raise ProfileError(f"{source} did not answer with a ServerHello")
    try:
        server_hello = wire.parse_server_hello(records[0].body)
        versions = server_hello.extension(wire.EXT_SUPPORTED_VERSIONS)
        share = server_hello.extension(wire.EXT_KEY_SHARE)
        group = wire.parse_server_key_share(share)[0] if share is not None else None
    except wire.TlsParseError as exc:
        raise ProfileError(f"{source} sent an unreadable ServerHello: {exc}") from None
    if server_hello.random == HRR_RANDOM:
        raise ProfileError(f"{source} asked for a HelloRetryRequest")
    if versions != b"\x03\x04":
        raise ProfileError(f"{source} did not choose TLS 1.3")
    if server_hello.cipher_suite not in SUITES or group not in GROUPS:
        raise ProfileError(
            f"{source} chose suite 0x{server_hello.cipher_suite:04x} / group {group}"
        )
    flight = [
        len(r.body)
        for r in records[1:]
        if r.content_type == wire.APPLICATION_DATA and len(r.body) > TAG_AND_TYPE
    ][:MAX_FLIGHT_RECORDS]
    if not flight:
        raise ProfileError(f"{source} sent no encrypted flight")
    return ServerProfile(
        flight=tuple(flight),
        tickets=(),
        cipher_suite=server_hello.cipher_suite,
        group=group,
        extension_order=tuple(
            t
            for t, _ in server_hello.extensions
            if t in (wire.EXT_SUPPORTED_VERSIONS, wire.EXT_KEY_SHARE)
        ),
        source=f"learned from {source}",
    )
