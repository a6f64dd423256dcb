"""Per-principal rate limits: a token bucket each, refilled continuously."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``rate`` calls per second per principal, with bursts up to ``burst``.

    A rate of 0 turns limiting off. Buckets are kept only for principals that
    authenticated, so the table is as small as the set of credentials.
    """

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = max(burst, 1.0)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def admit(self, principal: str) -> float:
        """0 if the call may proceed now, else the seconds until it could."""
        if self._rate <= 0:
            return 0.0
        now = self._clock()
        bucket = self._buckets.setdefault(principal, _Bucket(self._burst, now))
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate
