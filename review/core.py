"""The review queue's pure core: items, their state machine, honest reasons, the retry schedule, staleness.

Nothing here does I/O or reads a clock (``now`` is passed in), so every rule is tested in microseconds;
review/service.py is thin wiring around it (Kafka intake, ClickHouse store, ModMed retries, HTTP API).

An item is one REVIEW_QUEUE command of callstream.commands.v1 made durable. Its life:

    open ──start_attempt──▶ retrying ──delivered──▶ delivered
      ▲                        │
      └──attempt_failed────────┘            open ──resolve (staff)──▶ resolved

``retrying`` holds a lease: a retrier killed mid-delivery leaves the item due again once the lease runs
out, and the next attempt asks ModMed whether the first landed (the ledger key is on the Task), so a
request still ends as exactly one Task. Staff resolve an open item; an item being delivered right now
is refused (``ItemBusy``) rather than racing the delivery.

PHI never enters an item: the command's params may hold the caller's name, date of birth, number and words
(the internal topic allows it), but only the allow-listed ids and codes of ``DETAIL_KEYS`` are kept.
A retry reads what it needs beyond them (the identity for a repeated patient search, the request the
guards decided on) again from the command record on the topic, located by ``source_partition``/``source_offset``.

Every retry is decided again (``recheck``) by the same ``guards.decide`` the worker's turn ran, on the
chart's flags as they are now: a write it no longer allows (an agreement expired meanwhile, a restriction
set) is left to staff under ``guard_refused``, never made.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from callstream.errors import CallstreamError
from callstream.retry import Backoff
from guards import CallContext, ChartFlags, Command, GoLivePhase, GuardInputError, IntentRequest, decide
from guards.model import TaskAudience, TaskKind, TaskReason
from schemas.models import AlarmKind, AlarmState, CommandMessage

RETRY_BACKOFF = Backoff(base_s=30.0, cap_s=900.0)
"""Between automatic attempts: 15-30 s first, doubling, at most 7.5-15 min (ModMed outages last minutes)."""
ATTEMPT_LEASE = timedelta(seconds=90)
"""How long a ``retrying`` item belongs to its attempt (above the 30 s dispatch bound plus a search)."""
STALE_AFTER = timedelta(minutes=15)
"""An open controlled-substance item older than this raises REVIEW_QUEUE_STALE for its practice."""
MAX_NOTE_CHARS = 500

DETAIL_KEYS = frozenset({
    "intent", "task_kind", "task_reason", "audience", "patient_id", "pdmp_last_checked", "slot_id", "start",
    "visit_reason", "practitioner_id", "appointment_id", "controlled_substance", "merged_reasons",
})
"""Params copied into an item: ids, codes and the slot offered. Never names, dates of birth or numbers.

``merged_reasons`` (comma-separated TaskReason codes beside ``task_reason``, when one task of a call carries
several) may be absent: commands written before it existed carry only ``task_reason``."""
DETAIL_MAX_CHARS = 64
LONG_DETAIL_KEYS = {"merged_reasons": 512}
"""Keys whose values may run past DETAIL_MAX_CHARS (a list of codes; every TaskReason together fits)."""
CONFIRMED_KEY = "cs_requests"
"""Detail key of the controlled-substance requests (comma-separated ids) the item was counted as escalating."""
MAX_CONFIRMED = 20
"""Request ids an item remembers as confirmed (one call's repeated requests; more are counted, not listed)."""


class ReviewQueueError(CallstreamError):
    """A review-queue request that cannot be carried out (the message says why, without PHI)."""


class ItemNotFound(ReviewQueueError):
    """No item has that id."""


class ItemBusy(ReviewQueueError):
    """The item is being delivered to ModMed right now; try again once the attempt ends."""


class ItemClosed(ReviewQueueError):
    """The item is already delivered or resolved."""


class ItemKind(StrEnum):
    PROVIDER_TASK = "provider_task"
    CLINICAL_REVIEW = "clinical_review"
    COORDINATOR_TASK = "coordinator_task"
    FRONT_DESK_TASK = "front_desk_task"
    BOOKING_TO_CONFIRM = "booking_to_confirm"
    CHANGE_TO_CONFIRM = "change_to_confirm"
    """A reschedule or cancellation for staff to confirm."""
    INTAKE = "intake"
    CALLBACK = "callback"
    """A hand-off with no write ready: staff call the caller back."""


class Reason(StrEnum):
    EHR_UNAVAILABLE = "ehr_unavailable"
    RATE_LIMITED = "rate_limited"
    AUTH_FAILED = "auth_failed"
    TIMEOUT = "timeout"
    READ_ONLY_PHASE = "read_only_phase"
    CALLER_NOT_MATCHED = "caller_not_matched"
    NEEDS_STAFF = "needs_staff"
    SLOT_UNAVAILABLE = "slot_unavailable"
    """A booking's retry found the slot taken or no longer bookable: staff offer another."""
    GUARD_REFUSED = "guard_refused"
    """The guards, decided again on the chart as it is now, no longer allow the write."""


class ItemState(StrEnum):
    OPEN = "open"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    RESOLVED = "resolved"


UNFINISHED = frozenset({ItemState.OPEN, ItemState.RETRYING})
"""Not yet delivered nor resolved: the work staff see under ``queue list --state open``."""


TRANSIENT = frozenset({Reason.EHR_UNAVAILABLE, Reason.RATE_LIMITED, Reason.AUTH_FAILED, Reason.TIMEOUT})
"""Reasons a later attempt can overcome; the others need a person."""

_REASONS: dict[str, Reason] = {
    # connectors.errors classes, as the worker and the retrier record them (type(exc).__name__)
    "RetryableError": Reason.EHR_UNAVAILABLE,
    "RequestNotSentError": Reason.EHR_UNAVAILABLE,
    "CircuitOpenError": Reason.EHR_UNAVAILABLE,
    "InvalidResponseError": Reason.EHR_UNAVAILABLE,
    "NotFoundError": Reason.EHR_UNAVAILABLE,  # ModMed labels unclassified server failures 404
    "OutputDeliveryError": Reason.EHR_UNAVAILABLE,
    "RateLimitedError": Reason.RATE_LIMITED,
    "AuthError": Reason.AUTH_FAILED,
    "TimeoutError": Reason.TIMEOUT,
    # streams.callflow's own reasons
    "read_only_phase": Reason.READ_ONLY_PHASE,
    "caller_not_matched": Reason.CALLER_NOT_MATCHED,
    "ambiguous_patient_match": Reason.CALLER_NOT_MATCHED,
    "AmbiguousPatientMatch": Reason.CALLER_NOT_MATCHED,
    "new_patient_registration": Reason.CALLER_NOT_MATCHED,
    "chart_found_before_registration": Reason.CALLER_NOT_MATCHED,
    "DuplicatePatient": Reason.CALLER_NOT_MATCHED,
}
_TASK_KINDS: dict[TaskAudience, ItemKind] = {
    TaskAudience.PROVIDER: ItemKind.PROVIDER_TASK,
    TaskAudience.CLINICAL_TEAM: ItemKind.CLINICAL_REVIEW,
    TaskAudience.CS_COORDINATOR: ItemKind.COORDINATOR_TASK,
    TaskAudience.FRONT_DESK: ItemKind.FRONT_DESK_TASK,
}
_COMMAND_KINDS: dict[str, ItemKind] = {
    "BOOK_APPOINTMENT": ItemKind.BOOKING_TO_CONFIRM,
    "RESCHEDULE_APPOINTMENT": ItemKind.CHANGE_TO_CONFIRM,
    "CANCEL_APPOINTMENT": ItemKind.CHANGE_TO_CONFIRM,
    "CREATE_DOCUMENT_REFERENCE": ItemKind.INTAKE,
    "CREATE_COVERAGE": ItemKind.FRONT_DESK_TASK,
}
_CS_TASK_KINDS = frozenset({TaskKind.PROVIDER_REFILL_REVIEW.value, TaskKind.PROVIDER_CONTROLLED_SUBSTANCE_REVIEW.value})
_CS_INTENTS = frozenset({"REFILL_REQUEST", "OPIOID_AGREEMENT_RENEWAL"})


def reason_for(raw: str) -> Reason:
    """The distinct reason behind the worker's raw one (an error class or a call-flow code)."""
    return _REASONS.get(raw, Reason.NEEDS_STAFF)


def kind_for(command_kind: str, params: Mapping[str, str]) -> ItemKind:
    """What staff see the item as: a task by its audience, a write to confirm, or a call-back."""
    if command_kind == "CREATE_TASK" and "task_kind" in params:
        try:
            return _TASK_KINDS[TaskAudience(params.get("audience", ""))]
        except ValueError:
            return ItemKind.CALLBACK
    return _COMMAND_KINDS.get(command_kind, ItemKind.CALLBACK)


def is_controlled_substance(params: Mapping[str, str]) -> bool:
    """Refill and controlled-substance requests: the ones the age alarm watches."""
    return (params.get("task_kind") in _CS_TASK_KINDS or params.get("intent") in _CS_INTENTS
            or params.get("controlled_substance") == "true")


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """One parked piece of work and what became of it; ``revision`` orders the stored versions."""

    item_id: str
    practice_id: str
    call_id: str
    command: str
    kind: ItemKind
    reason: Reason
    controlled_substance: bool
    state: ItemState
    created_at: datetime
    updated_at: datetime
    source_partition: int
    source_offset: int
    attempts: int = 0
    next_attempt_at: datetime | None = None
    """When the retrier tries next; None: staff only (not retryable, or a retry showed it needs a person)."""
    last_error_class: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    resolved_by: str | None = None
    resolved_at: datetime | None = None
    note: str | None = None
    detail: Mapping[str, str] = field(default_factory=dict)
    revision: int = 1

    @property
    def is_open(self) -> bool:
        return self.state in UNFINISHED

    def to_json_dict(self) -> dict[str, object]:
        def moment(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat(timespec="milliseconds")

        return {
            "item_id": self.item_id, "practice_id": self.practice_id, "call_id": self.call_id,
            "command": self.command, "kind": self.kind.value, "reason": self.reason.value,
            "controlled_substance": self.controlled_substance, "state": self.state.value,
            "created_at": moment(self.created_at), "updated_at": moment(self.updated_at),
            "attempts": self.attempts, "next_attempt_at": moment(self.next_attempt_at),
            "last_error_class": self.last_error_class, "resource_type": self.resource_type,
            "resource_id": self.resource_id, "resolved_by": self.resolved_by,
            "resolved_at": moment(self.resolved_at), "note": self.note, "detail": dict(self.detail),
        }


def item_from_command(command: CommandMessage, partition: int, offset: int, now: datetime,
                      *, retries: bool) -> ReviewItem:
    """A new open item; ``retries`` says whether the practice lets callstream write (not read-only).

    The item id is the command id, itself derived from the command's idempotency key: a redelivered
    command names the same item."""
    params = command.params
    raw = params.get("reason", "")
    reason = reason_for(raw)
    item = ReviewItem(
        item_id=str(command.command_id),
        practice_id=command.practice_id,
        call_id=command.call_id,
        command=command.kind,
        kind=kind_for(command.kind, params),
        reason=reason,
        controlled_substance=is_controlled_substance(params),
        state=ItemState.OPEN,
        created_at=command.issued_at,
        updated_at=now,
        source_partition=partition,
        source_offset=offset,
        last_error_class=raw if raw in _REASONS and reason in TRANSIENT else None,
        detail={key: value[:LONG_DETAIL_KEYS.get(key, DETAIL_MAX_CHARS)] for key, value in params.items()
                if key in DETAIL_KEYS},
    )
    return replace(item, next_attempt_at=now if retries and retryable(item) else None)


_BOOKING_DETAIL = frozenset({"slot_id", "visit_reason", "start", "patient_id"})


def retryable(item: ReviewItem) -> bool:
    """Work callstream can finish itself once ModMed answers again: a team task, with either the chart or (on
    the topic) the identity to find it, and a booking of a chart into the slot the caller chose (the item is
    made only in the write phases for these; read-only-phase bookings wait for staff with the slot offered).
    Changes, intake and call-backs wait for staff, as does anything that failed for a reason that does not pass."""
    if item.reason not in TRANSIENT:
        return False
    if item.command == "CREATE_TASK":
        return item.kind is not ItemKind.CALLBACK and "task_kind" in item.detail and "task_reason" in item.detail
    return item.command == "BOOK_APPOINTMENT" and _BOOKING_DETAIL <= item.detail.keys()


def merged_reasons(detail: Mapping[str, str]) -> tuple[TaskReason, ...]:
    """The further reasons a task item carries beside ``task_reason`` (codes this version does not know are
    skipped rather than failing the delivery; none when the item predates the key)."""
    codes = (code.strip() for code in detail.get("merged_reasons", "").split(","))
    known = {reason.value for reason in TaskReason}
    return tuple(TaskReason(code) for code in codes if code in known and code != detail.get("task_reason"))


def due(item: ReviewItem, now: datetime) -> bool:
    return item.is_open and item.next_attempt_at is not None and item.next_attempt_at <= now


def start_attempt(item: ReviewItem, now: datetime, lease: timedelta = ATTEMPT_LEASE) -> ReviewItem:
    """open (or retrying with a lapsed lease) → retrying, leased until ``now + lease``."""
    if not item.is_open:
        raise ItemClosed(f"item {item.item_id} is {item.state.value}")
    return _changed(item, now, state=ItemState.RETRYING, attempts=item.attempts + 1, next_attempt_at=now + lease)


def attempt_failed(item: ReviewItem, error_class: str, now: datetime, rng: random.Random,
                   *, backoff: Backoff = RETRY_BACKOFF, final: bool = False) -> ReviewItem:
    """retrying → open; the next attempt after the backoff, or none when ``final`` (a person must act)."""
    _require(item, ItemState.RETRYING)
    delay = timedelta(seconds=backoff.delay(max(item.attempts - 1, 0), rng))
    return _changed(item, now, state=ItemState.OPEN, last_error_class=error_class[:64],
                    next_attempt_at=None if final else now + delay)


def to_staff(item: ReviewItem, reason: Reason, error_class: str, now: datetime) -> ReviewItem:
    """retrying → open for staff only, under the honest reason the attempt found (no single chart for the
    caller, the slot gone, the guards refusing the write now); ``error_class`` says what exactly."""
    _require(item, ItemState.RETRYING)
    return _changed(item, now, state=ItemState.OPEN, reason=reason, last_error_class=error_class[:64],
                    next_attempt_at=None)


def delivered(item: ReviewItem, resource_type: str, resource_id: str, now: datetime) -> ReviewItem:
    _require(item, ItemState.RETRYING)
    return _changed(item, now, state=ItemState.DELIVERED, resource_type=resource_type, resource_id=resource_id,
                    next_attempt_at=None, last_error_class=None)


def resolve(item: ReviewItem, by: str, note: str, now: datetime) -> ReviewItem:
    """Staff closed the item (called back, booked by hand, ...): who, when and their note."""
    if item.state is ItemState.RETRYING and item.next_attempt_at is not None and item.next_attempt_at > now:
        raise ItemBusy(f"item {item.item_id} is being delivered to ModMed; try again in a minute")
    if not item.is_open:
        raise ItemClosed(f"item {item.item_id} is already {item.state.value}")
    by, note = by.strip(), note.strip()
    if not by or not note:
        raise ReviewQueueError("resolving an item needs who resolved it and a note")
    return _changed(item, now, state=ItemState.RESOLVED, resolved_by=by[:64], resolved_at=now,
                    note=note[:MAX_NOTE_CHARS], next_attempt_at=None)


def _require(item: ReviewItem, state: ItemState) -> None:
    if item.state is not state:
        raise ReviewQueueError(f"item {item.item_id} is {item.state.value}, not {state.value}")


def _changed(item: ReviewItem, now: datetime, **changes: object) -> ReviewItem:
    return replace(item, updated_at=now, revision=item.revision + 1, **changes)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ guards


def recheck(item: ReviewItem, request: IntentRequest, earlier_cs_requests: int, patient_id: str,
            chart: ChartFlags | None, phase: GoLivePhase, after_hours: bool, now: datetime) -> str | None:
    """The guards' verdict on retrying the item now: None when the write is still allowed, else why not.

    The worker's turn asked ``guards.decide`` about the caller's request; the retry asks it again about the
    same request (read back from the command record) with the chart's flags as they are now, the practice's
    phase and the hour. The item's write must still be one the decision dispatches: its task (same kind and
    team) for a task, the booking of its visit reason for a booking. No rule is repeated here."""
    ctx = CallContext(call_id=item.call_id, practice_id=item.practice_id, caller_identified=True,
                      patient_id=patient_id, after_hours=after_hours,
                      refill_requests_earlier_in_call=min(max(earlier_cs_requests, 0), 1000))
    try:
        decision = decide(ctx, request, chart, phase, now)
    except GuardInputError:
        return "GuardInputError"
    if item.command == "BOOK_APPOINTMENT":
        allowed = (Command.BOOK_APPOINTMENT in decision.commands
                   and decision.visit_reason is not None and decision.visit_reason.value == item.detail.get("visit_reason"))
    else:
        allowed = Command.CREATE_TASK in decision.commands and any(
            task.kind.value == item.detail.get("task_kind") and task.audience.value == item.detail.get("audience")
            for task in decision.tasks)
    if allowed:
        return None
    return ".".join(guard.value for guard in decision.guards_fired)[:64] or decision.outcome.value  # an error class


def confirmed_requests(item: ReviewItem) -> tuple[str, ...]:
    return tuple(filter(None, item.detail.get(CONFIRMED_KEY, "").split(",")))


def confirm_escalation(item: ReviewItem, request_id: str, now: datetime) -> ReviewItem | None:
    """The item now stands for one more controlled-substance request (the escalation rate counts it, as it
    reached a stored, staff-visible item or ModMed); None when the request was confirmed before (a
    redelivered command). Any state counts: delivered reached ModMed, resolved was seen by staff."""
    request_id = request_id.strip()[:40]
    confirmed = confirmed_requests(item)
    if not request_id or "," in request_id or request_id in confirmed:
        return None
    kept = (*confirmed, request_id)[-MAX_CONFIRMED:]
    return _changed(item, now, detail={**item.detail, CONFIRMED_KEY: ",".join(kept)})


# ---------------------------------------------------------------------------------------- staleness


@dataclass(frozen=True, slots=True)
class Staleness:
    """A practice's open controlled-substance items older than the limit."""

    practice_id: str
    count: int
    oldest_age_s: float


def stale_by_practice(items: Iterable[ReviewItem], now: datetime, limit: timedelta = STALE_AFTER) -> dict[str, Staleness]:
    found: dict[str, Staleness] = {}
    for item in items:
        age = (now - item.created_at).total_seconds()
        if not (item.is_open and item.controlled_substance and age > limit.total_seconds()):
            continue
        seen = found.get(item.practice_id)
        found[item.practice_id] = Staleness(item.practice_id, (seen.count if seen else 0) + 1,
                                            max(age, seen.oldest_age_s if seen else 0.0))
    return found


@dataclass(frozen=True, slots=True)
class StaleTransition:
    alarm_id: uuid.UUID
    practice_id: str
    kind: AlarmKind
    state: AlarmState
    value: float
    """The oldest stale item's age in seconds (0 when cleared)."""
    threshold: float


class StaleAlarms:
    """FIRING when a practice gets a stale item, CLEARED when it has none left; one transition per change.

    ``firing`` starts from the stored alarm states (review.store), so a practice that fired before a
    restart is cleared after it once its items are done, and does not fire twice."""

    def __init__(self, limit: timedelta = STALE_AFTER, firing: Iterable[str] = ()) -> None:
        self.limit = limit
        self.firing: set[str] = set(firing)

    def update(self, stale: Mapping[str, Staleness]) -> list[StaleTransition]:
        threshold = self.limit.total_seconds()
        transitions = [
            StaleTransition(uuid.uuid4(), practice_id, AlarmKind.REVIEW_QUEUE_STALE, AlarmState.FIRING,
                            stale[practice_id].oldest_age_s, threshold)
            for practice_id in sorted(set(stale) - self.firing)
        ] + [
            StaleTransition(uuid.uuid4(), practice_id, AlarmKind.REVIEW_QUEUE_STALE, AlarmState.CLEARED, 0.0,
                            threshold)
            for practice_id in sorted(self.firing - set(stale))
        ]
        self.firing = set(stale)
        return transitions

