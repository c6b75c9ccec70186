"""The turn deadline: one value per caller turn, counted from when the telephony side produced the event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from callstream.deadline import Deadline, TurnBudget

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_events_transit_counts_against_the_turn() -> None:
    clock = Clock()
    times = TurnBudget(hold_after_s=0.7, budget_s=4.0).start(NOW - timedelta(seconds=0.3), NOW, clock)
    assert times.hold.remaining() == pytest.approx(0.4)
    assert times.deadline.remaining() == pytest.approx(3.7)


def test_an_old_event_gets_a_hold_at_once_and_a_full_working_window() -> None:
    """After a paused broker (or a telephony clock running behind) the caller hears PLEASE_HOLD at once,
    and the work still gets the budget past the hold threshold, not an instant hand-off."""
    clock = Clock()
    times = TurnBudget(hold_after_s=0.7, budget_s=4.0).start(NOW - timedelta(seconds=20), NOW, clock)
    assert times.hold.remaining() == pytest.approx(0.0)
    assert times.deadline.remaining() == pytest.approx(3.3)


def test_an_event_from_the_future_counts_no_transit() -> None:
    clock = Clock()
    times = TurnBudget().start(NOW + timedelta(seconds=45), NOW, clock)
    assert times.hold.remaining() == pytest.approx(0.7)
    assert times.deadline.remaining() == pytest.approx(4.0)


def test_a_deadline_allows_only_waits_that_end_before_it() -> None:
    clock = Clock()
    deadline = Deadline.after(2.0, clock)
    assert deadline.allows(1.9) and not deadline.allows(2.0)
    clock.now += 2.5
    assert deadline.remaining() == pytest.approx(-0.5) and not deadline.allows(0.0)


@pytest.mark.parametrize(("hold", "budget"), [(0.0, 4.0), (4.0, 4.0), (5.0, 4.0), (-1.0, 4.0)])
def test_a_budget_whose_hold_is_not_inside_it_is_refused(hold: float, budget: float) -> None:
    with pytest.raises(ValueError):
        TurnBudget(hold_after_s=hold, budget_s=budget)
