"""Protocol router and request/response types shared by the kernel and plugins.

Plugins register handlers by protocol id (``/zeone/<plugin>/<version>``). An inbound request is
dispatched to its handler; the handler's return value is the response. Errors a handler wants the
caller to see are raised as :class:`RemoteError`; anything else is logged and reported to the
caller as an internal error, so a buggy handler never leaks a traceback to a peer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from zeone.errors import ZeoneError
from zeone.identity import NodeId

log = logging.getLogger(__name__)

PROTOCOL_ID = re.compile(r"/[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)+")
MAX_PROTOCOL_ID = 128


@attrs.frozen
class Request:
    """An inbound request as a handler sees it."""

    peer: NodeId
    protocol: str
    payload: Any


Handler = Callable[[Request], Awaitable[Any]]
#: ``async def handler(peer: NodeId, stream: MuxStream) -> None``; the stream is closed after.
StreamHandler = Callable[[NodeId, Any], Awaitable[None]]


class RemoteError(ZeoneError):
    """An error answer from a peer (or, raised in a handler, the error to send back)."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class RequestTimeout(ZeoneError):
    """The peer did not answer within the timeout."""


def check_protocol_id(protocol: str) -> str:
    if len(protocol) > MAX_PROTOCOL_ID or not PROTOCOL_ID.fullmatch(protocol):
        raise ValueError(
            f"protocol id {protocol!r} must look like /zeone/<name>/<version> "
            f"(lowercase, at most {MAX_PROTOCOL_ID} characters)"
        )
    return protocol


@attrs.frozen
class Route:
    protocol: str
    handler: Handler = attrs.field(repr=False)
    owner: str


class Router:
    """Maps protocol ids to handlers."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._streams: dict[str, Route] = {}

    def register(self, protocol: str, handler: Handler, *, owner: str) -> None:
        self._add(self._routes, protocol, handler, owner)

    def register_stream(self, protocol: str, handler: StreamHandler, *, owner: str) -> None:
        """Handle streams opened with this protocol id (bulk or long-lived exchanges)."""
        self._add(self._streams, protocol, handler, owner)

    def _add(self, table: dict[str, Route], protocol: str, handler: Any, owner: str) -> None:
        check_protocol_id(protocol)
        if protocol in table:
            other = table[protocol].owner
            raise ValueError(f"protocol {protocol} is already registered by plugin {other!r}")
        table[protocol] = Route(protocol, handler, owner)

    def stream_route(self, protocol: str) -> Route | None:
        return self._streams.get(protocol)

    def protocols(self) -> list[str]:
        """Every protocol id this node serves (advertised to peers as capabilities)."""
        return sorted({*self._routes, *self._streams})

    def owner(self, protocol: str) -> str | None:
        route = self._routes.get(protocol)
        return route.owner if route else None

    async def dispatch(self, request: Request) -> Any:
        """Run the handler; raises RemoteError for anything the caller should be told."""
        route = self._routes.get(request.protocol)
        if route is None:
            raise RemoteError("unknown-protocol", request.protocol)
        try:
            return await route.handler(request)
        except RemoteError:
            raise
        except Exception:
            log.exception(
                "handler for %s (plugin %s) failed on a request from %s",
                request.protocol,
                route.owner,
                request.peer.short(),
            )
            raise RemoteError("internal-error", "the handler failed") from None
