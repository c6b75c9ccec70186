"""The ClickHouse audit store: migrations applied, batched inserts, and the reads behind the audit CLI,
the read API, QA and the digest.

- Rows are de-duplicated at merge time (ReplacingMergeTree on the event id, see sinks/clickhouse_schema.py),
  so every read uses FINAL: duplicates never show.
- On a cluster, inserts wait for the shards (``insert_distributed_sync``), so a read after a write sees it.
- Failures surface as `StoreUnavailableError` described by ClickHouse error code or driver exception class,
  never by message: a conversion error can quote a row value, and rows hold PHI.

The row shape is sinks/audit_rows.py's; the per-call record and call list lines are sinks/call_record.py's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Self

from callstream.backends import open_clickhouse
from callstream.errors import CallstreamError, ConfigError
from callstream.settings import redact_dsn
from sinks.audit_rows import INSERT_COLUMNS, AuditRow
from sinks.call_record import CALL_SPAN, CallAuditRecord, CallSummary, assemble_call_record, utc
from sinks.clickhouse_schema import (
    AUDIT_TABLE,
    CLUSTER_ENV,
    DEFAULT_DATABASE,
    MIGRATIONS,
    MIGRATIONS_TABLE,
    Migration,
    clustered_statements,
    database_for_dsn,
    replicated_engine,
    validate_identifier,
)

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

# The driver logs encoding and streaming failures with tracebacks that quote the offending value (a row
# field: possibly PHI). The store raises those failures itself, described by error class or code only.
for _driver_logger in ("transform", "rustcodec", "streaming"):
    logging.getLogger(f"clickhouse_connect.driver.{_driver_logger}").setLevel(logging.CRITICAL)


class StoreUnavailableError(CallstreamError):
    """ClickHouse refused or could not take a write or read; the caller keeps the data and retries."""


class AmbiguousCallError(CallstreamError):
    """A call id matched records of more than one practice; the caller must say which practice."""


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
        clustered (see sinks/clickhouse_schema.py)."""
        if cluster and dsn.startswith("chdb://"):
            raise ConfigError(f"{CLUSTER_ENV} needs a ClickHouse server DSN, not embedded chDB")
        return cls(open_clickhouse(dsn), database_for_dsn(dsn, database), redact_dsn(dsn), cluster)

    def ddl(self, statement: str) -> tuple[str, ...]:
        """What one migration statement becomes here: itself on one node, the clustered pair on a cluster."""
        statement = statement.format(database=self.database)
        if self.cluster is None:
            return (statement,)
        return clustered_statements(statement, self.cluster, self.sharding_keys)

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
        return assemble_call_record(call_id, practices[0], rows)

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
        return [CallSummary(row[0], utc(row[1]), utc(row[2]), *(int(value) for value in row[3:12]), row[12] or None)
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

