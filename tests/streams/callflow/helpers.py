"""Builders for the pure call-flow tests: practices, call events, slots, and a driver that answers the
core's work with given results (the core is pure, so its inputs are plain values)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from callstream.tenants import Practice
from guards import ChartFlags, Command, MatchKind, SlotCandidate, VisitReason
from guards.scheduling import BlockKind, Equipment, RoomKind
from schemas.models import CallEvent, CommandRoute
from streams import callflow
from streams.callflow import (
    AppointmentChecked,
    AppointmentWritten,
    CallState,
    CancelAppointment,
    ChartFlagsRead,
    CheckAppointment,
    CreateTask,
    FoundSlot,
    Output,
    PatientLookedUp,
    ReadChartFlags,
    ReplyOut,
    SearchPatient,
    SearchSlots,
    SlotsFound,
    Step,
    TaskWritten,
    Work,
    WorkResult,
    WriteAppointment,
)

CALLED_NUMBER = "+15125550100"
CALLER_NUMBER = "+15125550142"
NOW = datetime(2026, 3, 3, 15, 0, tzinfo=UTC)
"""Tuesday 10:00 in New York: inside office hours."""
PATIENT_ID = "pt-1001-000042"


def practice(phase: str = "write", **capabilities: Any) -> Practice:
    return Practice.model_validate(
        {
            "practice_id": "pain-1001",
            "name": "Riverbend Pain",
            "called_numbers": [CALLED_NUMBER],
            "timezone": "America/New_York",
            "base_url": "https://mmi.example",
            "firm_url_prefix": "riverbend",
            "auth": {"method": "password", "credentials_ref": "env:RIVERBEND_CREDENTIALS"},
            "phase": phase,
            "capabilities": capabilities,
        }
    )


@dataclass
class Call:
    """Events of one scripted call, numbered in order."""

    call_id: str = field(default_factory=lambda: f"call-{uuid.uuid4().hex[:10]}")
    seq: int = 0

    def event(self, payload: dict[str, Any], *, called_number: str = CALLED_NUMBER) -> CallEvent:
        event = CallEvent.model_validate(
            {
                "event_id": str(uuid.uuid4()),
                "call_id": self.call_id,
                "seq": self.seq,
                "occurred_at": NOW.isoformat(),
                "called_number": called_number,
                "payload": payload,
            }
        )
        self.seq += 1
        return event

    def started(self) -> CallEvent:
        return self.event({"type": "call_started", "caller_number": CALLER_NUMBER})

    def identified(self, family: str = "Testpatient", given: str = "Dana", birth_date: str = "1968-11-23") -> CallEvent:
        return self.event({"type": "caller_identified", "family_name": family, "given_name": given,
                           "birth_date": birth_date})

    def intent(self, intent: str, **entities: Any) -> CallEvent:
        payload = {"type": "intent_recognised", "intent": intent, "confidence": 0.93,
                   "medication_mentioned": False, "controlled_substance_mentioned": False, **entities}
        return self.event(payload)

    def chose(self, slot_id: str) -> CallEvent:
        return self.event({"type": "slot_chosen", "slot_id": slot_id})

    def ended(self) -> CallEvent:
        return self.event({"type": "call_ended", "transcript_ref": f"s3://transcripts/{self.call_id}.json",
                           "disposition": "COMPLETED"})


def esi_slot(slot_id: str, days_ahead: int, hour: int = 14, practitioner: str = "prac-1001-rivera",
             display: str = "Dr. Ana Rivera") -> FoundSlot:
    start = NOW.replace(hour=hour) + timedelta(days=days_ahead)
    candidate = SlotCandidate(
        slot_id=slot_id, start=start, end=start + timedelta(minutes=30), practitioner_id=practitioner,
        location_id="loc-1001-fluoro-1", room_kind=RoomKind.PROCEDURE_ROOM,
        room_equipment=frozenset({Equipment.FLUOROSCOPY}), block_kind=BlockKind.PROCEDURE,
    )
    return FoundSlot(candidate, display, "Fluoro Suite 1", CommandRoute.FHIR)


def consult_slot(slot_id: str, days_ahead: int) -> FoundSlot:
    start = NOW.replace(hour=16) + timedelta(days=days_ahead)
    candidate = SlotCandidate(
        slot_id=slot_id, start=start, end=start + timedelta(minutes=45), practitioner_id="prac-1001-okafor",
        location_id="loc-1001-exam-1", room_kind=RoomKind.EXAM_ROOM, block_kind=BlockKind.CONSULT,
    )
    return FoundSlot(candidate, "Dr. Adaeze Okafor", "Exam 1", CommandRoute.FHIR)


Responder = Callable[[Work], WorkResult]


@dataclass
class Answers:
    """How the test's ModMed answers each kind of work (defaults: one matching chart, no flags, three ESI slots)."""

    lookup: MatchKind = MatchKind.UNIQUE
    flags: ChartFlags = field(default_factory=ChartFlags)
    slots: tuple[FoundSlot, ...] = field(default_factory=lambda: (esi_slot("slot-1", 2), esi_slot("slot-2", 3),
                                                                   esi_slot("slot-3", 4), esi_slot("slot-4", 5)))
    overrides: dict[type, Responder] = field(default_factory=dict)
    owned_appointments: frozenset[str] = frozenset({"appt-1001-000007", "appt-1001-000777"})
    """Appointment ids that are the caller's (an ownership check of any other id fails)."""
    seen: list[Work] = field(default_factory=list)

    def __call__(self, work: Work) -> WorkResult:
        self.seen.append(work)
        if type(work) in self.overrides:
            return self.overrides[type(work)](work)
        if isinstance(work, SearchPatient):
            return PatientLookedUp(self.lookup, PATIENT_ID if self.lookup is MatchKind.UNIQUE else None)
        if isinstance(work, ReadChartFlags):
            return ChartFlagsRead(self.flags, CommandRoute.FHIR)
        if isinstance(work, SearchSlots):
            return SlotsFound(self.slots, CommandRoute.FHIR)
        if isinstance(work, WriteAppointment):
            return AppointmentWritten(work.command, "appt-1001-009001", work.slot.start, work.slot.visit_reason,
                                      CommandRoute.FHIR)
        if isinstance(work, CheckAppointment):
            return AppointmentChecked(work.appointment_id in self.owned_appointments, work.appointment_id)
        if isinstance(work, CancelAppointment):
            return AppointmentWritten(Command.CANCEL_APPOINTMENT, work.appointment_id,
                                      NOW + timedelta(days=6), VisitReason.FOLLOW_UP, CommandRoute.FHIR)
        assert isinstance(work, CreateTask)
        return TaskWritten("Task", f"task-1001-{len(self.seen):06d}", CommandRoute.FHIR)


@dataclass
class Driver:
    """Runs events through the core, answering its work, like the Faust agent does (without I/O)."""

    practice: Practice = field(default_factory=practice)
    answers: Answers = field(default_factory=Answers)
    state: CallState | None = None
    now: datetime = NOW

    def send(self, event: CallEvent) -> list[Output]:
        if self.state is None:
            self.state = callflow.new_state(event, self.practice, partition=3, now=self.now)
        step: Step = callflow.on_event(self.state, event, self.practice, self.now)
        outputs = list(step.outputs)
        for _ in range(20):
            self.state = step.state
            if step.work is None:
                return outputs
            step = callflow.on_result(step.state, self.answers(step.work), self.practice, self.now)
            outputs.extend(step.outputs)
        raise AssertionError("the core kept asking for work")


def replies(outputs: list[Output]) -> list[callflow.SentReply]:
    return [output.reply for output in outputs if isinstance(output, ReplyOut)]


def audits(outputs: list[Output], action: str | None = None) -> list[callflow.AuditOut]:
    return [o for o in outputs if isinstance(o, callflow.AuditOut) and (action is None or o.action.value == action)]


def reviews(outputs: list[Output]) -> list[callflow.ReviewOut]:
    return [o for o in outputs if isinstance(o, callflow.ReviewOut)]


def works(answers: Answers, kind: type) -> Iterator[Any]:
    return (work for work in answers.seen if isinstance(work, kind))


def today_plus(days: int) -> date:
    return (NOW + timedelta(days=days)).date()
