"""What `callstream replay` says about a call, from the records the pipeline published (no broker: the
records are built as the worker builds them; the end-to-end runs are tests/e2e/test_replay.py and test_dlq.py)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from schemas.models import AuditAction, AuditEvent, AuditOutcome, CommandKind, GuardAction, Reply
from devkit.cast import Script
from devkit.replay import call_json, call_text, summary, summary_text
from devkit.telephony import CallProgress, DeadLettered, Dropped, ReplayReport

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)


def audit(call_id: str, action: AuditAction, outcome: AuditOutcome = AuditOutcome.SUCCESS, **fields: Any) -> AuditEvent:
    return AuditEvent(event_id=uuid.uuid4(), occurred_at=NOW, practice_id="pain-1002", call_id=call_id,
                      action=action, outcome=outcome, **fields)


def reply(call_id: str, in_reply_to: uuid.UUID, template: str, text: str) -> Reply:
    return Reply(reply_id=uuid.uuid4(), call_id=call_id, in_reply_to=in_reply_to, practice_id="pain-1002",
                 template=template, text=text, escalated=False, created_at=NOW)


def test_a_call_reports_what_the_caller_heard_and_what_happened_in_order() -> None:
    script = Script("+15125550100").started().intent("BOOK_APPOINTMENT", visit_reason="esi").chooses().ended()
    call = CallProgress(list(script.events), sent=4)
    intent, chose = script.events[1].event_id, script.events[2].event_id
    call.replies += [reply(script.call_id, intent, "PLEASE_HOLD", "One moment."),
                     reply(script.call_id, intent, "OFFER_SLOTS", "I found Monday at 8."),
                     reply(script.call_id, chose, "BOOKING_CONFIRMED", "You're all set.")]
    booked = audit(script.call_id, AuditAction.FHIR_WRITE, command=CommandKind.BOOK_APPOINTMENT,
                   resource_type="Appointment", resource_ids=["appt-9"], slot_id="slot-9")
    call.audit += [
        audit(script.call_id, AuditAction.GUARD_HIT, guards_fired=["AFTER_HOURS_POLICY"], guard_action=GuardAction.NOTED),
        booked, booked,  # a redelivered record is told once
        audit(script.call_id, AuditAction.ESCALATION, command=CommandKind.CREATE_TASK, resource_type="Task",
              resource_ids=["t-1"], task_refs=["Task/t-1"], detail={"escalation_kind": "provider",
                                                                    "trigger": "controlled_substance"}),
        audit(script.call_id, AuditAction.REVIEW_QUEUED, AuditOutcome.QUEUED, command=CommandKind.CANCEL_APPOINTMENT,
              detail={"operation": "read_only_phase"}),
        audit(script.call_id, AuditAction.CALL_STATE_TRANSITION, state_from="booking", state_to="ended"),
    ]
    text = call_text(call, 30.0)
    assert text.splitlines() == [
        f"call {script.call_id} (pain-1002): 4 of 4 events sent",
        '  heard  PLEASE_HOLD (while waiting): "One moment."',
        '  heard  OFFER_SLOTS: "I found Monday at 8."',
        '  heard  BOOKING_CONFIRMED: "You\'re all set."',
        "  guard AFTER_HOURS_POLICY: NOTED",
        "  booked Appointment/appt-9 (slot slot-9)",
        "  task Task/t-1 for provider (controlled substance)",
        "  queued for staff review: CANCEL_APPOINTMENT (read_only_phase)",
        "  call ended",
    ]
    as_json = call_json(call, 30.0)
    assert [item["kind"] for item in as_json["happened"]] == ["guard", "booked", "task", "queued", "ended"]
    assert [heard["in_reply_to_seq"] for heard in as_json["heard"]] == [1, 1, 2]
    assert as_json["heard"][0]["interim"] is True and as_json["already_ended"] is False
    json.dumps(as_json)


def test_dead_letters_drops_and_timeouts_are_told_and_counted() -> None:
    script = Script("+15125550100").started().intent("GENERAL_QUESTION").ended()
    dead = CallProgress(list(script.events), sent=3)
    dead.dead_lettered += [DeadLettered(event, "RedeliveryHorizon", "event occurred 9 days ago, beyond the horizon")
                           for event in script.events[:2]]
    ended = CallProgress(list(Script("+15125550100").started().ended().events), sent=2, timed_out=1)
    ended.dropped.append(Dropped(0, "call_ended"))
    assert ("dead-lettered: outside the redelivery horizon (event occurred 9 days ago, beyond the horizon) "
            "(events seq 0, 1)") in call_text(dead, 30.0)
    text = call_text(ended, 30.0)
    assert "heard  nothing" in text and "already ended" in text and "no answer within 30 s" in text
    report = ReplayReport(calls=2, events_sent=5, replies={}, timeouts=1, seconds=1.25)
    totals = summary(report, [dead, ended])
    assert summary_text(totals) == ("replayed 2 calls (5 events) in 1.2 s; 0 replies received, 1 waits timed out; "
                                    "1 with dead-lettered events; 1 already ended")
