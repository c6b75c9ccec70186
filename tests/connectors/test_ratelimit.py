"""The per-API-key limiter: the rolling-window guarantee under concurrency, pacing and 429 pauses.

The timing tests run on a VirtualTimeLoop (the limiter's clock is the loop's): every figure is exact and
the same on any machine, and a minute of traffic takes milliseconds.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from callstream.deadline import Deadline
from connectors.ratelimit import (
    MAX_PENALTY_S,
    RateLimiter,
    RateLimiterRegistry,
    WaitPastDeadline,
    limiter_key,
    worker_share,
)
from tests.connectors.helpers import VirtualTimeLoop, run_in_virtual_time


async def _drive(
    loop: VirtualTimeLoop, limiter: RateLimiter, workers: int, duration_s: float, rng: random.Random
) -> list[tuple[float, float]]:
    """Many coroutines hammering one limiter; returns (sent, completed) per call, in loop time."""
    calls: list[tuple[float, float]] = []
    stop_at = loop.time() + duration_s

    async def worker() -> None:
        while loop.time() < stop_at:
            async with limiter.slot():
                sent = loop.time()
                await asyncio.sleep(rng.uniform(0.0, 0.02))  # a request's latency
                calls.append((sent, loop.time()))

    await asyncio.gather(*(worker() for _ in range(workers)))
    return calls


def test_no_window_ever_holds_more_than_the_limit_and_the_budget_is_used() -> None:
    limit, window = 1000, 60.0

    async def main(loop: VirtualTimeLoop) -> tuple[RateLimiter, list[tuple[float, float]]]:
        limiter = RateLimiter(limit, window_s=window, burst_fraction=0.05, clock=loop.time)
        return limiter, await _drive(loop, limiter, workers=64, duration_s=3 * window, rng=random.Random(7))

    limiter, calls = run_in_virtual_time(main)
    # A call occupies the key from its send until one window after its response: at every send,
    # count the calls (itself included) whose occupancy covers that instant.
    sends = sorted(calls)
    for index, (sent, _) in enumerate(sends):
        holders = sum(1 for s, done in sends[: index + 1] if sent < done + window)
        assert holders <= limit
    # The key is used, not starved: three windows of traffic spend (almost) three windows of budget.
    # Each call's slot comes back one window after its response, so latency alone costs a sliver.
    assert len(calls) >= 0.97 * 3 * limit
    assert limiter.stats().in_flight == 0 and limiter.stats().sent == len(calls)


def test_pacing_spreads_calls_after_the_burst() -> None:
    async def main(loop: VirtualTimeLoop) -> list[float]:
        limiter = RateLimiter(100, window_s=1.0, burst_fraction=0.03, clock=loop.time)  # 3 at once, then every 10 ms
        entered = []
        for _ in range(13):
            async with limiter.slot():
                entered.append(loop.time())
        return entered

    assert run_in_virtual_time(main) == pytest.approx([0.0, 0.0, 0.0] + [0.01 * n for n in range(1, 11)])


def test_429_pauses_every_coroutine_of_the_key_for_retry_after() -> None:
    async def main(loop: VirtualTimeLoop) -> tuple[float, list[float], int]:
        limiter = RateLimiter(1000, window_s=60, clock=loop.time)
        pause = limiter.record_429(0.3)
        entered: list[float] = []

        async def call() -> None:
            async with limiter.slot():
                entered.append(loop.time())

        await asyncio.gather(*(call() for _ in range(3)))
        return pause, entered, limiter.stats().http_429

    pause, entered, http_429 = run_in_virtual_time(main)
    assert pause == pytest.approx(0.3)
    assert entered == pytest.approx([0.3, 0.3, 0.3])  # nobody goes before the pause ends, everybody right after
    assert http_429 == 1


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


def test_a_429_pause_past_the_callers_deadline_fails_at_once_and_sends_nothing() -> None:
    """The reported failure: Retry-After 40 s, and callers waited 30 s in silence."""

    async def main(loop: VirtualTimeLoop) -> tuple[float, float, int]:
        limiter = RateLimiter(1000, window_s=60, clock=loop.time)
        limiter.record_429(40.0)
        with pytest.raises(WaitPastDeadline) as refused:
            async with limiter.slot(Deadline.after(4.0, loop.time)):
                pass
        return loop.time(), refused.value.wait_s, limiter.stats().sent

    failed_at, wait_s, sent = run_in_virtual_time(main)
    assert failed_at == 0.0 and wait_s == pytest.approx(40.0) and sent == 0


def test_a_pause_that_ends_in_time_is_waited_out() -> None:
    async def main(loop: VirtualTimeLoop) -> float:
        limiter = RateLimiter(1000, window_s=60, clock=loop.time)
        limiter.record_429(1.0)
        async with limiter.slot(Deadline.after(4.0, loop.time)):
            return loop.time()

    assert run_in_virtual_time(main) == pytest.approx(1.0)


def test_a_caller_never_queues_behind_the_pacer_past_the_deadline() -> None:
    async def main(loop: VirtualTimeLoop) -> tuple[list[float], list[float]]:
        limiter = RateLimiter(60, window_s=60, burst_fraction=1 / 60, clock=loop.time)  # one a second, no burst
        entered: list[float] = []
        refused: list[float] = []
        deadline = Deadline.after(1.5, loop.time)

        async def call() -> None:
            try:
                async with limiter.slot(deadline):
                    entered.append(loop.time())
            except WaitPastDeadline:
                refused.append(loop.time())

        await asyncio.gather(*(call() for _ in range(4)))
        return entered, refused

    entered, refused = run_in_virtual_time(main)
    assert entered == pytest.approx([0.0, 1.0])
    assert len(refused) == 2 and max(refused) <= 1.5


def test_callers_on_the_line_go_before_background_work() -> None:
    async def main(loop: VirtualTimeLoop) -> list[str]:
        limiter = RateLimiter(100, window_s=1.0, burst_fraction=0.01, clock=loop.time)  # one every 10 ms
        order: list[str] = []

        async def call(name: str, deadline: Deadline | None, start_at: float) -> None:
            await asyncio.sleep(start_at)
            async with limiter.slot(deadline):
                order.append(name)

        background = [call(f"retry-{n}", None, 0.0) for n in range(4)]
        live = [call(f"caller-{n}", Deadline.after(4.0, loop.time), 0.001) for n in range(3)]
        await asyncio.gather(*background, *live)
        return order

    order = run_in_virtual_time(main)
    assert order[0] == "retry-0"  # it was alone and went at once
    assert sorted(order[1:4]) == ["caller-0", "caller-1", "caller-2"]
    assert sorted(order[4:]) == ["retry-1", "retry-2", "retry-3"]


def test_workers_split_a_keys_budget_by_the_partitions_they_own() -> None:
    """Three workers on one practice's key: each takes its partitions' share less the background reserve,
    so together they stay under the practice's limit."""
    shares = [worker_share(owned, 12, reserve=0.1) for owned in (4, 4, 4)]
    registries = [RateLimiterRegistry() for _ in shares]
    limiters = []
    for registry, share in zip(registries, shares, strict=True):
        registry.set_share(share)
        limiters.append(registry.limiter("pain-1002", "shared-key", 1000))
    assert [limiter.limit for limiter in limiters] == [300, 300, 300]
    assert sum(limiter.limit for limiter in limiters) <= 1000 * 0.9
    registries[0].set_share(worker_share(12, 12, reserve=0.1))  # the others left: it owns everything
    assert limiters[0].limit == 900
    limiters[0].tighten(500)  # another practice configured the same key lower
    assert limiters[0].limit == 450
    assert worker_share(0, 12, reserve=0.1) == pytest.approx(0.9 / 12)


@pytest.mark.parametrize(("owned", "total", "reserve"), [(13, 12, 0.1), (-1, 12, 0.1), (1, 0, 0.1), (1, 12, 1.0)])
def test_impossible_shares_are_refused(owned: int, total: int, reserve: float) -> None:
    with pytest.raises(ValueError):
        worker_share(owned, total, reserve)
    with pytest.raises(ValueError):
        RateLimiterRegistry().set_share(0.0)
