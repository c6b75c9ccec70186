"""`callstream audit call` and the `callstream sinks run` wiring, on the real engine and a real broker."""

from __future__ import annotations

import json
import random
import threading

import httpx
import pytest

from callstream.devstack import free_port
from callstream.errors import ConfigError, ServiceUnavailableError
from callstream.settings import load_settings
from devkit.broker import TansuBroker
from schemas.models import AuditAction, AuditOutcome, CommandKind, GuardAction
from schemas.registry import SchemaRegistryClient
from schemas.topics import AUDIT
from sinks.cli import audit_main, run_sinks, sinks_main
from sinks.audit_rows import AuditRowProcessor
from sinks.clickhouse_store import AmbiguousCallError, AuditStore
from tests.sinks.audit_helpers import (
    SiemReceiver,
    discard_broker,
    encode,
    make_event,
    new_secret_text,
    produce_events,
    tenant_directory,
    wait_until,
)


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


def test_sinks_run_needs_a_tenant_directory_for_the_siem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLSTREAM_TENANTS_FILE", raising=False)
    monkeypatch.delenv("CALLSTREAM_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs a tenant directory"):
        sinks_main(["run", "--only", "siem"])
    with pytest.raises(ConfigError, match="unknown sink 'kafka'"):
        run_sinks(load_settings(), threading.Event(), only="kafka")


@pytest.mark.broker
def test_a_store_that_cannot_open_leaves_no_registry_client_open(kafka_bootstrap: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLSTREAM_CONFIG", raising=False)
    closed: list[SchemaRegistryClient] = []
    real_close = SchemaRegistryClient.close

    def recording_close(client: SchemaRegistryClient) -> None:  # a spy around the real close
        closed.append(client)
        real_close(client)

    monkeypatch.setattr(SchemaRegistryClient, "close", recording_close)
    settings = load_settings(kafka_bootstrap_servers=kafka_bootstrap, clickhouse_dsn=f"http://127.0.0.1:{free_port()}",
                             schema_registry_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ServiceUnavailableError, match="ClickHouse"):
        run_sinks(settings, threading.Event(), only="clickhouse")
    assert len(closed) == 1 and closed[0]._http.is_closed


@pytest.mark.broker
def test_run_sinks_feeds_clickhouse_and_the_siem(clickhouse_dsn: str, clickhouse_client, clickhouse_database: str,  # type: ignore[no-untyped-def]
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLSTREAM_CONFIG", raising=False)
    secret = new_secret_text(random.Random(5))
    monkeypatch.setenv("CLI_SIEM_SECRET", secret)
    broker = TansuBroker(port=free_port())  # private: run_sinks uses the fixed topic and group names
    broker.start()
    stop = threading.Event()
    failures: list[BaseException] = []
    try:
        with SiemReceiver(reject_rate=0.0) as receiver:
            receiver.add_practice("northside-pain", secret)
            tenants = tenant_directory({"northside-pain": (receiver.url("northside-pain"), "env:CLI_SIEM_SECRET",
                                                           "ocsf")})
            settings = load_settings(kafka_bootstrap_servers=broker.bootstrap, clickhouse_dsn=clickhouse_dsn)

            ports: list[int] = []

            def run() -> None:
                try:
                    run_sinks(settings, stop, tenants=tenants, database=clickhouse_database,
                              serve=("127.0.0.1", 0), on_serving=ports.append)
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    failures.append(exc)

            runner = threading.Thread(target=run)
            runner.start()
            try:
                wait_until(lambda: AuditStore(clickhouse_client, clickhouse_database).is_initialised(), 20, "migrations")
                produce_events(broker.bootstrap, AUDIT, [make_event("northside-pain", index) for index in range(6)])
                store = AuditStore(clickhouse_client, clickhouse_database)
                wait_until(lambda: store.count_events() == 6, 30, "six events in ClickHouse")
                wait_until(lambda: len(receiver.practices["northside-pain"].unique()) == 6, 30, "six events at the SIEM")
                base = f"http://127.0.0.1:{ports[0]}"
                assert httpx.get(f"{base}/healthz").status_code == 200
                assert httpx.get(f"{base}/readyz").status_code == 200
                exposition = httpx.get(f"{base}/metrics").text
                assert 'callstream_siem_deliveries_total{outcome="delivered",practice_id="northside-pain"} 6.0' \
                    in exposition
                assert "callstream_clickhouse_insert_lag_seconds " in exposition
                assert "callstream_siem_backlog_events" in exposition
            finally:
                stop.set()
                runner.join(30)
    finally:
        discard_broker(broker)
    assert not failures, failures
    assert receiver.bad_signatures == 0
