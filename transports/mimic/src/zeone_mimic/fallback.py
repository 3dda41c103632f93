"""Forwarding unauthenticated connections to the cover site, bytes already read included.

The prober's TLS handshake then happens with a real HTTPS server: its certificate, its session
tickets, its alerts and timeouts. We only copy bytes, in both directions, until both are done.
"""

from __future__ import annotations

import logging

import attrs
import trio

log = logging.getLogger(__name__)

CHUNK = 1 << 16


@attrs.frozen
class FallbackTarget:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


async def forward(
    client: trio.abc.Stream,
    first_bytes: bytes,
    target: FallbackTarget | None,
    *,
    connect_timeout: float = 10.0,
) -> bool:
    """Splice `client` to `target`, replaying `first_bytes`; False if it could not be reached.

    Without a target (or when it is down) the connection is closed, which is also what a
    server that rejects a handshake may do, but a cover site makes the port look like a website.
    """
    if target is None:
        return False
    upstream: trio.abc.Stream | None = None
    with trio.move_on_after(connect_timeout):
        try:
            upstream = await trio.open_tcp_stream(target.host, target.port)
        except OSError as exc:
            log.warning("mimic fallback %s unreachable: %s", target, exc)
    if upstream is None:
        return False
    async with upstream:
        try:
            if first_bytes:
                await upstream.send_all(first_bytes)
        except trio.BrokenResourceError:
            return True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
            nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)
    return True


async def _pump(src: trio.abc.Stream, dst: trio.abc.Stream, scope: trio.CancelScope) -> None:
    """Copy until EOF, then half-close `dst`; a broken side ends the whole splice."""
    try:
        while data := await src.receive_some(CHUNK):
            await dst.send_all(data)
        if isinstance(dst, trio.abc.HalfCloseableStream):
            await dst.send_eof()
        else:
            scope.cancel()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        scope.cancel()
