"""One practice-day of audit records and review items whose digest figures are known, for the digest and
read-API tests (on the session's embedded ClickHouse)."""

from __future__ import annotations

import datetime as dt
from datetime import UTC, datetime, timedelta
from typing import Any

from callstream.tenants import TenantDirectory, parse_tenant_directory
from review.core import ItemKind, ItemState, Reason, ReviewItem
from review.store import ReviewStore
from schemas.models import AuditAction, AuditOutcome, CommandKind, GuardAction
from sinks.audit_rows import AuditRowProcessor
from sinks.clickhouse_store import AuditStore
from tests.sinks.audit_helpers import encode, make_event

PRACTICE = "northside-pain"
OTHER = "southside-pain"
DAY = dt.date(2026, 3, 14)
"""In America/New_York (EDT): 2026-03-14T04:00Z .. 2026-03-15T04:00Z."""
NOON = datetime(2026, 3, 14, 16, 0, tzinfo=UTC)
CALLER = "+15551230000"
"""Every record's caller number (PHI): never in a digest."""


def directory(recipients: dict[str, list[str]]) -> TenantDirectory:
    practices: list[dict[str, Any]] = []
    for index, practice_id in enumerate((PRACTICE, OTHER)):
        practices.append({
            "practice_id": practice_id, "name": f"{practice_id.title()} <Clinic> & Co", "timezone": "America/New_York",
            "called_numbers": [f"+1555{index:07d}"], "base_url": "http://127.0.0.1:9", "firm_url_prefix": f"firm{index}",
            "auth": {"method": "password", "credentials_ref": f"env:UNUSED_{index}"},
            "digest_recipients": recipients.get(practice_id, []),
        })
    return parse_tenant_directory({"practices": practices}, "test-directory")


def _event(call_id: str, minute: float, action: AuditAction, outcome: AuditOutcome = AuditOutcome.SUCCESS,
           practice_id: str = PRACTICE, **fields: Any) -> Any:
    values: dict[str, Any] = {"resource_type": None, "resource_ids": [], "detail": {}}
    values.update(fields)
    return make_event(practice_id, 0, call_id=call_id, action=action, outcome=outcome, caller_number=CALLER,
                      occurred_at=NOON + timedelta(minutes=minute), **values)


CS = {"trigger": "controlled_substance", "escalation_kind": "provider", "intent": "REFILL_REQUEST"}


def day_events() -> list[Any]:
    """3 controlled-substance requests (escalated with a task, queued for staff, not escalated), 2 blocks,
    1 bypass attempt, writes 3 ok + 1 failed (75.0 %), 5 calls; plus records outside the day or practice."""
    return [
        _event("call-cs-1", 0, AuditAction.CALL_STATE_TRANSITION, state_from="started", state_to="identified"),
        _event("call-cs-1", 1, AuditAction.REPLY_SENT, detail={"template": "PLEASE_HOLD", "phase": "write"}),
        _event("call-cs-1", 1.5, AuditAction.REPLY_SENT, detail={"template": "OFFER_SLOTS", "phase": "write",
                                                                 "visit_reason": "esi"}),
        _event("call-cs-1", 2, AuditAction.ESCALATION, detail=CS),
        _event("call-cs-1", 2, AuditAction.ESCALATION, command=CommandKind.CREATE_TASK, resource_type="Task",
               resource_ids=["task-1"], task_refs=["Task/task-1"], detail={"escalation_kind": "provider"}),
        _event("call-cs-1", 2, AuditAction.FHIR_WRITE, command=CommandKind.CREATE_TASK, resource_type="Task",
               resource_ids=["task-1"]),
        _event("call-cs-2", 3, AuditAction.ESCALATION, AuditOutcome.QUEUED, detail=CS),
        _event("call-cs-3", 4, AuditAction.ESCALATION, AuditOutcome.FAILURE, detail=CS,
               error_class="ControlledSubstanceNotEscalated"),
        _event("call-blocked", 5, AuditAction.GUARD_HIT, AuditOutcome.BLOCKED, guards_fired=["AGREEMENT_EXPIRED"],
               guard_action=GuardAction.BLOCKED, dialogue_path="BOOK_APPOINTMENT/medication-management"),
        _event("call-blocked", 5, AuditAction.GUARD_HIT, AuditOutcome.BLOCKED, error_class="SlotNotOffered",
               guard_action=GuardAction.BLOCKED),
        _event("call-blocked", 5, AuditAction.GUARD_HIT, AuditOutcome.SUCCESS, guards_fired=["ASKED_VISIT_REASON"],
               guard_action=GuardAction.NOTED),
        _event("call-bypass", 6, AuditAction.BYPASS_ATTEMPT, AuditOutcome.BLOCKED, detail={"signal": "ROLE_CLAIM"}),
        _event("call-bypass", 7, AuditAction.FHIR_WRITE, command=CommandKind.BOOK_APPOINTMENT, resource_type="Appointment",
               resource_ids=["appt-1"]),
        _event("call-bypass", 8, AuditAction.EMA_WRITE, command=CommandKind.BOOK_APPOINTMENT),
        _event("call-bypass", 9, AuditAction.EMA_WRITE, AuditOutcome.FAILURE, command=CommandKind.BOOK_APPOINTMENT,
               error_class="ScreenTimeout"),
        # outside: the evening before in New York (03:30Z), and another practice
        _event("call-yesterday", -12 * 60 - 30, AuditAction.ESCALATION, detail=CS),
        _event("call-other", 0, AuditAction.ESCALATION, detail=CS, practice_id=OTHER),
    ]


def seed_audit(store: AuditStore) -> None:
    store.migrate()
    processor = AuditRowProcessor()
    store.insert([processor.process(encode(event)) for event in day_events()])  # type: ignore[misc]


def seed_review(store: ReviewStore) -> None:
    """Open: one controlled-substance item of call-cs-2 and one booking; resolved: one (not counted)."""
    store.migrate()
    items = [("item-1", "call-cs-2", ItemKind.PROVIDER_TASK, True, ItemState.OPEN),
             ("item-2", "call-bypass", ItemKind.BOOKING_TO_CONFIRM, False, ItemState.RETRYING),
             ("item-3", "call-cs-1", ItemKind.PROVIDER_TASK, True, ItemState.RESOLVED)]
    for index, (item_id, call_id, kind, controlled, state) in enumerate(items):
        store.put(ReviewItem(item_id=item_id, practice_id=PRACTICE, call_id=call_id, command="CREATE_TASK", kind=kind,
                             reason=Reason.EHR_UNAVAILABLE, controlled_substance=controlled, state=state,
                             created_at=NOON + timedelta(minutes=index), updated_at=NOON + timedelta(minutes=index),
                             source_partition=0, source_offset=index))
