"""ObfsStream: a trio Stream that frames, pads, encrypts and (optionally) paces its writes."""

from __future__ import annotations

import collections
import os
import random

import trio

from zeone_obfs.framing import MSS, FrameDecoder, FrameEncoder, FrameError, LengthDistribution
from zeone_obfs.handshake import SessionKeys

RECEIVE_SIZE = 256 * 1024  # large reads: fewer, larger frames per call
IAT_UNIT = 100e-6  # inter-arrival delays are drawn in units of 100 microseconds (0..10 ms)
IAT_STEPS = 101


def shaping(seed: bytes) -> tuple[LengthDistribution, LengthDistribution]:
    """The (write length, inter-arrival delay) distributions of a server, from its seed."""
    return (
        LengthDistribution.from_seed(seed + b":length", MSS),
        LengthDistribution.from_seed(seed + b":iat", IAT_STEPS),
    )


class ObfsStream(trio.abc.Stream):
    """Carries bytes over an obfs session on top of `inner` (a TCP stream).

    iat mode 0 writes each burst at once, padded to a length drawn from the server's
    distribution. Mode 1 also cuts it into full segments sent 0-10 ms apart (delays from the
    server's distribution), hiding the timing of bursts at a large cost in throughput. Mode 2
    additionally draws each segment's size, so even segment boundaries carry no information.
    """

    def __init__(
        self,
        inner: trio.abc.Stream,
        keys: SessionKeys,
        seed: bytes,
        *,
        iat_mode: int = 0,
        initial: bytes = b"",
    ) -> None:
        self.inner = inner
        self.socket = getattr(inner, "socket", None)  # lets the node see the peer's IP
        self.iat_mode = iat_mode
        self._encoder = FrameEncoder(keys.send_key, keys.send_nonce, keys.send_len_key)
        self._decoder = FrameDecoder(keys.recv_key, keys.recv_nonce, keys.recv_len_key)
        self._lengths, self._delays = shaping(seed)
        self._rng = random.Random(os.urandom(32))
        self._received: collections.deque[bytearray] = collections.deque()
        self._sending = False
        self._receiving = False
        self._eof = False
        if initial:
            self._absorb(initial)

    def _absorb(self, data: bytes) -> None:
        try:
            self._received.extend(self._decoder.feed(data))
        except FrameError as exc:
            raise trio.BrokenResourceError(f"obfs: {exc}") from None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this obfs stream")
        self._sending = True
        try:
            if not data:
                await self.inner.send_all(b"")  # raises ClosedResourceError like a socket would
                return
            wire = self._encoder.encode(data, self._lengths.sample(self._rng), scratch=True)
            if self.iat_mode == 0:
                await self.inner.send_all(wire)
                return
            view = memoryview(wire)
            offset = 0
            while offset < len(view):
                size = MSS if self.iat_mode == 1 else 1 + self._lengths.sample(self._rng)
                await self.inner.send_all(view[offset : offset + size])
                offset += size
                if offset < len(view):
                    await trio.sleep(self._delays.sample(self._rng) * IAT_UNIT)
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this obfs stream")
        self._receiving = True
        try:
            while not self._received:
                if self._eof:
                    return b""
                data = await self.inner.receive_some(RECEIVE_SIZE)
                if not data:
                    self._eof = True
                    if self._decoder.buffered:
                        raise trio.BrokenResourceError("obfs: the stream ended inside a frame")
                    return b""
                self._absorb(data)
            first = self._received[0]
            if max_bytes is None or max_bytes >= len(first):
                return self._received.popleft()  # a bytearray: bytes-like, and not copied
            out = bytes(first[:max_bytes])
            del first[:max_bytes]
            return out
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        await self.inner.aclose()
