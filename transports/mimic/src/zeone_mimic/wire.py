"""Sans-IO TLS wire format: records, handshake messages, ClientHello and ServerHello.

Only what mimicry needs, but parsed strictly: everything here reads bytes an unauthenticated
stranger sent, so every length is checked against what is actually there and any inconsistency
raises `TlsParseError` naming the field. No I/O happens in this module.
"""

from __future__ import annotations

import struct

import attrs

# Record content types (RFC 8446 §5.1).
CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23

# Handshake message types.
CLIENT_HELLO = 1
SERVER_HELLO = 2

LEGACY_VERSION = 0x0303
RECORD_VERSION_HELLO = 0x0301
RECORD_HEADER = 5
MAX_PLAINTEXT = 1 << 14
#: A TLS 1.3 record may carry 2^14 + 256 bytes of ciphertext (RFC 8446 §5.2).
MAX_CIPHERTEXT = MAX_PLAINTEXT + 256

# Extension types used by the Chrome hello and the server.
EXT_SERVER_NAME = 0
EXT_STATUS_REQUEST = 5
EXT_SUPPORTED_GROUPS = 10
EXT_EC_POINT_FORMATS = 11
EXT_SIGNATURE_ALGORITHMS = 13
EXT_ALPN = 16
EXT_SCT = 18
EXT_PADDING = 21
EXT_EXTENDED_MASTER_SECRET = 23
EXT_COMPRESS_CERTIFICATE = 27
EXT_SESSION_TICKET = 35
EXT_SUPPORTED_VERSIONS = 43
EXT_PSK_KEY_EXCHANGE_MODES = 45
EXT_KEY_SHARE = 51
EXT_ALPS = 17613
EXT_ECH = 0xFE0D
EXT_RENEGOTIATION_INFO = 0xFF01

GROUP_X25519 = 0x001D
GROUP_X25519MLKEM768 = 0x11EC


class TlsParseError(ValueError):
    """Bytes that are not the TLS structure they claim to be; the message names the field."""


def is_grease(value: int) -> bool:
    """GREASE values (RFC 8701): 0x0a0a, 0x1a1a, ... 0xfafa."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


class Reader:
    """A bounds-checked cursor over untrusted bytes."""

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes | memoryview, start: int = 0, end: int | None = None) -> None:
        self._data = bytes(data)
        self._pos = start
        self._end = len(self._data) if end is None else end

    @property
    def pos(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return self._end - self._pos

    def take(self, n: int, what: str) -> bytes:
        if n > self._end - self._pos:
            raise TlsParseError(f"{what}: needs {n} bytes, only {self._end - self._pos} left")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def u24(self, what: str) -> int:
        return int.from_bytes(self.take(3, what), "big")

    def vec(self, length_bytes: int, what: str) -> bytes:
        n = int.from_bytes(self.take(length_bytes, f"{what} length"), "big")
        return self.take(n, what)

    def end(self, what: str) -> None:
        if self._pos != self._end:
            raise TlsParseError(f"{what}: {self._end - self._pos} unexpected trailing bytes")


def vec(length_bytes: int, body: bytes) -> bytes:
    """Length-prefixed vector, the length checked to fit."""
    if len(body) >= 1 << (8 * length_bytes):
        raise ValueError(f"vector of {len(body)} bytes does not fit a {length_bytes}-byte length")
    return len(body).to_bytes(length_bytes, "big") + body


def u16_list(values: tuple[int, ...] | list[int], length_bytes: int = 2) -> bytes:
    return vec(length_bytes, b"".join(struct.pack(">H", v) for v in values))


# -- records ------------------------------------------------------------------------------------


@attrs.frozen
class Record:
    content_type: int
    version: int
    body: bytes


def record(content_type: int, body: bytes, version: int = LEGACY_VERSION) -> bytes:
    if len(body) > MAX_CIPHERTEXT:
        raise ValueError(f"record body of {len(body)} bytes exceeds {MAX_CIPHERTEXT}")
    return struct.pack(">BHH", content_type, version, len(body)) + body


def parse_record_header(header: bytes | memoryview) -> tuple[int, int, int]:
    """(content type, version, body length) of a 5-byte header; rejects what no TLS peer sends."""
    if len(header) != RECORD_HEADER:
        raise TlsParseError(f"record header: needs 5 bytes, got {len(header)}")
    content_type, version, length = struct.unpack(">BHH", header)
    if content_type not in (CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA):
        raise TlsParseError(f"record header: unknown content type {content_type}")
    if version >> 8 != 0x03 or (version & 0xFF) > 0x04:
        raise TlsParseError(f"record header: version 0x{version:04x} is not TLS")
    if length > MAX_CIPHERTEXT:
        raise TlsParseError(f"record header: length {length} exceeds {MAX_CIPHERTEXT}")
    return content_type, version, length


class RecordSplitter:
    """Feed bytes, pop whole records: the reassembly every TLS reader needs."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data

    def buffered(self) -> int:
        return len(self._buffer)

    def peek(self) -> bytes:
        return bytes(self._buffer)

    def take_buffer(self) -> bytes:
        """Hand over the unparsed bytes (to the stream that continues after the handshake)."""
        out = bytes(self._buffer)
        self._buffer.clear()
        return out

    def next_record(self) -> Record | None:
        """The next complete record, None if more bytes are needed; TlsParseError if garbage."""
        if len(self._buffer) < RECORD_HEADER:
            return None
        content_type, version, length = parse_record_header(self._buffer[:RECORD_HEADER])
        if len(self._buffer) < RECORD_HEADER + length:
            return None
        body = bytes(self._buffer[RECORD_HEADER : RECORD_HEADER + length])
        del self._buffer[: RECORD_HEADER + length]
        return Record(content_type, version, body)


class HandshakeAssembler:
    """Reassembles the first handshake message from records that may fragment it.

    TLS lets a ClientHello span several records (and TCP splits anywhere), so a server must
    gather handshake records until the 4-byte header's length is satisfied. `limit` bounds
    what a stranger can make us buffer.
    """

    def __init__(self, limit: int = 1 << 16) -> None:
        self.limit = limit
        self._records = RecordSplitter()
        self._message = bytearray()

    def pending(self) -> bytes:
        """Bytes of a record not yet complete."""
        return self._records.peek()

    def feed(self, data: bytes | bytearray | memoryview) -> bytes | None:
        """Add bytes; return the complete message (header included) once it is all here."""
        self._records.feed(data)
        while (rec := self._records.next_record()) is not None:
            if rec.content_type != HANDSHAKE:
                raise TlsParseError(
                    f"expected a handshake record, got content type {rec.content_type}"
                )
            if not rec.body:
                raise TlsParseError("handshake record: empty")
            self._message += rec.body
            if len(self._message) >= 4:
                length = int.from_bytes(self._message[1:4], "big")
                if length + 4 > self.limit:
                    raise TlsParseError(f"handshake message: length {length} exceeds {self.limit}")
                if len(self._message) >= length + 4:
                    if len(self._message) > length + 4 or self._records.buffered():
                        raise TlsParseError("handshake message: bytes after the first message")
                    return bytes(self._message)
        if self._records.buffered() > self.limit:
            raise TlsParseError("handshake: too many bytes buffered")
        return None


def handshake(msg_type: int, body: bytes) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


# -- ClientHello --------------------------------------------------------------------------------


@attrs.frozen
class ClientHello:
    """A parsed ClientHello; `extensions` keeps wire order, data undecoded."""

    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extensions: tuple[tuple[int, bytes], ...]

    def extension(self, ext_type: int) -> bytes | None:
        for t, data in self.extensions:
            if t == ext_type:
                return data
        return None

    def encode_body(self) -> bytes:
        exts = b"".join(struct.pack(">H", t) + vec(2, d) for t, d in self.extensions)
        return (
            struct.pack(">H", self.legacy_version)
            + self.random
            + vec(1, self.session_id)
            + u16_list(self.cipher_suites)
            + vec(1, self.compression_methods)
            + vec(2, exts)
        )

    def encode(self) -> bytes:
        """The handshake message (type, length, body)."""
        return handshake(CLIENT_HELLO, self.encode_body())


#: Offset of the 32-byte legacy_session_id inside a ClientHello handshake message
#: (4 header + 2 version + 32 random + 1 length).
SESSION_ID_OFFSET = 39
RANDOM_OFFSET = 6


def parse_extensions(r: Reader, what: str) -> tuple[tuple[int, bytes], ...]:
    block = Reader(r.vec(2, f"{what} extensions"))
    out = []
    seen: set[int] = set()
    while block.remaining():
        ext_type = block.u16(f"{what} extension type")
        data = block.vec(2, f"{what} extension {ext_type}")
        if ext_type in seen:
            raise TlsParseError(f"{what}: extension {ext_type} appears twice")
        seen.add(ext_type)
        out.append((ext_type, data))
    return tuple(out)


def parse_client_hello(message: bytes) -> ClientHello:
    """Parse a ClientHello handshake message (with its 4-byte header)."""
    r = Reader(message)
    if r.u8("handshake type") != CLIENT_HELLO:
        raise TlsParseError("handshake: not a ClientHello")
    length = r.u24("ClientHello length")
    if length != r.remaining():
        raise TlsParseError(f"ClientHello length: says {length}, has {r.remaining()}")
    legacy_version = r.u16("ClientHello legacy_version")
    random = r.take(32, "ClientHello random")
    session_id = r.vec(1, "ClientHello session_id")
    if len(session_id) > 32:
        raise TlsParseError(f"ClientHello session_id: {len(session_id)} bytes, at most 32")
    suites_raw = r.vec(2, "ClientHello cipher_suites")
    if len(suites_raw) % 2 or not suites_raw:
        raise TlsParseError("ClientHello cipher_suites: empty or odd length")
    suites = struct.unpack(f">{len(suites_raw) // 2}H", suites_raw)
    compression = r.vec(1, "ClientHello compression_methods")
    if not compression:
        raise TlsParseError("ClientHello compression_methods: empty")
    extensions = parse_extensions(r, "ClientHello") if r.remaining() else ()
    r.end("ClientHello")
    return ClientHello(legacy_version, random, session_id, suites, compression, extensions)


def parse_u16_vector(data: bytes, length_bytes: int, what: str) -> tuple[int, ...]:
    r = Reader(data)
    raw = r.vec(length_bytes, what)
    r.end(what)
    if len(raw) % 2:
        raise TlsParseError(f"{what}: odd length")
    return struct.unpack(f">{len(raw) // 2}H", raw)


def parse_key_shares(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """ClientHello key_share: (group, key_exchange) pairs."""
    r = Reader(data)
    block = Reader(r.vec(2, "key_share client_shares"))
    r.end("key_share")
    out = []
    while block.remaining():
        group = block.u16("key_share group")
        key = block.vec(2, f"key_share {group} key_exchange")
        if not key:
            raise TlsParseError(f"key_share {group}: empty key_exchange")
        out.append((group, key))
    return tuple(out)


def parse_alpn(data: bytes) -> tuple[bytes, ...]:
    r = Reader(data)
    block = Reader(r.vec(2, "ALPN protocol_name_list"))
    r.end("ALPN")
    out = []
    while block.remaining():
        name = block.vec(1, "ALPN protocol name")
        if not name:
            raise TlsParseError("ALPN: empty protocol name")
        out.append(name)
    return tuple(out)


def parse_server_name(data: bytes) -> str | None:
    r = Reader(data)
    block = Reader(r.vec(2, "server_name list"))
    r.end("server_name")
    while block.remaining():
        kind = block.u8("server_name type")
        name = block.vec(2, "server_name host_name")
        if kind == 0:
            try:
                return name.decode("ascii")
            except UnicodeDecodeError:
                raise TlsParseError("server_name: host_name is not ASCII") from None
    return None


def parse_supported_versions_client(data: bytes) -> tuple[int, ...]:
    r = Reader(data)
    raw = r.vec(1, "supported_versions")
    r.end("supported_versions")
    if len(raw) % 2:
        raise TlsParseError("supported_versions: odd length")
    return struct.unpack(f">{len(raw) // 2}H", raw)


# -- ServerHello --------------------------------------------------------------------------------


@attrs.frozen
class ServerHello:
    random: bytes
    session_id: bytes
    cipher_suite: int
    extensions: tuple[tuple[int, bytes], ...]
    legacy_version: int = LEGACY_VERSION

    def extension(self, ext_type: int) -> bytes | None:
        for t, data in self.extensions:
            if t == ext_type:
                return data
        return None

    def encode(self) -> bytes:
        exts = b"".join(struct.pack(">H", t) + vec(2, d) for t, d in self.extensions)
        body = (
            struct.pack(">H", self.legacy_version)
            + self.random
            + vec(1, self.session_id)
            + struct.pack(">HB", self.cipher_suite, 0)
            + vec(2, exts)
        )
        return handshake(SERVER_HELLO, body)


def parse_server_hello(message: bytes) -> ServerHello:
    r = Reader(message)
    if r.u8("handshake type") != SERVER_HELLO:
        raise TlsParseError("handshake: not a ServerHello")
    length = r.u24("ServerHello length")
    if length != r.remaining():
        raise TlsParseError(f"ServerHello length: says {length}, has {r.remaining()}")
    legacy_version = r.u16("ServerHello legacy_version")
    random = r.take(32, "ServerHello random")
    session_id = r.vec(1, "ServerHello session_id")
    if len(session_id) > 32:
        raise TlsParseError("ServerHello session_id: more than 32 bytes")
    suite = r.u16("ServerHello cipher_suite")
    if r.u8("ServerHello compression_method") != 0:
        raise TlsParseError("ServerHello compression_method: not null")
    extensions = parse_extensions(r, "ServerHello")
    r.end("ServerHello")
    return ServerHello(random, session_id, suite, extensions, legacy_version)


def parse_server_key_share(data: bytes) -> tuple[int, bytes]:
    r = Reader(data)
    group = r.u16("ServerHello key_share group")
    key = r.vec(2, "ServerHello key_share key_exchange")
    r.end("ServerHello key_share")
    return group, key
