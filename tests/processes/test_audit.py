"""`callstream audit call` (processes/audit.py) on the real engine, opening the store itself."""

from __future__ import annotations

import json

import pytest

from callstream.errors import ConfigError
from processes.audit import main as audit_main
from schemas.models import AuditAction, AuditOutcome, CommandKind, GuardAction
from sinks.audit_rows import AuditRowProcessor
from sinks.clickhouse_store import AmbiguousCallError, AuditStore
from tests.sinks.audit_helpers import encode, make_event


@pytest.fixture
def seeded_store(clickhouse_client, clickhouse_database: str, clickhouse_dsn: str,  # type: ignore[no-untyped-def]
                 monkeypatch: pytest.MonkeyPatch) -> AuditStore:
    monkeypatch.delenv("CALLSTREAM_CONFIG", raising=False)
    monkeypatch.setenv("CLICKHOUSE_DSN", clickhouse_dsn)
    store = AuditStore(clickhouse_client, clickhouse_database)
    store.migrate()
    processor = AuditRowProcessor()
    store.insert([processor.process(encode(event)) for event in (  # type: ignore[misc]
        make_event("northside-pain", 0, call_id="call-5", action=AuditAction.CALL_STATE_TRANSITION,
                   state_from="RINGING", state_to="IDENTIFIED", resource_type=None, resource_ids=[]),
        make_event("northside-pain", 1, call_id="call-5", action=AuditAction.ESCALATION, command=CommandKind.CREATE_TASK,
                   resource_type="Task", resource_ids=["task-1"], task_refs=["Task/task-1"], transcript_ref="tr:5",
                   guards_fired=["refill_escalates"], ema_deep_link="https://ema.example/chart/pat-1"),
        make_event("northside-pain", 1, call_id="call-5", action=AuditAction.GUARD_HIT, resource_type=None,
                   resource_ids=[], guards_fired=["refill_escalates"], guard_action=GuardAction.ESCALATED,
                   dialogue_path="REFILL_REQUEST"),
        make_event("northside-pain", 2, call_id="twice", outcome=AuditOutcome.FAILURE),
        make_event("southside-pain", 3, call_id="twice"),
    )])
    return store


def test_audit_call_prints_the_record_as_json_and_text(seeded_store: AuditStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert audit_main(["call", "call-5", "--database", seeded_store.database, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["caller_number"] == "+15551230000"
    assert record["state_transitions"] == [{"at": "2026-03-14T15:09:26.000Z", "from": "RINGING", "to": "IDENTIFIED"}]
    assert record["tasks"] == [{"at": "2026-03-14T15:09:27.000Z", "task_ref": "Task/task-1", "transcript_ref": "tr:5"}]
    assert record["fhir_resources"] == {"Task": ["task-1"]}
    assert record["ema_deep_links"] == ["https://ema.example/chart/pat-1"]
    [hit] = record["guards_fired"]
    assert (hit["guard"], hit["guard_action"], hit["dialogue_path"]) == ("refill_escalates", "ESCALATED", "REFILL_REQUEST")
    assert audit_main(["call", "call-5", "--database", seeded_store.database]) == 0
    text = capsys.readouterr().out
    assert "RINGING -> IDENTIFIED" in text and "Task/task-1  transcript tr:5" in text
    assert "refill_escalates  ESCALATED REFILL_REQUEST" in text


def test_audit_call_failures_are_clear(seeded_store: AuditStore, capsys: pytest.CaptureFixture[str],
                                       clickhouse_client) -> None:  # type: ignore[no-untyped-def]
    assert audit_main(["call", "call-unknown", "--database", seeded_store.database]) == 1
    assert "no audit events for call call-unknown" in capsys.readouterr().err
    with pytest.raises(AmbiguousCallError, match="northside-pain, southside-pain; name one with --practice"):
        audit_main(["call", "twice", "--database", seeded_store.database])
    assert audit_main(["call", "twice", "--practice", "southside-pain", "--database", seeded_store.database]) == 0
    with pytest.raises(ConfigError, match="call id must be"):
        audit_main(["call", "call 5; DROP", "--database", seeded_store.database])
    with pytest.raises(ConfigError, match="no audit store in ClickHouse database"):
        audit_main(["call", "call-5", "--database", f"{seeded_store.database}_empty"])
    with pytest.raises(SystemExit):
        audit_main(["call"])
