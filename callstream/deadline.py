"""The caller's turn deadline: one value from the call event to every wait on its behalf.

A caller on the line waits for each turn. The processor computes the turn's deadline when it starts the
work and hands it down in the work's scope (``callstream.work_scope.WorkScope``); the connectors check it
before every wait they control — the rate limiter's pacing and 429 pause, back-off between retries, the
token fetch, the HTTP exchange — and fail fast with a typed error when the wait cannot end in time,
instead of sleeping past the caller's patience. Work without a caller (review-queue retries, exports,
pollers) runs without a deadline, and the rate limiter serves it after every live call waiting on the
same practice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

DEFAULT_HOLD_AFTER_S = 0.7
"""No reply by then (after the event was produced): the caller hears PLEASE_HOLD at once."""
DEFAULT_TURN_BUDGET_S = 4.0
"""No answer by then: the caller hears an honest closed-set reply and the work is handed to staff."""


@dataclass(frozen=True, slots=True)
class Deadline:
    """A point on the monotonic clock by which the work must be done."""

    at: float
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock)

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - self.clock()

    def allows(self, wait_s: float) -> bool:
        """Whether a wait of ``wait_s`` seconds still ends before the deadline."""
        return self.clock() + wait_s < self.at


@dataclass(frozen=True, slots=True)
class TurnTimes:
    """When a turn's caller hears PLEASE_HOLD, and the deadline of its work."""

    hold: Deadline
    deadline: Deadline


@dataclass(frozen=True, slots=True)
class TurnBudget:
    """How long a caller waits per turn, counted from when the telephony side produced the event."""

    hold_after_s: float = DEFAULT_HOLD_AFTER_S
    budget_s: float = DEFAULT_TURN_BUDGET_S

    def __post_init__(self) -> None:
        if not 0 < self.hold_after_s < self.budget_s:
            raise ValueError("the turn budget needs 0 < hold_after_s < budget_s")

    def start(self, produced_at: datetime, now: datetime, clock: Callable[[], float] = time.monotonic) -> TurnTimes:
        """The turn's times on the monotonic clock.

        The event's transit (produced → now) counts against the budget, but at most ``hold_after_s`` of it:
        the two clocks may disagree, and after a paused broker the caller is better served by a hold message
        at once and a full working window than by an instant hand-off; a produced time in the future counts
        as no transit."""
        transit = min(max((now - produced_at).total_seconds(), 0.0), self.hold_after_s)
        started = clock() - transit
        return TurnTimes(Deadline(started + self.hold_after_s, clock), Deadline(started + self.budget_s, clock))
