"""Drift detector: concrete alarm stories, seeded noise, properties and hostile input."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.models import AlarmKind, AlarmState
from streams.drift import (
    DRIFT_ALARM_KINDS,
    AlarmTransition,
    DriftInputError,
    DriftMonitor,
    DriftThresholds,
    PracticeDriftState,
    WindowStats,
    binomial_upper_tail,
    burst_failure_limit,
)

EPOCH = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=15)
PRACTICES = ("prac-0001", "prac-0002", "prac-0003")


def window(
    practice_id: str,
    index: int,
    attempts: int = 0,
    successes: int | None = None,
    *,
    cs_requests: int = 0,
    cs_escalations: int | None = None,
    bypass_attempts: int = 0,
) -> WindowStats:
    """The `index`-th 15-minute window of a practice; defaults to a quiet, clean window."""
    return WindowStats(
        practice_id=practice_id,
        window_start=EPOCH + index * WINDOW,
        window_end=EPOCH + (index + 1) * WINDOW,
        write_attempts=attempts,
        write_successes=attempts if successes is None else successes,
        cs_requests=cs_requests,
        cs_escalations=cs_requests if cs_escalations is None else cs_escalations,
        bypass_attempts=bypass_attempts,
    )


def healthy_window(rng: random.Random, practice_id: str, index: int, attempts: int) -> WindowStats:
    """Binomial noise at the seeds' healthy 99.6 % write success."""
    successes = sum(rng.random() < 0.996 for _ in range(attempts))
    return window(practice_id, index, attempts, successes)


def kinds_of(transitions: list[AlarmTransition]) -> list[tuple[str, AlarmKind, AlarmState]]:
    return [(t.practice_id, t.kind, t.state) for t in transitions]


def test_twenty_percent_burst_fires_within_its_window_and_clears_after_recovery() -> None:
    rng = random.Random(20260302)
    monitor = DriftMonitor()
    for index in range(40):
        for practice_id in PRACTICES:
            assert monitor.observe(healthy_window(rng, practice_id, index, 120)) == []

    burst = window("prac-0002", 40, 100, 80)
    fired = monitor.observe(burst)
    assert kinds_of(fired) == [("prac-0002", AlarmKind.WRITE_SUCCESS_DRIFT, AlarmState.FIRING)]
    alarm = fired[0]
    assert (alarm.window_start, alarm.window_end) == (burst.window_start, burst.window_end)
    assert alarm.value == pytest.approx(0.8)
    assert 0.8 < alarm.threshold < 0.996
    assert alarm.detail["trigger"] == "burst"
    assert monitor.firing() == [("prac-0002", AlarmKind.WRITE_SUCCESS_DRIFT)]

    # The other practices keep their own state: the same window index stays quiet for them.
    for practice_id in ("prac-0001", "prac-0003"):
        assert monitor.observe(healthy_window(rng, practice_id, 40, 120)) == []

    recovery = [window("prac-0002", 41 + k, 100, 100 - (k % 2)) for k in range(3)]
    assert monitor.observe(recovery[0]) == []
    assert monitor.observe(recovery[1]) == []
    cleared = monitor.observe(recovery[2])
    assert kinds_of(cleared) == [("prac-0002", AlarmKind.WRITE_SUCCESS_DRIFT, AlarmState.CLEARED)]
    assert cleared[0].window_end == recovery[2].window_end
    assert monitor.firing() == []
    for practice_id in ("prac-0001", "prac-0003"):
        state = monitor.practice_state(practice_id)
        assert state is not None and state.firing == frozenset()


def test_burst_fires_from_the_minimum_window_size_but_not_below_it() -> None:
    monitor = DriftMonitor()
    assert monitor.observe(window("prac-0001", 0, 19, 15)) == []
    fired = monitor.observe(window("prac-0001", 1, 20, 16))
    assert kinds_of(fired) == [("prac-0001", AlarmKind.WRITE_SUCCESS_DRIFT, AlarmState.FIRING)]


def baseline_of(monitor: DriftMonitor, practice_id: str) -> float:
    state = monitor.practice_state(practice_id)
    assert state is not None
    return state.baseline_success_rate


def test_a_firing_alarm_holds_through_inconclusive_windows_and_unhealthy_recovery() -> None:
    monitor = DriftMonitor()
    assert len(monitor.observe(window("prac-0001", 0, 50, 40))) == 1
    baseline_at_fire = baseline_of(monitor, "prac-0001")
    assert monitor.observe(window("prac-0001", 1, 5, 5)) == []
    assert monitor.observe(window("prac-0001", 2, 100, 100)) == []
    assert monitor.observe(window("prac-0001", 3, 100, 96)) == []  # unhealthy: streak restarts
    assert monitor.observe(window("prac-0001", 4, 100, 100)) == []
    assert monitor.observe(window("prac-0001", 5, 100, 100)) == []
    assert kinds_of(monitor.observe(window("prac-0001", 6, 100, 100))) == [
        ("prac-0001", AlarmKind.WRITE_SUCCESS_DRIFT, AlarmState.CLEARED)
    ]
    # The baseline did not learn from any window while the alarm was firing.
    assert baseline_of(monitor, "prac-0001") == baseline_at_fire


def test_sustained_drift_is_caught_by_the_cusum_and_holds_until_recovery() -> None:
    rng = random.Random(986)
    monitor = DriftMonitor()
    for index in range(30):
        monitor.observe(healthy_window(rng, "prac-0003", index, 150))
    fired_at = None
    for index in range(30, 90):
        successes = sum(rng.random() < 0.98 for _ in range(150))
        for transition in monitor.observe(window("prac-0003", index, 150, successes)):
            assert transition.state is AlarmState.FIRING, "drift persisted, alarm must not clear"
            fired_at = fired_at or (index, transition.detail["trigger"])
    assert fired_at is not None and fired_at[0] < 45
    assert monitor.firing() == [("prac-0003", AlarmKind.WRITE_SUCCESS_DRIFT)]
    cleared = []
    for index in range(90, 140):
        cleared += monitor.observe(healthy_window(rng, "prac-0003", index, 150))
    assert kinds_of(cleared) == [("prac-0003", AlarmKind.WRITE_SUCCESS_DRIFT, AlarmState.CLEARED)]


def test_healthy_noise_around_the_seed_level_never_flaps() -> None:
    rng = random.Random(996)
    monitor = DriftMonitor()
    transitions = []
    for index in range(600):
        for practice_id in PRACTICES:
            attempts = rng.choice((20, 35, 80, 250))
            transitions += monitor.observe(healthy_window(rng, practice_id, index, attempts))
    assert transitions == []


def test_controlled_substance_escalation_below_100_percent_fires_and_clears() -> None:
    monitor = DriftMonitor()
    assert monitor.observe(window("prac-0001", 0, cs_requests=4)) == []
    fired = monitor.observe(window("prac-0001", 1, cs_requests=5, cs_escalations=4))
    assert kinds_of(fired) == [("prac-0001", AlarmKind.CS_ESCALATION_RATE, AlarmState.FIRING)]
    assert (fired[0].value, fired[0].threshold) == (pytest.approx(0.8), 1.0)
    assert monitor.observe(window("prac-0001", 2, cs_requests=3, cs_escalations=2)) == []
    cleared = monitor.observe(window("prac-0001", 3, cs_requests=2))
    assert kinds_of(cleared) == [("prac-0001", AlarmKind.CS_ESCALATION_RATE, AlarmState.CLEARED)]
    assert cleared[0].value == 1.0


def test_guardrail_bypass_fires_once_and_clears_after_a_quiet_window() -> None:
    monitor = DriftMonitor()
    fired = monitor.observe(window("prac-0002", 0, 30, bypass_attempts=1))
    assert kinds_of(fired) == [("prac-0002", AlarmKind.GUARDRAIL_BYPASS, AlarmState.FIRING)]
    assert (fired[0].value, fired[0].threshold) == (1.0, 0.0)
    assert monitor.observe(window("prac-0002", 1, 30, bypass_attempts=3)) == []
    assert monitor.observe(window("prac-0001", 1, 30)) == []
    cleared = monitor.observe(window("prac-0002", 2))
    assert kinds_of(cleared) == [("prac-0002", AlarmKind.GUARDRAIL_BYPASS, AlarmState.CLEARED)]


def test_one_window_can_raise_several_alarms_in_a_fixed_order() -> None:
    monitor = DriftMonitor()
    fired = monitor.observe(
        window("prac-0001", 0, 40, 20, cs_requests=2, cs_escalations=0, bypass_attempts=2)
    )
    assert [t.kind for t in fired] == [
        AlarmKind.WRITE_SUCCESS_DRIFT,
        AlarmKind.CS_ESCALATION_RATE,
        AlarmKind.GUARDRAIL_BYPASS,
    ]
    assert {kind for _, kind in monitor.firing()} == DRIFT_ALARM_KINDS


def test_redelivered_and_stale_windows_are_ignored() -> None:
    monitor = DriftMonitor()
    first = window("prac-0001", 5, bypass_attempts=1)
    assert len(monitor.observe(first)) == 1
    assert monitor.observe(first) == []
    assert monitor.observe(window("prac-0001", 4)) == []
    assert monitor.firing() == [("prac-0001", AlarmKind.GUARDRAIL_BYPASS)]


def test_binomial_tail_is_exact_at_the_seed_level() -> None:
    assert binomial_upper_tail(4, 20, 0.004) == pytest.approx(1.2e-6, rel=0.05)
    assert binomial_upper_tail(0, 50, 0.004) == 1.0
    assert binomial_upper_tail(51, 50, 0.004) == 0.0
    assert burst_failure_limit(20, 0.996, DriftThresholds()) == 4


@settings(max_examples=60, deadline=None)
@given(
    trials=st.integers(min_value=1, max_value=60),
    failures=st.integers(min_value=0, max_value=60),
    probability=st.sampled_from(
        [Fraction(1, 1000), Fraction(4, 1000), Fraction(1, 50), Fraction(1, 5)]
    ),
)
def test_binomial_tail_matches_exact_rational_sum(
    trials: int, failures: int, probability: Fraction
) -> None:
    exact = sum(
        math.comb(trials, k) * probability**k * (1 - probability) ** (trials - k)
        for k in range(failures, trials + 1)
    )
    computed = binomial_upper_tail(failures, trials, float(probability))
    assert computed == pytest.approx(float(exact), rel=1e-9, abs=1e-300)


window_rows = st.tuples(
    st.sampled_from(PRACTICES),
    st.integers(min_value=0, max_value=150),
    st.floats(min_value=0.0, max_value=1.0),
    st.integers(min_value=0, max_value=4),
    st.integers(min_value=0, max_value=4),
    st.integers(min_value=0, max_value=2),
)


def build_windows(rows: list[tuple[str, int, float, int, int, int]]) -> list[WindowStats]:
    """Turn generated rows into in-order windows (one index per row, all practices interleaved)."""
    windows = []
    for index, (practice_id, attempts, success_share, requests, missed, bypass) in enumerate(rows):
        successes = attempts - round(attempts * (1 - success_share) ** 3)
        windows.append(
            window(
                practice_id,
                index,
                attempts,
                successes,
                cs_requests=requests,
                cs_escalations=max(0, requests - missed),
                bypass_attempts=bypass,
            )
        )
    return windows


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(window_rows, max_size=60))
def test_transitions_alternate_and_practices_are_independent(
    rows: list[tuple[str, int, float, int, int, int]],
) -> None:
    windows = build_windows(rows)
    together = DriftMonitor()
    mixed = [t for w in windows for t in together.observe(w)]

    last_state: dict[tuple[str, AlarmKind], AlarmState] = {}
    for transition in mixed:
        previous = last_state.get((transition.practice_id, transition.kind), AlarmState.CLEARED)
        assert transition.state is not previous
        last_state[(transition.practice_id, transition.kind)] = transition.state

    for practice_id in PRACTICES:
        alone = DriftMonitor()
        own = [t for w in windows if w.practice_id == practice_id for t in alone.observe(w)]
        assert own == [t for t in mixed if t.practice_id == practice_id]

    assert {(p, k) for (p, k), s in last_state.items() if s is AlarmState.FIRING} == set(
        together.firing()
    )


@settings(max_examples=120, deadline=None)
@given(rows=st.lists(window_rows, max_size=50), split=st.integers(min_value=0, max_value=50))
def test_state_survives_a_json_round_trip_mid_stream(
    rows: list[tuple[str, int, float, int, int, int]], split: int
) -> None:
    windows = build_windows(rows)
    uninterrupted = DriftMonitor()
    expected = [t for w in windows for t in uninterrupted.observe(w)]

    before = DriftMonitor()
    got = [t for w in windows[:split] for t in before.observe(w)]
    restored = DriftMonitor.from_dict(json.loads(json.dumps(before.to_dict())))
    got += [t for w in windows[split:] for t in restored.observe(w)]
    assert got == expected
    assert restored.to_dict() == uninterrupted.to_dict()


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(window_rows, max_size=40))
def test_clean_windows_never_fire_and_violations_always_leave_the_alarm_firing(
    rows: list[tuple[str, int, float, int, int, int]],
) -> None:
    monitor = DriftMonitor()
    for w in build_windows(rows):
        transitions = monitor.observe(w)
        firing_now = {kind for pid, kind in monitor.firing() if pid == w.practice_id}
        if w.write_successes == w.write_attempts:
            assert AlarmKind.WRITE_SUCCESS_DRIFT not in {
                t.kind for t in transitions if t.state is AlarmState.FIRING
            }
        assert (AlarmKind.CS_ESCALATION_RATE in firing_now) == (w.cs_escalations < w.cs_requests)
        assert (AlarmKind.GUARDRAIL_BYPASS in firing_now) == (w.bypass_attempts > 0)


def test_practice_state_round_trips_through_a_table_value() -> None:
    monitor = DriftMonitor()
    monitor.observe(window("prac-0001", 0, 40, 30, bypass_attempts=1))
    state = monitor.practice_state("prac-0001")
    assert state is not None
    assert PracticeDriftState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    fresh = DriftMonitor()
    fresh.restore_practice("prac-0001", state)
    assert fresh.firing() == monitor.firing()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"write_successes": 11}, "write_successes exceeds write_attempts"),
        ({"cs_escalations": 3}, "cs_escalations exceeds cs_requests"),
        ({"write_attempts": -1}, "write_attempts must be a non-negative integer"),
        ({"bypass_attempts": True}, "bypass_attempts must be a non-negative integer"),
        ({"cs_requests": 2.0}, "cs_requests must be a non-negative integer"),
        ({"practice_id": "Jane Doe 1980-02-03"}, "practice_id must be"),
        ({"practice_id": ""}, "practice_id must be"),
        (
            {"window_start": datetime(2026, 3, 2, 8, 0)},
            "window_start must be a timezone-aware datetime",
        ),
        (
            {"window_end": "2026-03-02T08:15:00+00:00"},
            "window_end must be a timezone-aware datetime",
        ),
        ({"window_end": EPOCH}, "window_end must be after window_start"),
    ],
)
def test_malformed_window_aggregates_are_refused(changes: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "practice_id": "prac-0001",
        "window_start": EPOCH,
        "window_end": EPOCH + WINDOW,
        "write_attempts": 10,
        "write_successes": 10,
        "cs_requests": 2,
        "cs_escalations": 2,
        "bypass_attempts": 0,
    }
    fields.update(changes)
    with pytest.raises(DriftInputError, match=message):
        WindowStats(**fields)  # type: ignore[arg-type]


def test_observe_refuses_anything_but_window_stats() -> None:
    with pytest.raises(DriftInputError, match="takes a WindowStats"):
        DriftMonitor().observe({"practice_id": "prac-0001"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"min_window_attempts": 0},
        {"burst_false_alarm_probability": 0.0},
        {"healthy_window_probability": 1e-7},
        {"baseline_floor": 0.999},
        {"clear_after_healthy_windows": 0},
    ],
)
def test_thresholds_that_would_break_the_detector_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(DriftInputError, match="invalid drift thresholds"):
        DriftThresholds(**changes)


def valid_practice_state() -> dict[str, object]:
    return {
        "baseline_success_rate": 0.996,
        "cusum": 0.0,
        "last_window_end": "2026-03-02T08:15:00+00:00",
        "healthy_windows_while_firing": 0,
        "firing": ["GUARDRAIL_BYPASS"],
    }


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.pop("cusum"), "lacks cusum"),
        (lambda s: s.update(baseline_success_rate=float("nan")), "finite number"),
        (lambda s: s.update(baseline_success_rate=1.5), "out-of-range"),
        (lambda s: s.update(cusum=-1), "out-of-range"),
        (lambda s: s.update(firing=["DROP TABLE"]), "unknown alarm kind"),
        (lambda s: s.update(firing="GUARDRAIL_BYPASS"), "list of alarm kinds"),
        (lambda s: s.update(last_window_end="2026-03-02T08:15:00"), "must carry a timezone"),
        (lambda s: s.update(last_window_end="yesterday"), "not an ISO-8601 timestamp"),
        (lambda s: s.update(healthy_windows_while_firing=True), "non-negative integer"),
    ],
)
def test_corrupt_stored_state_is_refused(mutate, message: str) -> None:  # noqa: ANN001
    state = valid_practice_state()
    mutate(state)
    with pytest.raises(DriftInputError, match=message):
        DriftMonitor.from_dict({"version": 1, "practices": {"prac-0001": state}})


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        {"version": 2, "practices": {}},
        {"version": 1},
        {"version": 1, "practices": {"bad id!": valid_practice_state()}},
    ],
)
def test_corrupt_monitor_documents_are_refused(document: object) -> None:
    with pytest.raises(DriftInputError):
        DriftMonitor.from_dict(document)
