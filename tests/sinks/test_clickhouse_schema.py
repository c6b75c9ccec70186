"""Issue 18 point 5: with a cluster name the DDL is Replicated ON CLUSTER with a Distributed table over it;
without one it is unchanged. The generated statements are checked as text and parsed by the real engine."""

from __future__ import annotations

from typing import Any

import pytest

from callstream.errors import ConfigError
from review.store import MIGRATIONS as REVIEW_MIGRATIONS
from review.store import ReviewStore
from sinks.clickhouse_schema import CLUSTER_ENV, MIGRATIONS, cluster_from_env, clustered_alter, clustered_ddl
from sinks.clickhouse_store import AuditStore


class RecordingClient:
    """Takes DDL and inserts, answers every query with no rows (a database with nothing applied)."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.insert_settings: list[Any] = []

    def command(self, statement: str) -> None:
        self.statements.append(" ".join(statement.split()))

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return type("Result", (), {"result_rows": []})()

    def insert(self, table: str, rows: list[Any], column_names: list[str], settings: Any = None) -> None:
        self.insert_settings.append(settings)


def migrated(store_class: type[AuditStore], cluster: str | None) -> RecordingClient:
    client = RecordingClient()
    store_class(client, "audit", cluster=cluster).migrate()  # type: ignore[arg-type]
    return client


def test_a_single_node_gets_the_statements_as_written() -> None:
    client = migrated(AuditStore, None)
    expected = [" ".join(statement.format(database="audit").split())
                for migration in MIGRATIONS for statement in migration.statements]
    assert client.statements[0] == "CREATE DATABASE IF NOT EXISTS audit"
    assert client.statements[-len(expected):] == expected
    assert not any("ON CLUSTER" in s or "Replicated" in s or "Distributed" in s for s in client.statements)
    assert client.insert_settings == [None] * len(MIGRATIONS)


def test_the_audit_tables_on_a_cluster_are_replicated_with_a_distributed_table_sharded_by_practice() -> None:
    client = migrated(AuditStore, "prod")
    database, migrations, local, distributed, alter_local, alter_distributed = client.statements
    assert database == "CREATE DATABASE IF NOT EXISTS audit ON CLUSTER prod"
    assert migrations.startswith("CREATE TABLE IF NOT EXISTS audit.schema_migrations ON CLUSTER prod (")
    assert migrations.endswith("ENGINE = ReplicatedReplacingMergeTree("
                               "'/clickhouse/tables/{shard}/audit/schema_migrations', '{replica}') ORDER BY version")
    assert local.startswith("CREATE TABLE IF NOT EXISTS audit.audit_events_local ON CLUSTER prod ( event_id UUID,")
    assert local.endswith("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/audit/audit_events_local', "
                          "'{replica}') PARTITION BY toYYYYMM(occurred_at) ORDER BY (practice_id, call_id, event_id)")
    assert "INDEX call_id_bloom call_id TYPE bloom_filter(0.01) GRANULARITY 4 )" in local
    assert distributed == ("CREATE TABLE IF NOT EXISTS audit.audit_events ON CLUSTER prod AS audit.audit_events_local "
                           "ENGINE = Distributed(prod, audit, audit_events_local, cityHash64(practice_id))")
    assert alter_local.startswith("ALTER TABLE audit.audit_events_local ON CLUSTER prod ADD COLUMN IF NOT EXISTS guard_action")
    assert alter_distributed.startswith("ALTER TABLE audit.audit_events ON CLUSTER prod ADD COLUMN IF NOT EXISTS")
    assert alter_distributed.endswith("ADD COLUMN IF NOT EXISTS slot_id Nullable(String)")
    assert client.insert_settings == [{"insert_distributed_sync": 1}] * 2, "a read after a write must see it"


def test_review_items_on_a_cluster_keep_their_version_column_and_shard_by_item() -> None:
    client = migrated(ReviewStore, "prod")
    local, distributed = [s for s in client.statements if "review_items" in s]
    assert "audit.review_queue_migrations ON CLUSTER prod" in client.statements[1]
    assert local.endswith("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/audit/review_items_local', "
                          "'{replica}', revision) ORDER BY item_id")
    assert distributed.endswith("ENGINE = Distributed(prod, audit, review_items_local, cityHash64(item_id))")
    alarms_local, alarms_distributed = client.statements[-2:]
    assert alarms_local.endswith("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/audit/"
                                 "review_alarms_local', '{replica}', revision) ORDER BY (practice_id, kind)")
    assert alarms_distributed.endswith("ENGINE = Distributed(prod, audit, review_alarms_local, cityHash64(practice_id))")


def test_the_engine_parses_every_clustered_statement(clickhouse_client) -> None:  # type: ignore[no-untyped-def]
    """ON CLUSTER cannot run on embedded chDB, but its parser checks the DDL we would send to a cluster."""
    statements = migrated(AuditStore, "prod").statements + migrated(ReviewStore, "prod").statements
    for statement in statements:
        clickhouse_client.query(f"EXPLAIN AST {statement}")


def test_only_create_table_and_add_column_migrations_can_be_clustered() -> None:
    with pytest.raises(ConfigError, match="ON CLUSTER"):
        clustered_ddl("ALTER TABLE audit.audit_events ADD COLUMN x String", "prod", "rand()")
    with pytest.raises(ConfigError, match="ON CLUSTER"):
        clustered_alter("ALTER TABLE audit.audit_events DROP COLUMN x", "prod")
    with pytest.raises(ConfigError, match="sharding key"):
        AuditStore(RecordingClient(), "audit", cluster="prod").ddl(REVIEW_MIGRATIONS[0].statements[0])  # type: ignore[arg-type]


def test_the_cluster_name_comes_from_the_environment_and_needs_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CLUSTER_ENV, raising=False)
    assert cluster_from_env() is None
    monkeypatch.setenv(CLUSTER_ENV, "prod_eu")
    assert cluster_from_env() == "prod_eu"
    monkeypatch.setenv(CLUSTER_ENV, "prod; DROP DATABASE audit")
    with pytest.raises(ConfigError, match=CLUSTER_ENV):
        cluster_from_env()
    with pytest.raises(ConfigError, match="server DSN"):
        AuditStore.open("chdb:///tmp/never-opened", cluster="prod")
