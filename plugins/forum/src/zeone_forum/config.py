"""`[plugins.forum]` settings."""

from __future__ import annotations

from typing import Literal

import attrs
from attrs import validators as v


@attrs.frozen
class ForumConfig:
    """[plugins.forum]"""

    role: Literal["auto", "seed", "full", "light"] = "auto"
    """`auto` follows `[node] role` (mobile counts as light)."""
    pow_bits: int = attrs.field(default=12, validator=[v.ge(0), v.le(28)])
    """Proof-of-work difficulty a record needs to be accepted (and what we mint)."""
    max_post_bytes: int = attrs.field(default=16 * 1024, validator=[v.ge(64), v.le(60 * 1024)])
    rate_window: float = attrs.field(default=60.0, validator=v.gt(0))
    new_identity_rate: int = attrs.field(default=5, validator=v.ge(1))
    """Records an author this node has known for less than `new_identity_age` may create per
    `rate_window` (by the records' own timestamps, so every node reaches the same verdict)."""
    identity_rate: int = attrs.field(default=60, validator=v.ge(1))
    new_identity_age: float = attrs.field(default=24 * 3600.0, validator=v.ge(0))
    standing_full_after: float = attrs.field(default=7 * 24 * 3600.0, validator=v.ge(0))
    """Seconds after first sight at which an author's vote reaches full weight."""
    replication_factor: int = attrs.field(default=5, validator=[v.ge(1), v.le(64)])
    quota_bytes: int = attrs.field(default=1024**3, validator=v.ge(1024))
    min_retention: float = attrs.field(default=3600.0, validator=v.ge(0))
    relay_fanout: int = attrs.field(default=6, validator=[v.ge(1), v.le(64)])
    """Peers a relayed record is pushed to (our own records go to every peer)."""
    sync_interval: float = attrs.field(default=30.0, validator=v.gt(0))
    maintenance_interval: float = attrs.field(default=60.0, validator=v.gt(0))
    max_pending: int = attrs.field(default=1000, validator=v.ge(0))
    """Records held back until the thread/parent they refer to arrives (out-of-order sync)."""
    ring_size: int = attrs.field(default=8, validator=[v.ge(2), v.le(64)])
    """Members (us included) in the ring of an anonymous post or vote we make."""
    min_ring_size: int = attrs.field(default=8, validator=[v.ge(2), v.le(64)])
    """Smallest ring an anonymous record may use to be accepted."""
    seed_authors: list[str] = attrs.Factory(list)
    """Hex Ed25519 keys of seed operators whose votes weigh double (§5.4)."""
