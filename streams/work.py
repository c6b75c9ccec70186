"""The work adapter: the call flow's Work run through the connector dispatcher, within the turn's time budget.

The call flow (``streams.callflow``) is sans-IO: it asks for work (search a patient, read chart flags, find
slots, book, cancel, write a Task, register, send the intake link) and is fed the result. ``WorkRunner`` does
each piece through the dispatcher (FHIR first, EMA where the practice needs it) or the patient messenger,
under the deadline ``callstream.deadline`` gives the turn, and turns every failure of a practice's ModMed
into a ``WorkFailed`` the core hands to staff; only a broker failure (a ledger record refused) propagates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from pydantic import ValidationError

from callstream.deadline import Deadline
from callstream.messaging import PatientMessenger, send_booking_confirmation
from callstream.tenants import Practice
from callstream.work_scope import BACKGROUND, WorkScope
from connectors.dispatch import Dispatcher
from connectors.errors import CapabilityMissing, ConflictError, InvalidResponseError
from guards.model import Command, MatchKind
from schemas.models import CommandKind
from streams.callflow import (
    AppointmentChecked,
    AppointmentWritten,
    CancelAppointment,
    ChartFlagsRead,
    CheckAppointment,
    CoverageCreated,
    CreateCoverage,
    CreateTask,
    FoundSlot,
    IntakeSent,
    PatientLookedUp,
    PatientRegistered,
    ReadChartFlags,
    RegisterPatient,
    SearchPatient,
    SearchSlots,
    SendIntake,
    SlotsFound,
    TaskWritten,
    Work,
    WorkFailed,
    WorkResult,
    WriteAppointment,
)
from streams.outputs import OutputDeliveryError

log = logging.getLogger(__name__)

DISPATCH_TIMEOUT_S = 30.0
"""Upper bound of one ModMed/EMA operation; past it the call is handed to staff (the caller hears so)."""
MAX_WORK_STEPS = 32
"""A turn never needs more steps than this; more would mean a loop, which is cut and handed to staff."""
_WORK_COMMANDS: dict[type, CommandKind] = {
    SearchPatient: CommandKind.SEARCH_PATIENT,
    ReadChartFlags: CommandKind.READ_COMPLIANCE_FLAGS,
    SearchSlots: CommandKind.SEARCH_SLOTS,
    CancelAppointment: CommandKind.CANCEL_APPOINTMENT,
    CreateTask: CommandKind.CREATE_TASK,
    RegisterPatient: CommandKind.REGISTER_PATIENT,
    CreateCoverage: CommandKind.CREATE_COVERAGE,
    SendIntake: CommandKind.CREATE_DOCUMENT_REFERENCE,
}
WRITE_WORK = (WriteAppointment, CancelAppointment, CreateTask, RegisterPatient, CreateCoverage, SendIntake)
"""Work that changes the chart: never cut once it left (its outcome would be unknown)."""


@dataclass(slots=True)
class TurnProgress:
    """What the turn's work is doing now: the STILL_WORKING reply is for a write under way, not a read
    (a read cut at the deadline gets the core's own hand-off reply at that moment)."""

    writing: bool = False


class WorkRunner:
    """Runs one turn's work for every practice: the dispatcher for ModMed and EMA, the messenger for patient
    messages."""

    def __init__(self, dispatcher: Dispatcher, messenger: PatientMessenger | None = None) -> None:
        self.dispatcher = dispatcher
        self.messenger = messenger
        """Sends the booking confirmation with the intake link (None: staff send it, via the review queue)."""

    async def run(self, practice: Practice, call_id: str, work: Work, deadline: Deadline,
                  progress: TurnProgress, *, scope: WorkScope = BACKGROUND) -> WorkResult:
        """One piece of work through the dispatcher; every failure becomes a WorkFailed the core handles.

        A read gets what is left of the turn's deadline (none left: it fails at once, unsent). A write gets a
        deadline of its own, ``DISPATCH_TIMEOUT_S`` (the client's retry budget applies inside it): cutting one
        that left would leave its outcome unknown, and one that starts late (after a paused broker, a slow
        lookup) still deserves its retries; the caller has had the honest answer meanwhile. ``scope`` is the call
        event's (``callstream.work_scope``); the dispatcher gets it with the deadline of this piece of work."""
        command = _command_of(work)
        started = time.perf_counter()
        writing = isinstance(work, WRITE_WORK)
        timeout_s = DISPATCH_TIMEOUT_S if writing else min(DISPATCH_TIMEOUT_S, deadline.remaining())
        if timeout_s <= 0:
            return WorkFailed(command, "TimeoutError", latency_ms=0.0)
        progress.writing = writing
        try:
            scope = scope.under(Deadline.after(DISPATCH_TIMEOUT_S) if writing else deadline)
            result = await asyncio.wait_for(self._dispatch(practice, call_id, work, started, scope), timeout_s)
        except ConflictError as exc:
            return WorkFailed(command, type(exc).__name__, slot_taken=True, latency_ms=_ms(started))
        except OutputDeliveryError:
            raise  # the broker refused a ledger record: the worker's failure, not the practice's (redelivered)
        except Exception as exc:  # noqa: BLE001 - any failure of one practice's ModMed is that call's, never the worker's
            log.warning("practice %s call %s: %s failed with %s", practice.practice_id, call_id, command.value,
                        type(exc).__name__)
            return WorkFailed(command, type(exc).__name__, latency_ms=_ms(started))
        finally:
            progress.writing = False
        return result

    async def _dispatch(self, practice: Practice, call_id: str, work: Work, started: float,
                        scope: WorkScope) -> WorkResult:
        dispatcher = self.dispatcher
        if isinstance(work, SearchPatient):
            match = await dispatcher.search_patient(practice, family=work.family_name, given=work.given_name,
                                                    birth_date=work.birth_date, phone=work.phone, scope=scope)
            patient_id = match.patient.id if match.kind is MatchKind.UNIQUE else None
            return PatientLookedUp(match.kind, patient_id, latency_ms=_ms(started))
        if isinstance(work, ReadChartFlags):
            flags = await dispatcher.read_flags(practice, work.patient_id, scope=scope)
            return ChartFlagsRead(flags.value.to_chart_flags(), flags.route, _ms(started))
        if isinstance(work, SearchSlots):
            found = await dispatcher.search_slots(practice, visit_reason=work.visit_reason, date_from=work.date_from,
                                                  date_to=work.date_to, patient_id=work.patient_id,
                                                  scope=scope)
            slots = []
            for offer in found.value:
                try:
                    candidate = offer.to_candidate()
                except (InvalidResponseError, ValidationError):
                    continue  # a slot whose room cannot be judged is never offered
                slots.append(FoundSlot(candidate, _display(offer.practitioner_name, "your provider"),
                                       _display(offer.location_name, practice.name), found.route))
            return SlotsFound(tuple(slots), found.route, _ms(started))
        if isinstance(work, WriteAppointment):
            if work.command is Command.RESCHEDULE_APPOINTMENT and work.appointment_id is not None:
                written = await dispatcher.reschedule(practice, call_id=call_id, patient_id=work.patient_id,
                                                      appointment_id=work.appointment_id, slot_id=work.slot.slot_id,
                                                      scope=scope)
            else:
                written = await dispatcher.book(practice, call_id=call_id, patient_id=work.patient_id,
                                                slot_id=work.slot.slot_id, found_on=work.slot.route, scope=scope)
            return AppointmentWritten(work.command, written.resource_id, written.start or work.slot.start,
                                      written.visit_reason or work.slot.visit_reason, written.route,
                                      written.deep_link, _ms(started))
        if isinstance(work, CheckAppointment):
            owned = await dispatcher.owns_appointment(practice, patient_id=work.patient_id,
                                                      appointment_id=work.appointment_id, scope=scope)
            return AppointmentChecked(owned, work.appointment_id, latency_ms=_ms(started))
        if isinstance(work, CancelAppointment):
            written = await dispatcher.cancel(practice, call_id=call_id, patient_id=work.patient_id,
                                              appointment_id=work.appointment_id, scope=scope)
            if written.start is None or written.visit_reason is None:
                raise InvalidResponseError("cancelled appointment lacks start or visit reason",
                                           practice_id=practice.practice_id, resource_type="Appointment")
            return AppointmentWritten(Command.CANCEL_APPOINTMENT, written.resource_id, written.start,
                                      written.visit_reason, written.route, written.deep_link, _ms(started))
        if isinstance(work, RegisterPatient):
            patient = await dispatcher.register_patient(
                practice, call_id=call_id, family=work.family_name, given=work.given_name, birth_date=work.birth_date,
                details=work.details, phone=work.phone, email=work.email, scope=scope)
            return PatientRegistered(patient.resource_id, patient.route, patient.deep_link, _ms(started))
        if isinstance(work, SendIntake):
            if self.messenger is None:
                raise CapabilityMissing("this worker sends no patient messages", practice_id=practice.practice_id)
            await send_booking_confirmation(self.messenger, practice, channel=work.channel, to=work.to,
                                            visit_reason=work.visit_reason, start=work.start,
                                            appointment_id=work.appointment_id)
            return IntakeSent(work.channel, _ms(started))
        if isinstance(work, CreateCoverage):
            coverage = await dispatcher.create_coverage(practice, call_id=call_id, patient_id=work.patient_id,
                                                        insurance=work.insurance, scope=scope)
            return CoverageCreated(coverage.resource_id, _ms(started))
        written = await dispatcher.create_task(practice, call_id=call_id, task=work.task, note=work.note, scope=scope)
        return TaskWritten(written.resource_type, written.resource_id, written.route, written.deep_link, _ms(started))


def _command_of(work: Work) -> CommandKind:
    if isinstance(work, WriteAppointment | CheckAppointment):
        return CommandKind(work.command.value)
    return _WORK_COMMANDS[type(work)]


def _display(name: str | None, fallback: str) -> str:
    """A name to read out: ModMed's display, trimmed to what the reply schema takes."""
    text = " ".join((name or "").split())[:200]
    return text or fallback[:200]


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
