"""The work adapter (streams.work): a call flow's Work through the dispatcher under the turn's deadline, every
failure of a practice's ModMed a WorkFailed, and the turn told while a write is under way. (The whole turn,
interim replies included, is tested through the processor: tests/streams/test_processor.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from callstream.deadline import Deadline
from callstream.tenants import Practice, TenantDirectory
from connectors.dispatch import Dispatcher
from connectors.fhir import ModMedClient
from connectors.ledger import InMemoryLedger
from connectors.operations import ModMedConnector
from devkit.cast import PracticeCast
from guards.model import AgreementStatus, VisitReason
from schemas.models import CommandKind, CommandRoute
from streams.callflow import ChartFlagsRead, ReadChartFlags, SendIntake, WorkFailed
from streams.work import TurnProgress, WorkRunner
from tests.fixtures.sandbox import SandboxServer


@pytest.fixture
async def runner() -> AsyncIterator[WorkRunner]:
    ledger = InMemoryLedger()
    async with ModMedClient() as client:
        yield WorkRunner(Dispatcher(ModMedConnector(client, ledger), ledger))


@pytest.fixture
def pain_1002(pipeline_tenants: tuple[Path, TenantDirectory]) -> Practice:
    return pipeline_tenants[1]["pain-1002"]


async def test_a_read_gets_the_turns_deadline_and_its_result(
    runner: WorkRunner, pain_1002: Practice, pipeline_cast: dict[str, PracticeCast],
) -> None:
    progress = TurnProgress()
    patient = pipeline_cast["pain-1002"].refill[6].patient_id
    result = await runner.run(pain_1002, "call-work-1", ReadChartFlags(patient), Deadline.after(4.0), progress)
    assert isinstance(result, ChartFlagsRead) and result.route is CommandRoute.FHIR
    assert result.flags.chronic_opioid and result.flags.agreement_status is AgreementStatus.ACTIVE
    assert result.latency_ms > 0 and not progress.writing


async def test_a_read_with_no_time_left_fails_at_once_and_is_never_sent(
    runner: WorkRunner, pain_1002: Practice, pipeline_cast: dict[str, PracticeCast], sandbox: SandboxServer,
) -> None:
    calls_before = sandbox.stats("pain-1002")["calls"]
    patient = pipeline_cast["pain-1002"].refill[6].patient_id
    result = await runner.run(pain_1002, "call-work-2", ReadChartFlags(patient), Deadline.after(-0.1), TurnProgress())
    assert result == WorkFailed(CommandKind.READ_COMPLIANCE_FLAGS, "TimeoutError", latency_ms=0.0)
    assert sandbox.stats("pain-1002")["calls"] == calls_before


async def test_a_patient_message_without_a_messenger_is_a_failed_write_the_core_hands_to_staff(
    runner: WorkRunner, pain_1002: Practice,
) -> None:
    progress = TurnProgress()
    intake = SendIntake(channel="sms", to="+15125550142", visit_reason=VisitReason.NEW_PATIENT_CONSULT,
                        start=datetime(2026, 3, 4, 15, tzinfo=UTC), appointment_id="appt-1", patient_id="pt-1")
    result = await runner.run(pain_1002, "call-work-3", intake, Deadline.after(-1.0), progress)
    assert isinstance(result, WorkFailed), "a write is not cut by the turn's deadline: it fails on its own"
    assert (result.command, result.error_class) == (CommandKind.CREATE_DOCUMENT_REFERENCE, "CapabilityMissing")
    assert not progress.writing, "the turn is told the write is over"
