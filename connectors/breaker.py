"""Per-practice circuit breaker: a practice whose ModMed keeps failing is failed fast.

Callers are on the phone; waiting out timeouts against a dead tenant wastes their turn budget and ties
up connections other practices need. After ``failure_threshold`` consecutive transient failures the
circuit opens; after ``reset_after_s`` one probe is let through (half-open) and its outcome decides.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker with a single half-open probe."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_after_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_after_s <= 0:
            raise ValueError("reset_after_s must be positive")
        self._failure_threshold = failure_threshold
        self._reset_after_s = reset_after_s
        self._clock = clock
        self._consecutive_failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self._reset_after_s:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allow(self) -> bool:
        """Whether a call may go out now; in half-open state only one probe at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN or self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def on_success(self) -> None:
        """ModMed answered (any status that is not a server-side failure): close the circuit."""
        self._consecutive_failures = 0
        self._opened_at = None
        self._probe_in_flight = False

    def on_failure(self) -> None:
        """A transient failure (5xx, timeout, connection): count it, (re)open when over the threshold."""
        self._consecutive_failures += 1
        was_probe = self._probe_in_flight
        self._probe_in_flight = False
        if was_probe or self._consecutive_failures >= self._failure_threshold:
            self._opened_at = self._clock()

    def on_abandon(self) -> None:
        """The call ended without an outcome (cancelled): free the probe slot, change nothing else."""
        self._probe_in_flight = False
