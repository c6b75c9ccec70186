"""The ClickHouse audit store: versioned DDL, a pure row processor, batched inserts, per-call reads.

Design choices, and why:

- ``audit_events`` is a ReplacingMergeTree ordered by ``(practice_id, call_id, event_id)``.
  ReplacingMergeTree collapses rows with equal sorting keys, so the key must be a function of the
  event id alone: practice and call are attributes of the event, never of its delivery, so a
  redelivered event always lands on the same key. ``occurred_at`` is deliberately not in the key
  (a producer that re-stamps an event on retry would otherwise create a second row); per-call
  ordering by time is done at read time, cheap for the tens of rows of one call.
- Partitioned by month of ``occurred_at`` (retention drops whole partitions; a redelivered event
  has the same timestamp, so duplicates always share a partition and do collapse).
- A bloom-filter skip index on ``call_id`` answers ``callstream audit call CALL_ID`` without the
  practice id; per-practice queries use the primary key prefix.
- De-duplication happens at merge time, so every read uses FINAL: duplicates never show.
- Migrations are an ordered list in code recorded in ``schema_migrations``; a database whose
  schema is newer than this build is refused rather than written with an old row shape.
- On a cluster (``CLICKHOUSE_CLUSTER``), each table is a Replicated local table ``<table>_local`` created
  ON CLUSTER with a Distributed table of the original name over it, sharded so that rows that must
  collapse (one event, one review item) share a shard; reads and writes keep using the original name.
  Inserts wait for the shards (``insert_distributed_sync``), so a read after a write sees it.

`AuditRowProcessor` (bytes → row or typed rejection) has no I/O so it can be tested on bytes; the
Kafka loop in sinks/consumer.py is thin wiring around it and `AuditStore.insert`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Self
from urllib.parse import urlsplit

from callstream.devstack import open_clickhouse
from callstream.errors import CallstreamError, ConfigError
from callstream.settings import redact_dsn
from guards.model import VisitReason
from guards.replies import INTERIM_TEMPLATES, ReplyTemplate, ReplyValues, outline_reply
from schemas.errors import SchemaError
from sinks.kafka_io import AuditDecoder
from sinks.payload import AuditRecord, audit_record

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

# The driver logs encoding and streaming failures with tracebacks that quote the offending value (a row
# field: possibly PHI). The store raises those failures itself, described by error class or code only.
for _driver_logger in ("transform", "rustcodec", "streaming"):
    logging.getLogger(f"clickhouse_connect.driver.{_driver_logger}").setLevel(logging.CRITICAL)

DEFAULT_DATABASE = "callstream"
AUDIT_TABLE = "audit_events"
MIGRATIONS_TABLE = "schema_migrations"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
CLUSTER_ENV = "CLICKHOUSE_CLUSTER"
_CREATE_TABLE = re.compile(
    r"\s*CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)\s*(\(.*\))\s*ENGINE = (\w*MergeTree)(?:\(([^)]*)\))?(.*)\Z", re.DOTALL)
_ALTER_ADD_COLUMNS = re.compile(r"\s*ALTER TABLE (\w+)\.(\w+)\s+(ADD COLUMN IF NOT EXISTS .*?)\s*\Z", re.DOTALL)

INSERT_COLUMNS: tuple[str, ...] = (
    "event_id", "occurred_at", "practice_id", "call_id", "caller_number", "action", "outcome", "state_from",
    "state_to", "resource_type", "resource_ids", "ema_deep_link", "task_refs", "transcript_ref", "guards_fired",
    "command", "error_class", "latency_ms", "detail", "redactions", "guard_action", "dialogue_path", "slot_id",
)
AuditRow = tuple[Any, ...]
"""One row in INSERT_COLUMNS order."""


class StoreUnavailableError(CallstreamError):
    """ClickHouse refused or could not take a write or read; the caller keeps the data and retries."""


class AmbiguousCallError(CallstreamError):
    """A call id matched records of more than one practice; the caller must say which practice."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: statements run in order, each idempotent (IF NOT EXISTS) so a crash
    between a statement and its bookkeeping row is safe to re-run."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="audit_events: ReplacingMergeTree de-duplicated on event id, monthly partitions",
        statements=(
            """
            CREATE TABLE IF NOT EXISTS {database}.audit_events
            (
                event_id UUID,
                occurred_at DateTime64(3, 'UTC'),
                practice_id LowCardinality(String),
                call_id String COMMENT 'empty for steps outside a call: sorting keys cannot be Nullable',
                caller_number Nullable(String) COMMENT 'PHI (E.164), kept for reconciliation as the seeds list',
                action LowCardinality(String),
                outcome LowCardinality(String),
                state_from LowCardinality(Nullable(String)),
                state_to LowCardinality(Nullable(String)),
                resource_type LowCardinality(Nullable(String)),
                resource_ids Array(String),
                ema_deep_link Nullable(String),
                task_refs Array(String),
                transcript_ref Nullable(String),
                guards_fired Array(LowCardinality(String)),
                command LowCardinality(Nullable(String)),
                error_class LowCardinality(Nullable(String)),
                latency_ms Nullable(Float64),
                detail Map(LowCardinality(String), String),
                redactions Array(LowCardinality(String)),
                ingested_at DateTime64(3, 'UTC') DEFAULT now64(3),
                INDEX call_id_bloom call_id TYPE bloom_filter(0.01) GRANULARITY 4
            )
            ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(occurred_at)
            ORDER BY (practice_id, call_id, event_id)
            """,
        ),
    ),
    Migration(
        version=2,
        description="audit_events: guard_action and dialogue_path of guard hits, slot_id of booking steps",
        statements=(
            """
            ALTER TABLE {database}.audit_events
                ADD COLUMN IF NOT EXISTS guard_action LowCardinality(Nullable(String)),
                ADD COLUMN IF NOT EXISTS dialogue_path LowCardinality(Nullable(String)),
                ADD COLUMN IF NOT EXISTS slot_id Nullable(String)
            """,
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message cannot become a row; the consumer dead-letters it (retrying cannot help)."""

    reason: str
    error_class: str


def row_from_record(record: AuditRecord) -> AuditRow:
    """The insert row of a scrubbed audit record, in INSERT_COLUMNS order."""
    return (
        record.event_id,
        record.occurred_at,
        record.practice_id,
        record.call_id or "",
        record.caller_number,
        record.action,
        record.outcome,
        record.state_from,
        record.state_to,
        record.resource_type,
        list(record.resource_ids),
        record.ema_deep_link,
        list(record.task_refs),
        record.transcript_ref,
        list(record.guards_fired),
        record.command,
        record.error_class,
        record.latency_ms,
        dict(record.detail),
        list(record.redactions),
        record.guard_action,
        record.dialogue_path,
        record.slot_id,
    )


class AuditRowProcessor:
    """Message value → insert row, or a Rejection naming the problem without any field value."""

    def __init__(self, decoder: AuditDecoder | None = None) -> None:
        self._decoder = decoder or AuditDecoder()

    def process(self, value: bytes | None) -> AuditRow | Rejection:
        """SchemaRegistryError propagates: the registry being down is not the message's fault."""
        try:
            event = self._decoder.decode(value)
        except SchemaError as exc:
            return Rejection(reason=f"not a valid audit event: {exc}", error_class=type(exc).__name__)
        return row_from_record(audit_record(event))


@dataclass(frozen=True, slots=True)
class StateTransition:
    """A call state change with its timestamp (the seeds: "timestamps for every state transition")."""

    at: datetime
    state_from: str | None
    state_to: str | None


@dataclass(frozen=True, slots=True)
class TaskReference:
    """A provider task with the transcript reference the provider needs for context."""

    at: datetime
    task_ref: str
    transcript_ref: str | None


@dataclass(frozen=True, slots=True)
class GuardHit:
    """Which guardrail fired, what it truly did and which dialogue path it acted on (blocked, when
    ``guard_action`` is BLOCKED or ROUTED)."""

    at: datetime
    guard: str
    action: str
    outcome: str
    command: str | None
    guard_action: str | None = None
    dialogue_path: str | None = None


@dataclass(frozen=True, slots=True)
class QueuedWrite:
    """A write handed to the review queue, with what it targets: the appointment of a reschedule or cancel,
    the slot the caller chose."""

    at: datetime
    command: str | None
    reason: str | None
    resource_type: str | None
    resource_ids: tuple[str, ...]
    slot_id: str | None


@dataclass(frozen=True, slots=True)
class HeardReply:
    """A reply the caller heard: its template and its wording rebuilt from the audit record (times are not
    recorded, so ``unknown_values`` names the placeholders left as bracketed markers in ``text``)."""

    at: datetime
    template: str
    text: str | None
    """None for a template this build does not know (a newer worker wrote the record)."""
    interim: bool = False
    """A hold message (guards.replies.INTERIM_TEMPLATES): the turn's answer followed it."""
    unknown_values: tuple[str, ...] = ()


def heard_reply(at: datetime, template: str, visit_reason: str | None) -> HeardReply:
    """Rebuild a REPLY_SENT record's wording with the closed template set (guards.replies)."""
    try:
        known = ReplyTemplate(template)
    except ValueError:
        return HeardReply(at, template, None)
    try:
        values = ReplyValues(visit_reason=VisitReason(visit_reason) if visit_reason else None)
    except ValueError:  # a visit reason this build does not know: spoken as unknown
        values = ReplyValues()
    text, unknown = outline_reply(known, values)
    return HeardReply(at, template, text, known in INTERIM_TEMPLATES, unknown)


CALL_SPAN = timedelta(hours=6)
"""How long a call can last at most, for the listing's time window: events of a call that began in the window are
read this far past it (and before it, to see whether it began earlier)."""


@dataclass(frozen=True, slots=True)
class CallSummary:
    """One line of a practice's call list: counts of what the call's audit records say happened."""

    call_id: str
    started_at: datetime
    last_event_at: datetime
    event_count: int
    controlled_substance_requests: int
    escalations_with_task: int
    blocks: int
    bypass_attempts: int
    review_queued: int
    writes_succeeded: int
    writes_failed: int
    dead_lettered: int
    last_state: str | None

    def to_json_dict(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "started_at": _iso(self.started_at), "last_event_at": _iso(self.last_event_at),
                "event_count": self.event_count, "controlled_substance_requests": self.controlled_substance_requests,
                "escalations_with_task": self.escalations_with_task, "blocks": self.blocks,
                "bypass_attempts": self.bypass_attempts, "review_queued": self.review_queued,
                "writes_succeeded": self.writes_succeeded, "writes_failed": self.writes_failed,
                "dead_lettered": self.dead_lettered, "last_state": self.last_state}


SLOT_ROLES = ("offered", "booked", "queued", "failed")
"""How a call touched a Slot: offered to the caller, booked, queued for staff to book, chosen but not booked."""


@dataclass(frozen=True, slots=True)
class CallAuditRecord:
    """What a practice reconciles against the chart for one call (the seeds' audit record)."""

    call_id: str
    practice_id: str
    caller_number: str | None
    first_event_at: datetime
    last_event_at: datetime
    event_count: int
    state_transitions: tuple[StateTransition, ...]
    fhir_resources: Mapping[str, tuple[str, ...]]
    ema_deep_links: tuple[str, ...]
    tasks: tuple[TaskReference, ...]
    transcript_ref: str | None
    guards_fired: tuple[GuardHit, ...]
    outcomes: Mapping[str, int] = field(default_factory=dict)
    slots: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Slot ids by SLOT_ROLES (every one is also under fhir_resources["Slot"])."""
    queued_writes: tuple[QueuedWrite, ...] = ()
    replies: tuple[HeardReply, ...] = ()
    """What the caller heard, in order (interim hold messages included)."""

    def to_json_dict(self) -> dict[str, Any]:
        """The record for `callstream audit call --json`."""
        return {
            "call_id": self.call_id,
            "practice_id": self.practice_id,
            "caller_number": self.caller_number,
            "first_event_at": _iso(self.first_event_at),
            "last_event_at": _iso(self.last_event_at),
            "event_count": self.event_count,
            "state_transitions": [
                {"at": _iso(step.at), "from": step.state_from, "to": step.state_to} for step in self.state_transitions
            ],
            "fhir_resources": {kind: list(ids) for kind, ids in self.fhir_resources.items()},
            "slots": {role: list(ids) for role, ids in self.slots.items()},
            "ema_deep_links": list(self.ema_deep_links),
            "tasks": [
                {"at": _iso(task.at), "task_ref": task.task_ref, "transcript_ref": task.transcript_ref} for task in self.tasks
            ],
            "transcript_ref": self.transcript_ref,
            "guards_fired": [
                {"at": _iso(hit.at), "guard": hit.guard, "action": hit.action, "outcome": hit.outcome, "command": hit.command,
                 "guard_action": hit.guard_action, "dialogue_path": hit.dialogue_path}
                for hit in self.guards_fired
            ],
            "queued_writes": [
                {"at": _iso(item.at), "command": item.command, "reason": item.reason,
                 "resource_type": item.resource_type, "resource_ids": list(item.resource_ids), "slot_id": item.slot_id}
                for item in self.queued_writes
            ],
            "replies": [
                {"at": _iso(reply.at), "template": reply.template, "text": reply.text, "interim": reply.interim,
                 "unknown_values": list(reply.unknown_values)}
                for reply in self.replies
            ],
            "outcomes": dict(self.outcomes),
        }

    def render_text(self) -> str:
        """The human-readable form, one section per item the seeds list."""
        return render_call_text(self.to_json_dict())


def render_call_text(record: Mapping[str, Any]) -> str:
    """`CallAuditRecord.to_json_dict()` as text (also what `callstream audit call` prints from the read API)."""
    lines = [
        f"call {record['call_id']}  (practice {record['practice_id']})",
        f"caller number: {record['caller_number'] or '-'}",
        f"events: {record['event_count']}, {record['first_event_at']} .. {record['last_event_at']}",
        "state transitions:",
        *(f"  {step['at']}  {step['from'] or '-'} -> {step['to'] or '-'}" for step in record["state_transitions"]),
        "FHIR resources touched:",
        *(f"  {kind}: {', '.join(ids)}" for kind, ids in record["fhir_resources"].items()),
        "slots:",
        *(f"  {role}: {', '.join(ids)}" for role, ids in record["slots"].items()),
        "EMA chart links:",
        *(f"  {link}" for link in record["ema_deep_links"]),
        "provider tasks:",
        *(f"  {task['at']}  {task['task_ref']}  transcript {task['transcript_ref'] or '-'}" for task in record["tasks"]),
        f"transcript: {record['transcript_ref'] or '-'}",
        "guards fired:",
        *(_guard_line(hit) for hit in record["guards_fired"]),
        "queued for staff:",
        *(_queued_line(item) for item in record["queued_writes"]),
        "what the caller heard:",
        *(_heard_line(reply) for reply in record.get("replies", ())),
    ]
    return "\n".join(_with_none_marker(lines))


def _guard_line(hit: Mapping[str, Any]) -> str:
    command = f", {hit['command']}" if hit["command"] else ""
    return (f"  {hit['at']}  {hit['guard']}  {hit['guard_action'] or '-'} {hit['dialogue_path'] or '-'}"
            f"  ({hit['action']} {hit['outcome']}{command})")


def _queued_line(item: Mapping[str, Any]) -> str:
    target = f"  {item['resource_type']}: {', '.join(item['resource_ids'])}" if item["resource_ids"] else ""
    slot = f"  slot {item['slot_id']}" if item["slot_id"] else ""
    return f"  {item['at']}  {item['command'] or '-'}  {item['reason'] or '-'}{target}{slot}"


def _heard_line(reply: Mapping[str, Any]) -> str:
    interim = "  (interim)" if reply["interim"] else ""
    wording = reply["text"] or "(wording unknown to this build)"
    return f"  {reply['at']}  {reply['template']}{interim}\n      \"{wording}\""


def _with_none_marker(lines: list[str]) -> list[str]:
    """Print "  (none)" under a section heading that has no entries."""
    marked: list[str] = []
    for index, line in enumerate(lines):
        marked.append(line)
        if line.endswith(":") and (index + 1 == len(lines) or not lines[index + 1].startswith("  ")):
            marked.append("  (none)")
    return marked


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _utc(moment: datetime) -> datetime:
    """chDB returns DateTime64('UTC') values without a zone; they are UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def database_for_dsn(dsn: str, explicit: str | None = None) -> str:
    """The audit database: explicit, else the http(s) DSN's path, else "callstream"."""
    parts = urlsplit(dsn)
    from_path = parts.path.strip("/") if parts.scheme in ("http", "https") else ""
    return validate_identifier(explicit or from_path or DEFAULT_DATABASE)


def validate_identifier(name: str) -> str:
    """Database names are spliced into DDL, so only plain identifiers are accepted."""
    if not _IDENTIFIER.match(name):
        raise ConfigError(f"ClickHouse database name {name[:70]!r} must be letters, digits and underscores")
    return name


def cluster_from_env() -> str | None:
    """The cluster the DDL targets (``CLICKHOUSE_CLUSTER``, as in the server's remote_servers); unset: one node."""
    name = os.environ.get(CLUSTER_ENV, "").strip()
    if name and not _IDENTIFIER.match(name):
        raise ConfigError(f"{CLUSTER_ENV} {name[:70]!r} must be letters, digits and underscores")
    return name or None


def replicated_engine(engine: str, table: str, database: str, arguments: str = "") -> str:
    """``Replicated<engine>`` keeping its arguments, one replica set per shard (``{shard}``, ``{replica}`` macros)."""
    path = f"'/clickhouse/tables/{{shard}}/{database}/{table}', '{{replica}}'"
    return f"Replicated{engine}({', '.join(filter(None, (path, arguments.strip())))})"


def clustered_alter(statement: str, cluster: str) -> tuple[str, str]:
    """A migration's ``ALTER TABLE db.t ADD COLUMN IF NOT EXISTS ...`` on ``cluster``: the Replicated local tables
    first, then the Distributed table over them (which must know the columns to read and insert them).

    Raises:
        ConfigError: the statement is not such an ALTER.
    """
    match = _ALTER_ADD_COLUMNS.match(statement)
    if match is None:
        raise ConfigError("only ALTER TABLE ... ADD COLUMN IF NOT EXISTS migrations can run ON CLUSTER")
    database, table, columns = match.groups()
    return (f"ALTER TABLE {database}.{table}_local ON CLUSTER {cluster} {columns}",
            f"ALTER TABLE {database}.{table} ON CLUSTER {cluster} {columns}")


def clustered_ddl(statement: str, cluster: str, sharding_key: str) -> tuple[str, str]:
    """A migration's ``CREATE TABLE IF NOT EXISTS db.t (...) ENGINE = *MergeTree ...`` as a Replicated
    ``db.t_local`` on every node of ``cluster`` and a Distributed ``db.t`` over it, sharded by ``sharding_key``.

    Raises:
        ConfigError: the statement is not such a CREATE TABLE (nothing else can be made clustered here).
    """
    match = _CREATE_TABLE.match(statement)
    if match is None:
        raise ConfigError("only CREATE TABLE IF NOT EXISTS ... ENGINE = *MergeTree migrations can run ON CLUSTER")
    database, table, columns, engine, arguments, rest = match.groups()
    local = f"{table}_local"
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{local} ON CLUSTER {cluster}\n{columns}\n"
        f"ENGINE = {replicated_engine(engine, local, database, arguments or '')}{rest.rstrip()}",
        f"CREATE TABLE IF NOT EXISTS {database}.{table} ON CLUSTER {cluster} AS {database}.{local} "
        f"ENGINE = Distributed({cluster}, {database}, {local}, {sharding_key})",
    )


class AuditStore:
    """Migrations, inserts and reads of the audit tables in one database."""

    migrations_table = MIGRATIONS_TABLE
    """Where applied versions are recorded; another store in the same database keeps its own (review/store.py)."""
    sharding_keys: ClassVar[dict[str, str]] = {AUDIT_TABLE: "cityHash64(practice_id)"}
    """On a cluster, the shard of each table's rows: a function of what its ReplacingMergeTree collapses on."""

    def __init__(self, client: Client, database: str = DEFAULT_DATABASE, description: str = "ClickHouse",
                 cluster: str | None = None) -> None:
        self.client = client
        self.database = validate_identifier(database)
        self.description = description
        self.cluster = cluster

    @classmethod
    def open(cls, dsn: str, database: str | None = None, cluster: str | None = None) -> Self:
        """Connect by DSN (chdb:// embedded, http(s):// server or cluster endpoint); ``cluster`` makes the DDL
        clustered (see the module docstring)."""
        if cluster and dsn.startswith("chdb://"):
            raise ConfigError(f"{CLUSTER_ENV} needs a ClickHouse server DSN, not embedded chDB")
        return cls(open_clickhouse(dsn), database_for_dsn(dsn, database), redact_dsn(dsn), cluster)

    def ddl(self, statement: str) -> tuple[str, ...]:
        """What one migration statement becomes here: itself on one node, the clustered pair on a cluster."""
        statement = statement.format(database=self.database)
        if self.cluster is None:
            return (statement,)
        alter = _ALTER_ADD_COLUMNS.match(statement)
        if alter is not None and alter.group(2) in self.sharding_keys:
            return clustered_alter(statement, self.cluster)
        match = _CREATE_TABLE.match(statement)
        table = match.group(2) if match else ""
        if table not in self.sharding_keys:
            raise ConfigError(f"no sharding key for table {table or '?'} on cluster {self.cluster}")
        return clustered_ddl(statement, self.cluster, self.sharding_keys[table])

    def migrate(self, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
        """Apply the migrations this database lacks, in order; returns the versions applied now.

        Raises:
            ConfigError: the database already has a schema version this build does not know.
            StoreUnavailableError: ClickHouse failed a statement.
        """
        versions = [migration.version for migration in migrations]
        if versions != sorted(set(versions)):
            raise ConfigError("migration versions must be unique and ascending")
        on_cluster = f" ON CLUSTER {self.cluster}" if self.cluster else ""
        engine = (replicated_engine("ReplacingMergeTree", self.migrations_table, self.database) if self.cluster
                  else "ReplacingMergeTree")
        self._run(f"CREATE DATABASE IF NOT EXISTS {self.database}{on_cluster}")
        # Per shard on a cluster: a node of another shard may find a version unrecorded and re-run its
        # statements, which are idempotent.
        self._run(
            f"CREATE TABLE IF NOT EXISTS {self.database}.{self.migrations_table}{on_cluster} "
            "(version UInt32, description String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
            f"ENGINE = {engine} ORDER BY version"
        )
        applied = set(self.applied_versions())
        newest_known = versions[-1] if versions else 0
        if applied and max(applied) > newest_known:
            raise ConfigError(
                f"{self.description} database {self.database} has audit schema version {max(applied)}, newer than this "
                f"build's {newest_known}; upgrade callstream before running the sink"
            )
        done: list[int] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            for statement in migration.statements:
                for ddl in self.ddl(statement):
                    self._run(ddl)
            self._insert(self.migrations_table, [(migration.version, migration.description)], ("version", "description"))
            done.append(migration.version)
        return done

    def is_initialised(self) -> bool:
        """Whether the audit table exists (reads need no migration rights)."""
        rows = self._query(f"EXISTS TABLE {self.database}.{AUDIT_TABLE}")
        return bool(rows and rows[0][0])

    def applied_versions(self) -> list[int]:
        """Schema versions recorded in this database, ascending."""
        rows = self._query(f"SELECT version FROM {self.database}.{self.migrations_table} FINAL ORDER BY version")
        return [int(row[0]) for row in rows]

    def insert(self, rows: Sequence[AuditRow]) -> None:
        """One batched insert; all or nothing from the caller's point of view (retry the whole batch,
        duplicates collapse on the event id)."""
        if rows:
            self._insert(AUDIT_TABLE, rows, INSERT_COLUMNS)

    def count_events(self, practice_id: str | None = None) -> int:
        """Distinct audit events stored (FINAL: duplicates never count)."""
        where = "WHERE practice_id = {practice_id:String}" if practice_id else ""
        rows = self._query(f"SELECT count() FROM {self.database}.{AUDIT_TABLE} FINAL {where}",
                           {"practice_id": practice_id} if practice_id else {})
        return int(rows[0][0])

    def call_record(self, call_id: str, practice_id: str | None = None) -> CallAuditRecord | None:
        """The per-call audit record, or None when no event of that call is stored.

        Raises:
            AmbiguousCallError: events of the call id belong to several practices and none was named.
        """
        if not call_id or len(call_id) > 128:
            raise ConfigError("call id must be 1-128 characters")
        practice_filter = " AND practice_id = {practice_id:String}" if practice_id else ""
        rows = self._query(
            "SELECT occurred_at, practice_id, caller_number, action, outcome, state_from, state_to, resource_type, "
            "resource_ids, ema_deep_link, task_refs, transcript_ref, guards_fired, command, error_class, guard_action, "
            "dialogue_path, slot_id, detail['operation'], detail['template'], detail['visit_reason'] "
            f"FROM {self.database}.{AUDIT_TABLE} FINAL WHERE call_id = {{call_id:String}}{practice_filter} "
            "ORDER BY occurred_at, event_id",
            {"call_id": call_id, "practice_id": practice_id or ""},
        )
        if not rows:
            return None
        practices = sorted({row[1] for row in rows})
        if len(practices) > 1:
            raise AmbiguousCallError(
                f"call {call_id} has audit events of practices {', '.join(practices)}; name one with --practice"
            )
        return _assemble_call_record(call_id, practices[0], rows)

    def list_calls(self, practice_id: str, since: datetime, until: datetime, limit: int = 100,
                   offset: int = 0) -> tuple[list[CallSummary], int]:
        """The practice's calls whose first event falls in [since, until), oldest first, one page of them, and
        how many there are in all."""
        window = {"practice_id": practice_id, "since": since, "until": until,
                  "lookback": since - CALL_SPAN, "lookahead": until + CALL_SPAN}
        calls = (
            "SELECT call_id, min(occurred_at) AS started, max(occurred_at), count(), "
            "countIf(action = 'ESCALATION' AND detail['trigger'] = 'controlled_substance'), "
            "countIf(action = 'ESCALATION' AND length(task_refs) > 0), "
            "countIf(action = 'GUARD_HIT' AND outcome = 'BLOCKED'), countIf(action = 'BYPASS_ATTEMPT'), "
            "countIf(action = 'REVIEW_QUEUED'), "
            "countIf(action IN ('FHIR_WRITE', 'EMA_WRITE') AND outcome = 'SUCCESS'), "
            "countIf(action IN ('FHIR_WRITE', 'EMA_WRITE') AND outcome = 'FAILURE'), "
            "countIf(action = 'DEAD_LETTER'), "
            "argMaxIf(state_to, occurred_at, action = 'CALL_STATE_TRANSITION') "
            f"FROM {self.database}.{AUDIT_TABLE} FINAL "
            "WHERE practice_id = {practice_id:String} AND call_id != '' "
            "AND occurred_at >= {lookback:DateTime64(3, 'UTC')} AND occurred_at < {lookahead:DateTime64(3, 'UTC')} "
            "GROUP BY call_id "
            "HAVING started >= {since:DateTime64(3, 'UTC')} AND started < {until:DateTime64(3, 'UTC')}"
        )
        total = int(self._query(f"SELECT count() FROM ({calls})", window)[0][0])
        rows = self._query(f"{calls} ORDER BY started, call_id LIMIT {int(limit)} OFFSET {int(offset)}", window)
        return [CallSummary(row[0], _utc(row[1]), _utc(row[2]), *(int(value) for value in row[3:12]), row[12] or None)
                for row in rows], total

    def select(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """A read of this store's tables for a report (digest/); failures as StoreUnavailableError."""
        return self._query(sql, parameters)

    def _run(self, statement: str) -> None:
        try:
            self.client.command(statement)
        except Exception as exc:  # noqa: BLE001 - the driver raises many types; all mean "not applied"
            raise StoreUnavailableError(f"{self.description}: {_describe_failure(exc)}") from None

    def _query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        try:
            return [tuple(row) for row in self.client.query(sql, parameters=dict(parameters or {})).result_rows]
        except Exception as exc:  # noqa: BLE001 - the driver raises many types; all mean "no answer"
            raise StoreUnavailableError(f"{self.description}: {_describe_failure(exc)}") from None

    def _insert(self, table: str, rows: Sequence[tuple[Any, ...]], columns: Sequence[str]) -> None:
        try:
            self.client.insert(f"{self.database}.{table}", list(rows), column_names=list(columns),
                               settings={"insert_distributed_sync": 1} if self.cluster else None)
        except Exception as exc:  # noqa: BLE001 - the driver raises many types; all mean "not stored"
            raise StoreUnavailableError(f"{self.description}: insert into {table} failed: {_describe_failure(exc)}") from None


_CLICKHOUSE_ERROR = re.compile(r"Code: (\d+)\..*\(([A-Z_]+)\)", re.DOTALL)


def _describe_failure(exc: BaseException) -> str:
    """ClickHouse's error code and name, else the driver's exception class.

    Never the message itself: a conversion error can quote a row value, and rows hold PHI.
    """
    match = _CLICKHOUSE_ERROR.search(str(exc))
    if match:
        return f"ClickHouse error {match.group(1)} {match.group(2)}"
    return type(exc).__name__


def _assemble_call_record(call_id: str, practice_id: str, rows: list[tuple[Any, ...]]) -> CallAuditRecord:
    """Fold one call's rows (in time order) into the reconciliation record."""
    caller_number: str | None = None
    transitions: list[StateTransition] = []
    resources: dict[str, list[str]] = {}
    slots: dict[str, list[str]] = {}
    links: list[str] = []
    tasks: dict[str, TaskReference] = {}
    transcript_ref: str | None = None
    guards: list[GuardHit] = []
    queued: list[QueuedWrite] = []
    outcomes: dict[str, int] = {}
    heard: list[HeardReply] = []
    for (occurred_at, _practice, number, action, outcome, state_from, state_to, resource_type, resource_ids, link,
         task_refs, row_transcript_ref, guards_fired, command, error_class, guard_action, dialogue_path, slot_id,
         operation, template, visit_reason) in rows:
        at = _utc(occurred_at)
        caller_number = caller_number or number
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if action == "CALL_STATE_TRANSITION":
            transitions.append(StateTransition(at, state_from, state_to))
        if resource_ids:
            _add(resources, resource_type or "Resource", resource_ids)
        if resource_type == "Slot" and action in ("FHIR_READ", "EMA_READ"):
            _add(slots, "offered", resource_ids)
        if slot_id:
            _add(resources, "Slot", (slot_id,))
            role = "queued" if action == "REVIEW_QUEUED" else "booked" if outcome == "SUCCESS" else "failed"
            _add(slots, role, (slot_id,))
        if link and link not in links:
            links.append(link)
        transcript_ref = row_transcript_ref or transcript_ref
        for ref in task_refs:  # the write and its escalation record name the same task: once, earliest
            if ref not in tasks or (tasks[ref].transcript_ref is None and row_transcript_ref):
                tasks[ref] = TaskReference(tasks[ref].at if ref in tasks else at, ref, row_transcript_ref)
        if action in ("GUARD_HIT", "BYPASS_ATTEMPT"):
            names = guards_fired or ([error_class] if error_class else [])
            guards.extend(GuardHit(at, guard, action, outcome, command, guard_action, dialogue_path) for guard in names)
        if action == "REVIEW_QUEUED":
            queued.append(QueuedWrite(at, command, operation or None, resource_type, tuple(resource_ids), slot_id))
        if action == "REPLY_SENT" and template:
            heard.append(heard_reply(at, template, visit_reason or None))
    return CallAuditRecord(
        call_id=call_id,
        practice_id=practice_id,
        caller_number=caller_number,
        first_event_at=_utc(rows[0][0]),
        last_event_at=_utc(rows[-1][0]),
        event_count=len(rows),
        state_transitions=tuple(transitions),
        fhir_resources={kind: tuple(ids) for kind, ids in resources.items()},
        ema_deep_links=tuple(links),
        tasks=tuple(TaskReference(task.at, task.task_ref, task.transcript_ref or transcript_ref)
                    for task in tasks.values()),
        transcript_ref=transcript_ref,
        guards_fired=tuple(guards),
        outcomes=outcomes,
        slots={role: tuple(slots[role]) for role in SLOT_ROLES if role in slots},
        queued_writes=tuple(queued),
        replies=tuple(heard),
    )


def _add(groups: dict[str, list[str]], key: str, ids: Sequence[str]) -> None:
    known = groups.setdefault(key, [])
    known.extend(rid for rid in ids if rid not in known)
