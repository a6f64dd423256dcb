"""Per-principal token buckets."""

from __future__ import annotations

from services.auth.limits import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_steady_rate_per_principal() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2, burst=3, clock=clock)
    assert [limiter.admit("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.admit("a") == 0.5  # one call's worth refills in half a second
    assert limiter.admit("b") == 0.0  # another principal has its own bucket
    clock.now += 0.5
    assert limiter.admit("a") == 0.0
    assert limiter.admit("a") > 0
    clock.now += 60  # refills up to the burst, not beyond
    assert [limiter.admit("a") for _ in range(4)][-1] > 0


def test_a_rate_of_zero_turns_limiting_off() -> None:
    limiter = RateLimiter(rate=0, burst=1)
    assert all(limiter.admit("a") == 0.0 for _ in range(1000))
