"""Sans-IO SOCKS5 (RFC 1928) with username/password authentication (RFC 1929).

`ServerHandshake` is fed whatever bytes a client sent and returns what to write back and, once
the handshake is done, the client's `Command`. It never touches a socket, so it is tested with
hypothesis on arbitrary splits and garbage. Every malformed input raises `SocksError` carrying
the reply to send (if the protocol still allows one) before closing.

The UDP relay header of RFC 1928 §7 is handled by `parse_udp_header` / `build_udp_header`.
"""

from __future__ import annotations

import enum
import ipaddress
import struct

import attrs

VERSION = 5
AUTH_VERSION = 1

MAX_BUFFER = 1024
"""A complete greeting, auth message or request is at most 513 bytes; more is an attack."""


class Method(enum.IntEnum):
    NO_AUTH = 0x00
    GSSAPI = 0x01
    USER_PASS = 0x02
    NO_ACCEPTABLE = 0xFF


class Cmd(enum.IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class Atyp(enum.IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class Reply(enum.IntEnum):
    """RFC 1928 §6 reply codes; curl prints the number, e.g. ``(2)`` for NOT_ALLOWED."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class SocksError(Exception):
    """A protocol violation. ``reply`` is the bytes to send before closing (may be empty)."""

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


@attrs.frozen
class Destination:
    """Where the client wants to go. ``host`` is an IP literal for IPV4/IPV6, else a name."""

    atyp: Atyp
    host: str
    port: int

    def __str__(self) -> str:
        return (
            f"[{self.host}]:{self.port}" if self.atyp == Atyp.IPV6 else f"{self.host}:{self.port}"
        )


@attrs.frozen
class Command:
    cmd: Cmd
    destination: Destination
    username: str | None = None
    password: str | None = None


def encode_address(destination: Destination) -> bytes:
    """ATYP | ADDR | PORT as in requests, replies and UDP headers."""
    if destination.atyp == Atyp.IPV4:
        addr = ipaddress.IPv4Address(destination.host).packed
    elif destination.atyp == Atyp.IPV6:
        addr = ipaddress.IPv6Address(destination.host).packed
    else:
        name = destination.host.encode("idna" if not destination.host.isascii() else "ascii")
        if not 0 < len(name) < 256:
            raise ValueError("a domain name is 1-255 bytes")
        addr = bytes([len(name)]) + name
    return bytes([destination.atyp]) + addr + struct.pack(">H", destination.port)


def destination_for(host: str, port: int) -> Destination:
    """An IP literal becomes IPV4/IPV6, anything else a DOMAIN."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return Destination(Atyp.DOMAIN, host, port)
    return Destination(Atyp.IPV4 if ip.version == 4 else Atyp.IPV6, str(ip), port)


def decode_address(data: bytes | bytearray | memoryview, offset: int) -> tuple[Destination, int]:
    """Parse ATYP | ADDR | PORT at ``offset``; returns it and the offset after it.

    Raises IndexError if incomplete, SocksError (ADDRESS_TYPE_NOT_SUPPORTED) for an unknown type
    or an unusable name.
    """
    atyp = data[offset]
    if atyp == Atyp.IPV4:
        end = offset + 1 + 4
        if end > len(data):
            raise IndexError("incomplete")
        host = str(ipaddress.IPv4Address(bytes(data[offset + 1 : end])))
    elif atyp == Atyp.IPV6:
        end = offset + 1 + 16
        if end > len(data):
            raise IndexError("incomplete")
        host = str(ipaddress.IPv6Address(bytes(data[offset + 1 : end])))
    elif atyp == Atyp.DOMAIN:
        length = data[offset + 1]
        end = offset + 2 + length
        raw = bytes(data[offset + 2 : end])
        if len(raw) < length:
            raise IndexError("incomplete")
        host = _domain(raw)
    else:
        raise SocksError(
            f"address type {atyp} is not supported", reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED)
        )
    if end + 2 > len(data):
        raise IndexError("incomplete")
    (port,) = struct.unpack_from(">H", data, end)
    return Destination(Atyp(atyp), host, port), end + 2


def _domain(raw: bytes) -> str:
    bad = SocksError(
        "the domain name is empty or not printable ASCII", reply(Reply.HOST_UNREACHABLE)
    )
    if not raw:
        raise bad
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise bad from None
    if not all(33 <= ord(c) < 127 for c in name):
        raise bad
    return name


def reply(code: Reply, bound: Destination | None = None) -> bytes:
    """A reply to a request; the bound address defaults to 0.0.0.0:0."""
    bound = bound or Destination(Atyp.IPV4, "0.0.0.0", 0)
    return bytes([VERSION, code, 0]) + encode_address(bound)


class _State(enum.Enum):
    GREETING = 1
    AUTH = 2
    REQUEST = 3
    DONE = 4


class ServerHandshake:
    """The server side of the handshake, up to and including the request.

    ``allow_no_auth``: offer NO_AUTH when the client does; ``check`` (if given) validates a
    username and password (return False to refuse). A client offering USER_PASS is asked for it
    even when NO_AUTH is allowed, because credentials select stream isolation.
    """

    def __init__(
        self,
        *,
        allow_no_auth: bool = True,
        check: object = None,
    ) -> None:
        self.allow_no_auth = allow_no_auth
        self.check = check
        self._buffer = bytearray()
        self._state = _State.GREETING
        self.username: str | None = None
        self.password: str | None = None
        self.remainder = b""
        """Bytes the client sent after its request (relay data), once done."""

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def feed(self, data: bytes) -> tuple[bytes, Command | None]:
        """Consume ``data``; returns (bytes to send, the request once complete).

        Raises SocksError on a protocol violation (send ``.reply`` then close) and ValueError if
        fed after the request (relay data must not go through the parser).
        """
        if self._state is _State.DONE:
            raise ValueError("the handshake is already complete")
        self._buffer += data
        if len(self._buffer) > MAX_BUFFER:
            raise SocksError("handshake message too long")
        out = bytearray()
        while True:
            try:
                step = self._step()
            except SocksError as exc:
                exc.reply = bytes(out) + exc.reply  # answers to earlier messages come first
                raise
            if step is None:
                return bytes(out), None
            out += step[0]
            if step[1] is not None:
                return bytes(out), step[1]

    def _step(self) -> tuple[bytes, Command | None] | None:
        buf = self._buffer
        if self._state is _State.GREETING:
            if len(buf) < 2:
                return None
            if buf[0] != VERSION:
                raise SocksError(f"not SOCKS5 (version byte {buf[0]})")
            count = buf[1]
            if count == 0:
                raise SocksError("the greeting offers no authentication method",
                                 bytes([VERSION, Method.NO_ACCEPTABLE]))  # fmt: skip
            if len(buf) < 2 + count:
                return None
            methods = set(buf[2 : 2 + count])
            del buf[: 2 + count]
            if Method.USER_PASS in methods:
                self._state = _State.AUTH
                return bytes([VERSION, Method.USER_PASS]), None
            if Method.NO_AUTH in methods and self.allow_no_auth:
                self._state = _State.REQUEST
                return bytes([VERSION, Method.NO_AUTH]), None
            raise SocksError("no acceptable authentication method offered",
                             bytes([VERSION, Method.NO_ACCEPTABLE]))  # fmt: skip
        if self._state is _State.AUTH:
            failure = bytes([AUTH_VERSION, 1])
            if len(buf) < 2:
                return None
            if buf[0] != AUTH_VERSION:
                raise SocksError(f"username/password version {buf[0]} is not 1", failure)
            ulen = buf[1]
            if len(buf) < 2 + ulen + 1:
                return None
            plen = buf[2 + ulen]
            if len(buf) < 3 + ulen + plen:
                return None
            try:
                username = bytes(buf[2 : 2 + ulen]).decode()
                password = bytes(buf[3 + ulen : 3 + ulen + plen]).decode()
            except UnicodeDecodeError:
                raise SocksError("username or password is not UTF-8", failure) from None
            del buf[: 3 + ulen + plen]
            if self.check is not None and not self.check(username, password):  # type: ignore[operator]
                raise SocksError(f"wrong username or password for {username!r}", failure)
            self.username, self.password = username, password
            self._state = _State.REQUEST
            return bytes([AUTH_VERSION, 0]), None
        # REQUEST
        if len(buf) < 5:  # VER CMD RSV ATYP + at least one address byte
            return None
        if buf[0] != VERSION:
            raise SocksError(f"request version {buf[0]} is not 5", reply(Reply.GENERAL_FAILURE))
        try:
            destination, end = decode_address(buf, 3)
        except IndexError:
            return None
        cmd = buf[1]
        if cmd not in (Cmd.CONNECT, Cmd.UDP_ASSOCIATE):
            raise SocksError(f"command {cmd} is not supported", reply(Reply.COMMAND_NOT_SUPPORTED))
        # Optimistic data sent right after the request is kept for the relay.
        self.remainder = bytes(buf[end:])
        del buf[:]
        self._state = _State.DONE
        return b"", Command(Cmd(cmd), destination, self.username, self.password)


# -- UDP relay header (RFC 1928 §7) ---------------------------------------------------------


def parse_udp_header(datagram: bytes) -> tuple[Destination, int, int]:
    """RSV(2) | FRAG | ATYP | ADDR | PORT | DATA -> (destination, frag, data offset).

    Raises SocksError for anything malformed (the datagram is then dropped).
    """
    if len(datagram) < 4 or datagram[0] or datagram[1]:
        raise SocksError("bad UDP request header")
    try:
        destination, offset = decode_address(datagram, 3)
    except IndexError:
        raise SocksError("truncated UDP request header") from None
    return destination, datagram[2], offset


def build_udp_header(source: Destination) -> bytes:
    return b"\x00\x00\x00" + encode_address(source)


# -- client side (used by tests and the benchmark) -------------------------------------------


def client_greeting(username: str | None = None) -> bytes:
    if username is None:
        return bytes([VERSION, 1, Method.NO_AUTH])
    return bytes([VERSION, 1, Method.USER_PASS])


def client_auth(username: str, password: str) -> bytes:
    user, pw = username.encode(), password.encode()
    return bytes([AUTH_VERSION, len(user)]) + user + bytes([len(pw)]) + pw


def client_request(cmd: Cmd, destination: Destination) -> bytes:
    return bytes([VERSION, cmd, 0]) + encode_address(destination)


def parse_reply(data: bytes) -> tuple[Reply, Destination, int] | None:
    """A server's reply -> (code, bound address, bytes used), or None if incomplete."""
    if len(data) < 5:
        return None
    if data[0] != VERSION:
        raise SocksError(f"reply version {data[0]} is not 5")
    try:
        bound, end = decode_address(data, 3)
    except IndexError:
        return None
    try:
        return Reply(data[1]), bound, end
    except ValueError:
        raise SocksError(f"unknown reply code {data[1]}") from None
