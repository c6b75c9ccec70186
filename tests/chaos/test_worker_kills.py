"""kill -9 of the worker (issue 15, point 6): while an in-flight event has been passed by later events of its
partition, and at random moments of a morning of calls. After each kill the worker is restarted, as its pod
would be, and the invariants are checked from the outside once everything has recovered."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import pytest

from schemas.models import CallEvent, Reply
from devkit.telephony import Telephony
from tests.chaos.harness import (
    WRITE_PRACTICE,
    ChaosRun,
    Kill,
    PlayedCall,
    RunFactory,
    Traffic,
    partition_of,
    verify,
    wait_until,
)

pytestmark = [pytest.mark.broker, pytest.mark.chaos]

QUICK_CALLS_PER_PARTITION = 3


@dataclass(frozen=True)
class Round:
    partitions: tuple[int, ...]
    """Call-events partitions shared by one slow refill and the quick calls."""
    probe: int
    """A partition of its own for a probe call: its committed offset moving shows a commit round passed."""
    faults: dict[str, Any]
    kill_when: str
    """"timed": a seeded moment after a commit round passed the quick events' acknowledgements; "write_landed":
    once each slow Task POST landed in ModMed and its answer was lost (the worker is then asking the practice
    whether it landed), so the write exists and its audit record does not yet."""


# In both rounds the slow refill intent sits exactly at its partition's committed offset and the next offsets
# are acknowledged first: the case faust-streaming 0.15.3's gap check (`min(acked) - committed > 1`) misses.
# Each write's answer is lost (the write is kept), so every slow intent is in flight for two latency-bound
# calls (its POST, then the "did it land?" search), whatever else its turn does. Round 2 runs on the worker
# restarted after round 1's kill.
ROUNDS = (
    Round((2, 7), 11, {"latency_ms": 3500, "error_5xx_after_write_ratio": 1.0}, "timed"),
    Round((4, 10), 9, {"latency_ms": 3000, "error_5xx_after_write_ratio": 1.0}, "write_landed"),
)


@dataclass(frozen=True)
class SlowEvent:
    """A refill intent of the slow practice, where it sits in its partition, and the kill it lived through."""

    call: PlayedCall
    partition: int
    offset: int
    kill: Kill


def publish(run: ChaosRun, events: list[CallEvent]) -> None:
    phone = Telephony(run.bootstrap)
    try:
        for event in events:
            phone.publish(event)
        phone.flush()
    finally:
        phone.close()


def placed(run: ChaosRun, event_id: str) -> tuple[int, int]:
    """(partition, offset) of a call event as the broker stored it."""
    def where() -> tuple[int, int] | None:
        return next(((r.partition, r.offset) for r in run.events.records
                     if r.value is not None and str(r.value.event_id) == event_id), None)

    wait_until(lambda: where() is not None, 15, f"call event {event_id} on its topic", tick=run.events.poll)
    found = where()
    assert found is not None
    return found


def first_answer(run: ChaosRun, event_id: str) -> Reply | None:
    """The turn's first reply that is its answer (not an interim one)."""
    replies = run.replies_by_turn().get(event_id, [])
    return min(replies, key=lambda r: r.created_at) if replies else None


def test_a_worker_killed_while_later_events_passed_an_in_flight_one_loses_no_turn_and_leaves_no_write_unaudited(
    chaos: RunFactory,
) -> None:
    """A slow practice (sandbox latency) and a quick one share call-events partitions: the quick calls are
    answered, so their later offsets are acknowledged, while the slow refill intents are still at ModMed;
    then kill -9 once a commit round has passed. Two rounds on two partitions each: one kill at a seeded moment,
    one once the slow writes landed in ModMed (their answers lost, the worker asking whether they landed).

    From the outside: the group's committed offset at the kill never passed an event still in flight, and
    after recovery every invariant holds (every turn answered, one provider Task per refill with its
    escalation audited, nothing duplicated, every ModMed write audited, store = topic)."""
    seed = 1501
    run = chaos(seed=seed)
    rng = random.Random(seed)
    slow_of_round = [[run.book.refill(partition) for partition in round_.partitions] for round_ in ROUNDS]

    # The slow callers are on the line and identified, and the worker has committed past those events.
    warm_up = [event for calls in slow_of_round for call in calls for event in call.events[:2]]
    publish(run, warm_up)
    ends: dict[int, int] = {}
    for event in warm_up:
        partition, offset = placed(run, str(event.event_id))
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    wait_until(lambda: all(run.committed().get(p, 0) >= end for p, end in ends.items()), 30,
               "the worker to commit the warm-up events", step_s=0.3)

    slow_events: list[SlowEvent] = []
    for number, (round_, slow) in enumerate(zip(ROUNDS, slow_of_round, strict=True), start=1):
        quick = [run.book.question(partition) for partition in round_.partitions
                 for _ in range(QUICK_CALLS_PER_PARTITION)]
        probe = run.book.question(round_.probe)
        lost_answers = run.sandbox.stats(WRITE_PRACTICE)["status_5xx"]
        run.sandbox.set_faults(WRITE_PRACTICE, **round_.faults)
        try:
            publish(run, [call.events[2] for call in slow])  # the refill intents
            publish(run, [event for call in quick for event in call.events])  # later offsets, same partitions
            run.wait_for_replies(quick, 30)
            assert not run.unanswered(quick), f"round {number}: the quick calls were not answered while the slow " \
                                              f"ones waited: {[str(t.event_id) for t in run.unanswered(quick)]}"
            publish(run, probe.events)
            probe_end = placed(run, str(probe.events[-1].event_id))[1] + 1
            wait_until(lambda: run.committed().get(round_.probe, 0) >= probe_end, 30,
                       f"round {number}: a commit round after the quick events were acknowledged", step_s=0.1)
            if round_.kill_when == "timed":
                moment = time.monotonic() + rng.uniform(0.0, 0.8)
                while time.monotonic() < moment:
                    run.poll(0.05)
            else:
                wait_until(lambda: run.sandbox.stats(WRITE_PRACTICE)["status_5xx"] >= lost_answers + len(slow), 30,
                           f"round {number}: the slow Task POSTs to land", step_s=0.03)
            run.poll(0.05)
            assert run.unanswered(slow), f"round {number}: the slow refills finished before the kill (setup too fast)"
            kill = run.kill_worker()
        finally:
            run.sandbox.clear_faults(WRITE_PRACTICE)
        for call in slow:
            partition, offset = placed(run, str(call.events[2].event_id))
            assert partition == partition_of(call.call_id) in round_.partitions
            slow_events.append(SlowEvent(call, partition, offset, kill))
        for call in quick:
            assert placed(run, str(call.turns()[0].event_id))[0] == partition_of(call.call_id)
        run.restart_worker()
        run.wait_for_replies([*slow, *quick, probe], 45)
        publish(run, [call.events[3] for call in slow])  # the callers hang up

    run.settle()
    verdict = verify(run)
    for event in slow_events:
        reply = first_answer(run, str(event.call.events[2].event_id))
        if reply is not None and reply.created_at <= event.kill.at:
            continue  # finished before the kill: its offset was fair to commit
        committed = event.kill.committed.get(event.partition, 0)
        verdict.check(committed <= event.offset,
                      f"call-events partition {event.partition}: committed offset {committed} at the kill passed "
                      f"the in-flight refill intent at offset {event.offset} (call {event.call.call_id}; its first "
                      f"reply: {'none' if reply is None else reply.created_at.isoformat()})")
    verdict.figures["slow_intents (call, partition, offset, committed at kill)"] = [
        (e.call.call_id, e.partition, e.offset, e.kill.committed.get(e.partition, 0)) for e in slow_events]
    print(verdict.report())
    assert not verdict.violations, verdict.report()


def test_kill_9_at_random_moments_across_a_morning_of_calls_keeps_every_invariant(chaos: RunFactory) -> None:
    """30 calls in five batches of six (refills and bookings at the write practice, questions at the read-only
    one); the worker is killed at a seeded random moment of each batch and restarted, five kills in all."""
    seed = 1502
    kills, batch = 5, 6
    run = chaos(seed=seed)
    rng = random.Random(seed)
    turns_in_flight: list[int] = []
    run.sandbox.set_faults(WRITE_PRACTICE, latency_ms=200)  # ModMed work in flight at most moments
    try:
        with Traffic(run.bootstrap, run.book.mixed, min_calls=kills * batch, batch=batch) as traffic:
            for number in range(1, kills + 1):
                wait_until(lambda: traffic.batches_started >= number, 120, f"batch {number} of calls",
                           tick=lambda: run.poll(0.05))
                moment = time.monotonic() + rng.uniform(0.2, 1.5)
                while time.monotonic() < moment:
                    run.poll(0.05)
                turns_in_flight.append(len(run.unanswered(traffic.played[-batch:])))
                run.kill_worker()
                run.restart_worker()
            traffic.finish(180)
    finally:
        run.sandbox.clear_faults(WRITE_PRACTICE)
    run.settle()
    verdict = verify(run)
    verdict.figures.update({"unanswered_turns_of_the_batch_at_each_kill": turns_in_flight,
                            "replay_waits_timed_out": traffic.timeouts})
    print(verdict.report())
    assert len(run.book.calls) >= 30 and len(run.kills) >= 5
    assert not verdict.violations, verdict.report()
