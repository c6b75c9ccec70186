"""An audit message as an insert row: the pure bytes → row step of the ClickHouse audit sink.

`AuditRowProcessor` (bytes → row or typed rejection) has no I/O so it can be tested on bytes; the
Kafka loop in sinks/consumer.py is thin wiring around it and `AuditStore.insert`. The row shape is
the audit table's columns as migrated by sinks/clickhouse_schema.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.errors import SchemaError
from sinks.kafka_io import AuditDecoder
from sinks.payload import AuditRecord, audit_record

INSERT_COLUMNS: tuple[str, ...] = (
    "event_id", "occurred_at", "practice_id", "call_id", "caller_number", "action", "outcome", "state_from",
    "state_to", "resource_type", "resource_ids", "ema_deep_link", "task_refs", "transcript_ref", "guards_fired",
    "command", "error_class", "latency_ms", "detail", "redactions", "guard_action", "dialogue_path", "slot_id",
)
AuditRow = tuple[Any, ...]
"""One row in INSERT_COLUMNS order."""


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

