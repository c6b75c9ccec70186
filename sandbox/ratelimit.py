"""Sliding-window rate limit per API key (ModMed: 1,000 calls/min per key, configurable).

A sliding 60-second log rather than a fixed window: a careful client pacing itself at
95% of the limit never trips it, while a burst at a window edge cannot double its quota.
Refused calls are not counted, so a client that backs off for Retry-After recovers.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

WINDOW_SECONDS = 60.0


class SlidingWindowLimiter:
    """Admits at most `limit` calls in any `WINDOW_SECONDS` interval."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._calls: deque[float] = deque()
        self._lock = threading.Lock()

    def _evict(self, now: float) -> None:
        while self._calls and self._calls[0] <= now - WINDOW_SECONDS:
            self._calls.popleft()

    def try_acquire(self, limit: int) -> int | None:
        """None when admitted; otherwise the whole seconds to wait (Retry-After)."""
        with self._lock:
            now = self._clock()
            self._evict(now)
            if len(self._calls) >= limit:
                wait = self._calls[len(self._calls) - limit] + WINDOW_SECONDS - now
                return max(1, math.ceil(wait))
            self._calls.append(now)
            return None

    def in_window(self) -> int:
        with self._lock:
            self._evict(self._clock())
            return len(self._calls)


class RateLimits:
    """One limiter per API key (or certified client id)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._limiters: dict[str, SlidingWindowLimiter] = {}
        self._lock = threading.Lock()

    def limiter(self, key: str) -> SlidingWindowLimiter:
        with self._lock:
            if key not in self._limiters:
                self._limiters[key] = SlidingWindowLimiter(self._clock)
            return self._limiters[key]
