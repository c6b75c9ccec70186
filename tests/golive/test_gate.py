"""The go-live phase gate, both ways: every unmet condition refuses with one line naming it (and changes
nothing), and a promotion that meets them writes the phase into the tenant directory and records who and
when. The read-only history is read from a real (embedded) ClickHouse audit store; the alarm wiring from
the chart's own rules and values files."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Producer

from callstream.backends import ensure_topics
from callstream.tenants import GoLivePhase, load_tenant_directory
from golive import cli as golive_cli
from golive.gate import (
    DEFAULT_RULES,
    fired_guard_alarms,
    refusal,
    DEFAULT_VALUES,
    PromotionRefused,
    PromotionRequest,
    ReadOnlyHistory,
    promote,
    read_only_history,
    unwired_alarms,
)
from golive.runs import CheckRun, RunStore, code_version, sha256_file
from schemas.models import Alarm, AuditAction, AuditEvent, AuditOutcome
from schemas.serde import AvroSerde
from schemas.topics import ALARMS, topic_named
from sinks.audit_rows import row_from_record
from sinks.clickhouse_store import AuditStore
from sinks.payload import audit_record

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
MIRROR_SHA = "a" * 64
VERSION = "0123456789abcdef0123456789abcdef01234567"
WEEK = timedelta(days=7)
QUIET = ReadOnlyHistory(since=NOW - timedelta(days=8), calls=40, anomalies={"controlled-substance requests not escalated": 0})


@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    path = tmp_path / "tenants.yaml"
    entry = {"practice_id": "pain-2001", "name": "Riverbend", "called_numbers": ["+15125550100"],
             "base_url": "https://mmi.example", "firm_url_prefix": "riverbend",
             "auth": {"method": "password", "credentials_ref": "env:RIVERBEND"}, "phase": "sandbox"}
    other = {**entry, "practice_id": "pain-2002", "called_numbers": ["+15125550101"], "firm_url_prefix": "other"}
    path.write_text(yaml.safe_dump({"practices": [entry, other]}, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def runs(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "data")


def record(runs: RunStore, *, passed: int = 80, scenarios: int = 80, sha: str = MIRROR_SHA, version: str = VERSION,
           at: datetime = NOW - timedelta(hours=1), practice: str = "pain-2001") -> CheckRun:
    run = CheckRun(run_id=str(uuid.uuid4()), finished_at=at, practices=(practice,), mirror_sha256=sha,
                   code_version=version, scenarios=scenarios, passed=passed,
                   failed=tuple(f"{practice}/s{i}" for i in range(scenarios - passed)))
    runs.record_run(run)
    return run


def request(tenants_file: Path, target: GoLivePhase, **changes: object) -> PromotionRequest:
    values: dict = {"practice_id": "pain-2001", "target": target, "tenants_file": tenants_file,
                    "mirror_sha256": MIRROR_SHA, "code_version": VERSION, "promoted_by": "ops@riverbend", "now": NOW,
                    "min_read_only": WEEK}
    values.update(changes)
    return PromotionRequest(**values)  # type: ignore[arg-type]


def set_phase(tenants_file: Path, phase: str) -> None:
    data = yaml.safe_load(tenants_file.read_text())
    data["practices"][0]["phase"] = phase
    tenants_file.write_text(yaml.safe_dump(data, sort_keys=False))


def assert_refused(tenants_file: Path, runs: RunStore, req: PromotionRequest, fragment: str, **gate: object) -> None:
    before = tenants_file.read_bytes()
    with pytest.raises(PromotionRefused) as refused:
        promote(req, runs, **gate)  # type: ignore[arg-type]
    assert fragment in str(refused.value) and "\n" not in str(refused.value)
    assert tenants_file.read_bytes() == before and runs.promotions() == []


def test_refused_without_any_check_run(tenants_file: Path, runs: RunStore) -> None:
    record(runs, practice="pain-2002")  # another practice's green run does not count
    assert_refused(tenants_file, runs, request(tenants_file, GoLivePhase.READ_ONLY), "no go-live check has run for pain-2001")


def test_refused_when_the_latest_run_is_red_even_after_an_older_green_one(tenants_file: Path, runs: RunStore) -> None:
    record(runs, at=NOW - timedelta(days=1))
    record(runs, passed=78)
    assert_refused(tenants_file, runs, request(tenants_file, GoLivePhase.READ_ONLY), "78 of 80 scenarios passed")


def test_refused_when_the_mirror_changed_since_the_green_run(tenants_file: Path, runs: RunStore) -> None:
    record(runs)
    assert_refused(tenants_file, runs, request(tenants_file, GoLivePhase.READ_ONLY, mirror_sha256="b" * 64),
                   "ran another mirror")


def test_refused_when_the_code_changed_since_the_green_run(tenants_file: Path, runs: RunStore) -> None:
    record(runs)
    assert_refused(tenants_file, runs, request(tenants_file, GoLivePhase.READ_ONLY, code_version="f" * 40),
                   f"ran code {VERSION}")


def test_refused_to_skip_read_only_or_to_stay(tenants_file: Path, runs: RunStore) -> None:
    record(runs)
    assert_refused(tenants_file, runs, request(tenants_file, GoLivePhase.WRITE), "can only move to read_only",
                   history=QUIET)
    set_phase(tenants_file, "read_only")
    assert_refused(tenants_file, runs, request(tenants_file, GoLivePhase.READ_ONLY), "already in the read_only phase")


def test_write_refused_without_enough_read_only_time(tenants_file: Path, runs: RunStore) -> None:
    record(runs)
    set_phase(tenants_file, "read_only")
    young = ReadOnlyHistory(since=NOW - timedelta(hours=30), calls=12, anomalies={})
    assert_refused(tenants_file, runs, request(tenants_file, GoLivePhase.WRITE), "30.0 h of read-only traffic",
                   history=young)
    assert_refused(tenants_file, runs, request(tenants_file, GoLivePhase.WRITE), "no read-only traffic",
                   history=ReadOnlyHistory(None, 0, {}))


def test_write_refused_after_a_guard_anomaly_or_with_alarms_unwired(tenants_file: Path, runs: RunStore) -> None:
    record(runs)
    set_phase(tenants_file, "read_only")
    anomalous = ReadOnlyHistory(since=QUIET.since, calls=40, anomalies={"controlled-substance requests not escalated": 1})
    assert_refused(tenants_file, runs, request(tenants_file, GoLivePhase.WRITE),
                   "1 controlled-substance requests not escalated", history=anomalous)
    assert_refused(tenants_file, runs, request(tenants_file, GoLivePhase.WRITE), "sentinel alarms not wired",
                   history=QUIET, unwired=("rules.yaml has no GuardrailBypassAttempt alert",))


def test_accepted_promotions_write_the_phase_and_record_who_and_when(tenants_file: Path, runs: RunStore) -> None:
    run = record(runs)
    promotion = promote(request(tenants_file, GoLivePhase.READ_ONLY), runs)
    directory = load_tenant_directory(tenants_file)
    assert directory["pain-2001"].phase.value == "read_only" and directory["pain-2002"].phase.value == "sandbox"
    assert (promotion.phase_from, promotion.phase_to, promotion.promoted_by) == ("sandbox", "read_only", "ops@riverbend")
    assert promotion.promoted_at == NOW and promotion.run_id == run.run_id

    promote(request(tenants_file, GoLivePhase.WRITE, promoted_by="sre@riverbend"), runs, history=QUIET,
            unwired=unwired_alarms())
    assert load_tenant_directory(tenants_file)["pain-2001"].phase.value == "write"
    assert [(p.phase_to, p.promoted_by) for p in RunStore(runs.directory.parent).promotions()] == [
        ("read_only", "ops@riverbend"), ("write", "sre@riverbend")]


def test_the_charts_rules_and_values_wire_the_sentinel_alarms(tmp_path: Path) -> None:
    assert unwired_alarms() == ()
    rules = yaml.safe_load(DEFAULT_RULES.read_text())
    manifest = tmp_path / "prometheusrule.yaml"
    manifest.write_text(yaml.safe_dump({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                                        "spec": rules}))
    assert unwired_alarms(manifest) == ()
    for group in rules["groups"]:
        group["rules"] = [r for r in group["rules"] if r.get("alert") != "GuardrailBypassAttempt"]
    partial = tmp_path / "rules.yaml"
    partial.write_text(yaml.safe_dump(rules))
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"prometheusRule": {"enabled": False}, "serviceMonitor": {"labels": {"a": "b"}}}))
    problems = unwired_alarms(partial, values)
    assert any("no GuardrailBypassAttempt alert" in p for p in problems)
    assert any("prometheusRule.enabled is not true" in p for p in problems)
    assert not any("serviceMonitor" in p for p in problems)  # the chart's default (enabled) still holds under a merge
    assert DEFAULT_VALUES.is_file()


def _audit(practice: str, at: datetime, action: AuditAction, outcome: AuditOutcome = AuditOutcome.SUCCESS,
           call: str = "call-1", **fields: object) -> tuple:
    event = AuditEvent(event_id=uuid.uuid4(), occurred_at=at, practice_id=practice, call_id=call, action=action,
                       outcome=outcome, **fields)  # type: ignore[arg-type]
    return row_from_record(audit_record(event))


def test_read_only_history_comes_from_the_audit_store(clickhouse_client, clickhouse_database: str) -> None:  # type: ignore[no-untyped-def]
    store = AuditStore(clickhouse_client, clickhouse_database)
    store.migrate()
    now = datetime.now(UTC)
    reply = AuditAction.REPLY_SENT
    store.insert([
        _audit("pain-2001", now - timedelta(days=12), reply, detail={"phase": "sandbox", "template": "OFFER_SLOTS"}),
        _audit("pain-2001", now - timedelta(days=9), reply, call="c-a", detail={"phase": "read_only"}),
        _audit("pain-2001", now - timedelta(days=2), reply, call="c-b", detail={"phase": "read_only"}),
        _audit("pain-2001", now - timedelta(days=2), AuditAction.REVIEW_QUEUED, AuditOutcome.QUEUED, call="c-b"),
        _audit("pain-2002", now - timedelta(days=1), AuditAction.ESCALATION, AuditOutcome.FAILURE),
    ])
    history = read_only_history(store, "pain-2001")
    assert history.calls == 2 and not any(history.anomalies.values())
    assert history.since is not None and abs(history.since.replace(tzinfo=UTC) - (now - timedelta(days=9))) < timedelta(seconds=1)

    store.insert([_audit("pain-2001", now - timedelta(days=1), AuditAction.ESCALATION, AuditOutcome.FAILURE, call="c-c"),
                  _audit("pain-2001", now - timedelta(hours=5), AuditAction.FHIR_WRITE, call="c-d",
                         resource_type="Appointment", command="BOOK_APPOINTMENT")])
    anomalies = read_only_history(store, "pain-2001").anomalies
    assert anomalies["controlled-substance requests not escalated"] == 1
    assert anomalies["ModMed writes while writes were queued"] == 1

    store.insert([_audit("pain-2001", now - timedelta(hours=1), reply, call="c-e", detail={"phase": "write"})])
    assert read_only_history(store, "pain-2001") == ReadOnlyHistory(None, 0, {})


def test_the_cli_refuses_with_one_line_and_exit_status_1(tenants_file: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CALLSTREAM_DATA_DIR", str(tmp_path / "data"))
    mirror = tmp_path / "mirror.yaml"
    mirror.write_text("practices: []\n")
    status = golive_cli.main(["promote", "pain-2001", "--to", "read_only", "--tenants", str(tenants_file),
                              "--mirror", str(mirror), "--by", "ops"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and err == ("callstream: refused: no go-live check has run for pain-2001: "
                                   "run `callstream golive check --practice pain-2001`")
    assert sha256_file(mirror) != MIRROR_SHA


@pytest.mark.broker
def test_guard_alarms_fired_since_read_only_began_are_anomalies(kafka_bootstrap: str) -> None:
    ensure_topics(kafka_bootstrap, [(ALARMS, topic_named(ALARMS).partitions)])
    practice, now = f"pain-{uuid.uuid4().hex[:8]}", datetime.now(UTC)
    serde = AvroSerde.for_topic(topic_named(ALARMS))

    def alarm(kind: str, state: str, days_ago: float, of: str = practice) -> Alarm:
        at = now - timedelta(days=days_ago)
        return Alarm(alarm_id=uuid.uuid4(), practice_id=of, kind=kind, state=state, value=0.9, threshold=1.0,
                     window_start=at - timedelta(minutes=1), window_end=at, raised_at=at)  # type: ignore[arg-type]

    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for record in (alarm("CS_ESCALATION_RATE", "FIRING", 1), alarm("CS_ESCALATION_RATE", "CLEARED", 0.9),
                   alarm("GUARDRAIL_BYPASS", "FIRING", 2), alarm("WRITE_SUCCESS_DRIFT", "FIRING", 20),
                   alarm("CS_ESCALATION_RATE", "FIRING", 1, of="pain-other")):
        producer.produce(ALARMS, key=record.practice_id.encode(), value=serde.encode(record.to_avro()))
    assert producer.flush(10) == 0
    fired = fired_guard_alarms(kafka_bootstrap, practice, since=now - timedelta(days=10))
    assert fired == {"CS_ESCALATION_RATE": 1, "WRITE_SUCCESS_DRIFT": 0}
    history = QUIET.with_alarms(fired)
    assert history.anomalies["CS_ESCALATION_RATE alarms"] == 1
    assert "1 CS_ESCALATION_RATE alarms" in str(refusal("pain-2001", GoLivePhase.READ_ONLY, GoLivePhase.WRITE,
                                                        _green_run(), MIRROR_SHA, VERSION, NOW, history=history))


def _green_run() -> CheckRun:
    return CheckRun(run_id="r", finished_at=NOW, practices=("pain-2001",), mirror_sha256=MIRROR_SHA,
                    code_version=VERSION, scenarios=96, passed=96)


@pytest.mark.broker
def test_the_cli_promotes_to_write_from_the_audit_store_and_the_alarms(  # type: ignore[no-untyped-def]
        kafka_bootstrap: str, clickhouse_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    ensure_topics(kafka_bootstrap, [(ALARMS, topic_named(ALARMS).partitions)])
    practice, now = f"pain-{uuid.uuid4().hex[:8]}", datetime.now(UTC)
    for name, value in (("CALLSTREAM_DATA_DIR", str(tmp_path / "data")), ("CLICKHOUSE_DSN", clickhouse_dsn),
                        ("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)):
        monkeypatch.setenv(name, value)
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(yaml.safe_dump({"practices": [{
        "practice_id": practice, "name": "Riverbend", "called_numbers": ["+15125550100"], "phase": "read_only",
        "base_url": "https://mmi.example", "firm_url_prefix": "riverbend",
        "auth": {"method": "password", "credentials_ref": "env:RIVERBEND"}}]}))
    mirror = tmp_path / "mirror.yaml"
    mirror.write_text("practices: []\n")
    store = AuditStore.open(clickhouse_dsn)
    store.migrate()
    store.insert([_audit(practice, now - timedelta(days=3), AuditAction.REPLY_SENT, call=f"c-{i}",
                         detail={"phase": "read_only"}) for i in range(3)])
    RunStore(tmp_path / "data").record_run(CheckRun(
        run_id="green", finished_at=now, practices=(practice,), mirror_sha256=sha256_file(mirror),
        code_version=code_version(), scenarios=96, passed=96))
    arguments = ["promote", practice, "--to", "write", "--tenants", str(tenants), "--mirror", str(mirror), "--by", "sre"]

    assert golive_cli.main(arguments) == 1  # 168 h needed by default, 72 h served
    assert "h of read-only traffic (3 calls), needs 168.0 h" in capsys.readouterr().err

    assert golive_cli.main([*arguments, "--min-read-only-hours", "48"]) == 0
    assert load_tenant_directory(tenants)[practice].phase.value == "write"
    [promotion] = RunStore(tmp_path / "data").promotions()
    assert (promotion.practice_id, promotion.phase_to, promotion.promoted_by) == (practice, "write", "sre")
