"""The mimic handshake on both ends: a Chrome ClientHello in, a TLS 1.3 server's first flight out.

Client: send the hello with the sealed token, read ServerHello + CCS + the encrypted flight
(EncryptedExtensions, Certificate, CertificateVerify, Finished as application_data records of
realistic sizes), check that the flight decrypts (only the holder of the server key can make it),
answer CCS + Finished, then stream. Server: `HelloReader` buffers exactly the bytes of the
first handshake message, `authenticate` decides ZEONE or cover site, `server_respond` completes
the handshake for authenticated clients. The caller forwards everyone else, bytes included.
"""

from __future__ import annotations

import secrets
import struct

import attrs
import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from zeone_mimic import auth, chrome, wire
from zeone_mimic.profile import TAG_AND_TYPE, ServerProfile
from zeone_mimic.records import MimicStream, RecordError, RecordProtection

CCS_RECORD = wire.record(wire.CHANGE_CIPHER_SPEC, b"\x01")
HS_ENCRYPTED_EXTENSIONS = 8
HS_CERTIFICATE = 11
HS_CERTIFICATE_VERIFY = 15
HS_FINISHED = 20
HS_NEW_SESSION_TICKET = 4
MAX_HELLO = 1 << 16
MAX_FLIGHT = 32  # records (CCS included) before the server's Finished


class HandshakeFailed(Exception):
    """The peer is not a mimic server holding the expected key (or broke the protocol)."""


def _fake_message(msg_type: int, size: int) -> bytes:
    """`size` bytes of plaintext starting like a handshake message of `msg_type`."""
    if size < 4:
        return bytes([msg_type]) + secrets.token_bytes(size - 1)
    return wire.handshake(msg_type, secrets.token_bytes(size - 4))


# -- client ---------------------------------------------------------------------------------------


async def client_handshake(
    stream: trio.abc.Stream, server_public: bytes, server_name: str
) -> MimicStream:
    """Run the client side on a connected stream; HandshakeFailed if the server is not ours."""
    ephemeral = X25519PrivateKey.generate()
    hybrid_ephemeral = X25519PrivateKey.generate()
    server_static = X25519PublicKey.from_public_bytes(server_public)
    random = secrets.token_bytes(32)
    hello = chrome.build_client_hello(
        server_name=server_name,
        random=random,
        session_id=bytes(32),
        x25519_public=ephemeral.public_key().public_bytes_raw(),
        hybrid_x25519_public=hybrid_ephemeral.public_key().public_bytes_raw(),
    )
    message = hello.encode()
    static_shared = ephemeral.exchange(server_static)
    session_id = auth.seal_token(message, static_shared, random)
    at = wire.SESSION_ID_OFFSET
    message = message[:at] + session_id + message[at + 32 :]
    await stream.send_all(wire.record(wire.HANDSHAKE, message, wire.RECORD_VERSION_HELLO))

    splitter = wire.RecordSplitter()

    async def next_record() -> wire.Record:
        while True:
            try:
                rec = splitter.next_record()
            except wire.TlsParseError as exc:
                raise HandshakeFailed(f"the server sent something that is not TLS: {exc}") from None
            if rec is not None:
                return rec
            data = await stream.receive_some(1 << 16)
            if not data:
                raise HandshakeFailed("the server closed the connection during the handshake")
            splitter.feed(data)

    try:
        first = await next_record()
        if first.content_type != wire.HANDSHAKE:
            raise HandshakeFailed(f"expected ServerHello, got record type {first.content_type}")
        server_hello_msg = first.body
        server_hello = wire.parse_server_hello(server_hello_msg)
        suite = server_hello.cipher_suite
        if server_hello.session_id != session_id or suite not in auth.KEY_LENGTHS:
            raise HandshakeFailed("the ServerHello is not a mimic server's (wrong key or site)")
        share = server_hello.extension(wire.EXT_KEY_SHARE)
        if share is None:
            raise HandshakeFailed("the ServerHello has no key share")
        group, server_share = wire.parse_server_key_share(share)
        if group == wire.GROUP_X25519 and len(server_share) == 32:
            mine = ephemeral
        elif group == wire.GROUP_X25519MLKEM768 and len(server_share) == chrome.MLKEM768_CT + 32:
            mine = hybrid_ephemeral
        else:
            raise HandshakeFailed(
                f"the server chose key share group {group} ({len(server_share)} B)"
            )
        server_x25519 = X25519PublicKey.from_public_bytes(server_share[-32:])
        ephemeral_shared = mine.exchange(server_x25519)
    except (wire.TlsParseError, ValueError) as exc:
        raise HandshakeFailed(f"bad ServerHello: {exc}") from None
    keys = auth.session_keys(ephemeral_shared, static_shared, message + server_hello_msg, suite)
    receive = RecordProtection(keys.server_key, keys.server_iv, suite)
    send = RecordProtection(keys.client_key, keys.client_iv, suite)
    for _ in range(MAX_FLIGHT):
        rec = await next_record()
        if rec.content_type == wire.CHANGE_CIPHER_SPEC:
            continue
        if rec.content_type != wire.APPLICATION_DATA:
            raise HandshakeFailed(f"unexpected record type {rec.content_type} in the flight")
        try:
            inner_type, plaintext = receive.open(_header(rec), rec.body)
        except RecordError:
            raise HandshakeFailed(
                "the server's flight does not decrypt: wrong server key"
            ) from None
        if inner_type != wire.HANDSHAKE or not plaintext:
            raise HandshakeFailed("the server's flight is not a handshake")
        if plaintext[0] == HS_FINISHED:
            break
    else:
        raise HandshakeFailed(f"the server's flight has no Finished in {MAX_FLIGHT} records")
    # Finished carries an HMAC of the suite's hash: SHA-384 for AES-256-GCM, else SHA-256.
    finished_size = 4 + (48 if suite == 0x1302 else 32)
    finished = send.seal(wire.HANDSHAKE, _fake_message(HS_FINISHED, finished_size))
    await stream.send_all(CCS_RECORD + finished)
    return MimicStream(stream, send, receive, splitter.take_buffer())


def _header(rec: wire.Record) -> bytes:
    return struct.pack(">BHH", rec.content_type, rec.version, len(rec.body))


# -- server ---------------------------------------------------------------------------------------


@attrs.frozen
class ClientHelloRead:
    """Everything read from a new connection, and the hello if those bytes make one."""

    raw: bytes
    message: bytes | None
    hello: wire.ClientHello | None
    error: str | None = None


class HelloReader:
    """Reads until one ClientHello is complete, the bytes cannot be one, or the peer stops.

    Never reads past the hello's last record, so every byte read can be handed to the cover
    site unchanged; `raw` keeps what was read even if the caller's timeout cancels `read`.
    """

    def __init__(self) -> None:
        self.raw = bytearray()
        self._assembler = wire.HandshakeAssembler(MAX_HELLO)

    async def read(self, stream: trio.abc.Stream) -> ClientHelloRead:
        while True:
            # Read exactly the next record's bytes so nothing past the hello is consumed.
            want = self._wanted()
            data = await stream.receive_some(want)
            if not data:
                return ClientHelloRead(bytes(self.raw), None, None, "closed before a ClientHello")
            self.raw += data
            try:
                message = self._assembler.feed(data)
                if message is None:
                    continue
                return ClientHelloRead(bytes(self.raw), message, wire.parse_client_hello(message))
            except wire.TlsParseError as exc:
                return ClientHelloRead(bytes(self.raw), None, None, str(exc))

    def _wanted(self) -> int:
        # The assembler holds unparsed record bytes; ask for at most the rest of this record.
        buffered = self._assembler.pending()
        if len(buffered) < wire.RECORD_HEADER:
            return wire.RECORD_HEADER - len(buffered)
        length = int.from_bytes(buffered[3:5], "big")
        return max(1, wire.RECORD_HEADER + length - len(buffered))


@attrs.frozen
class Verdict:
    """`reason` is one of a few fixed categories (safe to count); `detail` says more."""

    accepted: bool
    reason: str
    detail: str = ""


def authenticate(
    read: ClientHelloRead, server: auth.ServerKey, replay: auth.ReplayFilter, now: float | None
) -> Verdict:
    if read.hello is None or read.message is None:
        return Verdict(False, "not a ClientHello", read.error or "")
    token = auth.open_token(read.message, read.hello, server)
    if token is None:
        return Verdict(False, "no valid token")
    refused = replay.check_and_add(read.hello.random, token.timestamp, now)
    if refused is not None:
        return Verdict(False, f"token {refused}")
    return Verdict(True, "ok")


async def server_respond(
    stream: trio.abc.Stream,
    read: ClientHelloRead,
    server: auth.ServerKey,
    profile: ServerProfile,
) -> MimicStream:
    """Complete the handshake for an authenticated hello; HandshakeFailed if the client fails.

    Everything observable -- suite, group, ServerHello extension order, encrypted record sizes --
    comes from `profile`, ideally learned from the cover site.
    """
    assert read.hello is not None and read.message is not None
    shares = dict(wire.parse_key_shares(read.hello.extension(wire.EXT_KEY_SHARE) or b""))
    client_x25519 = X25519PublicKey.from_public_bytes(shares[wire.GROUP_X25519])
    ephemeral = X25519PrivateKey.generate()
    own = ephemeral.public_key().public_bytes_raw()
    hybrid = shares.get(wire.GROUP_X25519MLKEM768, b"")
    if profile.group == wire.GROUP_X25519MLKEM768 and len(hybrid) == chrome.MLKEM768_EK + 32:
        # ML-KEM ciphertexts are compressed uniform-looking values: random bytes of the right
        # length are what an observer (without the client's decapsulation key) would see.
        group, share = profile.group, secrets.token_bytes(chrome.MLKEM768_CT) + own
        peer = X25519PublicKey.from_public_bytes(hybrid[-32:])
    else:
        group, share, peer = wire.GROUP_X25519, own, client_x25519
    extensions = {
        wire.EXT_SUPPORTED_VERSIONS: b"\x03\x04",
        wire.EXT_KEY_SHARE: struct.pack(">H", group) + wire.vec(2, share),
    }
    server_hello = wire.ServerHello(
        random=secrets.token_bytes(32),
        session_id=read.hello.session_id,
        cipher_suite=profile.cipher_suite,
        extensions=tuple((t, extensions.pop(t)) for t in profile.extension_order if t in extensions)
        + tuple(extensions.items()),
    ).encode()
    keys = auth.session_keys(
        ephemeral.exchange(peer),
        server.private.exchange(client_x25519),
        read.message + server_hello,
        profile.cipher_suite,
    )
    send = RecordProtection(keys.server_key, keys.server_iv, profile.cipher_suite)
    receive = RecordProtection(keys.client_key, keys.client_iv, profile.cipher_suite)
    # The client reads records until one starts like Finished, so only the last one does.
    types = [HS_ENCRYPTED_EXTENSIONS, HS_CERTIFICATE, HS_CERTIFICATE_VERIFY]
    flight = [wire.record(wire.HANDSHAKE, server_hello), CCS_RECORD]
    for i, size in enumerate(profile.flight):
        last = i == len(profile.flight) - 1
        msg_type = HS_FINISHED if last else types[min(i, len(types) - 1)]
        flight.append(send.seal(wire.HANDSHAKE, _fake_message(msg_type, size - TAG_AND_TYPE)))
    await stream.send_all(b"".join(flight))
    splitter = wire.RecordSplitter()
    while True:
        while True:
            try:
                rec = splitter.next_record()
            except wire.TlsParseError as exc:
                raise HandshakeFailed(f"the client sent something that is not TLS: {exc}") from None
            if rec is not None:
                break
            data = await stream.receive_some(1 << 16)
            if not data:
                raise HandshakeFailed("the client closed before its Finished")
            splitter.feed(data)
        if rec.content_type == wire.CHANGE_CIPHER_SPEC:
            continue
        if rec.content_type != wire.APPLICATION_DATA:
            raise HandshakeFailed(f"unexpected record type {rec.content_type} from the client")
        try:
            inner_type, plaintext = receive.open(_header(rec), rec.body)
        except RecordError:
            raise HandshakeFailed("the client's Finished does not decrypt") from None
        if inner_type != wire.HANDSHAKE or plaintext[:1] != bytes([HS_FINISHED]):
            raise HandshakeFailed("the client did not send Finished")
        break
    tickets = b"".join(
        send.seal(wire.HANDSHAKE, _fake_message(HS_NEW_SESSION_TICKET, size - TAG_AND_TYPE))
        for size in profile.tickets
    )
    if tickets:
        await stream.send_all(tickets)
    return MimicStream(stream, send, receive, splitter.take_buffer())
