"""The ClickHouse audit store on the real embedded engine: DDL versions, de-duplication, per-call records."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from callstream.errors import ConfigError
from schemas.models import AuditAction, AuditOutcome, CallEvent, CallStarted, CommandKind, GuardAction
from schemas.serde import AvroSerde
from sinks.audit_rows import INSERT_COLUMNS, AuditRowProcessor, Rejection
from sinks.clickhouse_schema import MIGRATIONS, Migration, database_for_dsn
from sinks.clickhouse_store import AmbiguousCallError, AuditStore, StoreUnavailableError
from tests.sinks.audit_helpers import BASE_TIME, encode, make_event


@pytest.fixture
def store(clickhouse_client, clickhouse_database: str) -> AuditStore:  # type: ignore[no-untyped-def]
    audit_store = AuditStore(clickhouse_client, clickhouse_database)
    audit_store.migrate()
    return audit_store


def _rows(events) -> list[tuple]:  # type: ignore[no-untyped-def]
    processor = AuditRowProcessor()
    rows = [processor.process(encode(event)) for event in events]
    assert not any(isinstance(row, Rejection) for row in rows)
    return rows  # type: ignore[return-value]


def test_migrations_are_versioned_and_idempotent(clickhouse_client, clickhouse_database: str) -> None:  # type: ignore[no-untyped-def]
    store = AuditStore(clickhouse_client, clickhouse_database)
    assert store.migrate(MIGRATIONS[:1]) == [1]
    assert store.migrate(MIGRATIONS[:1]) == []
    assert store.applied_versions() == [1]
    engine, partition_key, sorting_key = clickhouse_client.query(
        "SELECT engine, partition_key, sorting_key FROM system.tables WHERE database = {db:String} AND name = 'audit_events'",
        parameters={"db": clickhouse_database},
    ).result_rows[0]
    assert engine == "ReplacingMergeTree"
    assert partition_key == "toYYYYMM(occurred_at)"
    assert sorting_key == "practice_id, call_id, event_id"
    later = Migration(3, "test: an extra column", (
        "ALTER TABLE {database}.audit_events ADD COLUMN IF NOT EXISTS note String DEFAULT ''",))
    assert store.migrate([*MIGRATIONS, later]) == [2, 3]
    assert store.applied_versions() == [1, 2, 3]
    with pytest.raises(ConfigError, match="newer than this build's 2"):
        store.migrate()


def test_a_version_1_store_gains_the_guard_and_slot_columns_and_keeps_its_rows(  # type: ignore[no-untyped-def]
        clickhouse_client, clickhouse_database: str) -> None:
    store = AuditStore(clickhouse_client, clickhouse_database)
    store.migrate(MIGRATIONS[:1])
    old_columns = INSERT_COLUMNS[:-3]
    store._insert("audit_events", [row[:-3] for row in _rows([make_event("p1", 0)])], old_columns)
    assert store.migrate() == [2]
    store.insert(_rows([make_event("p1", 1, slot_id="slot-9")]))
    record = store.call_record("call-p1-0")
    assert record is not None and record.event_count == 2
    assert record.slots == {"booked": ("slot-9",)}


def test_migration_lists_must_ascend(clickhouse_client, clickhouse_database: str) -> None:  # type: ignore[no-untyped-def]
    store = AuditStore(clickhouse_client, clickhouse_database)
    with pytest.raises(ConfigError, match="unique and ascending"):
        store.migrate([Migration(2, "b", ()), Migration(1, "a", ())])


def test_hostile_database_names_are_refused(clickhouse_client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="letters, digits and underscores"):
        AuditStore(clickhouse_client, "audit; DROP TABLE x")
    assert database_for_dsn("https://u:p@ch.example:8443/audit_prod") == "audit_prod"
    assert database_for_dsn("chdb:///var/clickhouse") == "callstream"
    assert database_for_dsn("http://ch:8123/", "explicit_db") == "explicit_db"


def test_redelivered_events_are_stored_once(store: AuditStore) -> None:
    events = [make_event("p1", index) for index in range(20)] + [make_event("p2", index) for index in range(5)]
    rows = _rows(events)
    store.insert(rows)
    store.insert(rows[:10])  # a retried batch after a failure that was in fact stored
    store.insert(rows[5:15])
    assert store.count_events() == 25
    assert store.count_events("p1") == 20 and store.count_events("p2") == 5
    raw = store.client.query(f"SELECT count() FROM {store.database}.audit_events").result_rows[0][0]
    assert raw >= 25  # duplicates may still sit unmerged; FINAL hides them


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "tombstone"),
        (b"", "empty"),
        (b"\x00\x01garbage", "Confluent wire format"),
        (b"{\"event_id\": 1}", "unknown framing"),
    ],
)
def test_undecodable_messages_become_rejections(value: bytes | None, why: str) -> None:
    result = AuditRowProcessor().process(value)
    assert isinstance(result, Rejection) and why in result.reason and result.error_class == "SchemaError"


def test_truncated_or_foreign_messages_are_rejected_without_their_values() -> None:
    event = make_event("p1", caller_number="+15559876543")
    truncated = AuditRowProcessor().process(encode(event)[:-5])
    assert isinstance(truncated, Rejection) and "+15559876543" not in truncated.reason
    call_event = CallEvent(event_id=uuid.uuid4(), call_id="c1", seq=0, occurred_at=BASE_TIME, called_number="+15550000001",
                           payload=CallStarted(caller_number="+15559876543"))
    foreign = AuditRowProcessor().process(AvroSerde("CallEvent").encode(call_event.to_avro()))
    assert isinstance(foreign, Rejection) and "written with schema CallEvent" in foreign.reason


def test_insert_into_a_missing_table_is_a_typed_unavailability(store: AuditStore) -> None:
    store.client.command(f"DETACH TABLE {store.database}.audit_events")
    try:
        with pytest.raises(StoreUnavailableError, match="insert into audit_events failed"):
            store.insert(_rows([make_event("p1")]))
    finally:
        store.client.command(f"ATTACH TABLE {store.database}.audit_events")


def _call_events(practice_id: str, call_id: str) -> list:  # type: ignore[type-arg]
    at = BASE_TIME

    def step(seconds: int, **fields):  # type: ignore[no-untyped-def]
        return make_event(practice_id, call_id=call_id, occurred_at=at + timedelta(seconds=seconds),
                          **{"resource_type": None, "resource_ids": [], "detail": {}, **fields})

    return [
        step(0, action=AuditAction.CALL_STATE_TRANSITION, outcome=AuditOutcome.SUCCESS, state_from="RINGING",
             state_to="GREETING"),
        step(2, action=AuditAction.CALL_STATE_TRANSITION, outcome=AuditOutcome.SUCCESS, state_from="GREETING",
             state_to="IDENTIFIED"),
        step(3, action=AuditAction.FHIR_READ, outcome=AuditOutcome.SUCCESS, command=CommandKind.SEARCH_PATIENT,
             resource_type="Patient", resource_ids=["pat-7"], ema_deep_link="https://ema.example/chart/pat-7"),
        step(4, action=AuditAction.FHIR_READ, outcome=AuditOutcome.SUCCESS, command=CommandKind.SEARCH_SLOTS,
             resource_type="Slot", resource_ids=["slot-1", "slot-2"]),
        step(5, action=AuditAction.GUARD_HIT, outcome=AuditOutcome.BLOCKED, guards_fired=["opioid_agreement_expired"],
             guard_action=GuardAction.ROUTED, dialogue_path="BOOK_APPOINTMENT/medication-management"),
        step(5, action=AuditAction.GUARD_HIT, outcome=AuditOutcome.SUCCESS, guards_fired=["refill_escalates"],
             guard_action=GuardAction.ESCALATED, dialogue_path="BOOK_APPOINTMENT/medication-management"),
        step(6, action=AuditAction.FHIR_WRITE, outcome=AuditOutcome.SUCCESS, command=CommandKind.CREATE_TASK,
             resource_type="Task", resource_ids=["task-3"], task_refs=["Task/task-3"]),
        step(6, action=AuditAction.ESCALATION, outcome=AuditOutcome.SUCCESS, command=CommandKind.CREATE_TASK,
             resource_type="Task", resource_ids=["task-3"], task_refs=["Task/task-3"], guards_fired=["refill_escalates"]),
        step(7, action=AuditAction.FHIR_WRITE, outcome=AuditOutcome.SUCCESS, command=CommandKind.BOOK_APPOINTMENT,
             resource_type="Appointment", resource_ids=["appt-5"], slot_id="slot-2",
             ema_deep_link="https://ema.example/chart/pat-7"),
        step(8, action=AuditAction.REVIEW_QUEUED, outcome=AuditOutcome.QUEUED, command=CommandKind.CANCEL_APPOINTMENT,
             resource_type="Appointment", resource_ids=["appt-1"], detail={"queue": "review", "operation": "Timeout"}),
        step(9, action=AuditAction.CALL_STATE_TRANSITION, outcome=AuditOutcome.SUCCESS, state_from="IDENTIFIED",
             state_to="ENDED", transcript_ref="tr:call-77"),
    ]


def test_call_record_has_everything_the_seeds_list(store: AuditStore) -> None:
    events = _call_events("northside-pain", "call-77")
    store.insert(_rows(list(reversed(events))))
    store.insert(_rows([make_event("northside-pain", call_id="call-other")]))
    record = store.call_record("call-77")
    assert record is not None
    assert (record.call_id, record.practice_id, record.caller_number) == ("call-77", "northside-pain", "+15551230000")
    assert record.event_count == 11 and record.first_event_at == BASE_TIME
    assert [(t.state_from, t.state_to) for t in record.state_transitions] == [
        ("RINGING", "GREETING"), ("GREETING", "IDENTIFIED"), ("IDENTIFIED", "ENDED")]
    assert record.state_transitions[-1].at == BASE_TIME + timedelta(seconds=9)
    assert dict(record.fhir_resources) == {"Patient": ("pat-7",), "Slot": ("slot-1", "slot-2"), "Task": ("task-3",),
                                           "Appointment": ("appt-5", "appt-1")}
    assert dict(record.slots) == {"offered": ("slot-1", "slot-2"), "booked": ("slot-2",)}
    assert record.ema_deep_links == ("https://ema.example/chart/pat-7",)
    assert [(task.task_ref, task.transcript_ref) for task in record.tasks] == [("Task/task-3", "tr:call-77")]
    assert sorted((hit.guard, hit.outcome, hit.guard_action, hit.dialogue_path) for hit in record.guards_fired) == [
        ("opioid_agreement_expired", "BLOCKED", "ROUTED", "BOOK_APPOINTMENT/medication-management"),
        ("refill_escalates", "SUCCESS", "ESCALATED", "BOOK_APPOINTMENT/medication-management")]
    [queued] = record.queued_writes
    assert (queued.command, queued.reason, queued.resource_ids) == ("CANCEL_APPOINTMENT", "Timeout", ("appt-1",))
    text = record.render_text()
    for expected in ("call call-77", "+15551230000", "RINGING -> GREETING", "Slot: slot-1, slot-2",
                     "offered: slot-1, slot-2", "booked: slot-2",
                     "https://ema.example/chart/pat-7", "Task/task-3  transcript tr:call-77",
                     "opioid_agreement_expired  ROUTED BOOK_APPOINTMENT/medication-management",
                     "CANCEL_APPOINTMENT  Timeout  Appointment: appt-1"):
        assert expected in text
    as_json = record.to_json_dict()
    assert as_json["slots"] == {"offered": ["slot-1", "slot-2"], "booked": ["slot-2"]}
    assert {hit["guard_action"] for hit in as_json["guards_fired"]} == {"ROUTED", "ESCALATED"}
    assert record.to_json_dict()["state_transitions"][0] == {"at": "2026-03-14T15:09:26.000Z", "from": "RINGING",
                                                             "to": "GREETING"}


def test_call_record_absent_and_ambiguous(store: AuditStore) -> None:
    assert store.call_record("call-nobody") is None
    store.insert(_rows([make_event("p1", call_id="shared-id"), make_event("p2", call_id="shared-id")]))
    with pytest.raises(AmbiguousCallError, match="practices p1, p2"):
        store.call_record("shared-id")
    only_p2 = store.call_record("shared-id", "p2")
    assert only_p2 is not None and only_p2.practice_id == "p2" and only_p2.event_count == 1
    empty_sections = only_p2.render_text()
    assert "state transitions:\n  (none)" in empty_sections


def test_store_errors_never_quote_row_values(store: AuditStore) -> None:
    row = list(_rows([make_event("p1")])[0])
    row[0] = "Jane Doe 1961-04-12"  # not a UUID: the driver or the engine refuses the value
    with pytest.raises(StoreUnavailableError) as caught:
        store.insert([tuple(row)])
    assert "Jane" not in str(caught.value) and "1961" not in str(caught.value)
