"""The review queue's durable store: one ClickHouse table of item versions, read with FINAL.

``review_items`` is a ReplacingMergeTree on ``item_id`` with ``revision`` as its version: every change
inserts the item's next revision and reads see only the newest, so an update is an insert (ClickHouse's
strength) and a crash between two writes leaves a whole earlier version, never a half-changed one. One
process owns the store and is its only writer (review/service.py), so revisions never race.

``review_alarms`` keeps each practice's REVIEW_QUEUE_STALE state the same way (newest revision wins), so
an alarm that fired before a restart is cleared after it: the queue process starts from the stored states.

Migrations are recorded in ``review_queue_migrations``, apart from the audit store's, so the audit sink
and the review queue can share one database without refusing each other's schema versions.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from review.core import UNFINISHED, ItemKind, ItemNotFound, ItemState, Reason, ReviewItem
from sinks.clickhouse_schema import Migration
from sinks.clickhouse_store import AuditStore

ITEMS_TABLE = "review_items"
ALARMS_TABLE = "review_alarms"
ALARM_COLUMNS: tuple[str, ...] = ("practice_id", "kind", "state", "value", "changed_at", "announced", "revision")
COLUMNS: tuple[str, ...] = (
    "item_id", "practice_id", "call_id", "command", "kind", "reason", "controlled_substance", "state", "created_at",
    "updated_at", "source_partition", "source_offset", "attempts", "next_attempt_at", "last_error_class",
    "resource_type", "resource_id", "resolved_by", "resolved_at", "note", "detail", "revision",
)
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="review_items: item versions, newest revision wins",
        statements=(
            """
            CREATE TABLE IF NOT EXISTS {database}.review_items
            (
                item_id String COMMENT 'the REVIEW_QUEUE command id',
                practice_id LowCardinality(String),
                call_id String,
                command LowCardinality(String),
                kind LowCardinality(String),
                reason LowCardinality(String),
                controlled_substance Bool,
                state LowCardinality(String),
                created_at DateTime64(3, 'UTC'),
                updated_at DateTime64(3, 'UTC'),
                source_partition Int32 COMMENT 'where the command record (which may hold PHI) stays on its topic',
                source_offset Int64,
                attempts UInt32,
                next_attempt_at Nullable(DateTime64(3, 'UTC')),
                last_error_class LowCardinality(Nullable(String)),
                resource_type LowCardinality(Nullable(String)),
                resource_id Nullable(String),
                resolved_by Nullable(String),
                resolved_at Nullable(DateTime64(3, 'UTC')),
                note Nullable(String) COMMENT 'staff note; staff are asked not to write PHI in it',
                detail Map(LowCardinality(String), String) COMMENT 'ids and codes only (review.core.DETAIL_KEYS)',
                revision UInt64
            )
            ENGINE = ReplacingMergeTree(revision)
            ORDER BY item_id
            """,
        ),
    ),
    Migration(
        version=2,
        description="review_alarms: each practice's REVIEW_QUEUE_STALE state, newest revision wins",
        statements=(
            """
            CREATE TABLE IF NOT EXISTS {database}.review_alarms
            (
                practice_id String,
                kind LowCardinality(String),
                state LowCardinality(String) COMMENT 'FIRING or CLEARED',
                value Float64 COMMENT 'the oldest stale item age in seconds when it fired',
                changed_at DateTime64(3, 'UTC'),
                announced Bool COMMENT 'the transition reached callstream.alarms.v1',
                revision UInt64
            )
            ENGINE = ReplacingMergeTree(revision)
            ORDER BY (practice_id, kind)
            """,
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class StoredAlarm:
    """A practice's last alarm transition; ``announced`` False: stored, but its publication was not acknowledged."""

    practice_id: str
    kind: str
    state: str
    value: float
    changed_at: datetime
    announced: bool
    revision: int


class ReviewStore(AuditStore):
    """Reads and writes of ``review_items`` (the audit store's connection, DDL and error handling)."""

    migrations_table = "review_queue_migrations"
    sharding_keys: ClassVar[dict[str, str]] = {ITEMS_TABLE: "cityHash64(item_id)", ALARMS_TABLE: "cityHash64(practice_id)"}
    """An item's (a practice alarm's) revisions share a shard, so FINAL sees them all."""

    def migrate(self, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
        return super().migrate(migrations)

    def put(self, item: ReviewItem) -> None:
        """Store this revision of the item (the caller made it with review.core's transitions)."""
        self._insert(ITEMS_TABLE, [_row(item)], COLUMNS)

    def get(self, item_id: str) -> ReviewItem:
        """Raises ItemNotFound when no item has the id."""
        items = self._select("WHERE item_id = {item_id:String}", {"item_id": item_id[:64]})
        if not items:
            raise ItemNotFound(f"no review item {item_id[:64]}")
        return items[0]

    def find(self, item_id: str) -> ReviewItem | None:
        try:
            return self.get(item_id)
        except ItemNotFound:
            return None

    def select_items(self, practice_id: str | None = None, state: ItemState | Collection[ItemState] | None = None,
                     limit: int = 500, call_id: str | None = None) -> list[ReviewItem]:
        """Items, oldest first, optionally of one practice, one call and one state or any of several."""
        clauses, parameters = [], {}
        if practice_id:
            clauses.append("practice_id = {practice_id:String}")
            parameters["practice_id"] = practice_id
        if call_id:
            clauses.append("call_id = {call_id:String}")
            parameters["call_id"] = call_id
        states = {state} if isinstance(state, ItemState) else set(state or ())
        if states:  # ItemState values only, never caller text
            clauses.append(f"state IN ({', '.join(repr(ItemState(s).value) for s in sorted(states))})")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._select(f"{where} ORDER BY created_at, item_id LIMIT {int(limit)}", parameters)

    def open_items(self) -> list[ReviewItem]:
        """Every open or retrying item: what the retrier and the age alarm look at."""
        return self.select_items(state=UNFINISHED, limit=1_000_000)

    def alarm_states(self) -> list[StoredAlarm]:
        rows = self._query(f"SELECT {', '.join(ALARM_COLUMNS)} FROM {self.database}.{ALARMS_TABLE} FINAL "
                           "ORDER BY practice_id, kind", {})
        return [StoredAlarm(practice_id, kind, state, float(value), _utc(changed_at) or changed_at, bool(announced),
                            int(revision)) for practice_id, kind, state, value, changed_at, announced, revision in rows]

    def put_alarm(self, alarm: StoredAlarm) -> None:
        self._insert(ALARMS_TABLE, [(alarm.practice_id, alarm.kind, alarm.state, alarm.value, alarm.changed_at,
                                     alarm.announced, alarm.revision)], ALARM_COLUMNS)

    def _select(self, tail: str, parameters: dict[str, Any]) -> list[ReviewItem]:
        rows = self._query(f"SELECT {', '.join(COLUMNS)} FROM {self.database}.{ITEMS_TABLE} FINAL {tail}", parameters)
        return [_item(row) for row in rows]


def _row(item: ReviewItem) -> tuple[Any, ...]:
    return (
        item.item_id, item.practice_id, item.call_id, item.command, item.kind.value, item.reason.value,
        item.controlled_substance, item.state.value, item.created_at, item.updated_at, item.source_partition,
        item.source_offset, item.attempts, item.next_attempt_at, item.last_error_class, item.resource_type,
        item.resource_id, item.resolved_by, item.resolved_at, item.note, dict(item.detail), item.revision,
    )


def _item(row: tuple[Any, ...]) -> ReviewItem:
    values = dict(zip(COLUMNS, row, strict=True))
    for name in ("created_at", "updated_at", "next_attempt_at", "resolved_at"):
        values[name] = _utc(values[name])
    values["kind"] = ItemKind(values["kind"])
    values["reason"] = Reason(values["reason"])
    values["state"] = ItemState(values["state"])
    values["controlled_substance"] = bool(values["controlled_substance"])
    values["detail"] = dict(values["detail"])
    return ReviewItem(**values)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
