"""The audit database's schema: versioned migrations and the DDL they become on one node or a cluster.

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
- Migrations are an ordered list in code recorded in ``schema_migrations``; a database whose
  schema is newer than this build is refused rather than written with an old row shape. The review
  queue (review/store.py) and the digest log (digest/log.py) keep their own lists in the same form.
- On a cluster (``CLICKHOUSE_CLUSTER``), each table is a Replicated local table ``<table>_local`` created
  ON CLUSTER with a Distributed table of the original name over it, sharded so that rows that must
  collapse (one event, one review item) share a shard; reads and writes keep using the original name.

Everything here is text in, text out: sinks/clickhouse_store.py runs the statements.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from callstream.errors import ConfigError

DEFAULT_DATABASE = "callstream"
AUDIT_TABLE = "audit_events"
MIGRATIONS_TABLE = "schema_migrations"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
CLUSTER_ENV = "CLICKHOUSE_CLUSTER"
_CREATE_TABLE = re.compile(
    r"\s*CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)\s*(\(.*\))\s*ENGINE = (\w*MergeTree)(?:\(([^)]*)\))?(.*)\Z", re.DOTALL)
_ALTER_ADD_COLUMNS = re.compile(r"\s*ALTER TABLE (\w+)\.(\w+)\s+(ADD COLUMN IF NOT EXISTS .*?)\s*\Z", re.DOTALL)


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



def clustered_statements(statement: str, cluster: str, sharding_keys: Mapping[str, str]) -> tuple[str, ...]:
    """What one migration statement (database already filled in) becomes on ``cluster``, given each table's
    sharding key: an ADD COLUMN runs on the local and the Distributed table, a CREATE TABLE becomes the pair.

    Raises:
        ConfigError: the statement creates a table without a sharding key here.
    """
    alter = _ALTER_ADD_COLUMNS.match(statement)
    if alter is not None and alter.group(2) in sharding_keys:
        return clustered_alter(statement, cluster)
    match = _CREATE_TABLE.match(statement)
    table = match.group(2) if match else ""
    if table not in sharding_keys:
        raise ConfigError(f"no sharding key for table {table or '?'} on cluster {cluster}")
    return clustered_ddl(statement, cluster, sharding_keys[table])
