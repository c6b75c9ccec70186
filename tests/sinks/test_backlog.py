"""The pure core of durable SIEM delivery: schedule, horizon, backlog records, outage alarms."""

from __future__ import annotations

import pytest

from sinks.backlog import (
    AlarmTransition,
    Backlog,
    BacklogRecordError,
    DeliverySchedule,
    OutageAlarms,
    latest_backlogs,
)

HOUR = 3600.0


def test_the_schedule_goes_from_seconds_to_minutes_to_hours_and_then_repeats_ten_hours() -> None:
    schedule = DeliverySchedule()
    assert [schedule.delay(n) for n in range(1, 9)] == [30, 300, 1800, 2 * HOUR, 5 * HOUR, 10 * HOUR, 10 * HOUR,
                                                         10 * HOUR]
    assert schedule.delay(1, retry_after_s=600) == 600, "a longer Retry-After is honoured"
    assert schedule.delay(1, retry_after_s=10**9) == 10 * HOUR, "up to a cap"
    with pytest.raises(ValueError):
        DeliverySchedule(backlog_delays_s=())


def test_the_horizon_counts_an_unbroken_run_of_failures_only() -> None:
    schedule = DeliverySchedule(horizon_s=72 * HOUR)
    assert not schedule.past_horizon(None, 10**9)
    assert not schedule.past_horizon(0.0, 72 * HOUR - 1)
    assert schedule.past_horizon(0.0, 72 * HOUR)
    assert schedule.wake_at(100 * HOUR, 0.0) == 72 * HOUR, "wake at the horizon when the next attempt is later"
    assert schedule.wake_at(5 * HOUR, None) == 5 * HOUR


def test_a_backlog_walks_through_failures_a_recovery_and_dead_letters() -> None:
    schedule = DeliverySchedule()
    parked = Backlog.park("p1", 3, 40, failed_since=1000.0, now=1005.0, schedule=schedule, pending=4)
    assert (parked.resume_offset, parked.failures, parked.next_attempt_at, parked.pending) == (40, 1, 1035.0, 4)
    failed = parked.failed(1035.0, schedule)
    assert (failed.failures, failed.next_attempt_at, failed.failing_since) == (2, 1335.0, 1000.0)
    delivered = failed.settled(40, 1335.0, delivered=True)
    assert (delivered.resume_offset, delivered.failures, delivered.failing_since, delivered.pending) == (41, 0, None, 3)
    assert delivered.next_attempt_at == 1335.0, "the rest of the backlog goes at once"
    refailed = delivered.failed(1336.0, schedule)
    assert (refailed.failing_since, refailed.waiting_since) == (1336.0, 1000.0), "the horizon restarts, the age not"
    dropped = refailed.settled(44, 1400.0, delivered=False)
    assert (dropped.resume_offset, dropped.failing_since, dropped.failures) == (45, 1336.0, 1)
    assert dropped.passed_over(40).resume_offset == 45 and dropped.passed_over(50).resume_offset == 51
    assert dropped.age_s(1600.0) == 600.0


def test_backlog_records_round_trip_and_refuse_garbage_without_echoing_it() -> None:
    backlog = Backlog("p1", 2, 17, 1.5, None, 3, 99.0, 12)
    assert Backlog.decode("p1", backlog.encode()) == backlog
    for value in (b"not json", b'{"v": 2}', b'{"v": 1, "partition": "x"}', b"[]"):
        with pytest.raises(BacklogRecordError) as caught:
            Backlog.decode("p1", value)
        assert "not json" not in str(caught.value)


def test_the_last_record_per_practice_wins_and_a_tombstone_deletes() -> None:
    records = [("a", b"1"), ("b", b"2"), ("a", None), ("b", b"3"), ("c", None)]
    assert latest_backlogs(records) == {"b": b"3"}


def test_the_outage_alarm_fires_once_past_the_threshold_and_clears_once_caught_up() -> None:
    alarms = OutageAlarms(threshold_s=900)
    assert alarms.observe("p1", 100.0) is None
    assert alarms.observe("p1", 900.0) is AlarmTransition.FIRING
    assert alarms.observe("p1", 5000.0) is None
    assert alarms.observe("p2", None) is None
    assert alarms.observe("p1", None) is AlarmTransition.CLEARED
    assert alarms.observe("p1", None) is None
