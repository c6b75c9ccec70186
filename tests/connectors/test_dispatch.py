"""connectors/dispatch.py against the real sandbox: routes per practice, idempotent writes, refusals,
and per-practice concurrency bounds (one slow practice never holds another's calls)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fhir.resources.R4B.appointment import Appointment

from callstream.tenants import TenantDirectory
from callstream.work_scope import EventPosition, WorkScope, WriteRequests
from connectors.dispatch import AppointmentNotForPatient, Dispatcher, task_code
from connectors.errors import CapabilityMissing
from connectors.fhir import ModMedClient
from connectors.ledger import InMemoryLedger, LedgerEntry
from connectors.operations import ModMedConnector
from guards.model import TaskAudience, TaskKind, TaskReason, TaskSpec, VisitReason
from schemas.models import CommandRoute
from devkit.cast import PracticeCast
from tests.fixtures.sandbox import SandboxServer


@pytest.fixture
async def dispatcher() -> AsyncIterator[Dispatcher]:
    async with ModMedClient() as client:
        ledger = InMemoryLedger()
        yield Dispatcher(ModMedConnector(client, ledger), ledger, per_practice_concurrency=1)


def test_routes_follow_each_practices_capabilities(pipeline_tenants: tuple[Path, TenantDirectory]) -> None:
    tenants = pipeline_tenants[1]
    no_task_api, full_api, certified = tenants["pain-1001"], tenants["pain-1002"], tenants["pain-1003"]
    assert Dispatcher.task_route(no_task_api) is CommandRoute.EMA
    assert Dispatcher.task_route(full_api) is CommandRoute.FHIR
    assert Dispatcher.task_route(certified) is CommandRoute.EMA
    assert Dispatcher.flags_route(full_api) is CommandRoute.FHIR
    assert Dispatcher.flags_route(certified) is CommandRoute.EMA
    assert Dispatcher.slots_route(no_task_api, VisitReason.KYPHOPLASTY) is CommandRoute.EMA
    assert Dispatcher.slots_route(no_task_api, VisitReason.ESI) is CommandRoute.FHIR
    assert Dispatcher.slots_route(certified, VisitReason.ESI) is CommandRoute.EMA, "certified FHIR has no Slot search"
    assert Dispatcher.booking_route(certified, CommandRoute.FHIR) is CommandRoute.EMA
    assert Dispatcher.booking_route(full_api, CommandRoute.FHIR) is CommandRoute.FHIR


def provider_task(practice_id: str, patient_id: str, call_id: str) -> TaskSpec:
    return TaskSpec(kind=TaskKind.PROVIDER_REFILL_REVIEW, audience=TaskAudience.PROVIDER,
                    reason=TaskReason.REFILL_REQUESTED, call_id=call_id, practice_id=practice_id,
                    patient_id=patient_id, pdmp_last_checked=datetime(2026, 1, 5, 15, 0, tzinfo=UTC))


async def test_a_fhir_task_is_created_once_for_a_call(
    dispatcher: Dispatcher, pipeline_tenants: tuple[Path, TenantDirectory], pipeline_cast: dict[str, PracticeCast],
) -> None:
    practice = pipeline_tenants[1]["pain-1002"]
    patient = pipeline_cast["pain-1002"].plain[5].patient_id
    task = provider_task("pain-1002", patient, f"call-{uuid.uuid4().hex[:8]}")
    first = await dispatcher.create_task(practice, call_id=task.call_id, task=task, note="Phone request routed.")
    again = await dispatcher.create_task(practice, call_id=task.call_id, task=task, note="Phone request routed.")
    assert first.route is CommandRoute.FHIR and first.resource_type == "Task"
    assert again.resource_id == first.resource_id
    assert first.deep_link == practice.chart_deep_link(patient)
    assert task_code(task) == "refill-review-refill-requested"


class ScopeRecordingLedger(InMemoryLedger):
    """Notes the event of the scope each entry is written under."""

    def __init__(self) -> None:
        super().__init__()
        self.events: dict[str, set[EventPosition | None]] = {}

    async def _put(self, entry: LedgerEntry, scope: WorkScope) -> LedgerEntry:
        self.events.setdefault(entry.key, set()).add(scope.event)
        return await super()._put(entry, scope)


async def test_each_calls_scope_reaches_the_ledger_and_the_client_and_only_its_writes_are_tallied(
    pipeline_tenants: tuple[Path, TenantDirectory], pipeline_cast: dict[str, PracticeCast],
) -> None:
    """Three calls at once on a fresh client: the one writing a Task counts that one POST in its tally (the
    token request and the landed check are no writes), the one reading chart flags counts nothing, the
    background write counts nowhere; each ledger entry is written under its own call's event."""
    practice = pipeline_tenants[1]["pain-1002"]
    patients = pipeline_cast["pain-1002"].plain
    writing, reading = WorkScope.for_event(3, 41), WorkScope.for_event(5, 77)
    task = provider_task("pain-1002", patients[7].patient_id, f"call-{uuid.uuid4().hex[:8]}")
    background = provider_task("pain-1002", patients[9].patient_id, f"call-{uuid.uuid4().hex[:8]}")
    async with ModMedClient() as client:
        ledger = ScopeRecordingLedger()
        dispatcher = Dispatcher(ModMedConnector(client, ledger), ledger)
        written, _, _ = await asyncio.gather(
            dispatcher.create_task(practice, call_id=task.call_id, task=task, note="n", scope=writing),
            dispatcher.read_flags(practice, patients[8].patient_id, scope=reading),
            dispatcher.create_task(practice, call_id=background.call_id, task=background, note="n"),
        )
    assert written.resource_type == "Task"
    assert writing.writes == WriteRequests(sent=1, succeeded=1)
    assert reading.writes == WriteRequests()
    assert sorted(ledger.events.values(), key=lambda events: None in events) == [{EventPosition(3, 41)}, {None}], \
        "the call's entries under its event, the background ones under none"


async def test_tasks_of_one_call_with_different_reasons_stay_apart(
    dispatcher: Dispatcher, pipeline_tenants: tuple[Path, TenantDirectory], pipeline_cast: dict[str, PracticeCast],
) -> None:
    practice = pipeline_tenants[1]["pain-1002"]
    patient = pipeline_cast["pain-1002"].plain[6].patient_id
    call_id = f"call-{uuid.uuid4().hex[:8]}"
    expired = TaskSpec(kind=TaskKind.CLINICAL_TEAM_REVIEW, audience=TaskAudience.CLINICAL_TEAM,
                       reason=TaskReason.AGREEMENT_EXPIRED, call_id=call_id, practice_id="pain-1002", patient_id=patient)
    aberrant = expired.model_copy(update={"reason": TaskReason.ABERRANT_UDS})
    one = await dispatcher.create_task(practice, call_id=call_id, task=expired, note="n")
    two = await dispatcher.create_task(practice, call_id=call_id, task=aberrant, note="n")
    assert one.resource_id != two.resource_id


async def test_work_that_needs_ema_fails_clearly_when_the_worker_runs_without_it(
    dispatcher: Dispatcher, pipeline_tenants: tuple[Path, TenantDirectory], pipeline_cast: dict[str, PracticeCast],
) -> None:
    practice = pipeline_tenants[1]["pain-1001"]
    patient = pipeline_cast["pain-1001"].plain[0].patient_id
    task = provider_task("pain-1001", patient, "call-no-ema")
    with pytest.raises(CapabilityMissing, match="EMA automation"):
        await dispatcher.create_task(practice, call_id=task.call_id, task=task, note="n")
    unmatched = task.model_copy(update={"patient_id": None})
    with pytest.raises(CapabilityMissing, match="chart"):
        await dispatcher.create_task(practice, call_id=task.call_id, task=unmatched, note="n")


async def test_a_caller_cannot_cancel_or_move_another_patients_appointment(
    dispatcher: Dispatcher, pipeline_tenants: tuple[Path, TenantDirectory], pipeline_cast: dict[str, PracticeCast],
) -> None:
    practice = pipeline_tenants[1]["pain-1002"]
    cast = pipeline_cast["pain-1002"]
    owner = cast.rebookings[0]
    intruder = cast.plain[-1].patient_id
    assert intruder != owner.caller.patient_id
    with pytest.raises(AppointmentNotForPatient):
        await dispatcher.cancel(practice, call_id="call-intruder", patient_id=intruder,
                                appointment_id=owner.appointment_id)
    with pytest.raises(AppointmentNotForPatient):
        await dispatcher.reschedule(practice, call_id="call-intruder", patient_id=intruder,
                                    appointment_id=owner.appointment_id, slot_id="slot-1002-001-esi-202611230800")
    untouched = await dispatcher.connector.client.read(practice, Appointment, owner.appointment_id)
    assert untouched.status == "booked"


async def test_a_booking_lands_on_the_route_it_was_found_on_and_reports_what_was_booked(
    dispatcher: Dispatcher, pipeline_tenants: tuple[Path, TenantDirectory], pipeline_cast: dict[str, PracticeCast],
) -> None:
    practice = pipeline_tenants[1]["pain-1002"]
    patient = pipeline_cast["pain-1002"].plain[7].patient_id
    today = datetime.now(UTC).date()
    found = await dispatcher.search_slots(practice, visit_reason=VisitReason.TRIGGER_POINT, date_from=today + timedelta(days=3),
                                          date_to=today + timedelta(days=9))
    assert found.route is CommandRoute.FHIR and found.value
    slot = found.value[-1]
    written = await dispatcher.book(practice, call_id=f"call-{uuid.uuid4().hex[:8]}", patient_id=patient,
                                    slot_id=slot.slot_id, found_on=found.route)
    assert written.route is CommandRoute.FHIR and written.start == slot.start
    assert written.visit_reason is VisitReason.TRIGGER_POINT


async def test_one_slow_practice_does_not_hold_the_others(
    dispatcher: Dispatcher, sandbox: SandboxServer, pipeline_tenants: tuple[Path, TenantDirectory],
    pipeline_cast: dict[str, PracticeCast],
) -> None:
    slow, fast = pipeline_tenants[1]["pain-1001"], pipeline_tenants[1]["pain-1002"]
    slow_caller, fast_caller = pipeline_cast["pain-1001"].plain[0], pipeline_cast["pain-1002"].plain[0]
    finished: list[str] = []

    async def search(practice: object, caller: object, label: str) -> None:
        await dispatcher.search_patient(practice, family=caller.family, given=caller.given,  # type: ignore[attr-defined]
                                        birth_date=datetime.fromisoformat(caller.birth_date).date(),  # type: ignore[attr-defined]
                                        phone=None)
        finished.append(label)

    await search(slow, slow_caller, "warm-up")  # tokens fetched before the fault
    sandbox.set_faults("pain-1001", latency_ms=400)
    try:
        slow_calls = [asyncio.create_task(search(slow, slow_caller, f"slow-{n}")) for n in range(3)]
        await asyncio.sleep(0.05)  # the slow practice's single slot is taken, two calls wait behind it
        await search(fast, fast_caller, "fast")
        await asyncio.gather(*slow_calls)
    finally:
        sandbox.clear_faults("pain-1001")
    assert finished.index("fast") < finished.index("slow-1"), "the other practice was not held up"
    assert [label for label in finished if label.startswith("slow")] == ["slow-0", "slow-1", "slow-2"], \
        "the slow practice's calls took its one slot in turn"
