"""The broker paused and crashed, and the audit sink killed mid-batch (issue 15, point 6), with calls flowing;
the invariants are checked from the outside once everything has recovered."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from schemas.topics import AUDIT, topic_named
from tests.chaos.harness import (
    SINK_GROUP,
    WRITE_PRACTICE,
    ChaosRun,
    RunFactory,
    Traffic,
    restart_broker,
    verify,
    wait_until,
)
from tests.sinks.audit_helpers import committed_offsets

pytestmark = [pytest.mark.broker, pytest.mark.chaos]

BROKER_PAUSE_S = 20.0


def carry_on(run: ChaosRun, seconds: float) -> None:
    """Let the calls flow for a while, reading the topics meanwhile."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        run.poll(0.1)


def wait_for_progress(run: ChaosRun, what: str, timeout_s: float = 60.0) -> float:
    """Until a reply produced after now arrives (the pipeline works again); restarts what died meanwhile.
    Returns the seconds it took."""
    started = time.monotonic()
    before = len(run.replies.records)
    wait_until(lambda: len(run.replies.records) > before, timeout_s, what, step_s=0,
               tick=lambda: (run.poll(0.2), run.keep_alive()))
    return round(time.monotonic() - started, 1)


def test_a_broker_paused_for_20_s_then_crashed_and_restarted_on_durable_storage_loses_no_turn(
    chaos: RunFactory,
) -> None:
    """Tansu on S3 storage (moto_server). SIGSTOP for 20 s mid-traffic, SIGCONT; later SIGKILL and a new broker
    on the same storage and port. Whatever the worker or the sink does meanwhile (a process that exits is
    restarted, as its pod would be), every call is answered and nothing is lost, doubled or unaudited."""
    seed = 1503
    run = chaos(seed=seed, durable=True)
    rng = random.Random(seed)
    run.sandbox.set_faults(WRITE_PRACTICE, latency_ms=150)
    broker_pid = run.broker.process.pid if run.broker.process else None
    assert broker_pid is not None
    try:
        with Traffic(run.bootstrap, run.book.mixed, min_calls=16) as traffic:
            carry_on(run, rng.uniform(2.0, 4.0))
            os.kill(broker_pid, signal.SIGSTOP)
            try:
                time.sleep(BROKER_PAUSE_S)
            finally:
                os.kill(broker_pid, signal.SIGCONT)
            resumed_s = wait_for_progress(run, "replies after the broker resumed")
            carry_on(run, rng.uniform(1.0, 3.0))
            restart_broker(run)
            restarted_s = wait_for_progress(run, "replies after the broker restarted")
            traffic.finish(180)
    finally:
        run.sandbox.clear_faults(WRITE_PRACTICE)
    run.settle()
    verdict = verify(run)
    verdict.figures.update({"replies_resumed_after_s": resumed_s, "replies_after_broker_restart_s": restarted_s,
                            "replay_waits_timed_out": traffic.timeouts})
    print(verdict.report())
    assert not verdict.violations, verdict.report()


def test_the_audit_sink_killed_mid_batch_stores_every_audit_event_once(chaos: RunFactory) -> None:
    """`callstream sinks run` is killed (SIGKILL) twice while it holds audit events it has not committed, and
    restarted on the same chDB directory; the store ends up with exactly the topic's distinct audit events."""
    seed = 1504
    run = chaos(seed=seed)
    rng = random.Random(seed)
    partitions = topic_named(AUDIT).partitions
    uncommitted_at_kills: list[int] = []
    run.sandbox.set_faults(WRITE_PRACTICE, latency_ms=150)
    with Traffic(run.bootstrap, run.book.mixed, min_calls=16) as traffic:
        for _ in range(2):
            carry_on(run, rng.uniform(0.5, 2.0))

            def mid_batch() -> bool:
                run.poll(0.05)
                committed = committed_offsets(run.bootstrap, SINK_GROUP, AUDIT, partitions)
                behind = sum(max(0, end - committed.get(p, 0)) for p, end in run.audit.ends.items())
                if behind:
                    uncommitted_at_kills.append(behind)
                return behind > 0

            wait_until(mid_batch, 30, "audit events the sink has not committed yet", step_s=0)
            run.sinks.kill()
            run.sinks.start()
        traffic.finish(120)
    run.sandbox.clear_faults(WRITE_PRACTICE)
    run.settle()
    verdict = verify(run)
    verdict.figures.update({"audit_events_uncommitted_at_sink_kills": uncommitted_at_kills,
                            "replay_waits_timed_out": traffic.timeouts})
    print(verdict.report())
    assert run.sinks.starts == 3
    assert not verdict.violations, verdict.report()
