"""What the pipeline remembers about one call: the value of the changelogged ``calls`` table.

PHI (caller number, name, date of birth, the caller's words) lives here only while the call does; the
``ended`` marker that replaces it at call end keeps ids only (``events``), and an abandoned call is purged by
the TTL timer (``streams.retention``).
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field

from callstream.tenants import Practice
from guards import (
    ChartFlags,
    Command,
    DateRange,
    Decision,
    Intent,
    IntentRequest,
    MatchKind,
    ReplyTemplate,
    TaskSpec,
    VisitReason,
)
from guards.model import FrozenModel
from schemas.models import CallEvent, NewPatientDetails
from streams.callflow.work import SendIntake, SlotChoice

MAX_REMEMBERED = 50
"""Bound of the per-call id lists (tasks done, controlled-substance requests)."""


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


def remember(ids: tuple[str, ...], new: str) -> tuple[str, ...]:
    """``ids`` with ``new`` added once, keeping the last MAX_REMEMBERED (the state must stay small)."""
    return (ids + (new,))[-MAX_REMEMBERED:] if new not in ids else ids


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


def earlier_cs_requests(state: CallState, intent_event_id: str) -> int:
    """Controlled-substance requests earlier in the call than this intent (what the guards weigh a repeat by)."""
    return min(sum(1 for event_id in state.cs_requests if event_id != intent_event_id), 1000)
