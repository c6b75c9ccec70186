"""Procedure-aware scheduling: visit reason -> procedure code -> rule, and the slots worth offering.

A slot is offered only if the room, its equipment, the block, the patient's status, the slot's
length, the pre-op clearance and the caller's dates all fit the procedure (no ESI in a room without
fluoroscopy). Valid slots are ranked: the preferred provider first, then the soonest. The table is
summarised in guards/README.md. Codes and room/equipment names follow sandbox/vocabulary.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Self

from pydantic import AwareDatetime, Field, StringConstraints, model_validator

from guards.errors import GuardInputError
from guards.model import DateRange, FrozenModel, OpaqueId, VisitReason


class Equipment(StrEnum):
    """Room equipment a procedure may need."""

    FLUOROSCOPY = "fluoroscopy"
    RF_GENERATOR = "rf-generator"
    ULTRASOUND = "ultrasound"


class RoomKind(StrEnum):
    EXAM_ROOM = "exam-room"
    PROCEDURE_ROOM = "procedure-room"


class BlockKind(StrEnum):
    """Schedule-template blocks: new patients are seen only in consult blocks."""

    CONSULT = "consult"
    CLINIC = "clinic"
    PROCEDURE = "procedure"


class PreopClearance(FrozenModel):
    """A procedure that needs pre-op clearance (SCS trial, kyphoplasty).

    Without a clearance on file the procedure is booked no sooner than `lead_days` from now, the time
    the clearance takes; a clearance on file covers procedures from its date to `valid_days` after it.
    """

    lead_days: Annotated[int, Field(ge=1, le=180)]
    valid_days: Annotated[int, Field(ge=1, le=365)]


class ProcedureRule(FrozenModel):
    """How one procedure code may be scheduled."""

    code: Annotated[str, StringConstraints(pattern=r"^[0-9]{5}$")]
    """CPT code of the procedure (or the E/M code of a clinic visit)."""
    duration_minutes: Annotated[int, Field(ge=5, le=480)]
    required_equipment: frozenset[Equipment] = frozenset()
    room_kinds: frozenset[RoomKind]
    block_kinds: frozenset[BlockKind]
    new_patients: bool
    established_patients: bool
    preop_clearance: PreopClearance | None = None


_FLUORO = frozenset({Equipment.FLUOROSCOPY})
_EXAM = frozenset({RoomKind.EXAM_ROOM})
_PROCEDURE_ROOM = frozenset({RoomKind.PROCEDURE_ROOM})
_PROCEDURE_BLOCK = frozenset({BlockKind.PROCEDURE})
_CLINIC_BLOCK = frozenset({BlockKind.CLINIC})

PROCEDURE_RULES: dict[str, ProcedureRule] = {
    rule.code: rule
    for rule in (
        ProcedureRule(code="99204", duration_minutes=45, room_kinds=_EXAM, block_kinds=frozenset({BlockKind.CONSULT}),
                      new_patients=True, established_patients=False),
        ProcedureRule(code="99213", duration_minutes=20, room_kinds=_EXAM, block_kinds=_CLINIC_BLOCK,
                      new_patients=False, established_patients=True),
        ProcedureRule(code="99214", duration_minutes=30, room_kinds=_EXAM, block_kinds=_CLINIC_BLOCK,
                      new_patients=False, established_patients=True),
        ProcedureRule(code="62323", duration_minutes=30, required_equipment=_FLUORO, room_kinds=_PROCEDURE_ROOM,
                      block_kinds=_PROCEDURE_BLOCK, new_patients=False, established_patients=True),
        ProcedureRule(code="64493", duration_minutes=30, required_equipment=_FLUORO, room_kinds=_PROCEDURE_ROOM,
                      block_kinds=_PROCEDURE_BLOCK, new_patients=False, established_patients=True),
        ProcedureRule(code="64635", duration_minutes=45,
                      required_equipment=frozenset({Equipment.FLUOROSCOPY, Equipment.RF_GENERATOR}),
                      room_kinds=_PROCEDURE_ROOM, block_kinds=_PROCEDURE_BLOCK, new_patients=False,
                      established_patients=True),
        ProcedureRule(code="63650", duration_minutes=60, required_equipment=_FLUORO, room_kinds=_PROCEDURE_ROOM,
                      block_kinds=_PROCEDURE_BLOCK, new_patients=False, established_patients=True,
                      preop_clearance=PreopClearance(lead_days=14, valid_days=30)),
        ProcedureRule(code="22513", duration_minutes=60, required_equipment=_FLUORO, room_kinds=_PROCEDURE_ROOM,
                      block_kinds=_PROCEDURE_BLOCK, new_patients=False, established_patients=True,
                      preop_clearance=PreopClearance(lead_days=7, valid_days=30)),
        ProcedureRule(code="20553", duration_minutes=15, room_kinds=_EXAM | _PROCEDURE_ROOM,
                      block_kinds=_CLINIC_BLOCK | _PROCEDURE_BLOCK, new_patients=False, established_patients=True),
    )
}
"""Procedure code -> scheduling rule."""

VISIT_REASON_PROCEDURE: dict[VisitReason, str] = {
    VisitReason.NEW_PATIENT_CONSULT: "99204",
    VisitReason.FOLLOW_UP: "99213",
    VisitReason.MEDICATION_MANAGEMENT: "99214",
    VisitReason.AGREEMENT_REVIEW: "99213",
    VisitReason.ESI: "62323",
    VisitReason.FACET_INJECTION: "64493",
    VisitReason.RFA: "64635",
    VisitReason.SCS_TRIAL: "63650",
    VisitReason.KYPHOPLASTY: "22513",
    VisitReason.TRIGGER_POINT: "20553",
}
"""Visit reason -> procedure code."""


def procedure_rule(visit_reason: VisitReason) -> ProcedureRule:
    """The scheduling rule of a visit reason, through its procedure code."""
    return PROCEDURE_RULES[VISIT_REASON_PROCEDURE[visit_reason]]


class SlotCandidate(FrozenModel):
    """A free slot as read from the schedule (FHIR Slot plus its room and block)."""

    slot_id: OpaqueId
    start: AwareDatetime
    end: AwareDatetime
    practitioner_id: OpaqueId
    location_id: OpaqueId
    room_kind: RoomKind
    room_equipment: frozenset[Equipment] = frozenset()
    block_kind: BlockKind

    @model_validator(mode="after")
    def _sane_length(self) -> Self:
        """A slot must end after it starts and last at most a day."""
        if not timedelta(0) < self.end - self.start <= timedelta(days=1):
            raise ValueError("a slot ends after it starts and lasts at most a day")
        return self


class SlotRejection(StrEnum):
    """Why a slot cannot be offered for a visit."""

    IN_THE_PAST = "IN_THE_PAST"
    TOO_SHORT = "TOO_SHORT"
    WRONG_ROOM_KIND = "WRONG_ROOM_KIND"
    MISSING_EQUIPMENT = "MISSING_EQUIPMENT"
    WRONG_BLOCK = "WRONG_BLOCK"
    NOT_FOR_NEW_PATIENTS = "NOT_FOR_NEW_PATIENTS"
    NOT_FOR_ESTABLISHED_PATIENTS = "NOT_FOR_ESTABLISHED_PATIENTS"
    INSIDE_CLEARANCE_WINDOW = "INSIDE_CLEARANCE_WINDOW"
    OUTSIDE_CLEARANCE_VALIDITY = "OUTSIDE_CLEARANCE_VALIDITY"
    OUTSIDE_REQUESTED_DATES = "OUTSIDE_REQUESTED_DATES"


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise GuardInputError("now must be timezone-aware")


def slot_rejections(
    slot: SlotCandidate,
    visit_reason: VisitReason,
    *,
    now: datetime,
    patient_is_new: bool,
    preop_clearance_date: date | None = None,
    requested_dates: DateRange | None = None,
) -> tuple[SlotRejection, ...]:
    """Every reason `slot` cannot be offered for `visit_reason` (empty: the slot is valid).

    Raises:
        GuardInputError: `now` has no zone.
    """
    _require_aware(now)
    rule = procedure_rule(visit_reason)
    slot_day = slot.start.date()
    checks = {
        SlotRejection.IN_THE_PAST: slot.start <= now,
        SlotRejection.TOO_SHORT: slot.end - slot.start < timedelta(minutes=rule.duration_minutes),
        SlotRejection.WRONG_ROOM_KIND: slot.room_kind not in rule.room_kinds,
        SlotRejection.MISSING_EQUIPMENT: not rule.required_equipment <= slot.room_equipment,
        SlotRejection.WRONG_BLOCK: slot.block_kind not in rule.block_kinds,
        SlotRejection.NOT_FOR_NEW_PATIENTS: patient_is_new and not rule.new_patients,
        SlotRejection.NOT_FOR_ESTABLISHED_PATIENTS: not patient_is_new and not rule.established_patients,
        SlotRejection.OUTSIDE_REQUESTED_DATES: requested_dates is not None
        and not requested_dates.start <= slot_day <= requested_dates.end,
    }
    clearance = rule.preop_clearance
    if clearance is not None and preop_clearance_date is None:
        earliest = now.astimezone(slot.start.tzinfo).date() + timedelta(days=clearance.lead_days)
        checks[SlotRejection.INSIDE_CLEARANCE_WINDOW] = slot_day < earliest
    if clearance is not None and preop_clearance_date is not None:
        covered_until = preop_clearance_date + timedelta(days=clearance.valid_days)
        checks[SlotRejection.OUTSIDE_CLEARANCE_VALIDITY] = not preop_clearance_date <= slot_day <= covered_until
    return tuple(reason for reason in SlotRejection if checks.get(reason, False))


def filter_and_rank(
    slots: Iterable[SlotCandidate],
    visit_reason: VisitReason,
    *,
    now: datetime,
    patient_is_new: bool,
    preop_clearance_date: date | None = None,
    preferred_practitioner: str | None = None,
    requested_dates: DateRange | None = None,
    limit: int = 3,
) -> list[SlotCandidate]:
    """The valid slots to offer, best first: the preferred provider's, then the soonest (slot id breaks ties).

    A slot id seen twice is offered once (the first copy counts).

    Raises:
        GuardInputError: `now` has no zone, or `limit` is outside 1..20.
    """
    _require_aware(now)
    if not 1 <= limit <= 20:
        raise GuardInputError("limit must be between 1 and 20")
    unique = {slot.slot_id: slot for slot in reversed(list(slots))}
    valid = [
        slot
        for slot in unique.values()
        if not slot_rejections(
            slot,
            visit_reason,
            now=now,
            patient_is_new=patient_is_new,
            preop_clearance_date=preop_clearance_date,
            requested_dates=requested_dates,
        )
    ]
    valid.sort(key=lambda slot: (slot.practitioner_id != preferred_practitioner, slot.start, slot.slot_id))
    return valid[:limit]
