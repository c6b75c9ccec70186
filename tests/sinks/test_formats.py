"""OCSF API Activity and Splunk HEC bodies: the fields a SIEM parses, and stable bytes for retries."""

from __future__ import annotations

import json
import uuid

import pytest

from callstream.tenants import SiemFormat
from schemas.models import AuditAction, AuditOutcome, CommandKind
from sinks.formats import ocsf_api_activity, render_body, splunk_hec_event
from sinks.payload import audit_record
from tests.sinks.audit_helpers import BASE_TIME, make_event


@pytest.mark.parametrize(
    ("action", "command", "activity_id", "activity_name"),
    [
        (AuditAction.FHIR_READ, CommandKind.SEARCH_SLOTS, 2, "Read"),
        (AuditAction.EMA_READ, None, 2, "Read"),
        (AuditAction.FHIR_WRITE, CommandKind.BOOK_APPOINTMENT, 1, "Create"),
        (AuditAction.EMA_WRITE, CommandKind.RESCHEDULE_APPOINTMENT, 3, "Update"),
        (AuditAction.FHIR_WRITE, CommandKind.CANCEL_APPOINTMENT, 3, "Update"),
        (AuditAction.ESCALATION, CommandKind.CREATE_TASK, 1, "Create"),
        (AuditAction.CALL_STATE_TRANSITION, None, 99, "Other"),
        (AuditAction.GUARD_HIT, None, 99, "Other"),
    ],
)
def test_ocsf_activity_follows_the_api_operation(action: AuditAction, command: CommandKind | None, activity_id: int,
                                                 activity_name: str) -> None:
    event = ocsf_api_activity(audit_record(make_event("p1", action=action, command=command)))
    assert (event["activity_id"], event["activity_name"]) == (activity_id, activity_name)
    assert event["type_uid"] == 600300 + activity_id


def test_ocsf_event_carries_class_identity_time_and_reconciliation_fields() -> None:
    source = make_event(
        "northside-pain", event_id=uuid.UUID(int=5), call_id="call-9", action=AuditAction.FHIR_WRITE,
        command=CommandKind.BOOK_APPOINTMENT, resource_type="Appointment", resource_ids=["appt-1"],
        task_refs=["Task/t-1"], ema_deep_link="https://ema.example/chart/pat-1", latency_ms=41.6,
        error_class=None, detail={"http_status": "201"}, guards_fired=["booking_allowed"],
    )
    event = ocsf_api_activity(audit_record(source))
    assert (event["class_uid"], event["category_uid"]) == (6003, 6)
    assert event["time"] == int(BASE_TIME.timestamp() * 1000)
    assert (event["status_id"], event["status"], event["severity_id"]) == (1, "Success", 1)
    assert event["metadata"]["uid"] == str(uuid.UUID(int=5)) == event["api"]["request"]["uid"]
    assert event["metadata"]["tenant_uid"] == "northside-pain" and event["metadata"]["correlation_uid"] == "call-9"
    assert event["metadata"]["product"]["name"] == "callstream" and event["metadata"]["version"] == "1.3.0"
    assert event["api"]["operation"] == "BOOK_APPOINTMENT" and event["api"]["service"]["name"] == "ModMed FHIR"
    assert event["api"]["response"] == {"code": 201}
    assert event["resources"] == [{"uid": "appt-1", "type": "Appointment"}, {"uid": "Task/t-1", "type": "Task"}]
    assert event["duration"] == 42
    assert event["unmapped"]["caller_number"] == "+15551230000"
    assert event["unmapped"]["ema_deep_link"] == "https://ema.example/chart/pat-1"
    assert event["unmapped"]["guards_fired"] == ["booking_allowed"]
    assert "state_from" not in event["unmapped"]


@pytest.mark.parametrize(
    ("action", "outcome", "severity_id", "status_id"),
    [
        (AuditAction.BYPASS_ATTEMPT, AuditOutcome.BLOCKED, 4, 99),
        (AuditAction.GUARD_HIT, AuditOutcome.BLOCKED, 3, 99),
        (AuditAction.AUTH_FAILURE, AuditOutcome.FAILURE, 3, 2),
        (AuditAction.FHIR_WRITE, AuditOutcome.FAILURE, 2, 2),
        (AuditAction.REVIEW_QUEUED, AuditOutcome.QUEUED, 1, 99),
    ],
)
def test_ocsf_severity_and_status(action: AuditAction, outcome: AuditOutcome, severity_id: int, status_id: int) -> None:
    event = ocsf_api_activity(audit_record(make_event("p1", action=action, outcome=outcome)))
    assert (event["severity_id"], event["status_id"], event["status_detail"]) == (severity_id, status_id, outcome.value)


def test_splunk_hec_envelope() -> None:
    record = audit_record(make_event("northside-pain", event_id=uuid.UUID(int=9)))
    envelope = splunk_hec_event(record)
    assert envelope["time"] == BASE_TIME.timestamp()
    assert (envelope["source"], envelope["sourcetype"], envelope["host"]) == ("callstream:audit", "callstream:audit",
                                                                              "callstream")
    assert envelope["fields"] == {"practice_id": "northside-pain"}
    assert envelope["event"]["event_id"] == str(uuid.UUID(int=9))


def test_bodies_are_identical_bytes_on_every_attempt() -> None:
    record = audit_record(make_event("p1"))
    for body_format in SiemFormat:
        first, second = render_body(record, body_format), render_body(record, body_format)
        assert first == second
        assert json.loads(first)
