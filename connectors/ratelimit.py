"""Per-API-key rate limiting: never more than N calls in any rolling window, across all coroutines.

ModMed allows 1,000 calls/min per API key (configurable per key) and answers excess with 429, its only
signal. The limiter is a sliding-window log whose slots are held from the moment a request is sent
until one window after its response arrived: ModMed counted the call somewhere in between, so the
next call that reuses the slot reaches ModMed at least one full window later, whatever the latency.
A GCRA pacer in front spreads the calls evenly (with a small burst for a practice's quiet moments)
instead of sending the whole minute's budget in the first second.

An API key's budget is shared by every process that uses it. Each process takes a **share** of it
(``RateLimiterRegistry.set_share``): a worker takes the fraction of the call-events partitions it owns
(a practice's calls spread over all partitions by call id), less a reserve for background processes
(the review queue's retries), so N workers together never exceed the practice's limit.

A caller's turn has a deadline (``callstream.deadline``): a wait that would end past it — the pacing
queue, a 429 pause — fails at once with ``WaitPastDeadline`` instead of sleeping, so the caller hears an
honest answer in time. Work without a deadline (review-queue retries, exports) waits behind every call
with one: a practice's budget goes to callers on the line first.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from callstream.deadline import Deadline

DEFAULT_WINDOW_S = 60.0
DEFAULT_BURST_FRACTION = 0.05
"""Share of the window's budget that may go out back to back (50 of 1,000/min) before pacing applies."""
MAX_PENALTY_S = 120.0


class WaitPastDeadline(Exception):
    """The key's next free slot comes after the caller's deadline; nothing was sent."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        super().__init__(f"the rate limit's next slot is {wait_s:.2f}s away, past the turn's deadline")


@dataclass(frozen=True, slots=True)
class LimiterStats:
    """Counters for benchmarks, metrics and tests."""

    limit: int
    window_s: float
    sent: int
    in_flight: int
    http_429: int
    paused_until: float


class RateLimiter:
    """One API key's budget: at most ``limit`` calls in any ``window_s`` seconds, shared by every coroutine."""

    def __init__(
        self,
        limit: int,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        burst_fraction: float = DEFAULT_BURST_FRACTION,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError("rate limit must be at least 1 call per window")
        if window_s <= 0:
            raise ValueError("rate-limit window must be positive")
        if not 0 < burst_fraction <= 1:
            raise ValueError("burst_fraction must be in (0, 1]")
        self._configured = limit
        self._share = 1.0
        self._limit = limit
        self._window_s = window_s
        self._burst_fraction = burst_fraction
        self._clock = clock
        self._theoretical_arrival = 0.0
        self._in_flight = 0
        self._released: deque[float] = deque()
        self._lock = asyncio.Lock()
        self._slot_freed = asyncio.Event()
        self._live_waiting = 0
        self._no_live_waiting = asyncio.Event()
        self._no_live_waiting.set()
        self._paused_until = 0.0
        self._consecutive_429 = 0
        self._sent = 0
        self._http_429 = 0

    @property
    def limit(self) -> int:
        return self._limit

    def tighten(self, limit: int) -> None:
        """Lower the budget when another practice shares this key with a smaller configured limit."""
        if 1 <= limit < self._configured:
            self._configured = limit
            self._resize()

    def take_share(self, share: float) -> None:
        """Use ``share`` (0 < share <= 1) of the key's configured budget: the rest belongs to other processes."""
        if not 0 < share <= 1:
            raise ValueError("a rate-budget share must be in (0, 1]")
        self._share = share
        self._resize()

    def _resize(self) -> None:
        self._limit = max(1, int(self._configured * self._share))

    @property
    def _interval(self) -> float:
        return self._window_s / self._limit

    @property
    def _burst(self) -> int:
        return max(1, round(self._limit * self._burst_fraction))

    def stats(self) -> LimiterStats:
        return LimiterStats(
            limit=self._limit,
            window_s=self._window_s,
            sent=self._sent,
            in_flight=self._in_flight,
            http_429=self._http_429,
            paused_until=self._paused_until,
        )

    @asynccontextmanager
    async def slot(self, deadline: Deadline | None = None) -> AsyncIterator[None]:
        """Hold one call's slot while the request is in flight; the window starts when it completes.

        Raises:
            WaitPastDeadline: with a ``deadline``, when the slot would come after it (nothing is sent).
        """
        if deadline is None:
            await self._acquire_background()
        else:
            await self._acquire_live(deadline)
        try:
            yield
        finally:
            self._release()

    def record_429(self, retry_after: float | None) -> float:
        """ModMed said 429: pause every coroutine of this key and return the pause in seconds.

        Retry-After is honoured when present (capped at MAX_PENALTY_S so a hostile header cannot park
        the practice for hours); otherwise the pause doubles from one second per consecutive 429.
        """
        self._http_429 += 1
        self._consecutive_429 += 1
        if retry_after is not None and retry_after >= 0:
            pause = min(retry_after, MAX_PENALTY_S)
        else:
            pause = min(2.0 ** (self._consecutive_429 - 1), MAX_PENALTY_S)
        self._paused_until = max(self._paused_until, self._clock() + pause)
        return pause

    def record_accepted(self) -> None:
        """A response other than 429 arrived: the key is in good standing again."""
        self._consecutive_429 = 0

    async def _acquire_live(self, deadline: Deadline) -> None:
        self._live_waiting += 1
        self._no_live_waiting.clear()
        try:
            # FIFO among waiters (background waiters step aside, below); never queue past the deadline
            try:
                await asyncio.wait_for(self._lock.acquire(), max(0.0, deadline.remaining()))
            except TimeoutError:
                raise WaitPastDeadline(0.0) from None
            try:
                await self._wait_for_slot(deadline)
            finally:
                self._lock.release()
        finally:
            self._live_waiting -= 1
            if not self._live_waiting:
                self._no_live_waiting.set()

    async def _acquire_background(self) -> None:
        while True:
            await self._no_live_waiting.wait()
            async with self._lock:
                if self._live_waiting:
                    continue  # a caller's request arrived while this one queued: it goes first
                if await self._wait_for_slot(None, yield_to_live=True):
                    return

    async def _wait_for_slot(self, deadline: Deadline | None, *, yield_to_live: bool = False) -> bool:
        """Wait (holding the lock) until a call may start, and take it; False if a live call came first."""
        while True:
            now = self._clock()
            delay = self._delay(now)
            if delay is not None and delay <= 0:
                break
            if deadline is not None and (delay is None or not deadline.allows(delay)):
                if delay is not None:
                    raise WaitPastDeadline(delay)
                self._slot_freed.clear()
                try:
                    await asyncio.wait_for(self._slot_freed.wait(), max(0.0, deadline.remaining()))
                except TimeoutError:
                    raise WaitPastDeadline(max(0.0, deadline.remaining())) from None
                continue
            if delay is None:
                self._slot_freed.clear()
                await self._slot_freed.wait()
            else:
                await asyncio.sleep(delay)
            if yield_to_live and self._live_waiting:
                return False
        self._theoretical_arrival = max(self._theoretical_arrival, now) + self._interval
        self._in_flight += 1
        self._sent += 1
        return True

    def _delay(self, now: float) -> float | None:
        """Seconds until a call may start, 0 for now, None for "when an in-flight call completes"."""
        if now < self._paused_until:
            return self._paused_until - now
        horizon = now - self._window_s
        while self._released and self._released[0] <= horizon:
            self._released.popleft()
        if self._in_flight + len(self._released) >= self._limit:
            if not self._released:
                return None
            return self._released[0] - horizon
        tolerance = (self._burst - 1) * self._interval
        return max(0.0, self._theoretical_arrival - tolerance - now)

    def _release(self) -> None:
        self._in_flight -= 1
        self._released.append(self._clock())
        self._slot_freed.set()


def limiter_key(practice_id: str, api_key: str | None) -> str:
    """Limiters are per API key; a digest keeps the key itself out of every dict, repr and log."""
    if api_key:
        return "key:" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:32]
    return "practice:" + practice_id


class RateLimiterRegistry:
    """The process-wide set of limiters, one per API key, created on first use."""

    def __init__(self, *, window_s: float = DEFAULT_WINDOW_S, burst_fraction: float = DEFAULT_BURST_FRACTION) -> None:
        self._window_s = window_s
        self._burst_fraction = burst_fraction
        self._limiters: dict[str, RateLimiter] = {}
        self._share = 1.0

    def limiter(self, practice_id: str, api_key: str | None, limit_per_window: int) -> RateLimiter:
        key = limiter_key(practice_id, api_key)
        existing = self._limiters.get(key)
        if existing is None:
            existing = self._limiters[key] = RateLimiter(
                limit_per_window, window_s=self._window_s, burst_fraction=self._burst_fraction
            )
            existing.take_share(self._share)
        else:
            existing.tighten(limit_per_window)
        return existing

    def set_share(self, share: float) -> None:
        """This process's share of every key's budget, now and for keys first used later."""
        if not 0 < share <= 1:
            raise ValueError("a rate-budget share must be in (0, 1]")
        self._share = share
        for limiter in self._limiters.values():
            limiter.take_share(share)


def worker_share(owned_partitions: int, total_partitions: int, reserve: float) -> float:
    """A worker's share of each practice's budget: its fraction of the call-events partitions, less the
    ``reserve`` kept for background processes. A worker that owns nothing keeps a sliver for calls it is
    still finishing (its partitions were just revoked)."""
    if total_partitions < 1 or not 0 <= owned_partitions <= total_partitions:
        raise ValueError("owned partitions must be between 0 and the topic's partitions")
    if not 0 <= reserve < 1:
        raise ValueError("the background reserve must be in [0, 1)")
    return max(owned_partitions, 1) / total_partitions * (1 - reserve)
