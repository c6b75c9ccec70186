"""`callstream golive promote P --to read_only|write`: the phase gate.

A practice moves sandbox → read_only → write, one step at a time, and only when:
- its latest go-live check (``runs``) passed every scenario, on the mirror file the practice has now (same
  SHA-256) and on the code version that runs now;
- for write, additionally: at least the configured time of read-only traffic in the audit store (REPLY_SENT
  records of the practice in the read_only phase since it last answered in another phase) with no guard
  anomaly in it (a controlled-substance request not escalated, a ModMed write while writes were to be
  queued, a write to a forbidden resource type, a CS_ESCALATION_RATE or WRITE_SUCCESS_DRIFT alarm fired by
  the drift detector), and the sentinel alarms wired in the deployment: the
  alert rules it ships hold the three sentinel alerts on the drift detector's alarm state, and its values
  enable the PrometheusRule and the ServiceMonitor that feeds it.

`refusal()` decides from plain values (pure); the rest gathers them and applies an accepted promotion: the
phase is written into the tenant directory file (the field `phase`, as the worker reads it) and the
promotion, with who and when, into ``<data_dir>/golive/promotions.jsonl``.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from callstream.errors import ConfigError, ServiceUnavailableError
from callstream.tenants import GoLivePhase, parse_tenant_directory
from golive.runs import CheckRun, Promotion, RunStore

NEXT_PHASE: dict[GoLivePhase, GoLivePhase] = {GoLivePhase.SANDBOX: GoLivePhase.READ_ONLY,
                                              GoLivePhase.READ_ONLY: GoLivePhase.WRITE}
SENTINEL_ALERTS: dict[str, str] = {
    "WriteSuccessDrift": "WRITE_SUCCESS_DRIFT",
    "ControlledSubstanceEscalationBelow100": "CS_ESCALATION_RATE",
    "GuardrailBypassAttempt": "GUARDRAIL_BYPASS",
}
"""Alert name → the drift detector's alarm kind its expression must read (callstream_alarm_state{kind=...})."""
CHART_DIR = Path(__file__).resolve().parents[1] / "helm" / "callstream"
DEFAULT_RULES = CHART_DIR / "files" / "rules.yaml"
DEFAULT_VALUES = CHART_DIR / "values.yaml"
DEFAULT_MIN_READ_ONLY = timedelta(days=7)


@dataclass(frozen=True)
class ReadOnlyHistory:
    """The practice's read-only traffic, from the audit store."""

    since: datetime | None
    """First read-only answer after its last answer in another phase (None: no read-only traffic)."""
    calls: int
    anomalies: dict[str, int]
    """Guard anomaly → records since ``since``."""

    def with_alarms(self, fired: dict[str, int]) -> ReadOnlyHistory:
        """The history with the drift detector's guard alarms (``fired_guard_alarms``) among its anomalies."""
        return ReadOnlyHistory(self.since, self.calls, {**self.anomalies, **{f"{kind} alarms": n for kind, n in fired.items()}})


def refusal(practice_id: str, current: GoLivePhase, target: GoLivePhase, run: CheckRun | None, mirror_sha256: str,
            version: str, now: datetime, *, history: ReadOnlyHistory | None = None,
            min_read_only: timedelta = DEFAULT_MIN_READ_ONLY, unwired_alarms: tuple[str, ...] = ()) -> str | None:
    """The one-line reason the promotion is refused, or None when every condition holds."""
    if current is target:
        return f"{practice_id} is already in the {target.value} phase"
    if NEXT_PHASE.get(current) is not target:
        return f"{practice_id} is in the {current.value} phase: it can only move to {NEXT_PHASE[current].value}" \
            if current in NEXT_PHASE else f"{practice_id} is in the {current.value} phase: there is no later phase"
    if run is None:
        return f"no go-live check has run for {practice_id}: run `callstream golive check --practice {practice_id}`"
    if not run.green:
        return (f"the latest go-live check of {practice_id} ({run.finished_at:%Y-%m-%d %H:%M} UTC) did not pass: "
                f"{run.passed} of {run.scenarios} scenarios passed")
    if run.mirror_sha256 != mirror_sha256:
        return (f"the latest green check of {practice_id} ran another mirror (sha256 {run.mirror_sha256[:12]}, the "
                f"practice's mirror is now {mirror_sha256[:12]}): check again")
    if run.code_version != version:
        return f"the latest green check of {practice_id} ran code {run.code_version}, this is {version}: check again"
    if target is GoLivePhase.WRITE:
        if history is None or history.since is None or history.calls == 0:
            return f"{practice_id} has no read-only traffic in the audit store"
        served = now - history.since
        if served < min_read_only:
            return (f"{practice_id} has {_hours(served)} of read-only traffic ({history.calls} calls), "
                    f"needs {_hours(min_read_only)}")
        if any(history.anomalies.values()):
            found = ", ".join(f"{count} {name}" for name, count in sorted(history.anomalies.items()) if count)
            return f"{practice_id} had guard anomalies during read-only: {found}"
        if unwired_alarms:
            return f"sentinel alarms not wired for the deployment: {'; '.join(unwired_alarms)}"
    return None


def _hours(span: timedelta) -> str:
    return f"{span.total_seconds() / 3600:.1f} h"


# ------------------------------------------------------------------------------------------ gathering


def read_only_history(store: Any, practice_id: str) -> ReadOnlyHistory:
    """From the audit store (sinks.clickhouse_store.AuditStore): when the practice's read-only traffic began,
    how many calls it answered since, and the guard anomalies among its records since then."""
    table = f"{store.database}.audit_events"
    params = {"practice": practice_id}
    other = store.client.query(
        f"SELECT max(occurred_at) FROM {table} FINAL WHERE practice_id = {{practice:String}} "
        "AND action = 'REPLY_SENT' AND detail['phase'] IN ('sandbox', 'write')", parameters=params).result_rows
    last_other = other[0][0] if other and other[0][0] and other[0][0].year > 1970 else None
    after = "AND occurred_at > {after:DateTime64(3, 'UTC')}" if last_other is not None else ""
    if last_other is not None:
        params["after"] = last_other
    rows = store.client.query(
        f"SELECT min(occurred_at), uniqExact(call_id) FROM {table} FINAL WHERE practice_id = {{practice:String}} "
        f"AND action = 'REPLY_SENT' AND detail['phase'] = 'read_only' {after}", parameters=params).result_rows
    since, calls = (rows[0] if rows else (None, 0))
    if not calls:
        return ReadOnlyHistory(None, 0, {})
    since = since.replace(tzinfo=UTC) if since.tzinfo is None else since  # chDB returns UTC without a zone
    params["since"] = since
    anomalies = store.client.query(
        f"""SELECT
              countIf(action = 'ESCALATION' AND outcome = 'FAILURE'),
              countIf(action IN ('FHIR_WRITE', 'EMA_WRITE') AND outcome = 'SUCCESS' AND call_id != ''),
              countIf(action IN ('FHIR_WRITE', 'EMA_WRITE') AND resource_type IN ('MedicationRequest', 'MedicationStatement'))
            FROM {table} FINAL WHERE practice_id = {{practice:String}} AND occurred_at >= {{since:DateTime64(3, 'UTC')}}""",
        parameters=params).result_rows[0]
    names = ("controlled-substance requests not escalated", "ModMed writes while writes were queued",
             "writes to forbidden resource types")
    return ReadOnlyHistory(since, int(calls), dict(zip(names, map(int, anomalies), strict=True)))


GUARD_ALARMS = ("CS_ESCALATION_RATE", "WRITE_SUCCESS_DRIFT")
"""Drift-detector alarms that mean a guard's promise slipped (a controlled-substance request not escalated, writes
failing); a GUARDRAIL_BYPASS alarm is a caller's attempt the guards held, so it does not count."""


def fired_guard_alarms(bootstrap: str, practice_id: str, since: datetime, timeout_s: float = 15.0) -> dict[str, int]:
    """FIRING transitions of the guard alarms for the practice on callstream.alarms.v1 since ``since`` (the
    topic keeps 30 days): read from the start of every partition to its end as of now."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from schemas.errors import SchemaError
    from schemas.models import Alarm
    from schemas.serde import AvroSerde
    from schemas.topics import ALARMS, topic_named

    topic = topic_named(ALARMS)
    serde = AvroSerde.for_topic(topic)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"callstream-golive-gate-{os.getpid()}",
                         "enable.auto.commit": False, "log.connection.close": False})
    fired = {kind: 0 for kind in GUARD_ALARMS}
    try:
        try:
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic.name, p), timeout=timeout_s)[1]
                    for p in range(topic.partitions)}
        except KafkaException:
            raise ServiceUnavailableError(f"cannot read the drift alarms on {ALARMS} at {bootstrap}") from None
        consumer.assign([TopicPartition(topic.name, p, 0) for p, end in ends.items() if end > 0])
        remaining = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            if message.offset() + 1 >= ends[message.partition()]:
                remaining.discard(message.partition())
            try:
                alarm = Alarm.from_avro(serde.decode(message.value()))
            except SchemaError:
                continue  # not an alarm this reader can judge; the sinks dead-letter it
            if (alarm.practice_id == practice_id and alarm.state.value == "FIRING" and alarm.raised_at >= since
                    and alarm.kind.value in fired):
                fired[alarm.kind.value] += 1
        if remaining:
            raise ServiceUnavailableError(f"the drift alarms on {ALARMS} were not read to their end in {timeout_s:.0f} s")
    finally:
        consumer.close()
    return fired


def unwired_alarms(rules_file: Path = DEFAULT_RULES, values_file: Path = DEFAULT_VALUES) -> tuple[str, ...]:
    """What is missing for the sentinel alarms to page in the deployment described by these files: the alert
    rules it ships (a rules file or a PrometheusRule manifest) and its Helm values."""
    problems = []
    rules = _yaml(rules_file)
    groups = (rules.get("spec") or {}).get("groups") if rules.get("kind") == "PrometheusRule" else rules.get("groups")
    alerts = {rule.get("alert"): str(rule.get("expr", "")) for group in groups or [] for rule in group.get("rules", [])
              if isinstance(rule, dict)}
    for name, kind in SENTINEL_ALERTS.items():
        if name not in alerts:
            problems.append(f"{rules_file} has no {name} alert")
        elif f'kind="{kind}"' not in alerts[name] or "callstream_alarm_state" not in alerts[name]:
            problems.append(f"{rules_file}: {name} does not read callstream_alarm_state{{kind=\"{kind}\"}}")
    values = _merged(_yaml(DEFAULT_VALUES), _yaml(values_file))
    for key in ("prometheusRule", "serviceMonitor"):
        if not (values.get(key) or {}).get("enabled", False):
            problems.append(f"{values_file}: {key}.enabled is not true")
    return tuple(problems)


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of a values file over the chart's defaults (maps merge key by key, the rest replaces)."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merged(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read it as YAML ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping")
    return data


def current_phase(tenants_file: Path, practice_id: str) -> GoLivePhase:
    directory = parse_tenant_directory(_yaml(tenants_file), str(tenants_file))
    if practice_id not in directory:
        raise ConfigError(f"{tenants_file}: no practice {practice_id}")
    return GoLivePhase(directory[practice_id].phase.value)


def write_phase(tenants_file: Path, practice_id: str, phase: GoLivePhase) -> None:
    """Set the practice's ``phase`` in the directory file (other entries untouched), validated, then replaced
    atomically so a worker never reads half a file."""
    data = _yaml(tenants_file)
    entries = [e for e in data.get("practices", []) if isinstance(e, dict) and e.get("practice_id") == practice_id]
    if len(entries) != 1:
        raise ConfigError(f"{tenants_file}: no single entry for practice {practice_id}")
    entries[0]["phase"] = phase.value
    parse_tenant_directory(data, str(tenants_file))
    descriptor, temporary = tempfile.mkstemp(dir=tenants_file.parent, prefix=f".{tenants_file.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            yaml.safe_dump(data, handle, sort_keys=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, tenants_file.stat().st_mode & 0o777)
        os.replace(temporary, tenants_file)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class PromotionRequest:
    practice_id: str
    target: GoLivePhase
    tenants_file: Path
    mirror_sha256: str
    code_version: str
    promoted_by: str
    now: datetime
    min_read_only: timedelta = DEFAULT_MIN_READ_ONLY


def promote(request: PromotionRequest, runs: RunStore, *, history: ReadOnlyHistory | None = None,
            unwired: tuple[str, ...] = ()) -> Promotion:
    """Apply the promotion if the gate lets it through; raises PromotionRefused with the one-line reason."""
    current = current_phase(request.tenants_file, request.practice_id)
    run = runs.latest_run_for(request.practice_id)
    reason = refusal(request.practice_id, current, request.target, run, request.mirror_sha256, request.code_version,
                     request.now, history=history, min_read_only=request.min_read_only, unwired_alarms=unwired)
    if reason is not None:
        raise PromotionRefused(reason)
    assert run is not None
    promotion = Promotion(practice_id=request.practice_id, phase_from=current.value, phase_to=request.target.value,
                          promoted_by=request.promoted_by, promoted_at=request.now, run_id=run.run_id,
                          code_version=request.code_version, mirror_sha256=request.mirror_sha256)
    write_phase(request.tenants_file, request.practice_id, request.target)
    runs.record_promotion(promotion)
    return promotion


class PromotionRefused(ConfigError):
    """The gate refused: one line naming the unmet condition."""
