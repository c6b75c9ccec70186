"""The work the call flow asks the shell to do, and the results the shell feeds back.

``Work`` is one ModMed (or EMA, or patient-messaging) operation the core needs before it can go on: a search,
a read, a write. The dispatcher runs it and answers with one ``WorkResult``, a ``WorkFailed`` when it could
not. Both sides are plain frozen values, so a turn can be replayed exactly from its results. ``SlotChoice`` is
here because a booking write carries the slot as it was offered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

from pydantic import AwareDatetime

from guards import ChartFlags, Command, MatchKind, SlotCandidate, TaskSpec, VisitReason
from guards.model import FrozenModel
from schemas.models import CommandKind, CommandRoute, InsuranceDetails, NewPatientDetails

WRITE_COMMAND_KINDS = {
    Command.BOOK_APPOINTMENT: CommandKind.BOOK_APPOINTMENT,
    Command.RESCHEDULE_APPOINTMENT: CommandKind.RESCHEDULE_APPOINTMENT,
    Command.CANCEL_APPOINTMENT: CommandKind.CANCEL_APPOINTMENT,
    Command.CREATE_TASK: CommandKind.CREATE_TASK,
    Command.CREATE_DOCUMENT_REFERENCE: CommandKind.CREATE_DOCUMENT_REFERENCE,
}
"""The command kind (audit records, review-queue items) of each write the guards decide."""


class SlotChoice(FrozenModel):
    """A slot as offered to the caller: what booking needs and what the reply reads out."""

    slot_id: str
    start: AwareDatetime
    end: AwareDatetime
    practitioner_id: str
    practitioner_display: str
    location_display: str
    visit_reason: VisitReason
    route: CommandRoute


@dataclass(frozen=True, slots=True)
class SearchPatient:
    family_name: str = field(repr=False)
    given_name: str = field(repr=False)
    birth_date: date = field(repr=False)
    phone: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ReadChartFlags:
    patient_id: str


@dataclass(frozen=True, slots=True)
class SearchSlots:
    visit_reason: VisitReason
    date_from: date
    date_to: date
    patient_id: str | None = None


@dataclass(frozen=True, slots=True)
class WriteAppointment:
    """BOOK_APPOINTMENT (appointment_id None) or RESCHEDULE_APPOINTMENT of a slot the guard ranked."""

    command: Command
    patient_id: str
    slot: SlotChoice
    appointment_id: str | None = None


@dataclass(frozen=True, slots=True)
class CancelAppointment:
    patient_id: str
    appointment_id: str


@dataclass(frozen=True, slots=True)
class CheckAppointment:
    """Read the appointment the caller named: is it this practice's, and this patient's? (a read; ``command``
    is the change it is checked for)."""

    patient_id: str
    appointment_id: str
    command: Command


@dataclass(frozen=True, slots=True)
class CreateTask:
    task: TaskSpec
    note: str


@dataclass(frozen=True, slots=True)
class RegisterPatient:
    """Create the chart of a caller a second search still did not find (one Patient per call: ledger key)."""

    family_name: str = field(repr=False)
    given_name: str = field(repr=False)
    birth_date: date = field(repr=False)
    details: NewPatientDetails = field(repr=False)
    phone: str | None = field(default=None, repr=False)
    email: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class CreateCoverage:
    """The new patient's insurance card as a Coverage (ModMed: create-only)."""

    patient_id: str
    insurance: InsuranceDetails = field(repr=False)


@dataclass(frozen=True, slots=True)
class SendIntake:
    """The booking confirmation with the practice's intake link for this visit, to the patient (PHI: ``to``)."""

    channel: Literal["sms", "email"]
    to: str = field(repr=False)
    visit_reason: VisitReason
    start: datetime
    appointment_id: str
    patient_id: str


Work = (SearchPatient | ReadChartFlags | SearchSlots | WriteAppointment | CancelAppointment | CheckAppointment | CreateTask
        | RegisterPatient | CreateCoverage | SendIntake)


@dataclass(frozen=True, slots=True)
class PatientLookedUp:
    kind: MatchKind
    patient_id: str | None
    route: CommandRoute = CommandRoute.FHIR
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ChartFlagsRead:
    flags: ChartFlags
    route: CommandRoute
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class FoundSlot:
    """One free slot from a search: the guards' view plus what is read out."""

    candidate: SlotCandidate
    practitioner_display: str
    location_display: str
    route: CommandRoute


@dataclass(frozen=True, slots=True)
class SlotsFound:
    slots: tuple[FoundSlot, ...]
    route: CommandRoute
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class AppointmentWritten:
    command: Command
    appointment_id: str
    start: datetime
    visit_reason: VisitReason
    route: CommandRoute
    deep_link: str | None = None
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class TaskWritten:
    resource_type: str
    resource_id: str
    route: CommandRoute
    deep_link: str | None = None
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkFailed:
    """The dispatcher could not do the work; ``slot_taken`` marks a booking conflict (409)."""

    command: CommandKind
    error_class: str
    route: CommandRoute | None = None
    slot_taken: bool = False
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class AppointmentChecked:
    owned: bool
    """False: no such appointment at this practice, or not this patient's."""
    appointment_id: str
    route: CommandRoute = CommandRoute.FHIR
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class PatientRegistered:
    patient_id: str
    route: CommandRoute = CommandRoute.FHIR
    deep_link: str | None = None
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class CoverageCreated:
    coverage_id: str
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class IntakeSent:
    channel: Literal["sms", "email"]
    latency_ms: float = 0.0


WorkResult = (PatientLookedUp | ChartFlagsRead | SlotsFound | AppointmentWritten | AppointmentChecked | TaskWritten
              | PatientRegistered | CoverageCreated | IntakeSent | WorkFailed)
