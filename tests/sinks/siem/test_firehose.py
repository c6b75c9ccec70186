"""Issue 7 acceptance for the SIEM firehose, against a real receiver that verifies every signature."""

from __future__ import annotations

import itertools
import logging
import random
import time
import uuid

import pytest

from callstream.backends import ensure_topics
from callstream.retry import Backoff
from callstream.siem_delivery import SiemOutcome
from sinks.backlog import DeliverySchedule
from sinks.siem.firehose import SiemFirehose
from sinks.siem.outcomes import DeliveryTally
from sinks.siem.policy import SiemPolicy
from tests.sinks.audit_helpers import (
    Produced,
    SiemReceiver,
    committed_offsets,
    encode,
    make_event,
    new_secret_text,
    produce,
    produce_events,
    read_dead_letters,
    run_in_thread,
    tenant_directory,
    wait_until,
)

PARTITIONS = 4
FAST_RETRIES = Backoff(base_s=0.005, cap_s=0.05)


def _firehose(tenants, bootstrap: str, topic: str, dead_letters: str, tally: DeliveryTally,  # type: ignore[no-untyped-def]
              max_attempts: int, max_pending: int = 10_000,
              schedule: DeliverySchedule = DeliverySchedule()) -> tuple[SiemFirehose, str]:
    group = f"siem-{uuid.uuid4().hex[:8]}"
    policy = SiemPolicy(max_attempts=max_attempts, backoff=FAST_RETRIES, request_timeout_s=5.0, commit_interval_s=0.1,
                        drain_timeout_s=2.0, max_pending=max_pending, schedule=schedule)
    firehose = SiemFirehose(tenants, bootstrap=bootstrap, topic=topic, group_id=group, dead_letter_topic=dead_letters,
                            policy=policy, metrics=tally, rng=random.Random(11))
    return firehose, group


@pytest.mark.broker
def test_flaky_receivers_end_with_every_event_exactly_once_per_practice(
    kafka_bootstrap: str, topic_name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sinks.siem")
    dead_letters = f"{topic_name}-dlq"
    ensure_topics(kafka_bootstrap, [(topic_name, PARTITIONS), (dead_letters, 1)])
    practices = [f"practice-{index}" for index in range(8)]
    rng = random.Random(2026)
    with SiemReceiver(reject_rate=0.3) as receiver:
        endpoints = {}
        for index, practice_id in enumerate(practices):
            secret = new_secret_text(rng)
            monkeypatch.setenv(f"SIEM_SECRET_{index}", secret)
            receiver.add_practice(practice_id, secret, seed=index)
            endpoints[practice_id] = (receiver.url(practice_id), f"env:SIEM_SECRET_{index}",
                                      "ocsf" if index % 2 else "splunk_hec")
        produced_ids: dict[str, list[str]] = {practice_id: [] for practice_id in practices}
        events = []
        for index, practice_id in itertools.islice(zip(itertools.count(), itertools.cycle(practices)), 400):
            event = make_event(practice_id, index)
            produced_ids[practice_id].append(str(event.event_id))
            events.append(event)
        produced = produce_events(kafka_bootstrap, topic_name, events)
        tally = DeliveryTally()
        firehose, group = _firehose(tenant_directory(endpoints), kafka_bootstrap, topic_name, dead_letters, tally,
                                    max_attempts=12, max_pending=40)
        with run_in_thread(firehose.run):
            wait_until(lambda: sum(len(p.unique()) for p in receiver.practices.values()) == 400, 60,
                       "400 distinct events at the receivers")
            wait_until(lambda: committed_offsets(kafka_bootstrap, group, topic_name, PARTITIONS)
                       == {partition: produced.ends.get(partition, 0) for partition in range(PARTITIONS)},
                       15, "offsets committed up to the log end")

    assert receiver.bad_signatures == 0 and receiver.cross_deliveries == 0 and receiver.id_mismatches == 0
    for practice_id in practices:
        seen = receiver.practices[practice_id]
        assert seen.unique() == produced_ids[practice_id], f"{practice_id}: missing, foreign or out-of-order events"
        assert seen.rejected > 0
    processed = sum(len(p.processed) for p in receiver.practices.values())
    assert processed > 400, "no delivery was repeated, so de-duplication was never exercised"
    assert tally.total(SiemOutcome.DELIVERED) == 400
    assert tally.total(SiemOutcome.RETRIED) == sum(p.rejected for p in receiver.practices.values())
    assert tally.total(SiemOutcome.FAILED) == 0 and tally.total(SiemOutcome.DISABLED) == 0
    assert read_dead_letters(kafka_bootstrap, dead_letters, expected=0) == []
    assert "SIEM firehose paused" in caplog.text, "400 events against max_pending=40 must have applied backpressure"


@pytest.mark.broker
def test_gone_endpoints_are_disabled_and_outages_past_the_horizon_dead_letter(
    kafka_bootstrap: str, topic_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_letters = f"{topic_name}-dlq"
    ensure_topics(kafka_bootstrap, [(topic_name, PARTITIONS), (dead_letters, 1)])
    rng = random.Random(7)
    with SiemReceiver(reject_rate=0.0) as receiver:
        endpoints: dict[str, tuple[str, str, str] | None] = {}
        for index, (practice_id, mode) in enumerate([("gone-practice", "gone"), ("down-practice", "down"),
                                                     ("healthy-practice", "flaky")]):
            secret = new_secret_text(rng)
            monkeypatch.setenv(f"SIEM_SECRET_{index}", secret)
            receiver.add_practice(practice_id, secret, mode=mode)
            endpoints[practice_id] = (receiver.url(practice_id), f"env:SIEM_SECRET_{index}", "ocsf")
        endpoints["no-siem-practice"] = None
        endpoints["bad-secret-practice"] = ("http://127.0.0.1:9/never", "env:SIEM_SECRET_UNSET", "ocsf")
        monkeypatch.delenv("SIEM_SECRET_UNSET", raising=False)
        events = [make_event(practice_id, index) for index in range(4)
                  for practice_id in ("gone-practice", "down-practice", "healthy-practice", "no-siem-practice",
                                      "bad-secret-practice", "not-in-directory")]
        messages = Produced()
        messages.add(produce_events(kafka_bootstrap, topic_name, events))
        mislabelled = make_event("healthy-practice", 99)
        messages.add(produce(kafka_bootstrap, topic_name, [
            (b"gone-practice", encode(mislabelled)),  # key names another practice: never guess
            (b"healthy-practice", b"\xc3\x01truncated"),
        ]))
        tally = DeliveryTally()
        firehose, group = _firehose(tenant_directory(endpoints), kafka_bootstrap, topic_name, dead_letters, tally,
                                    max_attempts=3, schedule=DeliverySchedule(backlog_delays_s=(0.1,), horizon_s=0.5))
        with run_in_thread(firehose.run):
            wait_until(lambda: committed_offsets(kafka_bootstrap, group, topic_name, PARTITIONS)
                       == {partition: messages.ends.get(partition, 0) for partition in range(PARTITIONS)},
                       30, "every message settled and committed")
            wait_until(lambda: tally.total(SiemOutcome.FAILED, "down-practice") == 4, 30,
                       "the down practice's backlog dead-lettered past the horizon")

    gone, down, healthy = (receiver.practices[p] for p in ("gone-practice", "down-practice", "healthy-practice"))
    assert gone.requests == 1, "a 410 endpoint must not be called again"
    assert firehose.endpoints.disabled == {"gone-practice": "endpoint answered 410 Gone"}
    # Three live attempts, then at least one parked retry before the 0.5 s horizon (how many fit depends on load).
    assert down.requests >= 3 + 1, "three live attempts, then parked attempts until the horizon passed"
    assert len(healthy.unique()) == 4 and str(mislabelled.event_id) not in healthy.unique()
    assert receiver.bad_signatures == 0 and receiver.cross_deliveries == 0
    assert tally.total(SiemOutcome.DISABLED, "gone-practice") == 4
    assert tally.total(SiemOutcome.FAILED, "down-practice") == 4
    assert tally.total(SiemOutcome.RETRIED, "down-practice") == down.requests
    assert tally.total(SiemOutcome.FAILED, "bad-secret-practice") == 4

    letters = read_dead_letters(kafka_bootstrap, dead_letters, expected=14)
    by_class: dict[str, list] = {}  # type: ignore[type-arg]
    for letter in letters:
        by_class.setdefault(letter.error_class, []).append(letter)
    assert {(letter.practice_id, letter.attempts) for letter in by_class["EndpointGone"]} == {("gone-practice", 1)}
    assert len(by_class["EndpointDisabled"]) == 3
    horizon_letters = by_class["OutageHorizonPassed"]
    assert [letter.practice_id for letter in horizon_letters] == ["down-practice"] * 4
    assert all("outage horizon" in letter.reason and letter.attempts >= 2 for letter in horizon_letters)
    assert len(by_class["WebhookSecretError"]) == 4
    assert all("SIEM_SECRET_UNSET" in letter.reason for letter in by_class["WebhookSecretError"])
    assert [letter.reason for letter in by_class["PracticeKeyMismatch"]] == ["message key does not match the event's practice_id"]
    assert by_class["PracticeKeyMismatch"][0].key == b"gone-practice"
    assert len(by_class["SchemaError"]) == 1 and by_class["SchemaError"][0].practice_id is None
    assert len(letters) == 14
    assert all(letter.source_topic == topic_name for letter in letters)


@pytest.mark.broker
def test_a_second_firehose_joining_and_leaving_loses_and_crosses_nothing(
    kafka_bootstrap: str, topic_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_letters = f"{topic_name}-dlq"
    ensure_topics(kafka_bootstrap, [(topic_name, PARTITIONS), (dead_letters, 1)])
    practices = [f"clinic-{index}" for index in range(6)]
    rng = random.Random(99)
    with SiemReceiver(reject_rate=0.3) as receiver:
        endpoints = {}
        for index, practice_id in enumerate(practices):
            secret = new_secret_text(rng)
            monkeypatch.setenv(f"REBALANCE_SECRET_{index}", secret)
            receiver.add_practice(practice_id, secret, seed=100 + index)
            endpoints[practice_id] = (receiver.url(practice_id), f"env:REBALANCE_SECRET_{index}", "ocsf")
        tenants = tenant_directory(endpoints)
        first_tally, second_tally = DeliveryTally(), DeliveryTally()
        first, group = _firehose(tenants, kafka_bootstrap, topic_name, dead_letters, first_tally, max_attempts=12)
        second = SiemFirehose(tenants, bootstrap=kafka_bootstrap, topic=topic_name, group_id=group,
                              dead_letter_topic=dead_letters, policy=first.policy, metrics=second_tally,
                              rng=random.Random(12))
        owner: dict[str, str] = {}  # event id -> practice id
        messages = Produced()

        def send(count: int, start: int) -> None:
            events = [make_event(practices[index % len(practices)], index) for index in range(start, start + count)]
            owner.update((str(event.event_id), event.practice_id) for event in events)
            messages.add(produce_events(kafka_bootstrap, topic_name, events))

        def delivered() -> set[str]:
            return {event_id for practice in receiver.practices.values() for event_id in practice.processed}

        with run_in_thread(first.run):
            send(90, 0)
            wait_until(lambda: len(delivered()) >= 30, 30, "the first firehose delivering")
            with run_in_thread(second.run):
                sent = 90
                deadline = time.monotonic() + 30
                while second_tally.total(SiemOutcome.DELIVERED) == 0:  # keep traffic flowing across the rebalance
                    assert time.monotonic() < deadline, "the second firehose never delivered"
                    send(10, sent)
                    sent += 10
                    time.sleep(0.3)
            send(60, sent)  # the second has left: the first takes its partitions back
            wait_until(lambda: delivered() == set(owner), 30, "every event delivered")
            wait_until(lambda: committed_offsets(kafka_bootstrap, group, topic_name, PARTITIONS)
                       == {partition: messages.ends.get(partition, 0) for partition in range(PARTITIONS)},
                       15, "offsets committed")
    assert receiver.bad_signatures == 0 and receiver.cross_deliveries == 0
    assert len(owner) == sent + 60
    for practice_id in practices:  # each practice has all of its own events and nothing else
        own = {event_id for event_id, practice in owner.items() if practice == practice_id}
        assert set(receiver.practices[practice_id].processed) == own
    assert first_tally.total(SiemOutcome.FAILED) + second_tally.total(SiemOutcome.FAILED) == 0


@pytest.mark.broker
def test_siem_urls_never_reach_the_logs_whatever_the_log_level(
    kafka_bootstrap: str, topic_name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Receivers put tokens in their URLs; an HTTP client's own INFO request log must not print them."""
    caplog.set_level(logging.DEBUG)  # the caller's logging: everything, httpx and httpcore included
    dead_letters = f"{topic_name}-dlq"
    ensure_topics(kafka_bootstrap, [(topic_name, 1), (dead_letters, 1)])
    secret = new_secret_text(random.Random(3))
    monkeypatch.setenv("URL_TOKEN_SECRET", secret)
    with SiemReceiver(reject_rate=0.0) as receiver:
        receiver.add_practice("token-practice", secret)
        url = receiver.url("token-practice") + "?token=hec-TOKEN-4d1f9e"
        tally = DeliveryTally()
        firehose, _ = _firehose(tenant_directory({"token-practice": (url, "env:URL_TOKEN_SECRET", "splunk_hec")}),
                                kafka_bootstrap, topic_name, dead_letters, tally, max_attempts=2)
        produce_events(kafka_bootstrap, topic_name, [make_event("token-practice", index) for index in range(3)])
        with run_in_thread(firehose.run):
            wait_until(lambda: len(receiver.practices["token-practice"].unique()) == 3, 30, "three deliveries")
    assert tally.total(SiemOutcome.DELIVERED) == 3
    assert caplog.records, "the firehose logs its own progress"
    assert "hec-TOKEN-4d1f9e" not in caplog.text and "/siem/token-practice" not in caplog.text
