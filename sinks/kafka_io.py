"""Kafka plumbing both audit sinks share: consumer settings, audit decoding, dead letters.

Kept apart from the sinks' logic (as snuba keeps message processors apart from consumers) so the
processors stay pure and testable on bytes, and the loops stay thin wiring.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from schemas.errors import SchemaError
from schemas.models import AuditEvent, DeadLetter
from schemas.registry import SchemaRegistryClient
from schemas.serde import AvroSerde
from schemas.topics import AUDIT


class DeadLetterError(RuntimeError):
    """A dead letter could not be written: the source offset must not be committed."""


def consumer_config(bootstrap: str, group_id: str, session_timeout_ms: int) -> dict[str, Any]:
    """Manual commits only: an offset is committed by the sink once its work is durably done."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": session_timeout_ms,
        "log.connection.close": False,
    }


def producer_config(bootstrap: str) -> dict[str, Any]:
    """Idempotent, fully acknowledged writes: a dead letter is only "written" once the log has it."""
    return {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "log.connection.close": False,
    }


class AuditDecoder:
    """Message value bytes → validated AuditEvent (either framing, any released schema version)."""

    def __init__(self, registry: SchemaRegistryClient | None = None) -> None:
        self._serde = AvroSerde.for_topic(AUDIT, registry=registry)

    def decode(self, value: bytes | None) -> AuditEvent:
        """Raises SchemaError for anything that is not an audit event (retrying cannot help).

        SchemaRegistryError (registry unreachable) propagates: the data may be fine, so callers
        retry instead of dead-lettering.
        """
        if value is None:
            raise SchemaError("AuditEvent message has no value (tombstone)")
        return AuditEvent.from_avro(self._serde.decode(value))


def position(message: Message) -> tuple[int, int]:
    """Partition and offset of a consumed message (always set once a broker delivered it)."""
    partition, offset = message.partition(), message.offset()
    if partition is None or offset is None:
        raise ValueError("message has no partition/offset: it was not consumed from a broker")
    return partition, offset


def dead_letter(
    message: Message, *, reason: str, error_class: str, attempts: int, practice_id: str | None = None
) -> DeadLetter:
    """A dead letter carrying the original bytes untouched, and a reason without PHI."""
    partition, offset = position(message)
    return DeadLetter(
        dead_letter_id=uuid.uuid4(),
        source_topic=message.topic() or "unknown",
        source_partition=partition,
        source_offset=offset,
        key=message.key(),
        value=message.value() or b"",
        reason=reason[:500],
        error_class=error_class,
        failed_at=datetime.now(UTC),
        attempts=attempts,
        practice_id=practice_id,
    )


class DeadLetterWriter:
    """Writes DeadLetter records, synchronously (ClickHouse sink) or with a completion callback (SIEM)."""

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self._serde = AvroSerde("DeadLetter")

    def write(self, topic: str, key: bytes | None, letter: DeadLetter, timeout_s: float = 10.0) -> None:
        """Write and wait for the broker's acknowledgement.

        Raises:
            DeadLetterError: not acknowledged within the timeout, or refused.
        """
        outcome: list[KafkaError | None] = []
        self.write_async(topic, key, letter, outcome.append)
        self._producer.flush(timeout_s)
        if not outcome:
            raise DeadLetterError(f"dead letter to {topic} not acknowledged within {timeout_s:.0f} s")
        if outcome[0] is not None:
            raise DeadLetterError(f"dead letter to {topic} refused: {outcome[0].name()}")

    def write_async(
        self, topic: str, key: bytes | None, letter: DeadLetter, on_done: Callable[[KafkaError | None], None]
    ) -> None:
        """Queue the write; `on_done` runs (inside `poll`/`flush`) with None on success or the error."""
        value = self._serde.encode(letter.to_avro())
        self._producer.produce(topic, value=value, key=key, on_delivery=lambda error, _message: on_done(error))

    def poll(self) -> None:
        """Serve delivery callbacks without blocking."""
        self._producer.poll(0)

    def flush(self, timeout_s: float) -> int:
        """Wait for queued writes; returns how many are still unacknowledged."""
        return int(self._producer.flush(timeout_s))
