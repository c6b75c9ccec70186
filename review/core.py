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

PHI never enters an item: the command's params may hold the caller's name, date of birth and number
(the internal topic allows it), but only the allow-listed ids and codes of ``DETAIL_KEYS`` are kept.
A retry that needs the identity (a patient search ModMed failed) reads it again from the command record
on the topic, located by ``source_partition``/``source_offset``.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from callstream.errors import CallstreamError
from guards.model import TaskAudience, TaskKind, TaskReason
from schemas.models import AlarmKind, AlarmState, CommandMessage
from sinks.kafka_io import Backoff

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


class ItemState(StrEnum):
    OPEN = "open"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    RESOLVED = "resolved"


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
        return self.state in (ItemState.OPEN, ItemState.RETRYING)

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


def retryable(item: ReviewItem) -> bool:
    """Work callstream can finish itself: a team task whose write failed for a reason that passes, with
    either the chart or (on the topic) the identity to find it. Bookings, changes, intake and call-backs
    wait for staff: a slot offered minutes ago may be gone, and the caller was told staff would confirm."""
    return (item.command == "CREATE_TASK" and item.kind is not ItemKind.CALLBACK and item.reason in TRANSIENT
            and "task_kind" in item.detail and "task_reason" in item.detail)


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


def not_matched(item: ReviewItem, now: datetime) -> ReviewItem:
    """retrying → open for staff: the repeated search worked and found no single chart for the caller."""
    _require(item, ItemState.RETRYING)
    return _changed(item, now, state=ItemState.OPEN, reason=Reason.CALLER_NOT_MATCHED, next_attempt_at=None)


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

    The firing set lives in memory: after a restart a still-stale practice fires again (receivers
    de-duplicate on state), which never hides an alarm."""

    def __init__(self, limit: timedelta = STALE_AFTER) -> None:
        self.limit = limit
        self.firing: set[str] = set()

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

