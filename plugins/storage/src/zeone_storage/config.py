"""``[plugins.storage]`` settings and their defaults (see README for the reasoning)."""

from __future__ import annotations

import attrs
from attrs import validators as v

from zeone_storage.codec import DEFAULT_EC_TYPE, EC_TYPES


def _threshold(instance: StorageConfig, _attribute: attrs.Attribute, value: int) -> None:
    if not instance.k <= value < instance.k + instance.m:
        raise ValueError(
            f"repair_threshold must be in k..k+m-1 ({instance.k}..{instance.k + instance.m - 1})"
        )


@attrs.frozen
class StorageConfig:
    """``[plugins.storage]``."""

    k: int = attrs.field(default=4, validator=[v.ge(1), v.le(32)])
    m: int = attrs.field(default=2, validator=[v.ge(1), v.le(16)])
    repair_threshold: int = attrs.field(default=5, validator=_threshold)
    """A stripe with this many live fragments or fewer is repaired (back to k+m)."""
    ec_type: str = attrs.field(default=DEFAULT_EC_TYPE, validator=v.in_(EC_TYPES))
    stripe_size: int = attrs.field(
        default=4 * 1024 * 1024, validator=[v.ge(4096), v.le(12 * 1024 * 1024)]
    )
    encrypt: bool = True
    quota: int = attrs.field(default=10 * 1024**3, validator=v.ge(0))
    """Bytes of fragments this node stores for others; stores beyond it are refused."""
    audit_interval: float = attrs.field(default=300.0, validator=v.ge(0))
    """Seconds between audit rounds over this node's files (0: no periodic audits)."""
    audit_failures: int = attrs.field(default=2, validator=v.ge(1))
    """Consecutive unreachable audits after which a holder's fragments count as lost."""
    min_score: float = attrs.field(default=0.4, validator=[v.ge(0), v.le(1)])
    """Nodes below this standing get no new fragments."""
    parallel_stripes: int = attrs.field(default=4, validator=[v.ge(1), v.le(64)])
    request_timeout: float = attrs.field(default=30.0, validator=v.gt(0))
    hedge_after: float = attrs.field(default=2.0, validator=v.gt(0))
    """Seconds before a slow stripe download asks one more holder."""
    pending_ttl: float = attrs.field(default=3600.0, validator=v.gt(0))
    """Uncommitted fragments (a publisher that died mid-upload) are dropped after this."""
