"""Moving bytes between two streams: half-close aware, bounded, metered, rate-limited.

At most one chunk per direction is in flight in Python: a chunk is read, then written with
``send_all``, which blocks while the other side (a TCP peer's receive buffer, or a mux stream's
flow-control window) is full. So a reader that never reads stops the writer at the far end after
one window plus the kernel socket buffers, and no queue grows anywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

CHUNK = 256 * 1024
"""Bytes asked of receive_some per read: large chunks keep the per-byte Python cost low."""

RELAY_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class TokenBucket:
    """A byte-rate limit shared by all flows of one client: ``rate`` bytes/s, one second burst.

    Debt-based: a chunk is always let through, and the taker sleeps until the bucket is back to
    zero, so large chunks do not starve and the long-run rate is exact.
    """

    def __init__(self, rate: int) -> None:
        self.rate = float(rate)
        self.tokens = float(rate)
        self.stamp = trio.current_time()

    async def take(self, size: int) -> None:
        now = trio.current_time()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= size
        if self.tokens < 0:
            await trio.sleep(-self.tokens / self.rate)


async def pump(
    source: trio.abc.ReceiveStream,
    sink: trio.abc.HalfCloseableStream | trio.abc.SendStream,
    count: Callable[[int], None],
    limiter: TokenBucket | None = None,
) -> None:
    """Copy until EOF, then half-close ``sink``. Errors propagate to the caller."""
    receive = source.receive_some
    send = sink.send_all
    if limiter is None:
        while data := await receive(CHUNK):
            await send(data)
            count(len(data))
    else:
        while data := await receive(CHUNK):
            await limiter.take(len(data))
            await send(data)
            count(len(data))
    send_eof = getattr(sink, "send_eof", None)
    if send_eof is not None:
        await send_eof()


async def relay(
    a: trio.abc.HalfCloseableStream,
    b: trio.abc.HalfCloseableStream,
    a_to_b: Callable[[int], None],
    b_to_a: Callable[[int], None],
    limiter: TokenBucket | None = None,
) -> bool:
    """Relay both ways until both directions reached EOF (True) or one broke (False).

    A broken direction (reset, connection lost) cancels the other: the caller then closes both
    streams, which resets a mux stream whose peer may still be sending.
    """
    clean = True

    async def one(src: trio.abc.ReceiveStream, dst: trio.abc.HalfCloseableStream,
                  count: Callable[[int], None], nursery: trio.Nursery) -> None:  # fmt: skip
        nonlocal clean
        try:
            await pump(src, dst, count, limiter)
        except RELAY_ERRORS:
            clean = False
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, a, b, a_to_b, nursery)
        nursery.start_soon(one, b, a, b_to_a, nursery)
    return clean
