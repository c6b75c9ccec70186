"""The pure, synchronous core of the pipeline: one call's state machine.

Everything the pipeline decides lives here, with no I/O and no clock (``now`` is passed in), so every
path of a call can be tested in microseconds and replayed exactly. The Faust agent is thin wiring
around two functions:

- ``on_event(state, event, practice, now)`` for a call event from the telephony side, and
- ``on_result(state, result, practice, now)`` for the outcome of the ModMed work the core asked for.

Both return a ``Step``: the next state, at most one piece of ``Work`` for the dispatcher (the shell
runs it and feeds the result back), and the ``Output``s to publish (reply, audit records, review-queue
entries). A turn of the call is therefore a short loop: event → work → result → work → … → reply.

Why one work item at a time: each result can change what comes next (a patient search decides whether
flags are read; a taken slot means searching again), and the guard's decision for the turn is kept in
the state so every step of the turn acts on the same decision.

PHI (caller number, name, date of birth, the caller's words) is held in the state only while the call
lives: ``call_ended`` replaces the state by an ``ended`` marker without PHI; the state of an abandoned
call is purged by the TTL timer (``streams.retention``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import AwareDatetime, Field, ValidationError

from callstream.tenants import Practice
from guards import (
    CallContext,
    ChartFlags,
    Command,
    DateRange,
    Decision,
    GoLivePhase,
    GuardInputError,
    GuardName,
    Intent,
    IntentRequest,
    MatchKind,
    Outcome,
    ReplyTemplate,
    ReplyValues,
    SlotCandidate,
    TaskAudience,
    TaskSpec,
    VisitReason,
    after_booking,
    after_slot_search,
    decide,
    filter_and_rank,
    render_reply,
)
from guards import booking, effects
from guards.hours import is_after_hours as office_closed
from guards.model import FrozenModel
from guards.replies import INTERIM_TEMPLATES, adapt_reply
from schemas.models import (
    AuditAction,
    AuditOutcome,
    CallEnded,
    CallerIdentified,
    CallEvent,
    CallStarted,
    CommandKind,
    CommandRoute,
    GuardAction,
    InsuranceDetails,
    IntentRecognised,
    NewPatientDetails,
    SlotChosen,
)

DEFAULT_SEARCH_DAYS = 14
MAX_SEARCH_DAYS = 31
"""Longest slot search (the EMA booking screen is searched day by day; FHIR allows up to 92 days)."""
OFFERED_SLOTS = 3
MAX_REMEMBERED = 50
"""Bound of the per-call id lists (tasks done, controlled-substance requests)."""
GUARD_REQUEST_PARAM = "guard_request"
"""Review-queue command params: the decided request (IntentRequest JSON) and the count of controlled-substance
requests earlier in the call, for the retry's new decision; and the controlled-substance request (intent event
id) a queued item escalates, which the review queue counts as escalated once the item is stored."""
EARLIER_CS_REQUESTS_PARAM = "cs_earlier"
CS_REQUEST_PARAM = "cs_request"
REPLY_NAMESPACE = uuid.UUID("6b1f3c52-8f0e-4f6e-9d0a-3c0a8f0e5b11")
"""uuid5 namespace of reply and audit ids: a redelivered event yields the same ids, so consumers de-duplicate."""


class CallPhase(StrEnum):
    """Where a call stands; every change is audited as a CALL_STATE_TRANSITION."""

    STARTED = "started"
    IDENTIFIED = "identified"
    AWAITING_IDENTITY = "awaiting_identity"
    AWAITING_VISIT_REASON = "awaiting_visit_reason"
    OFFERING_SLOTS = "offering_slots"
    NO_SLOTS = "no_slots"
    BOOKED = "booked"
    CANCELLED = "cancelled"
    ESCALATED = "escalated"
    ROUTED = "routed"
    MESSAGE_TAKEN = "message_taken"
    REVIEW_QUEUED = "review_queued"
    AWAITING_REGISTRATION = "awaiting_registration"
    """A new patient chose a slot; the voice agent is collecting what registering them needs."""
    REGISTERING = "registering"
    """The chart is searched again, then the Patient (and Coverage) created, then the slot booked."""
    CLARIFYING = "clarifying"
    HANDED_OFF = "handed_off"
    ENDED = "ended"


_PHASE_OF_OUTCOME: dict[Outcome, CallPhase] = {
    Outcome.ESCALATE: CallPhase.ESCALATED,
    Outcome.BLOCK_AND_ROUTE: CallPhase.ROUTED,
    Outcome.REVIEW_QUEUE: CallPhase.REVIEW_QUEUED,
}
_WRITE_COMMAND_KINDS = {
    Command.BOOK_APPOINTMENT: CommandKind.BOOK_APPOINTMENT,
    Command.RESCHEDULE_APPOINTMENT: CommandKind.RESCHEDULE_APPOINTMENT,
    Command.CANCEL_APPOINTMENT: CommandKind.CANCEL_APPOINTMENT,
    Command.CREATE_TASK: CommandKind.CREATE_TASK,
    Command.CREATE_DOCUMENT_REFERENCE: CommandKind.CREATE_DOCUMENT_REFERENCE,
}
_CONTROLLED_SUBSTANCE_GUARDS = frozenset(
    {GuardName.REFILL_ESCALATES_TO_PROVIDER, GuardName.CONTROLLED_SUBSTANCE_ESCALATES}
)
_HANDOFF_REPLY = ReplyTemplate.ROUTED_TO_CARE_TEAM


# --------------------------------------------------------------------------------------------- state


class CallerIdentity(FrozenModel):
    """Name and date of birth as the caller gave them (PHI: held only while the call lives)."""

    family_name: str = Field(repr=False)
    given_name: str = Field(repr=False)
    birth_date: date = Field(repr=False)
    callback_number: str | None = Field(default=None, repr=False)
    email: str | None = Field(default=None, repr=False)
    contact_channel: Literal["sms", "email"] | None = None

    def same_person(self, other: CallerIdentity) -> bool:
        """Name and date of birth as given (what a chart search uses), regardless of case and spacing."""
        def key(identity: CallerIdentity) -> tuple[str, str, date]:
            return (identity.family_name.strip().casefold(), identity.given_name.strip().casefold(),
                    identity.birth_date)
        return key(self) == key(other)


class PendingIntent(FrozenModel):
    """The intent being worked on, kept so it can be decided again once the caller is identified."""

    event_id: str
    intent: Intent
    visit_reason: VisitReason | None = None
    medication_mentioned: bool = False
    controlled_substance_mentioned: bool = False
    transcript_snippet: str | None = Field(default=None, repr=False)
    requested_dates: DateRange | None = None
    provider_hint: str | None = Field(default=None, repr=False)
    appointment_id: str | None = None

    def request(self) -> IntentRequest:
        return IntentRequest(
            intent=self.intent,
            visit_reason=self.visit_reason,
            medication_mentioned=self.medication_mentioned,
            controlled_substance_mentioned=self.controlled_substance_mentioned,
            transcript_snippet=self.transcript_snippet,
            requested_dates=self.requested_dates,
        )

    @property
    def controlled_substance_request(self) -> bool:
        """Our own, independent reading of a controlled-substance request (the escalation sentinel)."""
        return self.intent is Intent.REFILL_REQUEST or self.controlled_substance_mentioned


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


class Offer(FrozenModel):
    """Slots offered for a booking or a reschedule, waiting for the caller's choice."""

    write: Command
    queued: bool
    """Read-only phase: the chosen slot goes to the review queue instead of being booked."""
    visit_reason: VisitReason
    appointment_id: str | None = None
    requested_dates: DateRange | None = None
    slots: tuple[SlotChoice, ...]
    chosen_slot_id: str | None = None
    """Set when the caller chose: the slot the write (or its failure handling) is about."""
    decided: IntentRequest | None = None
    """The request the guards allowed the booking on: a booking queued for ModMed's failure carries it, so
    the review queue's retry decides it again (None in states stored before it existed)."""
    earlier_cs_requests: int = 0

    @property
    def chosen(self) -> SlotChoice | None:
        return next((slot for slot in self.slots if slot.slot_id == self.chosen_slot_id), None)


class SentReply(FrozenModel):
    """The last reply of the call, re-sent unchanged when its event is redelivered."""

    reply_id: str
    in_reply_to: str
    template: ReplyTemplate
    text: str = Field(repr=False)
    offered_slots: tuple[SlotChoice, ...] = ()
    escalated: bool
    created_at: AwareDatetime


class Turn(FrozenModel):
    """The guard's decision for the current intent and how far its commands have run."""

    event_id: str
    decision: Decision
    pending_tasks: tuple[TaskSpec, ...]
    slots_searched: bool = False
    excluded_slots: tuple[str, ...] = ()
    provider_escalated: Literal["no", "done", "queued"] = "no"
    counts_cs_request: bool = False
    """First decision of a controlled-substance request: this turn emits the escalation sentinel record."""
    appointment_check: Literal["no", "running", "owned"] = "no"
    """Whether the appointment the caller named was proved theirs (before any slot is offered or queued)."""


class CallState(FrozenModel):
    """Everything the pipeline remembers about one call (a value of the changelogged `calls` table)."""

    call_id: str
    practice_id: str
    partition: Annotated[int, Field(ge=0)]
    """The call-events partition (and so the changelog partition) the call lives on; used to purge it."""
    phase: CallPhase
    last_seq: int
    last_event_id: str
    started_at: AwareDatetime
    updated_at: AwareDatetime
    caller_number: str | None = Field(default=None, repr=False)
    identity: CallerIdentity | None = Field(default=None, repr=False)
    lookup: MatchKind | None = None
    lookup_failure: str | None = None
    """Error class of a patient search ModMed failed: the caller is not asked again, staff follow up."""
    patient_id: str | None = None
    chart: ChartFlags | None = None
    pending: PendingIntent | None = None
    offer: Offer | None = None
    turn: Turn | None = None
    tasks_done: tuple[str, ...] = ()
    """TaskSpec.idempotency_key of every task this call created or queued (a re-decided turn never repeats one)."""
    tasks_queued: tuple[str, ...] = ()
    """The subset of tasks_done that went to the review queue instead of ModMed."""
    cs_requests: tuple[str, ...] = ()
    task_refs: tuple[str, ...] = ()
    """ModMed references ("Task/123") of the tasks this call created; the ended record lists them with the
    transcript reference."""
    last_reply: SentReply | None = None
    transcript_ref: str | None = None
    """Where the telephony side keeps the transcript: from CallStarted when known, CallEnded's is final."""
    registration: NewPatientDetails | None = Field(default=None, repr=False)
    """What a caller without a chart gave to be registered (PHI, gone with the call)."""
    registered: bool = False
    """This call created the patient's chart (patient_id is the new Patient)."""
    confirming: SendIntake | None = Field(default=None, repr=False)
    """A booking whose confirmation (with the intake link) is being sent; its reply waits for the outcome."""

    @property
    def ended(self) -> bool:
        return self.phase is CallPhase.ENDED

    @property
    def holds_phi(self) -> bool:
        """Whether anything in the state identifies the caller (used by the purge tests and the TTL timer)."""
        return any(
            value is not None
            for value in (self.caller_number, self.identity, self.pending, self.offer, self.turn, self.last_reply,
                          self.registration, self.confirming)
        )


# ------------------------------------------------------------------------------------- work / results


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


# ------------------------------------------------------------------------------------------ outputs


@dataclass(frozen=True, slots=True)
class ReplyOut:
    reply: SentReply


@dataclass(frozen=True, slots=True)
class AuditOut:
    """An audit record without the envelope (id, time, practice, call, caller number) the shell adds."""

    action: AuditAction
    outcome: AuditOutcome
    state_from: str | None = None
    state_to: str | None = None
    resource_type: str | None = None
    resource_ids: tuple[str, ...] = ()
    deep_link: str | None = None
    task_refs: tuple[str, ...] = ()
    guards_fired: tuple[str, ...] = ()
    command: CommandKind | None = None
    error_class: str | None = None
    latency_ms: float | None = None
    detail: dict[str, str] = field(default_factory=dict)
    transcript_ref: str | None = None
    guard_action: GuardAction | None = None
    dialogue_path: str | None = None
    slot_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReviewOut:
    """A write handed to the human review queue (a REVIEW_QUEUE Command record); params may hold PHI."""

    kind: CommandKind
    idempotency_key: str
    params: dict[str, str] = field(repr=False)


Output = ReplyOut | AuditOut | ReviewOut


@dataclass(frozen=True, slots=True)
class Step:
    """What to do next: persist ``state`` (None: delete the call), run ``work``, publish ``outputs``; or, with
    ``dropped``, nothing but the record of a dropped event (``dropped_audit``)."""

    state: CallState | None
    work: Work | None = None
    outputs: tuple[Output, ...] = ()
    dropped: DropReason | None = None


class DropReason(StrEnum):
    """Why an event was dropped unprocessed (AuditEvent.detail ``dropped``; the replay tool reads it)."""

    CALL_ENDED = "call_ended"
    """The call had already ended (e.g. a script replayed under the same call id)."""
    OUT_OF_ORDER = "out_of_order"
    """An older seq than the call's last event."""


DROPPED_DETAIL = "dropped"
"""The audit detail key naming a DropReason (the event's ``seq`` beside it)."""


class CallFlowError(ValueError):
    """An event that cannot belong to the call it names (the shell dead-letters it)."""


# ------------------------------------------------------------------------------------------ helpers


def _queued_reason(practice: Practice) -> str:
    """Why the guards queued a write: the read-only phase, or else the practice's after-hours rule."""
    return "read_only_phase" if practice.phase is GoLivePhase.READ_ONLY else "after_hours_rule"


def is_after_hours(now: datetime, practice: Practice) -> bool:
    """Outside the practice's office hours (guards.hours; Monday-Friday 08:00-17:00 when none are configured)."""
    return office_closed(now, practice.timezone, practice.office_hours)


def reply_id_for(event_id: str) -> str:
    """Deterministic ids: the same event processed twice produces the same reply (and audit) ids."""
    return str(uuid.uuid5(REPLY_NAMESPACE, f"{event_id}:reply"))


def task_note(task: TaskSpec) -> str:
    """What a task says: codes and the call reference only, never the caller's words or chart content. The
    context is the transcript itself: the connector adds its reference (``TaskSpec.transcript_ref``), scrubbed
    by callstream.references."""
    reasons = "; ".join(reason.value.replace("_", " ").lower() for reason in task.reasons)
    lines = [
        f"Phone request routed by callstream: {reasons}.",
        f"Call reference: {task.call_id}.",
        f"For: {task.audience.value.replace('_', ' ')}.",
    ]
    if task.after_hours:
        lines.append("Received after office hours.")
    if task.pdmp_last_checked is not None:
        lines.append(f"PDMP last checked: {task.pdmp_last_checked.astimezone(UTC).isoformat(timespec='minutes')}.")
    return " ".join(lines)


def dialogue_path(intent: Intent | str, visit_reason: VisitReason | None = None) -> str:
    """The dialogue path a guard acted on, as audited: the intent, with the visit reason when one is set."""
    name = intent.value if isinstance(intent, Intent) else intent
    return f"{name}/{visit_reason.value}" if visit_reason is not None else name


def _remember(ids: tuple[str, ...], new: str) -> tuple[str, ...]:
    return (ids + (new,))[-MAX_REMEMBERED:] if new not in ids else ids


def _transition(state: CallState, phase: CallPhase) -> tuple[CallState, tuple[Output, ...]]:
    if state.phase is phase:
        return state, ()
    audit = AuditOut(
        action=AuditAction.CALL_STATE_TRANSITION,
        outcome=AuditOutcome.SUCCESS,
        state_from=state.phase.value,
        state_to=phase.value,
        transcript_ref=state.transcript_ref,
    )
    return state.model_copy(update={"phase": phase}), (audit,)


def _visit_reason(code: str | None) -> tuple[VisitReason | None, bool]:
    """A visit-reason code from the voice agent; an unknown code is treated as none (the guard asks)."""
    if code is None:
        return None, False
    try:
        return VisitReason(code), False
    except ValueError:
        return None, True


def _requested_dates(payload: IntentRecognised) -> DateRange | None:
    if payload.date_from is None and payload.date_to is None:
        return None
    start = payload.date_from or payload.date_to
    end = payload.date_to or payload.date_from
    assert start is not None and end is not None
    try:
        return DateRange(start=start, end=end)
    except ValidationError:
        return None


def _reply(
    state: CallState,
    template: ReplyTemplate,
    practice: Practice,
    now: datetime,
    *,
    visit_reason: VisitReason | None = None,
    slots: Sequence[SlotChoice] = (),
    appointment_time: datetime | None = None,
    escalated: bool = False,
) -> tuple[CallState, tuple[Output, ...]]:
    """Render a closed template (times in the practice's zone) in reply to the event being processed,
    and remember it so a redelivery of that event gets the very same reply."""
    zone = ZoneInfo(practice.timezone)
    values = ReplyValues(
        visit_reason=visit_reason,
        slot_starts=tuple(slot.start.astimezone(zone) for slot in slots),
        appointment_time=appointment_time.astimezone(zone) if appointment_time is not None else None,
    )
    reply = SentReply(
        reply_id=reply_id_for(state.last_event_id),
        in_reply_to=state.last_event_id,
        template=template,
        text=render_reply(template, values),
        offered_slots=tuple(slots),
        escalated=escalated,
        created_at=now,
    )
    detail = {"template": template.value, "phase": practice.phase.value}
    if visit_reason is not None:  # lets the per-call record rebuild what the caller heard (guards.replies.outline_reply)
        detail["visit_reason"] = visit_reason.value
    audit = AuditOut(action=AuditAction.REPLY_SENT, outcome=AuditOutcome.SUCCESS, detail=detail)
    return state.model_copy(update={"last_reply": reply}), (ReplyOut(reply), audit)


def awaits_reply(state: CallState) -> bool:
    """Whether the caller waits on the turn's answer: a request or a chosen slot is being handled. A chart
    lookup right after identification runs while the conversation goes on, and needs no hold message."""
    return state.pending is not None or (state.offer is not None and state.offer.chosen is not None)


def interim_reply(state: CallState, template: ReplyTemplate, practice: Practice, now: datetime) -> tuple[Output, ...]:
    """A reply sent while the turn's work still runs (``INTERIM_TEMPLATES``), with its audit record.

    Its id derives from the event and the template, apart from the final reply's, so a redelivered event
    repeats it rather than adding one. It is not remembered as the call's last reply: a redelivery of a
    finished turn re-sends the final answer only."""
    return interim_reply_for(state.last_event_id, template, practice, now)


def interim_reply_for(event_id: str, template: ReplyTemplate, practice: Practice, now: datetime) -> tuple[Output, ...]:
    """``interim_reply`` for an event not yet run (it waits behind its call's previous event)."""
    if template not in INTERIM_TEMPLATES:
        raise ValueError(f"{template.value} is not an interim reply")
    reply = SentReply(
        reply_id=str(uuid.uuid5(REPLY_NAMESPACE, f"{event_id}:{template.value}")),
        in_reply_to=event_id,
        template=template,
        text=render_reply(template, ReplyValues()),
        escalated=False,
        created_at=now,
    )
    audit = AuditOut(
        action=AuditAction.REPLY_SENT,
        outcome=AuditOutcome.SUCCESS,
        detail={"template": template.value, "phase": practice.phase.value, "interim": "true"},
    )
    return ReplyOut(reply), audit


def _review(state: CallState, kind: CommandKind, target: str, params: dict[str, str], reason: str, *,
            resource_type: str | None = None, resource_ids: tuple[str, ...] = (), slot_id: str | None = None,
            ) -> tuple[Output, ...]:
    """A review-queue entry and its audit record, naming what the queued write is about (the appointment a
    reschedule or cancel targets, the slot chosen) so the per-call record shows it."""
    review = ReviewOut(
        kind=kind,
        idempotency_key=f"{state.call_id}:{kind.value}:{target}"[:256],
        params={"reason": reason, **params},
    )
    audit = AuditOut(
        action=AuditAction.REVIEW_QUEUED,
        outcome=AuditOutcome.QUEUED,
        command=kind,
        resource_type=resource_type if resource_ids else None,
        resource_ids=resource_ids,
        slot_id=slot_id,
        detail={"queue": "review", "operation": reason},
    )
    return review, audit


def _identity_params(state: CallState) -> dict[str, str]:
    """What staff need to register or find a caller (internal review queue only; never logged)."""
    if state.identity is None:
        return {}
    identity = state.identity
    params = {
        "family_name": identity.family_name,
        "given_name": identity.given_name,
        "birth_date": identity.birth_date.isoformat(),
    }
    callback = identity.callback_number or state.caller_number
    if callback:
        params["callback_number"] = callback
    return params


# -------------------------------------------------------------------------------------- call events


def new_state(event: CallEvent, practice: Practice, partition: int, now: datetime) -> CallState:
    """The state of a call seen for the first time (whatever its first event is)."""
    return CallState(
        call_id=event.call_id,
        practice_id=practice.practice_id,
        partition=partition,
        phase=CallPhase.STARTED,
        last_seq=-1,
        last_event_id="",
        started_at=now,
        updated_at=now,
    )


def on_event(state: CallState, event: CallEvent, practice: Practice, now: datetime) -> Step:
    """Advance a call by one event of the telephony side.

    Redeliveries are recognised by ``seq``: the last event again re-sends its reply (same reply id);
    an older one, or any other event of an ended call, is dropped, with a record saying so (``Step.dropped``).
    An event that reuses a seq with another id, or whose called number belongs to another practice than the
    call's, raises CallFlowError (the shell dead-letters it).
    """
    if event.call_id != state.call_id:
        raise CallFlowError("event belongs to another call")
    if practice.practice_id != state.practice_id:
        raise CallFlowError("called number resolves to another practice than the call's")
    event_id = str(event.event_id)
    if event.seq <= state.last_seq:
        if event.seq == state.last_seq and event_id != state.last_event_id:
            raise CallFlowError("seq already used by another event of this call")
        last = state.last_reply
        if event_id == state.last_event_id and last is not None and last.in_reply_to == event_id:
            return Step(state, outputs=(ReplyOut(last),))
        if event_id == state.last_event_id:
            return Step(state)  # the last event redelivered: nothing new happened
        return Step(state, dropped=DropReason.CALL_ENDED if state.ended else DropReason.OUT_OF_ORDER)
    if state.ended:
        return Step(state, dropped=DropReason.CALL_ENDED)
    state = state.model_copy(update={"last_seq": event.seq, "last_event_id": event_id, "updated_at": now, "turn": None})
    payload = event.payload
    if isinstance(payload, CallStarted):
        return Step(state.model_copy(update={"caller_number": payload.caller_number,
                                             "transcript_ref": payload.transcript_ref or state.transcript_ref}))
    if isinstance(payload, CallerIdentified):
        return _on_identified(state, payload)
    if isinstance(payload, IntentRecognised):
        return _on_intent(state, event_id, payload, practice, now)
    if isinstance(payload, SlotChosen):
        return _on_slot_chosen(state, payload, practice, now)
    assert isinstance(payload, CallEnded)
    return _on_ended(state, payload)


def _on_identified(state: CallState, payload: CallerIdentified) -> Step:
    """Search the chart at once (and read its flags right after), whatever the intent: tasks then carry
    the patient and the PDMP check time, and the intent's turn needs no extra round trip."""
    identity = CallerIdentity(
        family_name=payload.family_name,
        given_name=payload.given_name,
        birth_date=payload.birth_date,
        callback_number=payload.callback_number,
        email=payload.email,
        contact_channel=payload.contact_channel,
    )
    registration = payload.registration or (
        state.registration if state.identity is not None and state.identity.same_person(identity) else None)
    awaited = state.phase is CallPhase.AWAITING_REGISTRATION and state.offer is not None
    if awaited and payload.registration is not None and state.identity is not None and state.identity.same_person(identity):
        # The details the new patient was asked for: search again (no duplicate chart), then register and book.
        return _register_again(state.model_copy(update={"identity": identity, "registration": registration}))
    state = state.model_copy(
        update={"identity": identity, "lookup": None, "lookup_failure": None, "patient_id": None, "chart": None,
                "offer": None, "registration": registration, "registered": False}
    )
    work = SearchPatient(
        family_name=identity.family_name,
        given_name=identity.given_name,
        birth_date=identity.birth_date,
        phone=identity.callback_number or state.caller_number,
    )
    return Step(state, work=work)


def _on_intent(state: CallState, event_id: str, payload: IntentRecognised, practice: Practice, now: datetime) -> Step:
    reason, unreadable = _visit_reason(payload.visit_reason)
    pending = PendingIntent(
        event_id=event_id,
        intent=Intent(payload.intent.value),
        visit_reason=reason,
        medication_mentioned=payload.medication_mentioned,
        controlled_substance_mentioned=payload.controlled_substance_mentioned,
        transcript_snippet=payload.transcript_snippet,
        requested_dates=_requested_dates(payload),
        provider_hint=payload.provider_hint,
        appointment_id=payload.appointment_id,
    )
    state = state.model_copy(update={"pending": pending, "offer": None})
    outputs: tuple[Output, ...] = ()
    if unreadable:  # not a contract code: treated as "no visit reason", so the guard asks for it
        outputs = (
            AuditOut(
                action=AuditAction.GUARD_HIT,
                outcome=AuditOutcome.SUCCESS,
                error_class="UnknownVisitReason",
                guard_action=GuardAction.NOTED,
                dialogue_path=dialogue_path(pending.intent),
                detail={"intent": pending.intent.value},
            ),
        )
    step = _decide(state, practice, now)
    return Step(step.state, step.work, outputs + step.outputs)


def _on_slot_chosen(state: CallState, payload: SlotChosen, practice: Practice, now: datetime) -> Step:
    offer = state.offer
    refused = booking.refuse_choice(None if offer is None else [slot.slot_id for slot in offer.slots], payload.slot_id)
    if refused is not None:
        refusal = AuditOut(
            action=AuditAction.GUARD_HIT,
            outcome=AuditOutcome.BLOCKED,
            error_class=refused.value,
            guard_action=GuardAction.BLOCKED,
            dialogue_path=dialogue_path(offer.write.value, offer.visit_reason) if offer else None,
        )
        state, outputs = _reply(state, ReplyTemplate.CLARIFY, practice, now)
        state, moved = _transition(state, CallPhase.CLARIFYING)
        return Step(state, outputs=(refusal, *outputs, *moved))
    assert offer is not None
    chosen = next(slot for slot in offer.slots if slot.slot_id == payload.slot_id)
    state = state.model_copy(update={"offer": offer.model_copy(update={"chosen_slot_id": chosen.slot_id})})
    if offer.queued:
        return _booking_to_staff(state, _queued_reason(practice), practice, now)
    if state.patient_id is None:
        if state.lookup is not MatchKind.NONE or state.identity is None:
            return _booking_to_staff(state, "new_patient_registration", practice, now)
        if state.registration is None:
            # A new patient: the voice agent collects demographics, insurance, address and pharmacy, and sends
            # them with the caller's name and birth date again; the chosen slot waits.
            state, replies = _reply(state, ReplyTemplate.ASK_NEW_PATIENT_DETAILS, practice, now,
                                    visit_reason=chosen.visit_reason)
            state, moved = _transition(state, CallPhase.AWAITING_REGISTRATION)
            return Step(state, outputs=(*replies, *moved))
        return _register_again(state)
    work = WriteAppointment(
        command=offer.write, patient_id=state.patient_id, slot=chosen, appointment_id=offer.appointment_id
    )
    return Step(state, work=work)


def _register_again(state: CallState) -> Step:
    """Search the chart again right before creating one: another call, or staff, may have created it since."""
    identity = state.identity
    assert identity is not None
    state, moved = _transition(state, CallPhase.REGISTERING)
    work = SearchPatient(family_name=identity.family_name, given_name=identity.given_name,
                         birth_date=identity.birth_date, phone=identity.callback_number or state.caller_number)
    return Step(state, work=work, outputs=moved)


def _on_ended(state: CallState, payload: CallEnded) -> Step:
    """Purge PHI now: only a marker with ids stays, so late redeliveries are recognised and dropped."""
    marker = CallState(
        call_id=state.call_id,
        practice_id=state.practice_id,
        partition=state.partition,
        phase=state.phase,
        last_seq=state.last_seq,
        last_event_id=state.last_event_id,
        started_at=state.started_at,
        updated_at=state.updated_at,
        transcript_ref=payload.transcript_ref,
    )
    marker, moved = _transition(marker, CallPhase.ENDED)
    # The call's tasks with the final transcript reference, on the record every sink receives.
    audits = tuple(
        replace(audit, detail={"disposition": payload.disposition.value}, task_refs=state.task_refs)
        if isinstance(audit, AuditOut) else audit
        for audit in moved
    )
    return Step(marker, outputs=audits)


def dropped_audit(state: CallState, seq: int, reason: DropReason) -> AuditOut:
    """The record of an event dropped unprocessed: the call's phase unchanged, BLOCKED, why and the event's seq."""
    return AuditOut(
        action=AuditAction.CALL_STATE_TRANSITION,
        outcome=AuditOutcome.BLOCKED,
        state_from=state.phase.value,
        state_to=state.phase.value,
        detail={DROPPED_DETAIL: reason.value, "seq": str(seq)},
    )


def expiry_audit(state: CallState) -> AuditOut:
    """The audit record of a call the TTL timer purges."""
    return AuditOut(
        action=AuditAction.CALL_STATE_TRANSITION,
        outcome=AuditOutcome.SUCCESS,
        state_from=state.phase.value,
        state_to="expired",
    )


# ------------------------------------------------------------------------------------- work results


def on_result(state: CallState, result: WorkResult, practice: Practice, now: datetime) -> Step:
    """Advance a call with the outcome of the work the previous step asked for."""
    if isinstance(result, PatientLookedUp):
        if state.phase is CallPhase.REGISTERING:
            return _on_recheck(state, result, practice, now)
        return _on_lookup(state, result, practice, now)
    if isinstance(result, PatientRegistered):
        return _on_registered(state, result)
    if isinstance(result, CoverageCreated):
        return _on_coverage(state, result)
    if isinstance(result, IntakeSent):
        return _on_intake_sent(state, result, practice, now)
    if isinstance(result, ChartFlagsRead):
        return _on_flags(state, result, practice, now)
    if isinstance(result, SlotsFound):
        return _on_slots(state, result, practice, now)
    if isinstance(result, TaskWritten):
        return _on_task_written(state, result, practice, now)
    if isinstance(result, AppointmentChecked):
        return _on_appointment_checked(state, result, practice, now)
    if isinstance(result, AppointmentWritten):
        if result.command is Command.CANCEL_APPOINTMENT:
            return _on_cancelled(state, result, practice, now)
        return _on_appointment_written(state, result, practice, now)
    return _on_failure(state, result, practice, now)


def _read_audit(resource_type: str, ids: Iterable[str], route: CommandRoute, latency_ms: float, command: CommandKind,
                deep_link: str | None = None, **detail: str) -> AuditOut:
    return AuditOut(
        action=AuditAction.EMA_READ if route is CommandRoute.EMA else AuditAction.FHIR_READ,
        outcome=AuditOutcome.SUCCESS,
        resource_type=resource_type,
        resource_ids=tuple(ids)[:100],
        deep_link=deep_link,
        command=command,
        latency_ms=latency_ms,
        detail={"route": route.value, **detail},
    )


def _on_lookup(state: CallState, result: PatientLookedUp, practice: Practice, now: datetime) -> Step:
    # A chart read is reconciled like a write: a unique match carries the link that opens the chart.
    chart = result.patient_id if result.kind is MatchKind.UNIQUE else None
    audit = _read_audit(
        "Patient", [result.patient_id] if result.patient_id else [], result.route, result.latency_ms,
        CommandKind.SEARCH_PATIENT, practice.chart_deep_link(chart) if chart else None,
        operation=f"match_{result.kind.value}",
    )
    state = state.model_copy(update={"lookup": result.kind, "patient_id": result.patient_id})
    state, moved = _transition(state, CallPhase.IDENTIFIED)
    if result.kind is MatchKind.UNIQUE and result.patient_id is not None:
        return Step(state, work=ReadChartFlags(result.patient_id), outputs=(audit, *moved))
    step = _decide(state, practice, now) if state.pending is not None else Step(state)
    return Step(step.state, step.work, (audit, *moved, *step.outputs))


def _on_recheck(state: CallState, result: PatientLookedUp, practice: Practice, now: datetime) -> Step:
    """The search right before registering: still no chart, create it; a chart now (someone registered the
    caller meanwhile, or several match) goes to staff with the chosen slot. The caller hears that staff will
    confirm the visit, nothing about any chart."""
    audit = _read_audit("Patient", [result.patient_id] if result.patient_id else [], result.route, result.latency_ms,
                        CommandKind.SEARCH_PATIENT, operation=f"recheck_{result.kind.value}")
    if result.kind is not MatchKind.NONE:
        step = _booking_to_staff(state, "chart_found_before_registration", practice, now)
        return Step(step.state, step.work, (audit, *step.outputs))
    identity, details = state.identity, state.registration
    assert identity is not None and details is not None
    work = RegisterPatient(family_name=identity.family_name, given_name=identity.given_name,
                           birth_date=identity.birth_date, details=details,
                           phone=identity.callback_number or state.caller_number, email=identity.email)
    return Step(state, work=work, outputs=(audit,))


def _on_registered(state: CallState, result: PatientRegistered) -> Step:
    audit = _write_audit(result.route, AuditOutcome.SUCCESS, CommandKind.REGISTER_PATIENT, "Patient",
                         (result.patient_id,), result.latency_ms, result.deep_link, operation="register_patient")
    state = state.model_copy(update={"patient_id": result.patient_id, "registered": True})
    insurance = state.registration.insurance if state.registration is not None else None
    work: Work = CreateCoverage(result.patient_id, insurance) if insurance is not None else _book_chosen(state)
    return Step(state, work=work, outputs=(audit,))


def _on_coverage(state: CallState, result: CoverageCreated) -> Step:
    audit = _write_audit(CommandRoute.FHIR, AuditOutcome.SUCCESS, CommandKind.CREATE_COVERAGE, "Coverage",
                         (result.coverage_id,), result.latency_ms, operation="create_coverage")
    return Step(state, work=_book_chosen(state), outputs=(audit,))


def _book_chosen(state: CallState) -> WriteAppointment:
    offer = state.offer
    assert offer is not None and offer.chosen is not None and state.patient_id is not None
    return WriteAppointment(command=offer.write, patient_id=state.patient_id, slot=offer.chosen,
                            appointment_id=offer.appointment_id)


def _on_flags(state: CallState, result: ChartFlagsRead, practice: Practice, now: datetime) -> Step:
    audit = _read_audit(
        "Flag", [state.patient_id] if state.patient_id else [], result.route, result.latency_ms,
        CommandKind.READ_COMPLIANCE_FLAGS, practice.chart_deep_link(state.patient_id) if state.patient_id else None,
    )
    state = state.model_copy(update={"chart": result.flags})
    step = _decide(state, practice, now) if state.pending is not None else Step(state)
    return Step(step.state, step.work, (audit, *step.outputs))


# ----------------------------------------------------------------------------------------- the turn


def _earlier_cs_requests(state: CallState, intent_event_id: str) -> int:
    return min(sum(1 for event_id in state.cs_requests if event_id != intent_event_id), 1000)


def _context(state: CallState, practice: Practice, now: datetime, intent_event_id: str) -> CallContext:
    earlier = _earlier_cs_requests(state, intent_event_id)
    return CallContext(
        call_id=state.call_id,
        practice_id=state.practice_id,
        caller_identified=state.identity is not None and state.lookup is not None,
        patient_id=state.patient_id,
        is_new_patient=state.lookup is MatchKind.NONE,
        transcript_ref=state.transcript_ref,
        after_hours=is_after_hours(now, practice),
        after_hours_bookings_held=practice.office_hours.after_hours_bookings == "staff_confirm",
        refill_requests_earlier_in_call=min(earlier, 1000),
    )


def _decide(state: CallState, practice: Practice, now: datetime) -> Step:
    """Ask the guard about the pending intent and start carrying out its decision."""
    pending = state.pending
    assert pending is not None
    chart = state.chart if state.patient_id is not None else None
    try:
        decision = decide(_context(state, practice, now, pending.event_id), pending.request(), chart,
                          practice.phase, now)
    except (GuardInputError, ValidationError) as exc:
        return _hand_off(state, practice, now, type(exc).__name__, CommandKind.CREATE_TASK)
    outputs: list[Output] = list(_decision_audits(decision, pending))
    if Command.READ_COMPLIANCE_FLAGS in decision.commands and state.patient_id is not None:
        return Step(state, work=ReadChartFlags(state.patient_id))
    counts = (pending.controlled_substance_request or decision.asked_for_controlled_substance) and (
        pending.event_id not in state.cs_requests
    )
    if counts:
        state = state.model_copy(update={"cs_requests": _remember(state.cs_requests, pending.event_id)})
    tasks = tuple(task for task in decision.tasks if task.idempotency_key not in state.tasks_done)
    # A provider task this call already created (or queued) escalates a repeated request as well.
    earlier = [t.idempotency_key for t in decision.tasks if t.audience is TaskAudience.PROVIDER and t not in tasks]
    already: Literal["no", "done", "queued"] = "no"
    if earlier:
        already = "queued" if all(key in state.tasks_queued for key in earlier) else "done"
    turn = Turn(event_id=pending.event_id, decision=decision, pending_tasks=tasks, counts_cs_request=counts,
                provider_escalated=already)
    state = state.model_copy(update={"turn": turn})
    if counts and already == "queued" and not any(t.audience is TaskAudience.PROVIDER for t in tasks):
        # A repeated request escalates to the provider task queued earlier in the call: its command again (same
        # id, so the same item) names this request, for the review queue to count once the item is stored.
        queued = next(t for t in decision.tasks if t.audience is TaskAudience.PROVIDER and t not in tasks)
        outputs.extend(replace(review, params={**review.params, CS_REQUEST_PARAM: pending.event_id})
                       for review in _queue_task(state, queued, "needs_staff") if isinstance(review, ReviewOut))
    ambiguous = Command.SEARCH_PATIENT in decision.commands  # the search ran and matched several charts
    if ambiguous or Command.CREATE_TASK in decision.queued_commands:
        # No chart to write to, or the read-only phase: the decision's tasks wait for a human.
        for task in tasks:
            outputs.extend(_queue_task(state, task, "ambiguous_patient_match" if ambiguous else "read_only_phase"))
            state = _task_settled(state, task, "queued")
    if ambiguous:
        outputs.extend(_escalation_audit(state))
        step = _hand_off(state, practice, now, "AmbiguousPatientMatch", CommandKind.SEARCH_PATIENT)
        return Step(step.state, step.work, (*outputs, *step.outputs))
    step = _continue(state, practice, now)
    return Step(step.state, step.work, (*outputs, *step.outputs))


def _decision_audits(decision: Decision, pending: PendingIntent) -> Iterable[AuditOut]:
    """One GUARD_HIT record per guard that fired, with what it truly did (``guard_action``) and the dialogue path
    it acted on: BLOCKED only for a guard that stopped the request, never for one that merely noted or asked."""
    path = dialogue_path(pending.intent, pending.visit_reason or decision.visit_reason)
    detail = {"intent": pending.intent.value, "template": decision.reply.value}
    if decision.visit_reason is not None:
        detail["visit_reason"] = decision.visit_reason.value
    for guard in decision.guards_fired:
        if guard is GuardName.BYPASS_ATTEMPT_RECORDED:
            continue  # one BYPASS_ATTEMPT record per signal below
        yield AuditOut(
            action=AuditAction.GUARD_HIT,
            outcome=_guard_outcome(guard, decision, pending),
            guards_fired=(guard.value,),
            guard_action=effects.guard_action(guard),
            dialogue_path=path,
            detail=detail,
        )
    for signal in decision.bypass_signals:
        # The attempt itself is refused: nothing a caller says changes what the guards decide.
        yield AuditOut(
            action=AuditAction.BYPASS_ATTEMPT,
            outcome=AuditOutcome.BLOCKED,
            guards_fired=(GuardName.BYPASS_ATTEMPT_RECORDED.value,),
            guard_action=GuardAction.BLOCKED,
            dialogue_path=path,
            detail={"signal": signal.value, "intent": pending.intent.value},
        )


def _guard_outcome(guard: GuardName, decision: Decision, pending: PendingIntent) -> AuditOutcome:
    """BLOCKED when this guard stopped the caller's request (guards.effects), QUEUED for the read-only phase's
    queueing, SUCCESS for everything else."""
    if effects.stopped_request(guard, decision, pending.intent):
        return AuditOutcome.BLOCKED
    if guard is GuardName.READ_ONLY_WRITES_QUEUED:
        return AuditOutcome.QUEUED
    return AuditOutcome.SUCCESS


def _guard_params(request: IntentRequest | None, earlier_cs_requests: int) -> dict[str, str]:
    """The request the guards decided on (the caller's words too: internal topic only, never copied into a
    review item), so the review queue's retry of the write decides it again (review.core.recheck)."""
    if request is None:
        return {}
    return {GUARD_REQUEST_PARAM: request.model_dump_json(exclude_none=True),
            EARLIER_CS_REQUESTS_PARAM: str(earlier_cs_requests)}


def _queue_task(state: CallState, task: TaskSpec, reason: str) -> tuple[Output, ...]:
    pending, turn = state.pending, state.turn
    # The request's escalation counts once its item is stored (the review queue counts it): named on the
    # turn's last provider task, and only while none was written (a written one is counted by the worker).
    escalates = (turn is not None and turn.counts_cs_request and task.audience is TaskAudience.PROVIDER
                 and turn.provider_escalated != "done"
                 and not any(t.audience is TaskAudience.PROVIDER and t.idempotency_key != task.idempotency_key
                             for t in turn.pending_tasks))
    params = {
        "task_kind": task.kind.value,
        "audience": task.audience.value,
        "task_reason": task.reason.value,
        **({"merged_reasons": ",".join(merged.value for merged in task.merged_reasons)} if task.merged_reasons else {}),
        **({"patient_id": task.patient_id} if task.patient_id else _identity_params(state)),
        **({"pdmp_last_checked": task.pdmp_last_checked.isoformat()} if task.pdmp_last_checked else {}),
        **(_guard_params(pending.request(), _earlier_cs_requests(state, pending.event_id)) if pending else {}),
        **({CS_REQUEST_PARAM: turn.event_id} if escalates and turn is not None else {}),
    }
    return _review(state, CommandKind.CREATE_TASK, task.idempotency_key, params, reason)


def _task_settled(state: CallState, task: TaskSpec, how: Literal["done", "queued"]) -> CallState:
    turn = state.turn
    assert turn is not None
    escalated = turn.provider_escalated
    if task.audience is TaskAudience.PROVIDER and escalated != "done":
        escalated = how
    remaining = tuple(t for t in turn.pending_tasks if t.idempotency_key != task.idempotency_key)
    queued = _remember(state.tasks_queued, task.idempotency_key) if how == "queued" else state.tasks_queued
    return state.model_copy(update={
        "tasks_done": _remember(state.tasks_done, task.idempotency_key),
        "tasks_queued": queued,
        "turn": turn.model_copy(update={"pending_tasks": remaining, "provider_escalated": escalated}),
    })


def _continue(state: CallState, practice: Practice, now: datetime) -> Step:
    """Run the decision's next command, or finish the turn with the reply."""
    turn = state.turn
    pending = state.pending
    assert turn is not None and pending is not None
    decision = turn.decision
    if turn.pending_tasks:
        task = turn.pending_tasks[0]
        if task.patient_id is None:
            # No chart to attach it to yet: a human takes it now (a controlled-substance request is never held back).
            outputs = _queue_task(state, task, state.lookup_failure or "caller_not_matched")
            step = _continue(_task_settled(state, task, "queued"), practice, now)
            return Step(step.state, step.work, (*outputs, *step.outputs))
        return Step(state, work=CreateTask(task, task_note(task)))
    check = _ownership_check(state)
    if check is not None:
        state = state.model_copy(update={"turn": turn.model_copy(update={"appointment_check": "running"})})
        return Step(state, work=check)
    if Command.SEARCH_SLOTS in decision.commands and not turn.slots_searched and decision.visit_reason is not None:
        window = _search_window(pending.requested_dates, practice, now)
        if window is None:  # the caller's dates are all in the past
            return _offer(state, (), practice, now)
        return Step(state, work=SearchSlots(decision.visit_reason, *window, patient_id=state.patient_id))
    if Command.CANCEL_APPOINTMENT in decision.commands:
        if pending.appointment_id is not None and state.patient_id is not None:
            return Step(state, work=CancelAppointment(state.patient_id, pending.appointment_id))
        outputs = _review(state, CommandKind.CANCEL_APPOINTMENT, pending.event_id, _identity_params(state),
                          "appointment_not_identified")
        step = _finish(state, practice, now, ReplyTemplate.CHANGE_STAFF_WILL_CONFIRM)
        return Step(step.state, step.work, (*outputs, *step.outputs))
    return _finish(state, practice, now)


_CHANGES = (Command.RESCHEDULE_APPOINTMENT, Command.CANCEL_APPOINTMENT)


def _ownership_check(state: CallState) -> CheckAppointment | None:
    """Ownership before words: an appointment the caller names (the id comes from the voice agent) is read and
    proved the caller's before a slot is offered, a change promised or anything queued with its id."""
    turn, pending = state.turn, state.pending
    assert turn is not None and pending is not None
    if turn.appointment_check != "no" or pending.appointment_id is None or state.patient_id is None:
        return None
    wanted = [c for c in _CHANGES if c in turn.decision.commands or c in turn.decision.queued_commands]
    if not wanted:
        return None
    return CheckAppointment(state.patient_id, pending.appointment_id, wanted[0])


def _on_appointment_checked(state: CallState, result: AppointmentChecked, practice: Practice, now: datetime) -> Step:
    turn = state.turn
    assert turn is not None
    if result.owned:
        audit = _read_audit("Appointment", (result.appointment_id,), result.route, result.latency_ms,
                            CommandKind.RESCHEDULE_APPOINTMENT if Command.RESCHEDULE_APPOINTMENT in turn.decision.commands
                            or Command.RESCHEDULE_APPOINTMENT in turn.decision.queued_commands
                            else CommandKind.CANCEL_APPOINTMENT, operation="ownership_proved")
        state = state.model_copy(update={"turn": turn.model_copy(update={"appointment_check": "owned"})})
        step = _continue(state, practice, now)
        return Step(step.state, step.work, (audit, *step.outputs))
    # Not the caller's (or not this practice's): ask again; nothing is promised, and no id the caller named is
    # kept in the record or queued for staff.
    refusal = AuditOut(
        action=AuditAction.FHIR_READ if result.route is CommandRoute.FHIR else AuditAction.EMA_READ,
        outcome=AuditOutcome.FAILURE,
        resource_type="Appointment",
        error_class="AppointmentNotForPatient",
        latency_ms=result.latency_ms,
        detail={"operation": "ownership_refused"},
    )
    state = state.model_copy(update={"turn": None, "pending": None, "offer": None})
    state, outputs = _reply(state, ReplyTemplate.CLARIFY, practice, now)
    state, moved = _transition(state, CallPhase.CLARIFYING)
    return Step(state, outputs=(refusal, *outputs, *moved))


def _search_window(requested: DateRange | None, practice: Practice, now: datetime) -> tuple[date, date] | None:
    today = now.astimezone(ZoneInfo(practice.timezone)).date()
    if requested is None:
        return today, today + timedelta(days=DEFAULT_SEARCH_DAYS)
    start = max(requested.start, today)
    end = min(requested.end, start + timedelta(days=MAX_SEARCH_DAYS))
    return (start, end) if start <= end else None


def _finish(state: CallState, practice: Practice, now: datetime, template: ReplyTemplate | None = None, *,
            visit_reason: VisitReason | None = None, appointment_time: datetime | None = None) -> Step:
    """End the turn with a reply: the guard's template unless what happened calls for another one."""
    turn = state.turn
    pending = state.pending
    assert turn is not None and pending is not None
    decision = turn.decision
    if state.lookup_failure is not None and GuardName.CALLER_IDENTIFICATION_REQUIRED in decision.guards_fired:
        return _search_failed(state, state.lookup_failure, practice, now)
    template = template or decision.reply
    outputs: list[Output] = list(_escalation_audit(state))
    # Only an appointment proved the caller's (its ownership is checked once the chart is known) is named.
    target = (pending.appointment_id,) if pending.appointment_id and state.patient_id else ()
    for command in decision.queued_commands:
        if command is not Command.CREATE_TASK:
            outputs.extend(_review(state, _WRITE_COMMAND_KINDS[command], pending.event_id,
                                   {"intent": pending.intent.value, **dict(zip(("appointment_id",), target)),
                                    **_identity_params(state)},
                                   _queued_reason(practice), resource_type="Appointment", resource_ids=target))
    if Command.CREATE_DOCUMENT_REFERENCE in decision.commands:
        # Asked for outside a booking: a link is signed for an appointment this call has not made, so staff send
        # it, and the reply says so (a booking's confirmation carries the link itself: _intake_push).
        outputs.extend(_review(state, CommandKind.CREATE_DOCUMENT_REFERENCE, pending.event_id,
                               {"patient_id": state.patient_id or ""}, "intake_link_by_staff"))
        template = ReplyTemplate.INTAKE_STAFF_WILL_SEND
    state, replies = _reply(state, template, practice, now, visit_reason=visit_reason or decision.visit_reason,
                            appointment_time=appointment_time, escalated=decision.escalated)
    outputs.extend(replies)
    # Decided again once the caller is identified (a refill then also reaches the chart's provider).
    keep = GuardName.CALLER_IDENTIFICATION_REQUIRED in decision.guards_fired
    state = state.model_copy(update={"turn": None, "pending": pending if keep else None})
    state, moved = _transition(state, _phase_after(decision, template))
    return Step(state, outputs=(*outputs, *moved))


def _search_failed(state: CallState, failure: str, practice: Practice, now: datetime) -> Step:
    """The chart search failed on ModMed's side: the caller is not asked for name and date of birth again and
    never hears they were not found; they hear the office will follow up. The decision's tasks are already
    queued under the failure; a request without tasks becomes a hand-off item under it."""
    turn = state.turn
    assert turn is not None
    if not turn.decision.tasks:
        return _hand_off(state, practice, now, failure, CommandKind.SEARCH_PATIENT)
    outputs = tuple(_escalation_audit(state))
    template = adapt_reply(_HANDOFF_REPLY, after_hours=is_after_hours(now, practice), writes_queued=False)
    state, replies = _reply(state, template, practice, now, escalated=True)
    state = state.model_copy(update={"turn": None, "pending": None, "offer": None})
    state, moved = _transition(state, CallPhase.HANDED_OFF)
    return Step(state, outputs=(*outputs, *replies, *moved))


def _phase_after(decision: Decision, template: ReplyTemplate) -> CallPhase:
    if decision.outcome in _PHASE_OF_OUTCOME:
        return _PHASE_OF_OUTCOME[decision.outcome]
    if template in (ReplyTemplate.CHANGE_STAFF_WILL_CONFIRM, ReplyTemplate.INTAKE_STAFF_WILL_SEND):
        return CallPhase.REVIEW_QUEUED
    if template is ReplyTemplate.CANCELLATION_CONFIRMED:
        return CallPhase.CANCELLED
    if decision.outcome is Outcome.NEEDS_INFORMATION:
        if GuardName.VISIT_REASON_REQUIRED in decision.guards_fired:
            return CallPhase.AWAITING_VISIT_REASON
        return CallPhase.AWAITING_IDENTITY
    if GuardName.UNRECOGNISED_INTENT_CLARIFIED in decision.guards_fired:
        return CallPhase.CLARIFYING
    if decision.tasks:
        return CallPhase.MESSAGE_TAKEN
    return CallPhase.IDENTIFIED


def _escalation_audit(state: CallState) -> Iterable[AuditOut]:
    """The controlled-substance sentinel: one record per request, SUCCESS only once a provider task exists
    (QUEUED when it waits in the review queue); FAILURE would mean a request slipped past the provider."""
    turn = state.turn
    pending = state.pending
    assert turn is not None and pending is not None
    if not turn.counts_cs_request:
        return
    outcome = {"done": AuditOutcome.SUCCESS, "queued": AuditOutcome.QUEUED}.get(turn.provider_escalated,
                                                                               AuditOutcome.FAILURE)
    yield AuditOut(
        action=AuditAction.ESCALATION,
        outcome=outcome,
        guards_fired=tuple(g.value for g in turn.decision.guards_fired if g in _CONTROLLED_SUBSTANCE_GUARDS),
        error_class=None if outcome is not AuditOutcome.FAILURE else "ControlledSubstanceNotEscalated",
        detail={"trigger": "controlled_substance", "escalation_kind": TaskAudience.PROVIDER.value,
                "intent": pending.intent.value},
    )


def _hand_off(state: CallState, practice: Practice, now: datetime, reason: str, kind: CommandKind) -> Step:
    """No safe automatic answer: a human takes the call's request (review queue) and the caller is told so.

    A controlled-substance request not yet counted is counted here as escalated to a human (QUEUED)."""
    outputs: list[Output] = [
        AuditOut(
            action=AuditAction.ESCALATION,
            outcome=AuditOutcome.QUEUED,
            error_class=reason,
            command=kind,
            detail={"escalation_kind": "human_handoff"},
        )
    ]
    pending = state.pending
    counted = pending is not None and pending.controlled_substance_request and pending.event_id not in state.cs_requests
    if pending is not None and counted:
        state = state.model_copy(update={"cs_requests": _remember(state.cs_requests, pending.event_id)})
        outputs.append(AuditOut(
            action=AuditAction.ESCALATION,
            outcome=AuditOutcome.QUEUED,
            detail={"trigger": "controlled_substance", "escalation_kind": "human_handoff",
                    "intent": pending.intent.value},
        ))
    params = {"intent": pending.intent.value} if pending else {}
    if pending is not None and pending.controlled_substance_request:
        params["controlled_substance"] = "true"  # the review queue's age alarm watches these
        if counted:
            params[CS_REQUEST_PARAM] = pending.event_id  # counted as escalated once the item is stored
    outputs.extend(_review(state, kind, f"handoff:{state.last_event_id}", {**params, **_identity_params(state)}, reason))
    template = adapt_reply(_HANDOFF_REPLY, after_hours=is_after_hours(now, practice), writes_queued=False)
    state, replies = _reply(state, template, practice, now, escalated=True)
    state = state.model_copy(update={"turn": None, "pending": None, "offer": None})
    state, moved = _transition(state, CallPhase.HANDED_OFF)
    return Step(state, outputs=(*outputs, *replies, *moved))


# ------------------------------------------------------------------------------------ slots / writes


def _preferred_practitioner(hint: str | None, slots: Sequence[FoundSlot]) -> str | None:
    """The practitioner the caller named ("Dr. Rivera"), matched on the words of the display names."""
    if not hint:
        return None
    words = {word.strip(".,").casefold() for word in hint.split()} - {"dr", "doctor", "the", "with", "np", "pa"}
    for slot in slots:
        names = {word.strip(".,").casefold() for word in slot.practitioner_display.split()}
        if words & names:
            return slot.candidate.practitioner_id
    return None


def _on_slots(state: CallState, result: SlotsFound, practice: Practice, now: datetime) -> Step:
    turn = state.turn
    pending = state.pending
    assert turn is not None and pending is not None and turn.decision.visit_reason is not None
    visit_reason = turn.decision.visit_reason
    usable = [s for s in result.slots if s.candidate.slot_id not in turn.excluded_slots]
    ranked = filter_and_rank(
        (s.candidate for s in usable),
        visit_reason,
        now=now,
        patient_is_new=state.lookup is MatchKind.NONE,
        preferred_practitioner=_preferred_practitioner(pending.provider_hint, usable),
        requested_dates=pending.requested_dates,
        limit=OFFERED_SLOTS,
    )
    by_id = {s.candidate.slot_id: s for s in usable}
    choices = tuple(
        SlotChoice(
            slot_id=c.slot_id, start=c.start, end=c.end, practitioner_id=c.practitioner_id,
            practitioner_display=by_id[c.slot_id].practitioner_display,
            location_display=by_id[c.slot_id].location_display,
            visit_reason=visit_reason, route=by_id[c.slot_id].route,
        )
        for c in ranked
    )
    # The read's record names the slots offered (what the caller heard), and how many were free.
    audit = _read_audit("Slot", [choice.slot_id for choice in choices], result.route, result.latency_ms,
                        CommandKind.SEARCH_SLOTS, visit_reason=visit_reason.value,
                        operation=f"offered_{len(choices)}_of_{len(result.slots)}")
    state = state.model_copy(update={"turn": turn.model_copy(update={"slots_searched": True})})
    step = _offer(state, choices, practice, now)
    return Step(step.state, step.work, (audit, *step.outputs))


def _offer(state: CallState, choices: tuple[SlotChoice, ...], practice: Practice, now: datetime) -> Step:
    """Offer the ranked slots (or say none fit); the booking waits for the caller's choice."""
    turn = state.turn
    pending = state.pending
    assert turn is not None and pending is not None
    decision = turn.decision
    visit_reason = decision.visit_reason
    assert visit_reason is not None
    template = after_slot_search(decision.reply, slots_found=len(choices))
    outputs: list[Output] = list(_escalation_audit(state))
    write = next((c for c in (Command.BOOK_APPOINTMENT, Command.RESCHEDULE_APPOINTMENT)
                  if c in decision.commands or c in decision.queued_commands), None)
    offer = None
    if choices and write is not None and template is not ReplyTemplate.NO_SLOTS_FOUND:
        offer = Offer(
            write=write,
            queued=write in decision.queued_commands,
            visit_reason=visit_reason,
            appointment_id=pending.appointment_id,
            requested_dates=pending.requested_dates,
            slots=choices,
            decided=pending.request(),
            earlier_cs_requests=_earlier_cs_requests(state, pending.event_id),
        )
    state, replies = _reply(state, template, practice, now, visit_reason=decision.visit_reason,
                            slots=choices if offer is not None else (), escalated=decision.escalated)
    outputs.extend(replies)
    state = state.model_copy(update={"turn": None, "offer": offer, "pending": None})
    phase = CallPhase.OFFERING_SLOTS if offer is not None else CallPhase.NO_SLOTS
    if decision.outcome is Outcome.ESCALATE:
        phase = CallPhase.ESCALATED
    state, moved = _transition(state, phase)
    return Step(state, outputs=(*outputs, *moved))


def _write_audit(route: CommandRoute, outcome: AuditOutcome, command: CommandKind, resource_type: str,
                 ids: tuple[str, ...], latency_ms: float, deep_link: str | None = None,
                 error_class: str | None = None, task_refs: tuple[str, ...] = (), slot_id: str | None = None,
                 transcript_ref: str | None = None, **detail: str) -> AuditOut:
    return AuditOut(
        action=AuditAction.EMA_WRITE if route is CommandRoute.EMA else AuditAction.FHIR_WRITE,
        outcome=outcome,
        resource_type=resource_type,
        resource_ids=ids,
        deep_link=deep_link,
        task_refs=task_refs,
        command=command,
        error_class=error_class,
        latency_ms=latency_ms,
        detail={"route": route.value, **detail},
        slot_id=slot_id,
        transcript_ref=transcript_ref,
    )


def _on_task_written(state: CallState, result: TaskWritten, practice: Practice, now: datetime) -> Step:
    turn = state.turn
    assert turn is not None and turn.pending_tasks
    task = turn.pending_tasks[0]
    ref = f"{result.resource_type}/{result.resource_id}"
    audits = (
        _write_audit(result.route, AuditOutcome.SUCCESS, CommandKind.CREATE_TASK, result.resource_type,
                     (result.resource_id,), result.latency_ms, result.deep_link, task_refs=(ref,),
                     transcript_ref=state.transcript_ref),
        AuditOut(
            action=AuditAction.ESCALATION,
            outcome=AuditOutcome.SUCCESS,
            resource_type=result.resource_type,
            resource_ids=(result.resource_id,),
            task_refs=(ref,),
            deep_link=result.deep_link,
            command=CommandKind.CREATE_TASK,
            detail={"escalation_kind": task.audience.value, "rule": task.reason.value},
            transcript_ref=state.transcript_ref,
        ),
    )
    state = state.model_copy(update={"task_refs": _remember(state.task_refs, ref)})
    step = _continue(_task_settled(state, task, "done"), practice, now)
    return Step(step.state, step.work, (*audits, *step.outputs))


def _on_cancelled(state: CallState, result: AppointmentWritten, practice: Practice, now: datetime) -> Step:
    audit = _write_audit(result.route, AuditOutcome.SUCCESS, CommandKind.CANCEL_APPOINTMENT, "Appointment",
                         (result.appointment_id,), result.latency_ms, result.deep_link)
    step = _finish(state, practice, now, visit_reason=result.visit_reason, appointment_time=result.start)
    return Step(step.state, step.work, (audit, *step.outputs))


def _on_appointment_written(state: CallState, result: AppointmentWritten, practice: Practice, now: datetime) -> Step:
    offer = state.offer
    assert offer is not None
    # A reschedule names the appointment it moved as well as the one it wrote (the same id when moved in place).
    ids = tuple(dict.fromkeys(filter(None, (result.appointment_id, offer.appointment_id))))
    audit = _write_audit(result.route, AuditOutcome.SUCCESS, _WRITE_COMMAND_KINDS[offer.write], "Appointment",
                         ids, result.latency_ms, result.deep_link, slot_id=offer.chosen_slot_id,
                         visit_reason=result.visit_reason.value)
    intake = _intake_push(state, practice, offer, result) if result.command is Command.BOOK_APPOINTMENT else None
    if intake is not None:
        # The confirmation goes out with the intake link first; the caller then hears that it was sent.
        return Step(state.model_copy(update={"confirming": intake}), work=intake, outputs=(audit,))
    state, replies = _reply(state, after_booking(practice.phase), practice, now,
                            visit_reason=result.visit_reason, appointment_time=result.start)
    state, moved = _transition(state.model_copy(update={"offer": None}), CallPhase.BOOKED)
    return Step(state, outputs=(audit, *replies, *moved))


def _intake_push(state: CallState, practice: Practice, offer: Offer, booked: AppointmentWritten) -> SendIntake | None:
    """The intake link to send after a booking: the practice has a form for the visit (its own, or the pain-specific
    variant for a procedure) and a channel the caller can be reached on; their choice first, SMS by default."""
    intake = practice.intake
    if intake is None or state.patient_id is None or intake.form_url(booked.visit_reason) is None:
        return None
    identity = state.identity
    phone = (identity.callback_number if identity else None) or state.caller_number
    email = identity.email if identity else None
    wanted = identity.contact_channel if identity and identity.contact_channel else "sms"
    reachable = {"sms": phone if intake.sms is not None else None, "email": email if intake.email is not None else None}
    channel = next((c for c in (wanted, "email" if wanted == "sms" else "sms") if reachable[c]), None)
    if channel is None:
        return None
    to = reachable[channel]
    assert to is not None
    return SendIntake(channel=channel, to=to, visit_reason=booked.visit_reason, start=booked.start,
                      appointment_id=booked.appointment_id, patient_id=state.patient_id)


def _on_intake_sent(state: CallState, result: IntakeSent, practice: Practice, now: datetime) -> Step:
    sent = state.confirming
    assert sent is not None
    audit = _intake_audit(sent, AuditOutcome.SUCCESS, result.latency_ms)
    return _confirm_booking(state, practice, now, ReplyTemplate.BOOKING_CONFIRMED_INTAKE_SENT, (audit,))


def _intake_audit(sent: SendIntake, outcome: AuditOutcome, latency_ms: float, error_class: str | None = None) -> AuditOut:
    """Channel and visit only: the number or address it went to is PHI and never in an audit payload."""
    return AuditOut(action=AuditAction.PATIENT_MESSAGE, outcome=outcome, resource_type="Appointment",
                    resource_ids=(sent.appointment_id,), command=CommandKind.CREATE_DOCUMENT_REFERENCE,
                    error_class=error_class, latency_ms=latency_ms,
                    detail={"channel": sent.channel, "message": "booking_confirmation_intake_link",
                            "visit_reason": sent.visit_reason.value})


def _confirm_booking(state: CallState, practice: Practice, now: datetime, template: ReplyTemplate,
                     outputs: tuple[Output, ...]) -> Step:
    sent = state.confirming
    assert sent is not None
    state, replies = _reply(state, template, practice, now, visit_reason=sent.visit_reason,
                            appointment_time=sent.start)
    state, moved = _transition(state.model_copy(update={"offer": None, "confirming": None}), CallPhase.BOOKED)
    return Step(state, outputs=(*outputs, *replies, *moved))


def _on_failure(state: CallState, failure: WorkFailed, practice: Practice, now: datetime) -> Step:
    """ModMed (or EMA) could not do the work: a taken slot is searched again; anything else goes to staff."""
    route = failure.route or CommandRoute.FHIR
    if state.confirming is not None:
        # The visit is booked; the link did not go out: staff send it, the caller hears the plain confirmation.
        sent = state.confirming
        audit = _intake_audit(sent, AuditOutcome.FAILURE, failure.latency_ms, failure.error_class)
        queued = _review(state, CommandKind.CREATE_DOCUMENT_REFERENCE, sent.appointment_id,
                         {"patient_id": sent.patient_id, "appointment_id": sent.appointment_id, "channel": sent.channel},
                         failure.error_class, resource_type="Appointment", resource_ids=(sent.appointment_id,))
        return _confirm_booking(state, practice, now, ReplyTemplate.BOOKING_CONFIRMED, (audit, *queued))
    if failure.command in (CommandKind.REGISTER_PATIENT, CommandKind.CREATE_COVERAGE) or (
            state.phase is CallPhase.REGISTERING and failure.command is CommandKind.SEARCH_PATIENT):
        return _registration_failed(state, failure, practice, now)
    if state.turn is not None and state.turn.appointment_check == "running":
        # Whose appointment it is stays unknown: staff take the request, without the id the caller named.
        audit = AuditOut(action=AuditAction.FHIR_READ, outcome=AuditOutcome.FAILURE, resource_type="Appointment",
                         command=failure.command, error_class=failure.error_class, latency_ms=failure.latency_ms)
        state = state.model_copy(update={"pending": state.pending.model_copy(update={"appointment_id": None})
                                         if state.pending is not None else None})
        step = _hand_off(state, practice, now, failure.error_class, failure.command)
        return Step(step.state, step.work, (audit, *step.outputs))
    if failure.command is CommandKind.CREATE_TASK:
        turn = state.turn
        assert turn is not None and turn.pending_tasks
        task = turn.pending_tasks[0]
        audit = _write_audit(route, AuditOutcome.FAILURE, CommandKind.CREATE_TASK, "Task", (), failure.latency_ms,
                             error_class=failure.error_class)
        outputs = (audit, *_queue_task(state, task, failure.error_class))
        step = _continue(_task_settled(state, task, "queued"), practice, now)
        return Step(step.state, step.work, (*outputs, *step.outputs))
    if failure.command in (CommandKind.BOOK_APPOINTMENT, CommandKind.RESCHEDULE_APPOINTMENT):
        offer = state.offer
        audit = _write_audit(route, AuditOutcome.FAILURE, failure.command, "Appointment",
                             (offer.appointment_id,) if offer and offer.appointment_id else (), failure.latency_ms,
                             error_class=failure.error_class, slot_id=offer.chosen_slot_id if offer else None)
        step = _slot_taken(state, practice, now) if failure.slot_taken else _booking_to_staff(
            state, failure.error_class, practice, now)
        return Step(step.state, step.work, (audit, *step.outputs))
    if failure.command is CommandKind.CANCEL_APPOINTMENT:
        pending = state.pending
        assert pending is not None
        target = (pending.appointment_id,) if pending.appointment_id else ()
        audit = _write_audit(route, AuditOutcome.FAILURE, CommandKind.CANCEL_APPOINTMENT, "Appointment", target,
                             failure.latency_ms, error_class=failure.error_class)
        queued = _review(state, CommandKind.CANCEL_APPOINTMENT, pending.event_id,
                         {"appointment_id": pending.appointment_id or "", **_identity_params(state)},
                         failure.error_class, resource_type="Appointment", resource_ids=target)
        step = _finish(state, practice, now, ReplyTemplate.CHANGE_STAFF_WILL_CONFIRM)
        return Step(step.state, step.work, (audit, *queued, *step.outputs))
    resource = {CommandKind.SEARCH_PATIENT: "Patient", CommandKind.READ_COMPLIANCE_FLAGS: "Flag"}.get(
        failure.command, "Slot")
    audit = AuditOut(
        action=AuditAction.EMA_READ if route is CommandRoute.EMA else AuditAction.FHIR_READ,
        outcome=AuditOutcome.FAILURE, resource_type=resource, command=failure.command,
        error_class=failure.error_class, latency_ms=failure.latency_ms,
    )
    if failure.command is CommandKind.SEARCH_PATIENT:
        # Whether a chart exists is unknown, and not because of the caller: they are not asked again. The
        # request's tasks wait for staff (with the identity, for a later search) under what failed.
        state = state.model_copy(update={"lookup": None, "lookup_failure": failure.error_class, "patient_id": None,
                                         "chart": None})
        step = _decide(state, practice, now) if state.pending is not None else Step(state)
        return Step(step.state, step.work, (audit, *step.outputs))
    if state.pending is None:
        return Step(state, outputs=(audit,))
    step = _hand_off(state, practice, now, failure.error_class, failure.command)
    return Step(step.state, step.work, (audit, *step.outputs))


def _registration_failed(state: CallState, failure: WorkFailed, practice: Practice, now: datetime) -> Step:
    """A new patient's registration could not finish. No chart, or a chart ModMed refused as a duplicate
    (409: the search missed it): staff register and book with the details. A Coverage ModMed refused does not
    hold up the booking: staff add the insurance."""
    if failure.command is CommandKind.SEARCH_PATIENT:
        audit = AuditOut(action=AuditAction.FHIR_READ, outcome=AuditOutcome.FAILURE, resource_type="Patient",
                         command=failure.command, error_class=failure.error_class, latency_ms=failure.latency_ms,
                         detail={"operation": "recheck"})
        step = _booking_to_staff(state, failure.error_class, practice, now)
        return Step(step.state, step.work, (audit, *step.outputs))
    resource = "Patient" if failure.command is CommandKind.REGISTER_PATIENT else "Coverage"
    error_class = "DuplicatePatient" if failure.slot_taken and resource == "Patient" else failure.error_class
    audit = _write_audit(failure.route or CommandRoute.FHIR, AuditOutcome.FAILURE, failure.command, resource, (),
                         failure.latency_ms, error_class=error_class)
    if resource == "Patient":
        step = _booking_to_staff(state, error_class, practice, now)
        return Step(step.state, step.work, (audit, *step.outputs))
    assert state.patient_id is not None
    queued = _review(state, CommandKind.CREATE_COVERAGE, state.patient_id,
                     {"patient_id": state.patient_id, **_registration_params(state, insurance_only=True)},
                     error_class, resource_type="Patient", resource_ids=(state.patient_id,))
    return Step(state, work=_book_chosen(state), outputs=(audit, *queued))


def _registration_params(state: CallState, *, insurance_only: bool = False) -> dict[str, str]:
    """What staff need to register the caller by hand (internal review queue only; never logged)."""
    details = state.registration
    if details is None:
        return {}
    params: dict[str, str] = {}
    if not insurance_only:
        address = details.address
        params.update(gender=details.gender, address_line=address.line, address_city=address.city,
                      address_state=address.state, address_postal_code=address.postal_code)
        if details.preferred_pharmacy is not None:
            params["pharmacy_name"] = details.preferred_pharmacy.name
            if details.preferred_pharmacy.phone:
                params["pharmacy_phone"] = details.preferred_pharmacy.phone
        if state.identity is not None and state.identity.email:
            params["email"] = state.identity.email
    if details.insurance is not None:
        params.update(payer_name=details.insurance.payer_name, member_id=details.insurance.member_id,
                      subscriber_relationship=details.insurance.relationship)
        if details.insurance.group_number:
            params["group_number"] = details.insurance.group_number
    return params


def _slot_taken(state: CallState, practice: Practice, now: datetime) -> Step:
    """Somebody else took the slot between offer and choice: search again (the same allowed booking)
    and offer what is still free, never the slots already offered."""
    offer = state.offer
    assert offer is not None
    intent = Intent.RESCHEDULE_APPOINTMENT if offer.write is Command.RESCHEDULE_APPOINTMENT else Intent.BOOK_APPOINTMENT
    pending = PendingIntent(event_id=state.last_event_id, intent=intent, visit_reason=offer.visit_reason,
                            appointment_id=offer.appointment_id, requested_dates=offer.requested_dates)
    turn = Turn(event_id=state.last_event_id, decision=booking.search_again(offer.write, offer.visit_reason),
                pending_tasks=(),
                excluded_slots=tuple(slot.slot_id for slot in offer.slots))
    state = state.model_copy(update={"pending": pending, "turn": turn, "offer": None})
    window = _search_window(offer.requested_dates, practice, now)
    if window is None:
        return _offer(state, (), practice, now)
    return Step(state, work=SearchSlots(offer.visit_reason, *window, patient_id=state.patient_id))


def _booking_to_staff(state: CallState, reason: str, practice: Practice, now: datetime) -> Step:
    """The chosen slot goes to the review queue; the caller hears that staff will confirm it."""
    offer = state.offer
    assert offer is not None
    chosen = offer.chosen
    assert chosen is not None
    params = {
        "slot_id": chosen.slot_id,
        "visit_reason": chosen.visit_reason.value,
        "start": chosen.start.isoformat(),
        "practitioner_id": chosen.practitioner_id,
        **({"appointment_id": offer.appointment_id} if offer.appointment_id else {}),
        **({"patient_id": state.patient_id} if state.patient_id else
           {**_identity_params(state), **_registration_params(state)}),
        **_guard_params(offer.decided, offer.earlier_cs_requests),
    }
    queued = _review(state, _WRITE_COMMAND_KINDS[offer.write], chosen.slot_id, params, reason,
                     resource_type="Appointment", slot_id=chosen.slot_id,
                     resource_ids=(offer.appointment_id,) if offer.appointment_id and state.patient_id else ())
    state, replies = _reply(state, after_booking(GoLivePhase.READ_ONLY), practice, now,
                            visit_reason=chosen.visit_reason, appointment_time=chosen.start)
    state, moved = _transition(state.model_copy(update={"offer": None}), CallPhase.REVIEW_QUEUED)
    return Step(state, outputs=(*queued, *replies, *moved))
