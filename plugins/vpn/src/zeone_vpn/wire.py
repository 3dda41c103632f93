"""The entry <-> exit stream protocol (seed 003's VPN_CONNECT / VPN_DATA / VPN_CLOSE).

One multiplexed stream per client flow, protocol ``/zeone/vpn/connect/1`` (TCP) or
``/zeone/vpn/udp/1`` (a UDP association):

1. The entry sends a *header*: ``u16 BE length | CBOR map`` with ``host`` (IP literal or a
   name the exit resolves: the entry never resolves), ``port``; (VPN_CONNECT)
2. the exit answers with a *reply*: ``u16 BE length | CBOR map`` with ``code`` (a SOCKS5 reply
   code, 0 = connected), ``message`` (why not, for logs) and, on success, ``bound`` (the
   exit-side address, reported to the SOCKS client);
3. then raw bytes both ways (VPN_DATA); a half-close (STREAM_CLOSE) is the TCP FIN and a reset
   is VPN_CLOSE with an error.

On a UDP stream, after the reply each direction carries datagrams ``u16 BE length | ATYP ADDR
PORT DATA`` (the SOCKS UDP header without RSV/FRAG): destination entry -> exit, source
exit -> entry.

The maps are decoded with the kernel's hostile-input CBOR decoder; unknown keys are ignored.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs
import trio

from zeone.errors import ProtocolError
from zeone.wire.frame import decode_cbor, encode_cbor
from zeone_vpn.socks5 import Reply

CONNECT_PROTOCOL = "/zeone/vpn/connect/1"
UDP_PROTOCOL = "/zeone/vpn/udp/1"
INFO_PROTOCOL = "/zeone/vpn/info/1"
RELAY_PROTOCOL = "/zeone/vpn/relay/1"
"""Two-hop flows, entry -> relay: a header naming the exit, then opaque onion records."""
ONION_PROTOCOL = "/zeone/vpn/onion/1"
"""Two-hop flows, relay -> exit: the entry's ephemeral key, then onion records (see onion.py)."""

MAX_MESSAGE = 1024
"""Headers and replies are small; a larger length prefix is a protocol error."""
MAX_HOST = 255
MAX_DATAGRAM = 65535

_U16 = struct.Struct(">H")


class VpnProtocolError(Exception):
    """The peer broke the stream protocol."""


@attrs.frozen
class ConnectHeader:
    host: str
    port: int
    kind: str = "connect"
    """Only sent inside onion flows, where one protocol carries both kinds."""

    def encode(self) -> bytes:
        if self.kind != "connect":
            return _frame({"host": self.host, "port": self.port, "kind": self.kind})
        return _frame({"host": self.host, "port": self.port})

    @classmethod
    def decode(cls, data: Any) -> ConnectHeader:
        if not isinstance(data, dict):
            raise VpnProtocolError("header is not a map")
        host, port = data.get("host"), data.get("port")
        if type(host) is not str or not 0 < len(host) <= MAX_HOST:
            raise VpnProtocolError(f"host must be a string of 1-{MAX_HOST} characters")
        if type(port) is not int or not 0 <= port <= 65535:
            raise VpnProtocolError("port must be an integer 0-65535")
        return cls(host, port)


@attrs.frozen
class ConnectReply:
    code: Reply
    message: str = ""
    bound_host: str = "0.0.0.0"
    bound_port: int = 0

    @property
    def ok(self) -> bool:
        return self.code == Reply.SUCCEEDED

    def encode(self) -> bytes:
        return _frame(
            {
                "code": int(self.code),
                "message": self.message[:200],
                "bound": [self.bound_host, self.bound_port],
            }
        )

    @classmethod
    def decode(cls, data: Any) -> ConnectReply:
        if not isinstance(data, dict):
            raise VpnProtocolError("reply is not a map")
        code, message, bound = data.get("code"), data.get("message", ""), data.get("bound")
        if type(code) is not int or code not in Reply.__members__.values():
            raise VpnProtocolError(f"unknown reply code {code!r}")
        if type(message) is not str:
            raise VpnProtocolError("message must be a string")
        host, port = "0.0.0.0", 0
        if (
            isinstance(bound, list)
            and len(bound) == 2
            and type(bound[0]) is str
            and len(bound[0]) <= MAX_HOST
            and type(bound[1]) is int
            and 0 <= bound[1] <= 65535
        ):
            host, port = bound
        return cls(Reply(code), message[:200], host, port)


def encode_message(value: dict[str, Any]) -> bytes:
    return _frame(value)


def _frame(value: dict[str, Any]) -> bytes:
    body = encode_cbor(value)
    return _U16.pack(len(body)) + body


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    """Read exactly ``size`` bytes; raises VpnProtocolError at EOF before that."""
    parts = bytearray()
    while len(parts) < size:
        chunk = await stream.receive_some(size - len(parts))
        if not chunk:
            raise VpnProtocolError(f"stream ended after {len(parts)} of {size} bytes")
        parts += chunk
    return bytes(parts)


async def receive_message(stream: trio.abc.ReceiveStream) -> Any:
    """One ``u16 length | CBOR`` message (header or reply)."""
    (length,) = _U16.unpack(await receive_exactly(stream, 2))
    if not 0 < length <= MAX_MESSAGE:
        raise VpnProtocolError(f"message length {length} is not 1-{MAX_MESSAGE}")
    try:
        return decode_cbor(await receive_exactly(stream, length))
    except ProtocolError as exc:
        raise VpnProtocolError(f"bad CBOR: {exc}") from None


class DatagramReader:
    """Splits a UDP-carrying stream into ``u16 length | payload`` datagrams (sans-IO core)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out = []
        buf = self._buffer
        while len(buf) >= 2:
            (length,) = _U16.unpack_from(buf)
            if len(buf) < 2 + length:
                break
            out.append(bytes(buf[2 : 2 + length]))
            del buf[: 2 + length]
        return out


def encode_datagram(payload: bytes) -> bytes:
    if len(payload) > MAX_DATAGRAM:
        raise ValueError("datagram too large")
    return _U16.pack(len(payload)) + payload
