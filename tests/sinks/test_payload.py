"""Issue 7 point 3: what leaves callstream carries the seed-listed fields and nothing else."""

from __future__ import annotations

import json
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from callstream.tenants import SiemFormat
from schemas.models import AuditAction, AuditOutcome, CommandKind
from sinks.audit_rows import row_from_record
from sinks.formats import render_body
from sinks.payload import ALLOWED_DETAIL_KEYS, audit_record
from tests.sinks.audit_helpers import make_event

SIEM_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SENSITIVE_VALUES = {
    "pdmp_note": "PDMP: oxycodone 30mg filled 3x at two pharmacies",
    "uds_result": "positive-fentanyl",
    "uds": "positive",
    "dob": "1961-04-12",
    "birth_date": "04/12/1961",
    "patient_name": "Jane Q. Doe",
    "caller": "555-867-5309",
    "siem_secret": SIEM_SECRET,
    "authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
    "api_key": "9f8e7d6c5b4a39281716a5b4c3d2e1f0",
    "password": "hunter2",
    "transcript": "hi this is Jane, my DOB is april twelfth",
}
# Allow-listed keys carrying sensitive values must be dropped too.
SMUGGLED_VALUES = {
    "reason": "Jane Doe asked for oxycodone",
    "route": "token=abc123",
    "trigger": "1961-04-12",
    "signal": "5558675309",
    "operation": "9f8e7d6c5b4a39281716a5b4c3d2e1f0",
    "step": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
}


def _everything_sent(event) -> str:  # type: ignore[no-untyped-def]
    record = audit_record(event)
    return " ".join([
        render_body(record, SiemFormat.OCSF).decode(),
        render_body(record, SiemFormat.SPLUNK_HEC).decode(),
        json.dumps(row_from_record(record), default=str),
    ])


def test_seed_listed_fields_survive_intact() -> None:
    event = make_event(
        "northside-pain",
        call_id="call-42",
        action=AuditAction.ESCALATION,
        command=CommandKind.CREATE_TASK,
        state_from="INTENT_RECOGNISED",
        state_to="ESCALATED",
        resource_type="Task",
        resource_ids=["task-9", "pat-7"],
        ema_deep_link="https://ema.example/ema/northside/chart/pat-7",
        task_refs=["Task/task-9"],
        transcript_ref="s3://transcripts/2026/03/14/call-42.json",
        guards_fired=["refill_request_escalates", "aberrant-uds-routes"],
        error_class="TokenExpired",
        detail={"http_status": "201", "phase": "write", "template": "refill_sent_to_provider"},
    )
    record = audit_record(event)
    assert record.redactions == ()
    assert record.caller_number == "+15551230000"
    assert record.ema_deep_link == "https://ema.example/ema/northside/chart/pat-7"
    assert record.transcript_ref == "s3://transcripts/2026/03/14/call-42.json"
    assert record.guards_fired == ("refill_request_escalates", "aberrant-uds-routes")
    assert record.task_refs == ("Task/task-9",) and record.resource_ids == ("task-9", "pat-7")
    assert record.error_class == "TokenExpired"
    assert dict(record.detail) == {"http_status": "201", "phase": "write", "template": "refill_sent_to_provider"}


def test_pdmp_uds_phi_and_secrets_in_detail_are_stripped() -> None:
    event = make_event("northside-pain", detail={**SENSITIVE_VALUES, **SMUGGLED_VALUES, "http_status": "200"})
    record = audit_record(event)
    assert dict(record.detail) == {"http_status": "200"}
    assert record.redactions == ("detail",)
    sent = _everything_sent(event)
    for value in [*SENSITIVE_VALUES.values(), *SMUGGLED_VALUES.values()]:
        assert value not in sent
    for key in SENSITIVE_VALUES:
        assert f'"{key}"' not in sent


def test_references_lose_credentials_queries_and_free_text() -> None:
    event = make_event(
        "northside-pain",
        ema_deep_link="https://clinic:pa55word@ema.example/ema/northside/chart/pat-7?session=abc#/chart/pat-7",
        task_refs=["https://pm.example/tasks/9?X-Amz-Signature=deadbeef", "note: patient Jane says hi", "Task/10"],
        transcript_ref="https://store.example/t/42?token=abc#access_token=xyz",
        state_from="dob-1961-04-12",
        guards_fired=["ok_guard", "call5558675309"],
        error_class="whsec_leak",
    )
    record = audit_record(event)
    assert record.ema_deep_link == "https://ema.example/ema/northside/chart/pat-7#/chart/pat-7"
    assert record.task_refs == ("https://pm.example/tasks/9", "Task/10")
    assert record.transcript_ref == "https://store.example/t/42"
    assert record.state_from is None and record.error_class is None
    assert record.guards_fired == ("ok_guard",)
    assert set(record.redactions) == {"state_from", "error_class", "guards_fired", "ema_deep_link", "task_refs",
                                      "transcript_ref"}
    sent = _everything_sent(event)
    for leaked in ("pa55word", "session=abc", "deadbeef", "Jane", "token=abc", "xyz", "1961", "5558675309", "whsec_leak"):
        assert leaked not in sent


def test_a_deep_link_with_a_broken_port_is_dropped_not_crashed_on() -> None:
    record = audit_record(make_event("northside-pain", ema_deep_link="https://ema.example:99999/chart/1"))
    assert record.ema_deep_link is None and record.redactions == ("ema_deep_link",)


# Under an allow-listed key only values with a recognisable shape can be caught; "hunter2" under
# "template" cannot (see DETAIL_GRAMMARS' docstring), so allow-listed keys get shaped values here.
_SHAPED = sorted(value for value in {*SENSITIVE_VALUES.values(), *SMUGGLED_VALUES.values()}
                 if value not in {"hunter2", "positive", "positive-fentanyl"})
_ANY_SENSITIVE = sorted({*SENSITIVE_VALUES.values(), *SMUGGLED_VALUES.values()})
_other_keys = st.from_regex(r"[a-z][a-z0-9_.]{0,20}", fullmatch=True).filter(lambda key: key not in ALLOWED_DETAIL_KEYS)


@settings(max_examples=150, deadline=None)
@given(
    allowed=st.dictionaries(st.sampled_from(sorted(ALLOWED_DETAIL_KEYS)), st.sampled_from(_SHAPED), max_size=8),
    other=st.dictionaries(_other_keys, st.sampled_from(_ANY_SENSITIVE), max_size=8),
)
def test_no_planted_secret_or_phi_ever_reaches_a_payload(allowed: dict[str, str], other: dict[str, str]) -> None:
    planted = {**other, **allowed}
    sent = _everything_sent(make_event("northside-pain", detail=planted))
    for value in planted.values():
        assert value not in sent


def test_vocabulary_keys_take_only_their_vocabulary() -> None:
    record = audit_record(make_event("northside-pain", detail={
        "phase": "write", "track": "certified", "intent": "REFILL_REQUEST", "visit_reason": "esi", "attempt": "3",
        "auth_method": "hunter2", "http_status": "positive", "api_track": "oxycodone",
    }))
    assert dict(record.detail) == {"phase": "write", "track": "certified", "intent": "REFILL_REQUEST",
                                   "visit_reason": "esi", "attempt": "3"}


def test_record_json_is_the_schema_fields_only() -> None:
    record = audit_record(make_event("northside-pain", event_id=uuid.UUID(int=7), outcome=AuditOutcome.BLOCKED))
    assert set(record.to_json_dict()) == {
        "event_id", "occurred_at", "practice_id", "call_id", "caller_number", "action", "outcome", "state_from",
        "state_to", "resource_type", "resource_ids", "ema_deep_link", "task_refs", "transcript_ref", "guards_fired",
        "command", "error_class", "latency_ms", "detail", "redactions", "guard_action", "dialogue_path", "slot_id",
    }
    assert record.to_json_dict()["occurred_at"] == "2026-03-14T15:09:26.000Z"
