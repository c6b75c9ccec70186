"""Circuit breaker state machine (closed → open → half-open → closed/open)."""

from __future__ import annotations

import pytest

from connectors.breaker import BreakerState, CircuitBreaker


class ManualClock:
    """A clock the test advances, so state changes are exact rather than timed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_and_fails_fast_until_reset() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=10, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.on_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.on_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now += 9.9
    assert not breaker.allow()


def test_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=10, clock=ManualClock())
    breaker.on_failure()
    breaker.on_success()
    breaker.on_failure()
    assert breaker.state is BreakerState.CLOSED


def test_half_open_lets_one_probe_through_and_its_outcome_decides() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=5, clock=clock)
    breaker.on_failure()
    clock.now += 5
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()  # only one probe at a time
    breaker.on_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 5
    assert breaker.allow()
    breaker.on_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow() and breaker.allow()


def test_abandoned_probe_frees_the_probe_slot() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=1, clock=clock)
    breaker.on_failure()
    clock.now += 1
    assert breaker.allow()
    breaker.on_abandon()
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allow()


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(reset_after_s=0)
