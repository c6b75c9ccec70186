"""Issue 16 end to end with real parts: Tansu broker, `callstream worker`, the ModMed sandbox, and
`callstream queue run` on its own embedded ClickHouse (chDB) store.

A practice failing every ModMed call gets refill calls: the callers hear that the care team will follow
up (no promise, never "not found", never asked again), and each request becomes an open, staff-visible
controlled-substance item whose age raises REVIEW_QUEUE_STALE. When ModMed answers again, the queue
process is killed (SIGKILL) mid-delivery once; its successor still ends with exactly one provider Task
per request carrying the call reference, each delivery audited, and the alarm clears."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.task import Task

from callstream.backends import free_port
from callstream.tenants import TenantDirectory
from connectors.fhir import ModMedClient
from connectors.vocabulary import CALL_REFERENCE_SYSTEM
from schemas.models import Alarm, AlarmKind, AlarmState, AuditAction, AuditEvent, AuditOutcome
from schemas.topics import ALARMS, AUDIT
from devkit.cast import PracticeCast, refill
from devkit.telephony import Telephony
from tests.fixtures.pipeline import TopicReader, WorkerProcess
from tests.fixtures.sandbox import SandboxServer

pytestmark = pytest.mark.broker
REPO = Path(__file__).resolve().parents[2]
PRACTICE = "pain-1002"
PROMISES = ("will be refilled", "approved", "today", "tomorrow", "within", "mg", "tablets", "not find", "couldn't find")


class QueueProcess:
    """`callstream queue run` as a subprocess (a test may SIGKILL it and start it again on the same store)."""

    def __init__(self, bootstrap: str, tenants_file: Path, data_dir: Path) -> None:
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "queue.log"
        self.env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CALLSTREAM_DATA_DIR": str(data_dir),
                    "CALLSTREAM_QUEUE_DSN": f"chdb://{data_dir / 'review-store'}", "CALLSTREAM_LOG_LEVEL": "INFO"}
        self.command = [sys.executable, "-m", "callstream.cli", "queue", "run", "--tenants", str(tenants_file),
                        "--api-port", str(self.port), "--stale-after", "3", "--retry-base", "0.5", "--retry-cap", "1",
                        "--attempt-lease", "4", "--tick", "0.3", "--metrics-port", "0"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError("queue process not ready:\n" + self.log_path.read_text()[-3000:])

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def cli(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "callstream.cli", "queue", *args, "--api", self.api], cwd=REPO,
                                capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def items(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.api}/items", params={"practice": PRACTICE}, timeout=5).json()["items"]


@pytest.fixture
def queue(pipeline_broker: str, pipeline_tenants: tuple[Path, TenantDirectory],
          tmp_path: Path) -> Iterator[QueueProcess]:
    process = QueueProcess(pipeline_broker, pipeline_tenants[0], tmp_path)
    try:
        yield process
    finally:
        process.stop()


def wait_until(predicate: Any, what: str, timeout_s: float = 45) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


async def test_refills_at_a_failing_practice_wait_as_open_items_then_each_becomes_exactly_one_task(
    pipeline_broker: str, pipeline_worker: WorkerProcess, pipeline_cast: dict[str, PracticeCast],
    pipeline_tenants: tuple[Path, TenantDirectory], sandbox: SandboxServer, queue: QueueProcess,
) -> None:
    cast = pipeline_cast[PRACTICE]
    callers = cast.refill[3:5]
    scripts = [refill(cast, caller) for caller in callers]
    phone = Telephony(pipeline_broker, reply_timeout_s=45)
    phone.listen()
    audit = TopicReader(pipeline_broker, AUDIT, AuditEvent)
    alarms = TopicReader(pipeline_broker, ALARMS, Alarm)
    queue.start()
    sandbox.set_faults(PRACTICE, error_5xx_ratio=1.0)
    try:
        report = await asyncio.to_thread(phone.replay, [script.events for script in scripts])
        for script in scripts:
            [reply] = report.answers(script.call_id)
            assert reply.template in ("ROUTED_TO_CARE_TEAM", "ROUTED_TO_CARE_TEAM_AFTER_HOURS") and reply.escalated
            assert not any(word in reply.text.lower() for word in PROMISES)

        calls = {script.call_id for script in scripts}
        items = await asyncio.to_thread(wait_until, lambda: [i for i in queue.items() if i["call_id"] in calls]
                                        if len({i["call_id"] for i in queue.items()} & calls) == 2 else None,
                                        "an open item per call")
        assert all(i["kind"] == "provider_task" and i["controlled_substance"] for i in items)
        assert all(i["reason"] == "ehr_unavailable" and i["state"] in ("open", "retrying") for i in items)
        assert len(items) == 2, "one item per request"
        # Open work is every item not yet delivered or resolved, whether the retrier holds it right now or not.
        listed = json.loads(queue.cli("list", "--practice", PRACTICE, "--state", "open", "--json"))
        assert {i["item_id"] for i in items} <= {i["item_id"] for i in listed}
        assert {i["state"] for i in listed} <= {"open", "retrying"}
        assert all(caller.family not in str(listed) and caller.birth_date not in str(listed) for caller in callers)

        fired = await asyncio.to_thread(alarms.wait_for, lambda rs: any(
            r is not None and r.practice_id == PRACTICE and r.kind is AlarmKind.REVIEW_QUEUE_STALE
            and r.state is AlarmState.FIRING for r in rs), 30)
        assert any(r is not None and r.kind is AlarmKind.REVIEW_QUEUE_STALE for r in fired)
        metrics = httpx.get(f"{queue.api}/metrics", timeout=5).text
        assert f'callstream_alarm_state{{kind="REVIEW_QUEUE_STALE",practice_id="{PRACTICE}"}} 1.0' in metrics

        # ModMed answers again, but a Task POST's answer is lost after it landed; the queue process dies then.
        lost_answers = sandbox.stats(PRACTICE)["status_5xx"]
        sandbox.set_faults(PRACTICE, latency_ms=300, error_5xx_after_write_ratio=1.0)
        await asyncio.to_thread(wait_until, lambda: sandbox.stats(PRACTICE)["status_5xx"] > lost_answers,
                                "a Task POST that landed with its answer lost", 30)
        queue.kill()
    finally:
        sandbox.clear_faults(PRACTICE)
    queue.start()
    try:
        delivered = await asyncio.to_thread(wait_until, lambda: [i for i in queue.items() if i["call_id"] in calls
                                                                 and i["state"] == "delivered"]
                                            if sum(i["state"] == "delivered" for i in queue.items()
                                                   if i["call_id"] in calls) == 2 else None, "both deliveries", 60)
        async with ModMedClient() as client:
            for script, caller in zip(scripts, callers, strict=True):
                found = await client.search(pipeline_tenants[1][PRACTICE], Task, {"patient": caller.patient_id})
                mine = [t for t in found.matches
                        if any(i.system == CALL_REFERENCE_SYSTEM and i.value == script.call_id for i in t.identifier or ())]
                assert len(mine) == 1, "exactly one Task per request, across the kill"
                assert mine[0].code.coding[0].code == "refill-review-refill-requested"
                [item] = [i for i in delivered if i["call_id"] == script.call_id]
                assert item["resource_id"] == mine[0].id and item["attempts"] >= 1

        def delivery_audits(records: list[AuditEvent]) -> dict[str, set[str]]:
            found: dict[str, set[str]] = {}
            for r in records:
                if (r is not None and r.detail.get("queue") == "review" and r.action is AuditAction.FHIR_WRITE
                        and r.outcome is AuditOutcome.SUCCESS):
                    found.setdefault(r.call_id or "", set()).update(r.task_refs)
            return found

        records = await asyncio.to_thread(audit.wait_for, lambda rs: calls <= set(delivery_audits(rs)), 30)
        audited = delivery_audits(records)
        assert all(audited[i["call_id"]] == {f"Task/{i['resource_id']}"} for i in delivered)
        cleared = await asyncio.to_thread(alarms.wait_for, lambda rs: any(
            r is not None and r.practice_id == PRACTICE and r.kind is AlarmKind.REVIEW_QUEUE_STALE
            and r.state is AlarmState.CLEARED for r in rs), 30)
        assert any(r is not None and r.state is AlarmState.CLEARED for r in cleared)
        stale = [r.state for r in cleared if r is not None and r.practice_id == PRACTICE
                 and r.kind is AlarmKind.REVIEW_QUEUE_STALE]
        assert stale[:stale.index(AlarmState.CLEARED)] == [AlarmState.FIRING], \
            "the alarm state survives the kill: fired once before it, cleared after it"
        # The escalation rate counts a queued controlled-substance request once its item is stored: each
        # request the worker escalated to the queue is named on exactly one stored item of its call.
        for call_id in calls:
            queued = [r for r in records if r is not None and r.call_id == call_id and r.action is AuditAction.ESCALATION
                      and r.detail.get("trigger") == "controlled_substance" and r.outcome is AuditOutcome.QUEUED]
            named = [request for i in queue.items() if i["call_id"] == call_id
                     for request in filter(None, i["detail"].get("cs_requests", "").split(","))]
            assert queued and len(named) == len(set(named)) == len(queued), (call_id, named, len(queued))
        shown = queue.cli("show", delivered[0]["item_id"])
        assert "state: delivered" in shown
        log = queue.log_path.read_text()
        assert all(v not in log for caller in callers for v in (caller.family, caller.birth_date, caller.phone))
    finally:
        phone.close()
        audit.close()
        alarms.close()
