"""The QA view's read interface over the audit store: calls of a practice, one call's detail, escalations.

Every method takes the practice id first and puts it in the SQL: there is no read of "a call" without
"of this practice", so a session of practice A cannot reach B's rows by id, list, export or PDF however
the request is made (the web layer passes the session's practice, never one from the request).

`QaRecords` holds an `AuditStore` (any DSN) and, optionally, a source of review-queue items. It is
plain synchronous code with no web types, so it runs in whichever process owns the ClickHouse engine:
`callstream qa serve` (qa/cli.py) or a process that already has the store open (the demo). A call's
record for the PDF and the JSON export comes from sinks.read_api.CallReads, the reads behind `callstream
audit call`, so the PDF holds what that command prints. Queries are serialised by a lock: one chDB
session is not meant for concurrent use.

Review-queue items live in ``review_items``, written by the queue process alone; they are read through
review/reader.py (the queue's loopback API, else the table on a ClickHouse server). When the queue does
not answer, the call page still shows the audit record and says the queue was not reached.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from callstream.errors import CallstreamError, ServiceUnavailableError
from review.core import ItemState
from review.reader import ReviewReader
from callstream.tenants import TenantDirectory
from sinks.call_record import CallAuditRecord
from sinks.clickhouse_schema import AUDIT_TABLE
from sinks.clickhouse_store import AuditStore
from sinks.read_api import CallReads, NotFoundError

PAGE_SIZE = 25
MAX_PAGE = 10_000
OUTCOMES: Mapping[str, str] = {
    "appointment_written": "appointment booked, moved or cancelled in ModMed",
    "task_created": "task created in ModMed",
    "queued_for_staff": "queued for staff (review queue)",
    "write_failed": "a ModMed write failed",
    "dead_lettered": "an event was dead-lettered",
}
"""Call outcome filters: a call matches when it had at least one such step."""
_WRITES = "action IN ('FHIR_WRITE', 'EMA_WRITE')"
_OUTCOME_AGGREGATES: Mapping[str, str] = {
    "appointment_written": f"countIf({_WRITES} AND outcome = 'SUCCESS' AND command IN "
                           "('BOOK_APPOINTMENT', 'RESCHEDULE_APPOINTMENT', 'CANCEL_APPOINTMENT'))",
    "task_created": f"countIf({_WRITES} AND outcome = 'SUCCESS' AND command = 'CREATE_TASK')",
    "queued_for_staff": "countIf(action = 'REVIEW_QUEUED')",
    "write_failed": f"countIf({_WRITES} AND outcome = 'FAILURE')",
    "dead_lettered": "countIf(action = 'DEAD_LETTER')",
}
REVIEW_STATES = tuple(state.value for state in ItemState)


class FilterError(CallstreamError):
    """A filter value the QA view does not accept (the page says which)."""


@dataclass(frozen=True, slots=True)
class CallFilter:
    """What the calls list is narrowed to; dates are days in the practice's time zone, both inclusive."""

    date_from: date | None = None
    date_to: date | None = None
    outcome: str | None = None
    escalated: bool | None = None
    blocked: bool | None = None
    guard: str | None = None
    review_state: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> CallFilter:
        """From a request's query parameters (all optional; empty means "any").

        Raises:
            FilterError: a value out of its vocabulary or not a date.
        """
        def day(name: str) -> date | None:
            value = query.get(name, "").strip()
            try:
                return date.fromisoformat(value) if value else None
            except ValueError:
                raise FilterError(f"{name} must be a date (YYYY-MM-DD)") from None

        def yes_no(name: str) -> bool | None:
            value = query.get(name, "").strip()
            if value not in ("", "yes", "no"):
                raise FilterError(f"{name} must be yes or no")
            return None if not value else value == "yes"

        outcome = query.get("outcome", "").strip() or None
        if outcome is not None and outcome not in OUTCOMES:
            raise FilterError(f"outcome must be one of {', '.join(OUTCOMES)}")
        review_state = query.get("review_state", "").strip() or None
        if review_state is not None and review_state not in REVIEW_STATES:
            raise FilterError(f"review_state must be one of {', '.join(REVIEW_STATES)}")
        guard = query.get("guard", "").strip() or None
        if guard is not None and (len(guard) > 64 or not guard.replace("_", "").isalnum()):
            raise FilterError("guard must be a guard name")
        made = cls(day("date_from"), day("date_to"), outcome, yes_no("escalated"), yes_no("blocked"), guard, review_state)
        if made.date_from and made.date_to and made.date_from > made.date_to:
            raise FilterError("date_from must not be after date_to")
        return made

    def to_query(self) -> dict[str, str]:
        """The non-empty filters as query parameters (for paging and export links)."""
        values = {
            "date_from": self.date_from.isoformat() if self.date_from else "",
            "date_to": self.date_to.isoformat() if self.date_to else "",
            "outcome": self.outcome or "",
            "escalated": "" if self.escalated is None else "yes" if self.escalated else "no",
            "blocked": "" if self.blocked is None else "yes" if self.blocked else "no",
            "guard": self.guard or "",
            "review_state": self.review_state or "",
        }
        return {key: value for key, value in values.items() if value}


@dataclass(frozen=True, slots=True)
class ListedCall:
    """One row of the calls list."""

    call_id: str
    started_at: datetime
    last_event_at: datetime
    events: int
    escalations: int
    blocked: int
    guards: tuple[str, ...]
    outcomes: tuple[str, ...]
    """Keys of OUTCOMES the call had."""
    caller_number: str | None
    review_states: tuple[str, ...] = ()

    @property
    def caller_tail(self) -> str:
        """The number's last four digits: enough to tell calls apart in a list shown on a shared screen."""
        return f"…{self.caller_number[-4:]}" if self.caller_number else "-"


@dataclass(frozen=True, slots=True)
class CallPage:
    calls: tuple[ListedCall, ...]
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


@dataclass(frozen=True, slots=True)
class TimelineStep:
    """One audited step of the call, in time order."""

    at: datetime
    action: str
    outcome: str
    what: str


@dataclass(frozen=True, slots=True)
class ReviewItemView:
    """A review-queue item as the QA view shows it (ids and codes only, as the queue stores them)."""

    item_id: str
    call_id: str
    kind: str
    reason: str
    state: str
    controlled_substance: bool
    created_at: datetime
    attempts: int
    resource: str | None
    resolved_by: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReviewItemView:
        resource_id = data.get("resource_id")
        return cls(str(data["item_id"]), str(data["call_id"]), str(data["kind"]), str(data["reason"]), str(data["state"]),
                   bool(data.get("controlled_substance")), _parse_time(data["created_at"]),
                   int(data.get("attempts") or 0), f"{data.get('resource_type')}/{resource_id}" if resource_id else None,
                   data.get("resolved_by"))


@dataclass(frozen=True, slots=True)
class Escalation:
    """An escalation record: a provider or team task asked for, or a hand-off to a person."""

    at: datetime
    call_id: str
    kind: str
    why: str
    outcome: str
    task_refs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CallDetail:
    """The call page: the per-call audit record (what the caller heard included), every audited step, the
    escalations and the call's review-queue items."""

    record: CallAuditRecord
    timeline: tuple[TimelineStep, ...]
    escalations: tuple[Escalation, ...]
    review_items: tuple[ReviewItemView, ...] | None
    """None when no review queue is connected or it did not answer (the page says so rather than "none")."""


class QaRecords:
    """The typed reads behind the QA pages (see the module docstring)."""

    def __init__(self, store: AuditStore, reviews: ReviewReader | None = None,
                 tenants: TenantDirectory | None = None) -> None:
        self.store = store
        self.reviews = reviews
        self.reads = CallReads(store, tenants, reviews)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------ calls list

    def calls(self, practice_id: str, wanted: CallFilter, zone: ZoneInfo, page: int = 1,
              page_size: int = PAGE_SIZE) -> CallPage:
        """The practice's calls, newest first, narrowed by ``wanted`` (days in ``zone``)."""
        page = min(max(page, 1), MAX_PAGE)
        parameters: dict[str, Any] = {"practice_id": practice_id}
        where = ["practice_id = {practice_id:String}", "call_id != ''"]
        having = ["1"]
        if wanted.date_from:
            parameters["start"] = _day_start(wanted.date_from, zone)
            where.append("occurred_at >= {start:DateTime64(3, 'UTC')} - INTERVAL 1 DAY")
            having.append("started >= {start:DateTime64(3, 'UTC')}")
        if wanted.date_to:
            parameters["end"] = _day_start(wanted.date_to + timedelta(days=1), zone)
            where.append("occurred_at < {end:DateTime64(3, 'UTC')} + INTERVAL 1 DAY")
            having.append("started < {end:DateTime64(3, 'UTC')}")
        if wanted.review_state:
            parameters["review_calls"] = sorted({item.call_id for item in self._review_items(practice_id, wanted.review_state)})
            where.append("call_id IN {review_calls:Array(String)}")
        if wanted.outcome:
            having.append(f"{wanted.outcome} > 0")
        if wanted.escalated is not None:
            having.append("escalations > 0" if wanted.escalated else "escalations = 0")
        if wanted.blocked is not None:
            having.append("blocked > 0" if wanted.blocked else "blocked = 0")
        if wanted.guard:
            parameters["guard"] = wanted.guard
            having.append("has(guards, {guard:String})")
        aggregates = ", ".join(f"{sql} AS {name}" for name, sql in _OUTCOME_AGGREGATES.items())
        grouped = (
            "SELECT call_id, min(occurred_at) AS started, max(occurred_at) AS last_at, count() AS events, "
            "countIf(action = 'ESCALATION') AS escalations, "
            "countIf(action = 'GUARD_HIT' AND outcome = 'BLOCKED') AS blocked, "
            "arraySort(groupUniqArrayArrayIf(guards_fired, action IN ('GUARD_HIT', 'BYPASS_ATTEMPT'))) AS guards, "
            f"anyIf(caller_number, caller_number IS NOT NULL) AS caller, {aggregates} "
            f"FROM {self.store.database}.{AUDIT_TABLE} FINAL WHERE {' AND '.join(where)} "
            f"GROUP BY call_id HAVING {' AND '.join(having)}"
        )
        with self._lock:
            total = int(self.store.select(f"SELECT count() FROM ({grouped})", parameters)[0][0])
            rows = self.store.select(
                f"{grouped} ORDER BY started DESC, call_id LIMIT {int(page_size)} OFFSET {(page - 1) * int(page_size)}",
                parameters)
        states = self._review_states(practice_id, [row[0] for row in rows])
        calls = tuple(
            ListedCall(call_id=row[0], started_at=_utc(row[1]), last_event_at=_utc(row[2]), events=int(row[3]),
                       escalations=int(row[4]), blocked=int(row[5]), guards=tuple(row[6]), caller_number=row[7] or None,
                       outcomes=tuple(name for name, count in zip(_OUTCOME_AGGREGATES, row[8:], strict=True) if count),
                       review_states=states.get(row[0], ()))
            for row in rows
        )
        return CallPage(calls, total, page, page_size)

    def guard_names(self, practice_id: str) -> list[str]:
        """Guards that fired at the practice (the guard filter's choices)."""
        with self._lock:
            rows = self.store.select(
                f"SELECT DISTINCT arrayJoin(guards_fired) AS guard FROM {self.store.database}.{AUDIT_TABLE} "
                "WHERE practice_id = {practice_id:String} AND action IN ('GUARD_HIT', 'BYPASS_ATTEMPT') ORDER BY guard",
                {"practice_id": practice_id})
        return [row[0] for row in rows]

    # ------------------------------------------------------------------------------------ one call

    def call(self, practice_id: str, call_id: str) -> CallDetail | None:
        """The call's detail, or None when the practice has no such call (another practice's is "none")."""
        with self._lock:
            record = self.store.call_record(call_id, practice_id)
            if record is None:
                return None
            rows = self.store.select(
                "SELECT occurred_at, action, outcome, state_from, state_to, command, resource_type, resource_ids, "
                "guards_fired, guard_action, dialogue_path, error_class, task_refs, slot_id, detail "
                f"FROM {self.store.database}.{AUDIT_TABLE} FINAL "
                "WHERE practice_id = {practice_id:String} AND call_id = {call_id:String} ORDER BY occurred_at, event_id",
                {"practice_id": practice_id, "call_id": call_id})
        timeline: list[TimelineStep] = []
        escalations: list[Escalation] = []
        for (occurred_at, action, outcome, state_from, state_to, command, resource_type, resource_ids, guards,
             guard_action, dialogue_path, error_class, task_refs, slot_id, detail) in rows:
            at = _utc(occurred_at)
            if action == "ESCALATION":
                escalations.append(_escalation(at, call_id, outcome, guards, task_refs, detail))
            timeline.append(TimelineStep(at, action, outcome, _step_summary(
                action, state_from, state_to, command, resource_type, resource_ids, guards, guard_action, dialogue_path,
                error_class, slot_id, detail)))
        items = None
        if self.reviews is not None:
            try:
                items = tuple(ReviewItemView.from_json(item) for item in self.reviews.items(practice_id, call_id=call_id)
                              if item.get("practice_id") == practice_id and item.get("call_id") == call_id)
            except ServiceUnavailableError:
                items = None  # the page says the queue did not answer; the audit record is still shown
        return CallDetail(record, tuple(timeline), tuple(escalations), items)

    def call_body(self, practice_id: str, call_id: str) -> dict[str, Any] | None:
        """The call's record as `callstream audit call --json` and the read API give it (what the PDF holds),
        or None when the practice has no such call."""
        with self._lock:
            try:
                return self.reads.call(call_id, practice_id)
            except NotFoundError:
                return None

    # ------------------------------------------------------------------------------------ escalations

    def escalations(self, practice_id: str, day: date, zone: ZoneInfo) -> list[Escalation]:
        """The practice's escalations of one day (in ``zone``), oldest first."""
        with self._lock:
            rows = self.store.select(
                "SELECT occurred_at, call_id, outcome, guards_fired, task_refs, detail "
                f"FROM {self.store.database}.{AUDIT_TABLE} FINAL WHERE practice_id = {{practice_id:String}} "
                "AND action = 'ESCALATION' AND occurred_at >= {start:DateTime64(3, 'UTC')} "
                "AND occurred_at < {end:DateTime64(3, 'UTC')} ORDER BY occurred_at, event_id",
                {"practice_id": practice_id, "start": _day_start(day, zone),
                 "end": _day_start(day + timedelta(days=1), zone)})
        return [_escalation(_utc(row[0]), row[1], row[2], row[3], row[4], row[5]) for row in rows]

    # ------------------------------------------------------------------------------------ review queue

    def _review_items(self, practice_id: str, state: str) -> list[ReviewItemView]:
        if self.reviews is None:
            raise FilterError("the review-queue filter needs the review queue, which is not connected")
        try:
            items = self.reviews.items(practice_id)
        except ServiceUnavailableError:
            raise FilterError("the review queue did not answer; try the review-queue filter again shortly") from None
        return [ReviewItemView.from_json(item) for item in items
                if item.get("practice_id") == practice_id and item.get("state") == state]

    def _review_states(self, practice_id: str, call_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """Review-item states of the listed calls; none when the queue does not answer (the filter says so)."""
        if self.reviews is None or not call_ids:
            return {}
        try:
            items = self.reviews.items(practice_id)
        except ServiceUnavailableError:
            return {}
        wanted = set(call_ids)
        states: dict[str, set[str]] = {}
        for item in items:
            if item.get("practice_id") == practice_id and item.get("call_id") in wanted:
                states.setdefault(str(item["call_id"]), set()).add(str(item.get("state")))
        return {call_id: tuple(sorted(found)) for call_id, found in states.items()}


def _escalation(at: datetime, call_id: str, outcome: str, guards: Sequence[str], task_refs: Sequence[str],
                detail: Mapping[str, str]) -> Escalation:
    kind = detail.get("escalation_kind") or "escalation"
    why = detail.get("rule") or detail.get("trigger") or ", ".join(guards) or "-"
    return Escalation(at, call_id, kind, why, outcome, tuple(task_refs))


def _step_summary(action: str, state_from: str | None, state_to: str | None, command: str | None,
                  resource_type: str | None, resource_ids: Sequence[str], guards: Sequence[str],
                  guard_action: str | None, dialogue_path: str | None, error_class: str | None, slot_id: str | None,
                  detail: Mapping[str, str]) -> str:
    """One line saying what the step was (codes and ids only, as stored)."""
    parts: list[str] = []
    if action == "CALL_STATE_TRANSITION":
        parts.append(f"{state_from or '-'} -> {state_to or '-'}")
    if action == "REPLY_SENT":
        parts.append(detail.get("template", "?") + (" (while working)" if detail.get("interim") == "true" else ""))
    if command:
        parts.append(command)
    if guards:
        parts.append(", ".join(guards))
    if guard_action:
        parts.append(f"{guard_action} {dialogue_path or ''}".strip())
    if resource_ids:
        parts.append(f"{resource_type or 'Resource'} {', '.join(resource_ids)}")
    if slot_id:
        parts.append(f"slot {slot_id}")
    for key in ("escalation_kind", "rule", "operation", "disposition", "signal"):
        if detail.get(key):
            parts.append(f"{key.replace('_', ' ')} {detail[key]}")
    if error_class:
        parts.append(f"error {error_class}")
    return "; ".join(parts) or "-"


def _day_start(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _parse_time(value: Any) -> datetime:
    return _utc(datetime.fromisoformat(str(value)))


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

