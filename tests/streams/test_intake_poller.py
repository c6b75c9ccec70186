"""`callstream intake run`'s poller (streams/intake_poller.py) against the session sandbox (the intake service and
ModMed) and the pipeline's broker: a completed form lands once, the cursor survives a restart, a crash between a
filing and its cursor record files nothing twice, a failing practice backs off alone."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fhir.resources.R4B.documentreference import DocumentReference

from callstream.backends import free_port
from callstream.messaging import intake_reference
from callstream.metrics_server import serve_metrics
from callstream.retry import Backoff
from callstream.tenants import Practice, TenantDirectory
from connectors.fhir import ModMedClient
from connectors.ledger import InMemoryLedger
from connectors.operations import ModMedConnector
from guards.model import GoLivePhase
from devkit.cast import PracticeCast
from streams.intake_poller import CursorStore, IntakeMetrics, IntakePoller, PracticeState, _apply, next_delay
from streams.outputs import KafkaOutputs
from tests.fixtures.pipeline import E2E_INTAKE_LINK_SECRET
from tests.fixtures.sandbox import SandboxServer

EVERY_S = 0.2


async def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _documents(client: ModMedClient, practice: Practice, patient_id: str, urls: set[str]) -> list[str]:
    """The chart's DocumentReferences whose attachment is one of ``urls``, by URL (one entry per document)."""
    found = await client.search(practice, DocumentReference, {"patient": patient_id})
    return sorted(d.content[0].attachment.url for d in found.matches if d.content[0].attachment.url in urls)


async def test_a_completed_form_is_filed_once_and_a_restart_files_nothing_twice(
    sandbox: SandboxServer, pipeline_broker: str, pipeline_tenants: tuple[Path, TenantDirectory],
    pipeline_cast: dict[str, PracticeCast], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    practice = pipeline_tenants[1]["pain-1002"]
    assert practice.intake is not None and practice.intake.completions_url
    rebooking = pipeline_cast["pain-1002"].rebookings[-1]
    reference = intake_reference(E2E_INTAKE_LINK_SECRET, "pain-1002", rebooking.appointment_id)
    broken = practice.model_copy(update={"practice_id": "pain-broken", "intake": practice.intake.model_copy(
        update={"completions_url": f"http://127.0.0.1:{free_port()}/_intake/pain-broken/completions"})})
    topic = f"callstream-intake-cursors-{uuid.uuid4().hex[:8]}"
    outputs = KafkaOutputs(pipeline_broker)
    outputs.start(asyncio.get_running_loop())
    cursors, fresh = CursorStore(pipeline_broker, topic), CursorStore(pipeline_broker, f"{topic}-lost")

    async def complete(form: str) -> tuple[int, str]:
        async with httpx.AsyncClient() as http:
            posted = await http.post(practice.intake.completions_url, json={"ref": reference, "form": form})
        assert posted.status_code == 201
        return posted.json()["seq"], posted.json()["document_url"]

    try:
        async with ModMedClient() as client, httpx.AsyncClient(timeout=5.0) as http:
            def poller(store: CursorStore, practices: list[Practice]) -> IntakePoller:
                return IntakePoller(practices, ModMedConnector(client, InMemoryLedger()), http, outputs, store,
                                    every_s=EVERY_S, backoff=Backoff(base_s=EVERY_S, cap_s=5.0))

            async def running(instance: IntakePoller, done: Callable[[], bool], what: str) -> None:
                stop = asyncio.Event()
                task = asyncio.create_task(instance.run(stop))
                try:
                    await _until(lambda: task.done() or done(), 20, what)
                finally:
                    stop.set()
                    await task

            first_seq, first_url = await complete("follow-up")
            first = poller(cursors, [practice, broken])
            server = serve_metrics(first.metrics.registry, "127.0.0.1", 0, readiness=first.heartbeat.ready)
            try:
                await running(first, lambda: first.states["pain-1002"].after >= first_seq
                              and first.states["pain-broken"].failures >= 2, "the first filing")
                metrics = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
                assert httpx.get(f"http://127.0.0.1:{server.port}/readyz").status_code == 200
            finally:
                server.close()
            assert await _documents(client, practice, rebooking.caller.patient_id, {first_url}) == [first_url]
            assert 'callstream_intake_documents_filed_total{practice_id="pain-1002"}' in metrics
            assert 'callstream_intake_oldest_unfiled_age_seconds{practice_id="pain-1002"} 0.0' in metrics
            # The unreachable practice backs off on its own; the healthy one was filed meanwhile.
            failing = first.states["pain-broken"]
            failures = first.metrics.registry.get_sample_value("callstream_intake_poll_failures_total",
                                                               {"practice_id": "pain-broken"})
            assert failing.after == 0 and failures == failing.failures
            assert "pain-1002" not in {labels.get("practice_id") for labels in _failure_labels(first.metrics)}

            # A crash after the filing but before the cursor record: the next process lists it again (here: a
            # cursor topic that never got the record) and finds the document by its master identifier.
            relisted = poller(fresh, [practice])
            await running(relisted, lambda: relisted.states["pain-1002"].after >= first_seq, "the relisting")
            assert await _documents(client, practice, rebooking.caller.patient_id, {first_url}) == [first_url]

            # ModMed refuses the write (the practice is back in read-only): the cursor stays before the form, the
            # practice backs off, and the unfiled form's age is exported for IntakeFormUnfiled.
            held = poller(CursorStore(pipeline_broker, f"{topic}-held"),
                          [practice.model_copy(update={"phase": GoLivePhase.READ_ONLY})])
            await running(held, lambda: held.states["pain-1002"].failures >= 1, "the refused write")
            waiting = held.states["pain-1002"]
            assert waiting.after < first_seq and waiting.oldest_unfiled is not None
            assert held.metrics.registry.get_sample_value("callstream_intake_oldest_unfiled_age_seconds",
                                                          {"practice_id": "pain-1002"}) > 0
            assert await _documents(client, practice, rebooking.caller.patient_id, {first_url}) == [first_url]

            # A restart resumes at the stored cursor and files what was completed meanwhile, once.
            stored = await asyncio.to_thread(cursors.load)
            assert stored["pain-1002"] == first.states["pain-1002"].after >= first_seq
            resumed = poller(cursors, [practice])
            second_seq, second_url = await complete("pain-diary")
            await running(resumed, lambda: resumed.states["pain-1002"].after >= second_seq, "the second filing")
            filed = resumed.metrics.registry.get_sample_value("callstream_intake_documents_filed_total",
                                                              {"practice_id": "pain-1002"})
            assert 1 <= filed <= second_seq - stored["pain-1002"], "the resumed process re-listed what was filed"
            documents = await _documents(client, practice, rebooking.caller.patient_id, {first_url, second_url})
            assert documents == sorted([first_url, second_url])
    finally:
        await outputs.close()
        cursors.close()
        fresh.close()
    assert (await asyncio.to_thread(CursorStore(pipeline_broker, topic).load))["pain-1002"] >= second_seq
    logged = caplog.text
    assert "intake pain-1002: filed" in logged and "pain-broken: poll failed (ConnectError)" in logged
    for phi in (reference, first_url, second_url):
        assert phi not in logged, "a form's reference or document reached a log line"


def _failure_labels(metrics: IntakeMetrics) -> list[dict[str, str]]:
    return [sample.labels for family in metrics.registry.collect() if family.name == "callstream_intake_poll_failures"
            for sample in family.samples if sample.name.endswith("_total")]


def test_the_deployed_process_serves_its_probes_and_stops_on_sigterm(
    pipeline_broker: str, pipeline_tenants: tuple[Path, TenantDirectory], tmp_path: Path,
) -> None:
    """What the Helm `intake` Deployment runs: `callstream intake run`, probed on its metrics port."""
    port, log_file = free_port(), tmp_path / "intake-run.log"
    with log_file.open("wb") as log_sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "callstream.cli", "intake", "run", "--every", "0.5", "--practice", "pain-1002",
             "--tenants", str(pipeline_tenants[0]), "-b", pipeline_broker, "--metrics-host", "127.0.0.1",
             "--metrics-port", str(port)], stdout=log_sink, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            deadline = time.monotonic() + 30
            while not _answers(f"http://127.0.0.1:{port}/readyz"):
                assert process.poll() is None and time.monotonic() < deadline, log_file.read_text()[-2000:]
                time.sleep(0.1)
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            assert 'callstream_intake_oldest_unfiled_age_seconds{practice_id="pain-1002"}' in metrics
        finally:
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(timeout=20)
    assert returncode == 0, log_file.read_text()[-2000:]
    assert "intake.sandbox.callstream.dev" not in log_file.read_text(), "a document URL reached the log"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def test_a_failing_practice_waits_longer_each_time_up_to_the_cap() -> None:
    backoff, rng = Backoff(base_s=10.0, cap_s=80.0), random.Random(7)
    assert next_delay(10.0, 0, backoff, rng) == 10.0
    ceilings = [backoff.ceiling(failures - 1) for failures in range(1, 7)]
    assert ceilings == [10.0, 20.0, 40.0, 80.0, 80.0, 80.0]
    for failures, ceiling in enumerate(ceilings, start=1):
        delay = next_delay(10.0, failures, backoff, rng)
        assert max(10.0, ceiling / 2) <= delay <= ceiling


def test_cursor_records_resume_and_a_hostile_one_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    cursors: dict[str, int] = {}
    for key, value in (("pain-1", b'{"after": 4}'), ("pain-2", b'{"after": 9}'), ("pain-1", b'{"after": 7}'),
                       ("pain-3", b'{"after": -1}'), ("pain-4", b"not json"), ("pain-5", b'{"after": true}'),
                       ("pain-2", None)):
        _apply(cursors, key, value)
    assert cursors == {"pain-1": 7}
    assert caplog.text.count("is unreadable") == 3


def test_the_unfiled_age_is_measured_at_scrape_time(pipeline_tenants: tuple[Path, TenantDirectory]) -> None:
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    practice = pipeline_tenants[1]["pain-1002"]
    states = [PracticeState(practice, oldest_unfiled=now - timedelta(minutes=40)),
              PracticeState(practice.model_copy(update={"practice_id": "pain-idle"}))]
    metrics = IntakeMetrics(lambda: states, clock=lambda: now)
    assert metrics.registry.get_sample_value("callstream_intake_oldest_unfiled_age_seconds",
                                             {"practice_id": "pain-1002"}) == 2400.0
    assert metrics.registry.get_sample_value("callstream_intake_oldest_unfiled_age_seconds",
                                             {"practice_id": "pain-idle"}) == 0.0
