"""The commands topic as the review queue reads it: the intake group's batches, and one record by position.

The identity a repeated patient search needs stays on the topic, never in the review store, so an
attempt reads its command record back by (partition, offset); a record retention removed, or one that
does not decode, reads as None and the item is left to staff.
"""

from __future__ import annotations

import threading
import time

from confluent_kafka import Consumer, TopicPartition

from schemas.errors import SchemaError
from schemas.models import CommandMessage
from schemas.registry import SchemaRegistryClient
from schemas.serde import AvroSerde
from schemas.topics import COMMANDS
from sinks.kafka_io import consumer_config

INTAKE_GROUP = "callstream-review-queue"
ARCHIVE_READ_TIMEOUT_S = 15.0


class CommandLog:
    """The commands topic, read two ways: the intake group's batches, and one record by position (the
    identity a repeated patient search needs stays on the topic, never in the store)."""

    def __init__(self, bootstrap: str, session_timeout_ms: int, registry: SchemaRegistryClient | None = None) -> None:
        self._serde = AvroSerde.for_topic(COMMANDS, registry=registry)
        self._intake_config = consumer_config(bootstrap, INTAKE_GROUP, session_timeout_ms)
        self._intake: Consumer | None = None
        """Joins the intake group on the first poll: a process that only reads records back never takes partitions."""
        self._reader = Consumer({**consumer_config(bootstrap, f"{INTAKE_GROUP}-reader", session_timeout_ms)})
        self._reading = threading.Lock()
        """Attempts read records from threads at once; the reader consumer serves one position at a time."""

    def poll(self, max_messages: int = 500, timeout_s: float = 0.5) -> list[tuple[int, int, CommandMessage | None]]:
        """The next records as (partition, offset, command); None for one that does not decode."""
        if self._intake is None:
            self._intake = Consumer(self._intake_config)
            self._intake.subscribe([COMMANDS])
        found: list[tuple[int, int, CommandMessage | None]] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < max_messages:
            message = self._intake.poll(max(0.0, deadline - time.monotonic()) if not found else 0)
            if message is None:
                break
            if message.error() is not None:
                continue
            found.append((message.partition(), message.offset(), self._decode(message.value())))
        return found

    def commit(self, batch: list[tuple[int, int, CommandMessage | None]]) -> None:
        """Commit past a stored batch (the sinks' consumer settings store no offsets on their own)."""
        assert self._intake is not None, "a batch comes from poll()"
        following: dict[int, int] = {}
        for partition, offset, _ in batch:
            following[partition] = max(following.get(partition, 0), offset + 1)
        self._intake.commit(offsets=[TopicPartition(COMMANDS, p, o) for p, o in following.items()],
                            asynchronous=False)

    def read(self, partition: int, offset: int) -> CommandMessage | None:
        """The command at a position; None once retention removed it or it does not decode.

        Raises:
            TimeoutError: the broker did not hand the record over in time (a later attempt reads again).
        """
        with self._reading:
            low, _ = self._reader.get_watermark_offsets(TopicPartition(COMMANDS, partition),
                                                        timeout=ARCHIVE_READ_TIMEOUT_S)
            if low > offset:
                return None
            self._reader.assign([TopicPartition(COMMANDS, partition, offset)])
            deadline = time.monotonic() + ARCHIVE_READ_TIMEOUT_S
            while time.monotonic() < deadline:
                message = self._reader.poll(0.2)
                if message is None or message.error() is not None:
                    continue
                if message.partition() == partition and message.offset() >= offset:
                    return self._decode(message.value()) if message.offset() == offset else None
            raise TimeoutError("the command record was not read in time")

    def close(self) -> None:
        if self._intake is not None:
            self._intake.close()
        self._reader.close()

    def _decode(self, value: bytes | None) -> CommandMessage | None:
        if value is None:
            return None
        try:
            return CommandMessage.from_avro(self._serde.decode(value))
        except (SchemaError, ValueError):
            return None
