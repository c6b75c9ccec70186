"""A practice's ModMed rate budget holds across workers: three worker processes sharing one practice's API
key split it by the call-events partitions they own (connectors.ratelimit.worker_share), so the practice
never sees more than its limit and never answers 429, while every caller still gets an answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from callstream.devstack import TansuBroker, ensure_topics, free_port
from schemas.topics import TOPICS
from streams.cast import PracticeCast, Script
from streams.sandbox_tenants import load_sandbox_directory
from streams.telephony import Telephony
from tests.fixtures.pipeline import WorkerProcess
from tests.fixtures.sandbox import SandboxServer

PRACTICE = "pain-1001"
LIMIT_PER_MIN = 40
CALLS = 44
CALL_GAP_S = 0.5
"""Two calls a second (three ModMed requests each) for 22 s: several times the practice's limit."""
SESSION_LIMIT_PER_MIN = 6000
"""What the pipeline fixtures set for the session's practices (restored afterwards)."""


@pytest.fixture
def broker() -> Iterator[str]:
    """A broker of this test alone: no other worker group may consume its call events."""
    with TansuBroker(port=free_port()) as started:
        ensure_topics(started.bootstrap, [(topic.name, topic.partitions) for topic in TOPICS])
        yield started.bootstrap


@pytest.fixture
def limited(sandbox: SandboxServer) -> Iterator[None]:
    sandbox.update_settings(PRACTICE, rate_limit_per_minute=LIMIT_PER_MIN)
    try:
        yield
    finally:
        sandbox.update_settings(PRACTICE, rate_limit_per_minute=SESSION_LIMIT_PER_MIN)


def all_ready(workers: list[WorkerProcess]) -> bool:
    return all(httpx.get(f"{w.metrics_url}/readyz", timeout=2).status_code == 200 for w in workers)


def test_three_workers_never_send_a_practice_more_than_its_limit(
    broker: str, sandbox: SandboxServer, limited: None, pipeline_cast: dict[str, PracticeCast], tmp_path: Path,
) -> None:
    tenants, _ = load_sandbox_directory(sandbox.base_url, tmp_path / "tenants", rate_limit_per_min=LIMIT_PER_MIN)
    workers = [WorkerProcess(broker, tenants, tmp_path / f"worker-{n}", app_id="rate-budget",
                             extra_args=("--no-ema",)) for n in range(3)]
    telephony = Telephony(broker)
    try:
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 60
        while not all_ready(workers) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert all_ready(workers), "three workers, each with its partitions"
        before = sandbox.stats(PRACTICE)
        telephony.listen()
        cast = pipeline_cast[PRACTICE]
        scripts = [Script(cast.called_number, caller_number=caller.phone).started().identified(caller).intent(
            "BOOK_APPOINTMENT", visit_reason="follow-up") for caller in cast.plain * CALLS]
        del scripts[CALLS:]
        for script in scripts:  # sustained demand: unshared, three workers would pass the limit within ~17 s
            for event in script.events:
                telephony.publish(event)
            telephony.flush()
            time.sleep(CALL_GAP_S)
        replies = telephony.replies_for(
            [s.call_id for s in scripts], timeout_s=60,
            until=lambda found: {r.in_reply_to for r in found} >= {s.events[-1].event_id for s in scripts})
        after = sandbox.stats(PRACTICE)
    finally:
        telephony.close()
        for worker in workers:
            worker.stop()
    answered = {r.in_reply_to for r in replies}
    assert all(s.events[-1].event_id in answered for s in scripts), "every caller got an answer"
    assert after["status_429"] == before["status_429"], "the practice never had to refuse a call"
    assert after["calls_in_window"] <= LIMIT_PER_MIN
    sent = after["calls"] - before["calls"]
    assert 0 < sent <= LIMIT_PER_MIN
