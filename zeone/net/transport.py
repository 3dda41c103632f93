"""Transports: how bytes get to a peer, chosen by the scheme of the peer's address.

An address is a URI whose scheme names the transport (`tcp://127.0.0.1:4001`, `memory://a`, or a
plugin's `obfs://...`). The layers above only ever see `trio.abc.Stream`s, so an obfuscating or
simulated transport is a drop-in replacement for TCP. A `TransportRegistry` maps schemes to
transports; the connection manager dials through it and skips addresses whose scheme it lacks.
"""

from __future__ import annotations

import abc
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import ClassVar, TypeAlias

import attrs
import trio

log = logging.getLogger(__name__)

Handler: TypeAlias = Callable[[trio.abc.Stream], Awaitable[None]]
"""Called once per accepted connection, each in its own task; the stream is closed afterwards."""

_SCHEME_RE = re.compile(r"[a-z][a-z0-9+.-]*")
_PORT_RE = re.compile(r"[0-9]+")
_AUTHORITY_RE = re.compile(r"[^/?#]*")
_HOST_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_MEMORY_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,255}")
_EXAMPLE = "tcp://127.0.0.1:4001"


class DialError(OSError):
    """A connection to `address` could not be made; `reason` says why (refused, unreachable...)."""

    def __init__(self, address: Address | str, reason: str) -> None:
        super().__init__(f"cannot dial {address}: {reason}")
        self.address = address
        self.reason = reason

    def __reduce__(self) -> tuple[type[DialError], tuple[Address | str, str]]:
        return type(self), (self.address, self.reason)


class UnknownSchemeError(DialError):
    """No registered transport handles the address's scheme."""


class ListenError(OSError):
    """A transport could not start listening on `address` (port in use, bad interface...)."""

    def __init__(self, address: Address | str, reason: str) -> None:
        super().__init__(f"cannot listen on {address}: {reason}")
        self.address = address
        self.reason = reason

    def __reduce__(self) -> tuple[type[ListenError], tuple[Address | str, str]]:
        return type(self), (self.address, self.reason)


# -- addresses ----------------------------------------------------------------------------------


@attrs.frozen
class Address:
    """A parsed transport address; build one with `parse_address` or `Address.build`.

    Equality and hashing use the canonical parts, so `tcp://[0:0::1]:1` equals `tcp://[::1]:1`.
    `path` holds whatever follows the authority (path, query, fragment) for schemes that use it,
    such as `ws://host:80/zeone`; it is empty for tcp and memory.
    """

    scheme: str
    host: str
    port: int | None = None
    path: str = ""
    raw: str = attrs.field(default="", eq=False, repr=False)

    @classmethod
    def build(cls, scheme: str, host: str, port: int | None = None, path: str = "") -> Address:
        """Assemble and validate an address from parts (IPv6 hosts need no brackets here)."""
        return parse_address(_format(scheme, host, port, path))

    def with_port(self, port: int) -> Address:
        return Address.build(self.scheme, self.host, port, self.path)

    def __str__(self) -> str:
        return _format(self.scheme, self.host, self.port, self.path)


def _format(scheme: str, host: str, port: int | None, path: str) -> str:
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return f"{scheme}://{netloc}{path}"


def parse_address(text: str) -> Address:
    """Parse `scheme://host[:port][/path]`; a ValueError says what is wrong and how to fix it.

    tcp needs a host (IPv4, bracketed IPv6 or a hostname) and a port (0 means "any" when listening);
    memory takes a bare name (empty means "assign one"); other schemes belong to plugins and are
    only checked for a well-formed authority, leaving the rest to their transport.
    """
    if not isinstance(text, str):
        raise TypeError(f"an address is a string, not {type(text).__name__}")
    raw = text.strip()
    if "://" not in raw:
        raise ValueError(f"address {text!r} has no scheme; expected e.g. {_EXAMPLE}")
    if any(ch.isspace() for ch in raw):
        raise ValueError(f"address {text!r} contains whitespace")
    scheme = raw.partition("://")[0].lower()
    if not _SCHEME_RE.fullmatch(scheme):
        raise ValueError(f"address {text!r} has a malformed scheme {scheme!r}")
    # The authority runs to the first '/', '?' or '#', as in RFC 3986; urllib.parse.urlsplit would
    # do the same but reports bad brackets less clearly, so the split is done here.
    after = raw[len(scheme) + 3 :]
    netloc = _AUTHORITY_RE.match(after).group()  # type: ignore[union-attr]  # always matches
    rest = after[len(netloc) :]
    if "@" in netloc:
        raise ValueError(f"address {text!r} must not contain user information ('@')")
    if scheme == "memory" and ":" in netloc:
        raise ValueError(f"memory address {text!r} takes a name, not a port; use memory://NAME")
    host, port = _split_host_port(netloc, text)

    if scheme == "tcp":
        if rest not in ("", "/"):
            raise ValueError(f"tcp address {text!r} takes no path, query or fragment")
        if not host:
            raise ValueError(f"tcp address {text!r} needs a host, e.g. {_EXAMPLE}")
        if port is None:
            raise ValueError(f"tcp address {text!r} needs a port, e.g. {_EXAMPLE}")
        return Address("tcp", _check_ip_host(host, text), port, "", raw)
    if scheme == "memory":
        if rest not in ("", "/"):
            raise ValueError(f"memory address {text!r} takes no path; use memory://NAME")
        if host and not _MEMORY_NAME_RE.fullmatch(host):
            raise ValueError(
                f"memory address {text!r}: a name is letters, digits, '.', '_' and '-'"
            )
        return Address("memory", host, None, "", raw)
    if host and not host.startswith("[") and ":" not in host:
        host = host.lower()
    return Address(scheme, host, port, rest, raw)


def _split_host_port(netloc: str, text: str) -> tuple[str, int | None]:
    if netloc.startswith("["):
        close = netloc.find("]")
        if close < 0:
            raise ValueError(f"address {text!r} has an unclosed '[' around its IPv6 host")
        host, after = netloc[1:close], netloc[close + 1 :]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"address {text!r}: {host!r} is not an IPv6 address") from None
        if after and not after.startswith(":"):
            raise ValueError(f"address {text!r} has junk after the IPv6 host: {after!r}")
        port_text = after[1:] if after else None
    elif netloc.count(":") > 1:
        raise ValueError(f"address {text!r}: write IPv6 hosts in brackets, e.g. tcp://[::1]:4001")
    else:
        host, colon, port_text_ = netloc.partition(":")
        port_text = port_text_ if colon else None
    if port_text is None:
        return host, None
    if not port_text:
        raise ValueError(f"address {text!r} has an empty port")
    if not _PORT_RE.fullmatch(port_text):
        raise ValueError(f"address {text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"address {text!r}: port {port} is out of range 0-65535")
    return host, port


def _check_ip_host(host: str, text: str) -> str:
    """Return the canonical form of an IP literal or hostname."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.lower().removesuffix(".")
    labels = name.split(".")
    if (
        len(name) > 253
        or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels)
        or all(label.isdigit() for label in labels)
    ):
        raise ValueError(f"address {text!r}: {host!r} is not an IP address or hostname")
    return name


# -- the interface ------------------------------------------------------------------------------


class Transport(abc.ABC):
    """Carries bytes to and from addresses of one scheme.

    Implementations raise `DialError` for every failure to connect (so callers can try the peer's
    next address) and `ListenError` when they cannot bind. They do no encryption or framing: the
    Noise channel runs on top of whatever stream they return.
    """

    scheme: ClassVar[str]

    @abc.abstractmethod
    async def dial(self, address: Address) -> trio.abc.Stream:
        """Connect to `address`. Bound the time with a cancel scope at the call site."""

    @abc.abstractmethod
    async def listen(
        self,
        address: Address,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until cancelled, running `handler` for each in its own task.

        Reports the actually bound address through `task_status.started` (so `tcp://...:0`
        reveals its port). A handler's exception is logged and its stream closed; it never stops
        the listener.
        """

    def check_address(self, address: Address) -> None:
        """Raise DialError if `address` is not one this transport can use."""
        if address.scheme != self.scheme:
            raise DialError(address, f"the {self.scheme} transport cannot use this scheme")


async def serve_connection(handler: Handler, stream: trio.abc.Stream, where: object) -> None:
    """Run one connection's handler, log how it failed, and always close its stream.

    Transports use this for every accepted connection so that one misbehaving peer or a bug in a
    handler costs one connection, never the listener. A peer hanging up is routine and is logged
    at debug level only.
    """
    try:
        await handler(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("connection on %s ended: %r", where, exc)
    except Exception:
        log.exception("connection handler on %s failed", where)
    finally:
        await trio.aclose_forcefully(stream)


# -- TCP ----------------------------------------------------------------------------------------


@attrs.define
class TcpTransport(Transport):
    """TCP over IPv4 and IPv6, Nagle off (TCP_NODELAY): the protocol sends many small frames."""

    scheme: ClassVar[str] = "tcp"

    async def dial(self, address: Address) -> trio.abc.Stream:
        self.check_address(address)
        if address.port == 0 or address.port is None:
            raise DialError(address, "port 0 cannot be dialed")
        try:
            stream = await trio.open_tcp_stream(address.host, address.port)
        except OSError as exc:
            raise DialError(address, _describe(exc)) from exc
        _set_nodelay(stream)
        return stream

    async def listen(
        self,
        address: Address,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind every address `address.host` resolves to; the first socket's address is reported.

        With port 0 and a hostname that resolves to several addresses, each socket gets its own
        port; listen on an IP literal when the reported address must be the only one.
        """
        self.check_address(address)
        assert address.port is not None  # parse_address guarantees it for tcp
        try:
            listeners = await trio.open_tcp_listeners(address.port, host=address.host)
        except OSError as exc:
            raise ListenError(address, _describe(exc)) from exc
        sockname = listeners[0].socket.getsockname()
        bound = Address.build("tcp", sockname[0], sockname[1])

        async def handle(stream: trio.SocketStream) -> None:
            _set_nodelay(stream)
            await serve_connection(handler, stream, bound)

        task_status.started(bound)
        await trio.serve_listeners(handle, listeners)  # closes the listeners when cancelled


def _set_nodelay(stream: trio.abc.Stream) -> None:
    # trio.SocketStream already turns Nagle off; this keeps the guarantee if that default changes.
    if isinstance(stream, trio.SocketStream):
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


# -- registry -----------------------------------------------------------------------------------


class TransportRegistry:
    """The node's transports by scheme: kernel ones plus those that transport plugins register."""

    def __init__(self, transports: Iterable[Transport] = ()) -> None:
        self._transports: dict[str, Transport] = {}
        for transport in transports:
            self.register(transport)

    def register(self, transport: Transport) -> None:
        """Add a transport; a second transport for the same scheme is an error, not an override."""
        scheme = transport.scheme.lower()
        if not _SCHEME_RE.fullmatch(scheme):
            raise ValueError(f"transport {transport!r} has a malformed scheme {scheme!r}")
        existing = self._transports.get(scheme)
        if existing is not None:
            raise ValueError(
                f"scheme {scheme!r} is already handled by {type(existing).__name__}; "
                f"cannot also register {type(transport).__name__}"
            )
        self._transports[scheme] = transport

    def get(self, scheme: str) -> Transport:
        """The transport for `scheme`; raises UnknownSchemeError listing the known schemes."""
        try:
            return self._transports[scheme.lower()]
        except KeyError:
            raise UnknownSchemeError(
                f"{scheme}://", f"no transport for scheme {scheme!r}; known: {self._known()}"
            ) from None

    def __contains__(self, scheme: object) -> bool:
        return isinstance(scheme, str) and scheme.lower() in self._transports

    def schemes(self) -> list[str]:
        return sorted(self._transports)

    async def dial(self, address: Address | str) -> trio.abc.Stream:
        """Dial through the transport of the address's scheme."""
        address = parse_address(address) if isinstance(address, str) else address
        transport = self._transports.get(address.scheme)
        if transport is None:
            raise UnknownSchemeError(
                address, f"no transport for scheme {address.scheme!r}; known: {self._known()}"
            )
        return await transport.dial(address)

    async def listen(
        self,
        address: Address | str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen through the transport of the address's scheme (see `Transport.listen`)."""
        address = parse_address(address) if isinstance(address, str) else address
        transport = self._transports.get(address.scheme)
        if transport is None:
            raise ListenError(
                address, f"no transport for scheme {address.scheme!r}; known: {self._known()}"
            )
        await transport.listen(address, handler, task_status=task_status)

    def _known(self) -> str:
        return ", ".join(self.schemes()) or "(none)"
