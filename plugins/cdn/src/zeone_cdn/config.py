"""`[plugins.cdn]` settings."""

from __future__ import annotations

import attrs
from attrs import validators as v

GIB = 1024**3


def _check_ids(values: list[str]) -> None:
    from zeone.content import ContentId

    for value in values:
        ContentId.parse(value)  # raises ContentError naming the problem


@attrs.frozen
class CdnConfig:
    """`[plugins.cdn]`: the cache bound, transfer parallelism and replication policy."""

    max_bytes: int = attrs.field(default=10 * GIB, validator=v.ge(0))
    """Cache size bound (chunk bytes held, pinned content included in the count but never
    evicted). Content larger than this is streamed through without being cached."""
    parallel: int = attrs.field(default=8, validator=[v.ge(1), v.le(64)])
    """Chunks fetched from peers at once per transfer (spread over the holders)."""
    chunk_timeout: float = attrs.field(default=20.0, validator=v.gt(0))
    max_holders: int = attrs.field(default=8, validator=[v.ge(1), v.le(20)])
    """Holders looked up in the DHT for one transfer."""
    chunk_size: int = attrs.field(default=1024 * 1024, validator=[v.ge(1024), v.le(2 * 1024**2)])
    """Chunk size for content published here. 1 MiB rather than the content layer's 256 KiB:
    a quarter of the requests per byte (measured peer transfers: 217 vs 138 MB/s), and a lying
    peer still costs at most 1 MiB before it is caught."""
    pin_published: bool = True
    """Content published on this node is pinned (never evicted)."""
    pinned: list[str] = attrs.field(factory=list, validator=lambda _i, _a, v: _check_ids(v))
    """Content ids this node fetches at start and keeps pinned (a seed node's fixed set)."""
    half_life: float = attrs.field(default=3600.0, validator=v.gt(0))
    """Half-life, seconds, of the decayed request rate behind the popularity score."""
    replicate_rate: float = attrs.field(default=60.0, validator=v.ge(0))
    """Requests per hour above which a holder asks neighbours to replicate (0: never)."""
    target_replicas: int = attrs.field(default=4, validator=[v.ge(1), v.le(20)])
    """Holders (this one included) that hot content should have."""
    replicate_interval: float = attrs.field(default=60.0, validator=v.gt(0))
    """Seconds between popularity scans (replication, pinned-set sync)."""
    accept_replicas: bool = True
    """Whether this node caches content its neighbours ask it to replicate."""
    replica_max_fraction: float = attrs.field(default=0.25, validator=[v.gt(0), v.le(1)])
    """A replica request is declined for content larger than this fraction of `max_bytes`."""
    read_block: int = attrs.field(
        default=4 * 1024 * 1024, validator=[v.ge(4096), v.le(16 * 1024**2)]
    )
    """Bytes per read (and per ASGI send) when the gateway streams complete local content.
    Measured on loopback: 256 KiB ~0.87 GB/s, 2 MiB ~1.8 GB/s, 4 MiB ~2.3 GB/s; a response
    holds about three blocks in memory."""
