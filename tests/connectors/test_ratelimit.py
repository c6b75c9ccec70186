"""The per-API-key limiter: the rolling-window guarantee under concurrency, pacing and 429 pauses."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from connectors.ratelimit import MAX_PENALTY_S, RateLimiter, RateLimiterRegistry, limiter_key


async def _drive(limiter: RateLimiter, workers: int, duration_s: float) -> list[tuple[float, float]]:
    """Many coroutines hammering one limiter; returns (sent, completed) per call."""
    calls: list[tuple[float, float]] = []
    stop_at = time.monotonic() + duration_s

    async def worker() -> None:
        while time.monotonic() < stop_at:
            async with limiter.slot():
                sent = time.monotonic()
                await asyncio.sleep(random.uniform(0.0, 0.02))  # a request's latency
                calls.append((sent, time.monotonic()))

    await asyncio.gather(*(worker() for _ in range(workers)))
    return calls


async def test_no_window_ever_holds_more_than_the_limit_and_the_budget_is_used() -> None:
    limiter = RateLimiter(20, window_s=0.5, burst_fraction=0.25)
    calls = await _drive(limiter, workers=40, duration_s=1.6)
    # A call occupies the key from its send until one window after its response: at every send,
    # count the calls (itself included) whose occupancy covers that instant.
    for sent, _ in calls:
        holders = sum(1 for s, done in calls if s <= sent < done + 0.5)
        assert holders <= 20
    # In steady state the key is used, not starved: at least 3 windows' worth minus pacing slack.
    assert len(calls) >= 0.9 * 20 * 3
    assert limiter.stats().in_flight == 0 and limiter.stats().sent == len(calls)


async def test_pacing_spreads_calls_after_the_burst() -> None:
    limiter = RateLimiter(100, window_s=1.0, burst_fraction=0.03)  # 10 ms between calls after 3 at once
    started = time.monotonic()
    for _ in range(13):
        async with limiter.slot():
            pass
    assert time.monotonic() - started >= 0.09


async def test_429_pauses_every_coroutine_of_the_key_for_retry_after() -> None:
    limiter = RateLimiter(1000, window_s=60)
    assert limiter.record_429(0.3) == pytest.approx(0.3)
    started = time.monotonic()
    await asyncio.gather(*(limiter._acquire() for _ in range(3)))
    assert time.monotonic() - started >= 0.29
    assert limiter.stats().http_429 == 1


def test_429_without_retry_after_doubles_and_hostile_retry_after_is_capped() -> None:
    limiter = RateLimiter(10)
    assert limiter.record_429(None) == 1.0
    assert limiter.record_429(None) == 2.0
    limiter.record_accepted()
    assert limiter.record_429(None) == 1.0
    assert limiter.record_429(10_000_000) == MAX_PENALTY_S
    assert limiter.stats().http_429 == 4


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)
    with pytest.raises(ValueError):
        RateLimiter(10, window_s=0)
    with pytest.raises(ValueError):
        RateLimiter(10, burst_fraction=0)


def test_registry_shares_one_limiter_per_api_key_and_never_stores_the_key() -> None:
    registry = RateLimiterRegistry()
    first = registry.limiter("practice-a", "secret-api-key-123", 1000)
    assert registry.limiter("practice-b", "secret-api-key-123", 800) is first
    assert first.limit == 800  # the stricter configuration wins for a shared key
    assert registry.limiter("practice-c", "another-key", 1000) is not first
    assert registry.limiter("practice-d", None, 1000) is not first
    assert "secret-api-key-123" not in limiter_key("practice-a", "secret-api-key-123")
    assert "secret-api-key-123" not in repr(registry.__dict__)
