"""Popularity of cached content (seed 004 §5): decayed request rate, freshness and audience.

Every node scores what it holds from what it observes itself (gateway requests and peers'
fetches), so nobody's arithmetic has to be trusted. Each metric is mapped onto 0..10 and weighted
with the seed's weights for the metrics a cache can observe (request rate 0.25, freshness 0.15,
audience 0.10), renormalised to sum to 1, so scores are 0..10 like the seed's.

The request rate is an exponentially decayed counter: each request adds 1, the count halves every
`half_life` seconds, so for a steady rate r the counter settles at r * half_life / ln 2 and
`rate_per_hour` turns it back into requests per hour with no window bookkeeping.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import attrs

HOUR = 3600.0
DAY = 24 * HOUR
WEIGHTS = {"request_rate": 0.25, "freshness": 0.15, "audience": 0.10}
MAX_AUDIENCE = 256
"""Distinct requesters remembered per content (bounds memory; audience saturates far below)."""
AUDIENCE_WINDOW = DAY
MAX_TRACKED = 100_000


def _log_scale(value: float, at_ten: float) -> float:
    """0 -> 0, `at_ten` -> 10, saturating: popularity is heavy-tailed."""
    if value <= 0:
        return 0.0
    return min(10.0, 10.0 * math.log1p(value) / math.log1p(at_ten))


def score(rate_per_hour: float, audience: int, age: float) -> float:
    """0..10 from requests/hour (100/h is full marks), distinct requesters (50) and age."""
    parts = {
        "request_rate": _log_scale(rate_per_hour, 100.0),
        "freshness": 10.0 * math.exp(-max(0.0, age) / DAY),
        "audience": _log_scale(audience, 50.0),
    }
    total = sum(WEIGHTS.values())
    return sum(parts[k] * WEIGHTS[k] for k in parts) / total


@attrs.define
class Counter:
    """One content's demand as this node sees it."""

    first_seen: float
    count: float = 0.0
    updated: float = 0.0
    requesters: OrderedDict[str, float] = attrs.Factory(OrderedDict)

    def _decay(self, now: float, half_life: float) -> None:
        if now > self.updated:
            self.count *= 0.5 ** ((now - self.updated) / half_life)
            self.updated = now

    def hit(self, now: float, requester: str, half_life: float) -> None:
        self._decay(now, half_life)
        self.count += 1.0
        self.requesters[requester] = now
        self.requesters.move_to_end(requester)
        while len(self.requesters) > MAX_AUDIENCE:
            self.requesters.popitem(last=False)

    def rate_per_hour(self, now: float, half_life: float) -> float:
        self._decay(now, half_life)
        return self.count * math.log(2) / half_life * HOUR

    def audience(self, now: float) -> int:
        return sum(1 for seen in self.requesters.values() if now - seen <= AUDIENCE_WINDOW)


@attrs.define
class Popularity:
    """Counters for the contents a node holds or serves (keyed by content id text)."""

    half_life: float = HOUR
    counters: OrderedDict[str, Counter] = attrs.Factory(OrderedDict)

    def hit(self, key: str, requester: str, now: float) -> None:
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters[key] = Counter(first_seen=now, updated=now)
            while len(self.counters) > MAX_TRACKED:
                self.counters.popitem(last=False)
        self.counters.move_to_end(key)
        counter.hit(now, requester, self.half_life)

    def rate_per_hour(self, key: str, now: float) -> float:
        counter = self.counters.get(key)
        return counter.rate_per_hour(now, self.half_life) if counter else 0.0

    def audience(self, key: str, now: float) -> int:
        counter = self.counters.get(key)
        return counter.audience(now) if counter else 0

    def score(self, key: str, now: float, added: float) -> float:
        """Score of `key`; freshness counts from `added` (when this node started holding it)."""
        return score(self.rate_per_hour(key, now), self.audience(key, now), now - added)

    def forget(self, key: str) -> None:
        self.counters.pop(key, None)
