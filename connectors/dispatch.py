"""The dispatcher: what the guard allowed, carried out against a practice's ModMed, FHIR first.

It decides the route of every command per practice (docs/CONTRACTS.md, the EMA contract):

- compliance flags over FHIR when ``capabilities.fhir_compliance_flags``, else from the EMA screens;
- tasks over FHIR when ``capabilities.fhir_task_create`` (and the track can write), else the PM task
  queue on the EMA screens (``capabilities.ema_task_queue``);
- slot search and booking for visit reasons in ``capabilities.ema_booking_templates`` on the EMA
  screens (FHIR Slot does not enumerate those templates), else FHIR; a slot is booked on the route it
  was found on, and on the read-only certified track every booking goes through EMA.

EMA results come back in the same shape as FHIR ones (resource id visible over FHIR afterwards plus
the chart deep link), so replies and audit records do not care which route ran.

Every operation takes the work's ``scope`` (``callstream.work_scope``: the caller's deadline, the call event,
its write tally) and hands it to the connector, the ledger and the EMA directory reads; work without a
caller (review retries) passes none and runs as background work.

Every operation of one practice waits for that practice's semaphore, so one slow practice (or a
locked EMA account) holds only its own calls, never the others'. Writes on the EMA route are wrapped
in the same idempotency ledger as FHIR writes: a redelivered event never queues a second task or
books a second template slot once the first is recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Generic, Protocol, TypeVar

from fhir.resources.R4B.appointment import Appointment

from callstream.tenants import ApiTrack, Practice
from callstream.work_scope import BACKGROUND, WorkScope
from connectors.compliance import ComplianceFlags
from connectors.errors import CapabilityMissing, NotFoundError, TerminalError
from connectors.ledger import IdempotencyLedger, LedgerState, idempotency_key
from connectors.operations import ModMedConnector, PatientMatch
from connectors.slot_offers import SlotOffer
from connectors.vocabulary import VISIT_REASON_SYSTEM
from guards.booking import is_callers_appointment
from guards.model import Command, TaskAudience, TaskKind, TaskSpec, VisitReason
from schemas.models import CommandRoute, InsuranceDetails, NewPatientDetails

DEFAULT_PRACTICE_CONCURRENCY = 8
"""Operations in flight per practice; the FHIR client's own per-practice cap (16) sits below it."""
T = TypeVar("T")

TASK_KIND_CODES: dict[TaskKind, str] = {
    TaskKind.PROVIDER_REFILL_REVIEW: "refill-review",
    TaskKind.PROVIDER_CONTROLLED_SUBSTANCE_REVIEW: "cs-review",
    TaskKind.CLINICAL_TEAM_REVIEW: "clinical-review",
    TaskKind.CS_COORDINATOR_UDS: "uds-coordinator",
    TaskKind.PRIOR_AUTH_FOLLOWUP: "prior-auth",
    TaskKind.PREOP_CLEARANCE: "preop-clearance",
    TaskKind.FRONT_DESK_MESSAGE: "front-desk",
}
"""Short task-kind codes; with the reason they make the FHIR Task code, so two tasks of one call stay apart."""


class EmaWriteResult(Protocol):
    """What an EMA screen write reports (the EMA layer's frozen dataclass in connectors/ema/results.py)."""

    @property
    def resource_type(self) -> str: ...  # "Appointment" | "Task"

    @property
    def resource_id(self) -> str: ...  # visible over FHIR afterwards

    @property
    def deep_link(self) -> str: ...  # Practice.chart_deep_link(patient_id)


class EmaPort(Protocol):
    """The EMA web automation the dispatcher drives where the API stops (connectors/ema)."""

    async def search_template_slots(
        self, practice: Practice, *, visit_reason: VisitReason, date_from: date, date_to: date,
        patient_id: str | None = None, scope: WorkScope = BACKGROUND,
    ) -> list[SlotOffer]: ...  # patient_id: EMA booking screens that list slots only for a chosen chart

    async def book_template(self, practice: Practice, *, call_id: str, patient_id: str, slot_id: str) -> EmaWriteResult: ...

    async def create_staff_task(self, practice: Practice, *, call_id: str, task: TaskSpec, note: str) -> EmaWriteResult: ...

    async def read_compliance(self, practice: Practice, patient_id: str) -> ComplianceFlags: ...


class AppointmentNotForPatient(TerminalError):
    """The caller named an appointment of another patient: nothing is changed."""


@dataclass(frozen=True, slots=True)
class Written:
    """A write that landed, whichever route made it."""

    resource_type: str
    resource_id: str
    route: CommandRoute
    deep_link: str | None
    start: datetime | None = None
    visit_reason: VisitReason | None = None


@dataclass(frozen=True, slots=True)
class Routed(Generic[T]):
    """A read's answer with the route that produced it (for the audit record)."""

    value: T
    route: CommandRoute


class Dispatcher:
    """Routes and runs the guard-allowed commands of every practice; shared by all calls of a worker."""

    def __init__(
        self,
        connector: ModMedConnector,
        ledger: IdempotencyLedger,
        ema: EmaPort | None = None,
        *,
        per_practice_concurrency: int = DEFAULT_PRACTICE_CONCURRENCY,
    ) -> None:
        if per_practice_concurrency < 1:
            raise ValueError("per_practice_concurrency must be at least 1")
        self.connector = connector
        self.ema = ema
        self._ledger = ledger
        self._concurrency = per_practice_concurrency
        self._gates: dict[str, asyncio.Semaphore] = {}

    # ------------------------------------------------------------------------------------- routes

    @staticmethod
    def flags_route(practice: Practice) -> CommandRoute:
        return CommandRoute.FHIR if practice.capabilities.fhir_compliance_flags else CommandRoute.EMA

    @staticmethod
    def slots_route(practice: Practice, visit_reason: VisitReason) -> CommandRoute:
        """EMA for EMA-only templates, and on the certified track (its FHIR API has no Slot search)."""
        ema_only = VisitReason(visit_reason).value in practice.capabilities.ema_booking_templates
        return CommandRoute.EMA if ema_only or practice.track is ApiTrack.CERTIFIED else CommandRoute.FHIR

    @staticmethod
    def booking_route(practice: Practice, found_on: CommandRoute) -> CommandRoute:
        """The certified track is read-only: its bookings go through the EMA screens."""
        return CommandRoute.EMA if found_on is CommandRoute.EMA or practice.track is ApiTrack.CERTIFIED else found_on

    @staticmethod
    def task_route(practice: Practice) -> CommandRoute:
        fhir = practice.capabilities.fhir_task_create and practice.track is ApiTrack.PROPRIETARY
        return CommandRoute.FHIR if fhir else CommandRoute.EMA

    # -------------------------------------------------------------------------------------- reads

    async def search_patient(
        self, practice: Practice, *, family: str, given: str, birth_date: date, phone: str | None,
        scope: WorkScope = BACKGROUND,
    ) -> PatientMatch:
        return await self._gated(practice, lambda: self.connector.search_patients(
            practice, family=family, given=given, birthdate=birth_date, phone=phone, scope=scope))

    async def read_flags(self, practice: Practice, patient_id: str, *,
                         scope: WorkScope = BACKGROUND) -> Routed[ComplianceFlags]:
        route = self.flags_route(practice)
        if route is CommandRoute.FHIR:
            flags = await self._gated(practice, lambda: self.connector.read_compliance_flags(
                practice, patient_id, scope=scope))
        else:
            ema = self._ema(practice, "compliance flags")
            flags = await self._gated(practice, lambda: ema.read_compliance(practice, patient_id))
        return Routed(flags, route)

    async def search_slots(
        self, practice: Practice, *, visit_reason: VisitReason, date_from: date, date_to: date,
        patient_id: str | None = None, scope: WorkScope = BACKGROUND,
    ) -> Routed[list[SlotOffer]]:
        route = self.slots_route(practice, visit_reason)
        if route is CommandRoute.FHIR:
            offers = await self._gated(practice, lambda: self.connector.search_slots(
                practice, visit_reason=visit_reason, date_from=date_from, date_to=date_to, scope=scope))
        else:
            ema = self._ema(practice, f"{VisitReason(visit_reason).value} templates")
            offers = await self._gated(practice, lambda: ema.search_template_slots(
                practice, visit_reason=visit_reason, date_from=date_from, date_to=date_to, patient_id=patient_id,
                scope=scope))
        return Routed(offers, route)

    # ------------------------------------------------------------------------------------- writes

    async def book(
        self, practice: Practice, *, call_id: str, patient_id: str, slot_id: str, found_on: CommandRoute,
        scope: WorkScope = BACKGROUND,
    ) -> Written:
        """Book a slot the guard ranked and the caller chose, on the route it was found on."""
        if self.booking_route(practice, found_on) is CommandRoute.FHIR:
            appointment = await self._gated(practice, lambda: self.connector.book_appointment(
                practice, call_id=call_id, patient_id=patient_id, slot_id=slot_id, scope=scope))
            return _appointment_written(practice, appointment, patient_id)
        ema = self._ema(practice, "template booking")
        key = idempotency_key(call_id, Command.BOOK_APPOINTMENT, f"Patient/{patient_id}|Slot/{slot_id}|EMA")
        return await self._gated(practice, lambda: self._ema_write(
            practice, key, Command.BOOK_APPOINTMENT, patient_id,
            lambda: ema.book_template(practice, call_id=call_id, patient_id=patient_id, slot_id=slot_id), scope))

    async def reschedule(
        self, practice: Practice, *, call_id: str, patient_id: str, appointment_id: str, slot_id: str,
        scope: WorkScope = BACKGROUND,
    ) -> Written:
        async def run() -> Written:
            await self._require_patients_appointment(practice, patient_id, appointment_id, scope)
            moved = await self.connector.reschedule_appointment(
                practice, call_id=call_id, appointment_id=appointment_id, new_slot_id=slot_id, scope=scope)
            return _appointment_written(practice, moved, patient_id)

        return await self._gated(practice, run)

    async def cancel(self, practice: Practice, *, call_id: str, patient_id: str, appointment_id: str,
                     scope: WorkScope = BACKGROUND) -> Written:
        async def run() -> Written:
            await self._require_patients_appointment(practice, patient_id, appointment_id, scope)
            cancelled = await self.connector.cancel_appointment(
                practice, call_id=call_id, appointment_id=appointment_id, scope=scope)
            return _appointment_written(practice, cancelled, patient_id)

        return await self._gated(practice, run)

    async def register_patient(
        self, practice: Practice, *, call_id: str, family: str, given: str, birth_date: date,
        details: NewPatientDetails, phone: str | None, email: str | None, scope: WorkScope = BACKGROUND,
    ) -> Written:
        """A new patient's chart, over FHIR (the proprietary API's Patient create; no EMA path)."""
        patient = await self._gated(practice, lambda: self.connector.register_patient(
            practice, call_id=call_id, family=family, given=given, birthdate=birth_date, details=details,
            phone=phone, email=email, scope=scope))
        assert patient.id is not None
        return Written("Patient", patient.id, CommandRoute.FHIR, practice.chart_deep_link(patient.id))

    async def create_coverage(
        self, practice: Practice, *, call_id: str, patient_id: str, insurance: InsuranceDetails,
        scope: WorkScope = BACKGROUND,
    ) -> Written:
        coverage = await self._gated(practice, lambda: self.connector.create_coverage(
            practice, call_id=call_id, patient_id=patient_id, insurance=insurance, scope=scope))
        assert coverage.id is not None
        return Written("Coverage", coverage.id, CommandRoute.FHIR, practice.chart_deep_link(patient_id))

    async def create_task(self, practice: Practice, *, call_id: str, task: TaskSpec, note: str,
                          scope: WorkScope = BACKGROUND) -> Written:
        """A task from the guard's decision, in the practice's FHIR Task store or its PM task queue."""
        if task.patient_id is None:
            raise CapabilityMissing("a task needs the caller's chart", practice_id=practice.practice_id,
                                    resource_type="Task")
        patient_id = task.patient_id
        if self.task_route(practice) is CommandRoute.FHIR:
            created = await self._gated(practice, lambda: self.connector.create_task(
                practice,
                call_id=call_id,
                patient_id=patient_id,
                task_code=task_code(task),
                description=note,
                pdmp_last_checked=task.pdmp_last_checked if task.audience is TaskAudience.PROVIDER else None,
                transcript_ref=task.transcript_ref,
                scope=scope,
            ))
            assert created.id is not None
            return Written("Task", created.id, CommandRoute.FHIR, practice.chart_deep_link(patient_id))
        if not practice.capabilities.ema_task_queue:
            raise CapabilityMissing("practice has neither FHIR Task create nor an EMA task queue",
                                    practice_id=practice.practice_id, resource_type="Task")
        ema = self._ema(practice, "the PM task queue")
        key = idempotency_key(call_id, Command.CREATE_TASK, f"{task.idempotency_key}|EMA")
        return await self._gated(practice, lambda: self._ema_write(
            practice, key, Command.CREATE_TASK, patient_id,
            lambda: ema.create_staff_task(practice, call_id=call_id, task=task, note=note), scope))

    # ---------------------------------------------------------------------------------- internals

    async def _gated(self, practice: Practice, operation: Callable[[], Awaitable[T]]) -> T:
        gate = self._gates.get(practice.practice_id)
        if gate is None:
            gate = self._gates[practice.practice_id] = asyncio.Semaphore(self._concurrency)
        async with gate:
            return await operation()

    def _ema(self, practice: Practice, what: str) -> EmaPort:
        if self.ema is None:
            raise CapabilityMissing(f"{what} need EMA automation, which this worker does not run",
                                    practice_id=practice.practice_id)
        return self.ema

    async def _ema_write(
        self, practice: Practice, key: str, command: Command, patient_id: str,
        write: Callable[[], Awaitable[EmaWriteResult]], scope: WorkScope,
    ) -> Written:
        """Ledger around a screen write: DONE returns the recorded resource instead of writing again."""
        entry = self._ledger.get(key, scope=scope)
        if entry is not None and entry.state is LedgerState.DONE and entry.resource_id and entry.resource_type:
            return Written(entry.resource_type, entry.resource_id, CommandRoute.EMA,
                           practice.chart_deep_link(patient_id))
        await self._ledger.begin(key, command.value, scope=scope)
        try:
            result = await write()
        except Exception as exc:
            await self._ledger.fail(key, type(exc).__name__, scope=scope)
            raise
        await self._ledger.complete(key, result.resource_type, result.resource_id, scope=scope)
        return Written(result.resource_type, result.resource_id, CommandRoute.EMA, result.deep_link)

    async def owns_appointment(self, practice: Practice, *, patient_id: str, appointment_id: str,
                               scope: WorkScope = BACKGROUND) -> bool:
        """Whether the appointment the caller named is this patient's at this practice; an id the practice does
        not know (404) is not theirs either. Other failures raise: whose it is stays unknown."""
        try:
            await self._gated(practice, lambda: self._require_patients_appointment(
                practice, patient_id, appointment_id, scope))
        except (AppointmentNotForPatient, NotFoundError):
            return False
        return True

    async def _require_patients_appointment(self, practice: Practice, patient_id: str, appointment_id: str,
                                            scope: WorkScope) -> None:
        """A caller may only move or cancel their own appointment (the id came from the voice agent)."""
        appointment = await self.connector.client.read(practice, Appointment, appointment_id, scope=scope)
        patients = {
            participant.actor.reference.rsplit("/", 1)[-1]
            for participant in appointment.participant or ()
            if participant.actor is not None and participant.actor.reference
            and participant.actor.reference.startswith("Patient/")
        }
        if not is_callers_appointment(patients, patient_id):
            raise AppointmentNotForPatient("the appointment is not the caller's", practice_id=practice.practice_id,
                                           resource_type="Appointment")


def task_code(task: TaskSpec) -> str:
    """FHIR Task code of a guard task: kind and reason, so two tasks of one call never collapse into one."""
    return f"{TASK_KIND_CODES[task.kind]}-{task.reason.value.lower().replace('_', '-')}"


def _appointment_written(practice: Practice, appointment: Appointment, patient_id: str) -> Written:
    assert appointment.id is not None
    reason = None
    for coding in (appointment.appointmentType.coding or ()) if appointment.appointmentType else ():
        if coding.system == VISIT_REASON_SYSTEM and coding.code in {r.value for r in VisitReason}:
            reason = VisitReason(coding.code)
    return Written("Appointment", appointment.id, CommandRoute.FHIR, practice.chart_deep_link(patient_id),
                   start=appointment.start, visit_reason=reason)
