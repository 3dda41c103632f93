"""Popularity (seed 004 §5.2), vote weights (§5.4) and the storage classes it drives (§4.3).

Pure functions over locally observed metrics, so every node computes scores on its own and the
numbers can be exchanged (holders publish theirs in their DHT holder records) without trusting
anyone's arithmetic. Each metric is mapped onto 0..10 before weighting, so the score is 0..10 and
the seed's thresholds (7.0 popular, 5.0 active) keep their meaning.
"""

from __future__ import annotations

import math

import attrs

HOUR = 3600.0
DAY = 24 * HOUR

BASE_WEIGHTS = {
    "request_rate": 0.25,
    "replication": 0.20,
    "freshness": 0.15,
    "audience": 0.10,
    "social": 0.20,
    "seed_coverage": 0.10,
}


@attrs.frozen
class Metrics:
    request_rate: float = 0.0
    """Reads per hour of the thread (local requests and peers' fetches)."""
    replication: int = 0
    """Known holders (from DHT holder records)."""
    age: float = 0.0
    """Seconds since the thread was created."""
    audience: int = 0
    """Distinct readers (local user, peers) seen."""
    social: float = 0.0
    """Replies plus standing-weighted votes."""
    seed_holders: int = 0


def adaptive_weights(age: float) -> dict[str, float]:
    """§5.2: freshness weighs more in the first day, social signals after it, durability
    (seed coverage) after a week. The weights always sum to 1."""
    w = dict(BASE_WEIGHTS)
    if age < DAY:
        w["freshness"] += 0.10
        w["seed_coverage"] -= 0.05
        w["social"] -= 0.05
    elif age < 7 * DAY:
        w["social"] += 0.10
        w["freshness"] -= 0.10
    else:
        w["seed_coverage"] += 0.10
        w["freshness"] -= 0.10
    return w


def _log_scale(value: float, at_ten: float) -> float:
    """0 -> 0, `at_ten` -> 10, saturating: popularity is heavy-tailed."""
    if value <= 0:
        return 0.0
    return min(10.0, 10.0 * math.log1p(value) / math.log1p(at_ten))


def score(m: Metrics) -> float:
    parts = {
        "request_rate": _log_scale(m.request_rate, 100.0),
        "replication": min(10.0, m.replication),  # 10 holders is full marks
        "freshness": 10.0 * math.exp(-max(0.0, m.age) / DAY),
        "audience": _log_scale(m.audience, 50.0),
        "social": _log_scale(m.social, 30.0),
        "seed_coverage": min(10.0, 10.0 * m.seed_holders / 3.0),  # §6.3: 3 seeds for popular data
    }
    weights = adaptive_weights(m.age)
    return round(sum(parts[k] * weights[k] for k in parts), 3)


POPULAR = 7.0
ACTIVE = 5.0


def ttl_for(score_value: float) -> float:
    """§4.3 TTL by popularity class: 30 days popular, 7 days active, 1 day otherwise."""
    if score_value > POPULAR:
        return 30 * DAY
    if score_value >= ACTIVE:
        return 7 * DAY
    return DAY


def replication_target(score_value: float, base: int) -> int:
    """§6.3: at least `base` holders; popular content 3 seeds + 7 others = 10."""
    return max(base, 10) if score_value > POPULAR else base


def vote_weight(standing_age: float, *, is_seed: bool, full_after: float) -> float:
    """§5.4: a fresh identity's vote counts 0.05; weight grows linearly with how long this node
    has known the author, reaching 1.0 after `full_after` seconds; seed operators count double.

    Standing is measured by *local* first sight, never by the record's own timestamp, so an
    attacker cannot backdate records to look old.
    """
    weight = 0.05 + 0.95 * min(1.0, max(0.0, standing_age) / full_after) if full_after > 0 else 1.0
    return round(weight * (2.0 if is_seed else 1.0), 4)
