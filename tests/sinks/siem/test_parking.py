"""Issue 18: SIEM outages of minutes to days, against a real broker and real signature-checking receivers.

Hours pass on an injected clock (`ScaledClock`): the firehose's schedule and horizon run on it,
while Kafka, HTTP and the receivers run in real time.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from datetime import timedelta

import pytest

from callstream.backends import ensure_topics
from callstream.retry import Backoff
from callstream.siem_delivery import SiemOutcome
from sinks.backlog import DeliverySchedule
from sinks.redeliver import redeliver_practice
from sinks.siem.firehose import SiemFirehose
from sinks.siem.outcomes import DeliveryTally
from sinks.siem.policy import SiemPolicy
from tests.sinks.audit_helpers import (
    BASE_TIME,
    SiemReceiver,
    committed_offsets,
    make_event,
    new_secret_text,
    produce_events,
    read_dead_letters,
    run_in_thread,
    tenant_directory,
    wait_until,
)

FAST_RETRIES = Backoff(base_s=0.005, cap_s=0.05)


class ScaledClock:
    """Wall time running `factor` times faster than real time, from now on."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self._wall = time.time()
        self._start = time.monotonic()

    def now(self) -> float:
        return self._wall + (time.monotonic() - self._start) * self.factor

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.factor)


class Setup:
    """One partition shared by a failing practice and a healthy one, their receivers and a firehose factory."""

    def __init__(self, bootstrap: str, topic: str, monkeypatch: pytest.MonkeyPatch, receiver: SiemReceiver) -> None:
        self.bootstrap, self.topic, self.receiver = bootstrap, topic, receiver
        self.dead_letters = f"{topic}-dlq"
        self.group = f"siem-{uuid.uuid4().hex[:8]}"
        ensure_topics(bootstrap, [(topic, 1), (self.dead_letters, 1)])
        rng = random.Random(18)
        endpoints = {}
        for index, practice_id in enumerate(("down-clinic", "healthy-clinic")):
            secret = new_secret_text(rng)
            monkeypatch.setenv(f"OUTAGE_SECRET_{index}", secret)
            receiver.add_practice(practice_id, secret, seed=index)
            endpoints[practice_id] = (receiver.url(practice_id), f"env:OUTAGE_SECRET_{index}", "ocsf")
        self.tenants = tenant_directory(endpoints)
        self.produced: dict[str, list[str]] = {"down-clinic": [], "healthy-clinic": []}
        self.sent_at: dict[str, float] = {}
        self.index = 0

    def firehose(self, clock: ScaledClock, schedule: DeliverySchedule, tally: DeliveryTally,
                 alarms: list[tuple[str, bool]] | None = None) -> SiemFirehose:
        policy = SiemPolicy(max_attempts=3, backoff=FAST_RETRIES, request_timeout_s=5.0, commit_interval_s=0.1,
                            drain_timeout_s=2.0, schedule=schedule)
        return SiemFirehose(self.tenants, bootstrap=self.bootstrap, topic=self.topic, group_id=self.group,
                            dead_letter_topic=self.dead_letters, policy=policy, metrics=tally, clock=clock,
                            rng=random.Random(5), alarm_topic=f"{self.topic}-alarms",
                            on_alarm=None if alarms is None else lambda *transition: alarms.append(transition))

    def send(self, rounds: int) -> int:
        """One event of each practice per round; returns the partition's log end."""
        events = []
        for _ in range(rounds):
            for practice_id in self.produced:
                event = make_event(practice_id, self.index)
                self.index += 1
                self.produced[practice_id].append(str(event.event_id))
                events.append(event)
        produced = produce_events(self.bootstrap, self.topic, events)
        now = time.monotonic()
        self.sent_at.update((str(event.event_id), now) for event in events)
        return produced.ends[0]

    def send_for(self, seconds: float, every_s: float = 0.05) -> threading.Thread:
        """Keep producing in the background for `seconds` of real time."""
        def loop() -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                self.send(1)
                time.sleep(every_s)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread

    def delivered_once_in_order(self, practice_id: str) -> bool:
        return self.receiver.practices[practice_id].unique() == self.produced[practice_id]

    def healthy_latencies(self) -> list[float]:
        arrivals = self.receiver.practices["healthy-clinic"].arrivals
        return [arrivals[event_id] - self.sent_at[event_id] for event_id in self.produced["healthy-clinic"]
                if event_id in self.sent_at]


@pytest.mark.broker
def test_a_ten_minute_outage_delivers_everything_once_in_order_and_never_holds_up_another_practice(
    kafka_bootstrap: str, topic_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ScaledClock(600)  # ten minutes in one second
    with SiemReceiver(reject_rate=0.0) as receiver:
        setup = Setup(kafka_bootstrap, topic_name, monkeypatch, receiver)
        down = receiver.practices["down-clinic"]
        tally = DeliveryTally()
        alarms: list[tuple[str, bool]] = []
        with run_in_thread(setup.firehose(clock, DeliverySchedule(), tally, alarms).run):
            setup.send(5)
            wait_until(lambda: setup.delivered_once_in_order("down-clinic"), 15, "the first events, before the outage")
            setup.sent_at.clear()  # latencies from here on: the consumer has joined its group
            down.mode = "down"
            outage_ends = time.monotonic() + 1.0
            setup.send_for(0.9).join()
            end = setup.send(1)
            wait_until(lambda: committed_offsets(kafka_bootstrap, setup.group, topic_name, 1) == {0: end}, 10,
                       "offsets committed past the parked practice")
            assert len(down.unique()) == 5, "committed while the failing practice's events are still owed"
            assert setup.delivered_once_in_order("healthy-clinic")
            time.sleep(max(0.0, outage_ends - time.monotonic()))
            down.mode = "flaky"
            setup.send_for(1.0).join()
            wait_until(lambda: setup.delivered_once_in_order("down-clinic"), 20,
                       "every event of the recovered practice, once, in order")
            wait_until(lambda: setup.delivered_once_in_order("healthy-clinic"), 10, "every healthy event")
            wait_until(lambda: len(alarms) == 2, 10, "SIEM_DELIVERY fired past 15 minutes and cleared once caught up")

    assert alarms == [("down-clinic", True), ("down-clinic", False)]
    assert receiver.bad_signatures == 0 and receiver.cross_deliveries == 0
    assert max(setup.healthy_latencies()) < 1.0, "the healthy practice waited on the failing one"
    assert tally.total(SiemOutcome.FAILED) == 0 and tally.total(SiemOutcome.DISABLED) == 0
    assert tally.total(SiemOutcome.DELIVERED) == len(setup.produced["down-clinic"]) + len(setup.produced["healthy-clinic"])
    assert read_dead_letters(kafka_bootstrap, setup.dead_letters, expected=0, quiet_s=0.5) == []


@pytest.mark.broker
def test_a_parked_practice_resumes_after_a_sinks_restart(
    kafka_bootstrap: str, topic_name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sinks.siem")
    clock = ScaledClock(600)
    with SiemReceiver(reject_rate=0.0) as receiver:
        setup = Setup(kafka_bootstrap, topic_name, monkeypatch, receiver)
        receiver.practices["down-clinic"].mode = "down"
        end = setup.send(20)
        with run_in_thread(setup.firehose(clock, DeliverySchedule(), DeliveryTally()).run):
            wait_until(lambda: committed_offsets(kafka_bootstrap, setup.group, topic_name, 1) == {0: end}, 15,
                       "everything committed, the failing practice parked")
        assert receiver.practices["down-clinic"].unique() == []
        end = setup.send(10)  # while no sink runs
        receiver.practices["down-clinic"].mode = "flaky"
        with run_in_thread(setup.firehose(clock, DeliverySchedule(), DeliveryTally()).run):
            wait_until(lambda: setup.delivered_once_in_order("down-clinic"), 30,
                       "the parked practice's 30 events after the restart, once, in order")
            wait_until(lambda: setup.delivered_once_in_order("healthy-clinic"), 10, "every healthy event")
    assert "SIEM practice down-clinic resumed parked at partition 0 offset 0" in caplog.text


@pytest.mark.broker
def test_a_fifty_hour_outage_loses_nothing_and_retries_on_the_hours_schedule(
    kafka_bootstrap: str, topic_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ScaledClock(36_000)  # ten hours in one second
    with SiemReceiver(reject_rate=0.0) as receiver:
        setup = Setup(kafka_bootstrap, topic_name, monkeypatch, receiver)
        down = receiver.practices["down-clinic"]
        down.mode = "down"
        tally = DeliveryTally()
        with run_in_thread(setup.firehose(clock, DeliverySchedule(), tally).run):
            setup.send_for(2.0, every_s=0.2).join()
            time.sleep(3.0)  # 50 h down in all
            attempts_while_down = down.requests
            down.mode = "flaky"
            wait_until(lambda: setup.delivered_once_in_order("down-clinic"), 20,
                       "every event of a practice down for 50 hours, once, in order")
    # 3 live attempts, then after 30 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, 10 h, 10 h: about a dozen, not thousands
    assert 6 <= attempts_while_down <= 16
    assert tally.total(SiemOutcome.FAILED) == 0
    assert setup.delivered_once_in_order("healthy-clinic")


@pytest.mark.broker
def test_past_the_horizon_the_backlog_is_dead_lettered_and_redeliver_sends_exactly_that_range(
    kafka_bootstrap: str, topic_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ScaledClock(36_000)
    schedule = DeliverySchedule(horizon_s=10 * 3600.0)  # a 10-hour horizon: one second here
    with SiemReceiver(reject_rate=0.0) as receiver:
        setup = Setup(kafka_bootstrap, topic_name, monkeypatch, receiver)
        down = receiver.practices["down-clinic"]
        down.mode = "down"
        tally = DeliveryTally()
        with run_in_thread(setup.firehose(clock, schedule, tally).run):
            setup.send(12)
            wait_until(lambda: tally.total(SiemOutcome.FAILED, "down-clinic") == 12, 20,
                       "the backlog dead-lettered once the endpoint failed for 10 hours")
            down.mode = "flaky"
            setup.send(3)  # after the endpoint is back: delivered live
            wait_until(lambda: len(down.unique()) == 3, 20, "the events after the outage")
        lost = setup.produced["down-clinic"][:12]
        assert down.unique() == setup.produced["down-clinic"][12:]
        letters = read_dead_letters(kafka_bootstrap, setup.dead_letters, expected=12, quiet_s=0.5)
        assert sorted(letter.error_class for letter in letters) == ["OutageHorizonPassed"] * 12

        # A sub-range first: the events are 1 s apart in event time, every other one is down-clinic's.
        first, last = 4, 8  # indices among down-clinic's 12 lost events
        since, until = BASE_TIME + timedelta(seconds=2 * first), BASE_TIME + timedelta(seconds=2 * last)
        report = redeliver_practice(kafka_bootstrap, setup.tenants, "down-clinic", since=since, until=until,
                                    topic=setup.dead_letters, audit_topic=topic_name, idle_s=0.5)
        assert (report.matched, report.delivered, report.failed_event_ids) == (4, 4, ())
        assert down.unique() == setup.produced["down-clinic"][12:] + lost[first:last]

        report = redeliver_practice(kafka_bootstrap, setup.tenants, "down-clinic", topic=setup.dead_letters,
                                    audit_topic=topic_name, idle_s=0.5)
        assert (report.matched, report.delivered) == (12, 12)
        assert sorted(down.unique()) == sorted(setup.produced["down-clinic"])
        assert down.processed.count(lost[first]) == 2, "re-sent with the same webhook-id: the receiver de-duplicates"
        assert receiver.bad_signatures == 0 and receiver.id_mismatches == 0
        assert len(receiver.practices["healthy-clinic"].unique()) == 15
