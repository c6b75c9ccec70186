"""A practice's ModMed rate budget holds across workers: three worker processes sharing one practice's API
key split it by the call-events partitions they own (connectors.ratelimit.worker_share), so the practice
never sees more than its limit and never answers 429, while every caller still gets an answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from callstream.backends import ensure_topics, free_port
from devkit.broker import TansuBroker
from schemas.topics import TOPICS
from sandbox.generator import build_world
from devkit.cast import Script, cast_of
from devkit.sandbox_tenants import load_sandbox_directory
from devkit.services import sandbox_process
from devkit.telephony import Telephony
from tests.fixtures.pipeline import WorkerProcess

PRACTICE = "pain-1001"
LIMIT_PER_MIN = 40
CALLS = 44
CALL_GAP_S = 0.5
"""Two calls a second (three ModMed requests each) for 22 s: several times the practice's limit."""
SEED = 11
PATIENTS = 60


@pytest.fixture
def broker() -> Iterator[str]:
    """A broker of this test alone: no other worker group may consume its call events."""
    with TansuBroker(port=free_port()) as started:
        ensure_topics(started.bootstrap, [(topic.name, topic.partitions) for topic in TOPICS])
        yield started.bootstrap


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[str]:
    """A sandbox of this test alone: the session's sandbox counts other tests' recent calls in the
    practice's rolling minute, which would make it refuse calls this test never sent."""
    with sandbox_process(tmp_path, seed=SEED, patients=PATIENTS) as base_url:
        httpx.put(f"{base_url}/_admin/practices/{PRACTICE}/settings", json={"rate_limit_per_minute": LIMIT_PER_MIN},
                  timeout=5, trust_env=False).raise_for_status()
        yield base_url


def stats(base_url: str) -> dict:
    return httpx.get(f"{base_url}/_admin/practices/{PRACTICE}/stats", timeout=5, trust_env=False).json()


def all_ready(workers: list[WorkerProcess]) -> bool:
    return all(httpx.get(f"{w.metrics_url}/readyz", timeout=2).status_code == 200 for w in workers)


def test_three_workers_never_send_a_practice_more_than_its_limit(broker: str, limited: str, tmp_path: Path) -> None:
    tenants, _ = load_sandbox_directory(limited, tmp_path / "tenants", rate_limit_per_min=LIMIT_PER_MIN)
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
        before = stats(limited)
        telephony.listen()
        cast = cast_of(build_world(seed=SEED, practices=3, patients_per_practice=PATIENTS))[PRACTICE]
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
        after = stats(limited)
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
