"""The ClickHouse audit sink: Kafka `callstream.audit.v1` → `audit_events`, losing nothing.

Thin wiring around `AuditRowProcessor` and `AuditStore.insert` (snuba's consumer shape):

- rows are batched (max rows / max wait) and inserted in one call;
- offsets are committed only after the insert (and any dead letter of the batch) succeeded;
- while ClickHouse refuses writes the sink pauses its partitions (backpressure: nothing more is
  fetched, memory stays bounded by one batch) and retries the same batch with backoff, serving
  the group protocol between attempts so a long outage does not cost the assignment;
- undecodable messages go to `callstream.dead-letter.v1` with a reason and are committed past;
- on a rebalance the batch is flushed once; if that fails the revoked partitions' rows are
  dropped uncommitted, so their new owner re-reads them (duplicates collapse on event id);
- on shutdown the batch gets one last insert attempt; uncommitted data is simply re-read later.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from callstream.errors import ServiceUnavailableError
from callstream.retry import Backoff
from schemas.errors import SchemaRegistryError
from schemas.topics import AUDIT, DEAD_LETTER
from sinks.audit_rows import AuditRow, AuditRowProcessor, Rejection
from sinks.clickhouse_store import AuditStore, StoreUnavailableError
from sinks.kafka_io import (
    DeadLetterError,
    DeadLetterWriter,
    consumer_config,
    dead_letter,
    position,
    producer_config,
)

logger = logging.getLogger(__name__)

CLICKHOUSE_GROUP = "callstream-audit-clickhouse"
DEFAULT_BACKOFF = Backoff(base_s=0.5, cap_s=30.0)
OUTAGE_LOG_INTERVAL_S = 30.0


class _Stopping(Exception):
    """Shutdown was requested while a message could not be finished; unwind without committing it."""


@dataclass
class SinkStats:
    """Counters an operator (and the tests) read to see what the sink did."""

    rows_inserted: int = 0
    batches_inserted: int = 0
    dead_lettered: int = 0
    insert_failures: int = 0
    commit_failures: int = 0
    revocations: int = 0
    """Rebalances that took partitions away: churn here means consumers keep leaving or timing out."""


@dataclass
class _Batch:
    """Rows not yet inserted, with the offsets that become committable once they are."""

    rows: list[tuple[int, AuditRow]] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)
    started_at: float | None = None

    def add(self, partition: int, offset: int, row: AuditRow | None) -> None:
        if row is not None:
            self.rows.append((partition, row))
        self.next_offsets[partition] = offset + 1
        if self.started_at is None:
            self.started_at = time.monotonic()

    def is_empty(self) -> bool:
        return not self.next_offsets

    def age_s(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    def drop_partitions(self, partitions: set[int]) -> None:
        self.rows = [(partition, row) for partition, row in self.rows if partition not in partitions]
        for partition in partitions:
            self.next_offsets.pop(partition, None)
        if self.is_empty():
            self.started_at = None


class ClickHouseAuditSink:
    """One consumer of the audit topic that writes every event to ClickHouse exactly once (after FINAL)."""

    def __init__(
        self,
        store: AuditStore,
        *,
        bootstrap: str,
        topic: str = AUDIT,
        group_id: str = CLICKHOUSE_GROUP,
        dead_letter_topic: str = DEAD_LETTER,
        processor: AuditRowProcessor | None = None,
        max_rows: int = 5000,
        max_wait_s: float = 1.0,
        backoff: Backoff = DEFAULT_BACKOFF,
        session_timeout_ms: int = 6000,
        rng: random.Random | None = None,
        on_insert: Callable[[float], None] | None = None,
    ) -> None:
        """`on_insert` is told the newest inserted event's time (epoch seconds) after every insert: the lag gauge."""
        if max_rows < 1 or max_wait_s <= 0:
            raise ValueError("max_rows must be >= 1 and max_wait_s > 0")
        self.store = store
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.stats = SinkStats()
        self._processor = processor or AuditRowProcessor()
        self._max_rows = max_rows
        self._max_wait_s = max_wait_s
        self._backoff = backoff
        self._rng = rng or random.Random()
        kafka_logger = logging.getLogger("sinks.kafka")
        self._consumer = Consumer({**consumer_config(bootstrap, group_id, session_timeout_ms), "logger": kafka_logger})
        self._dead_letters = DeadLetterWriter(Producer({**producer_config(bootstrap), "logger": kafka_logger}))
        self._on_insert = on_insert
        self._batch = _Batch()
        self._held: deque[Message] = deque()
        self._paused = False
        self._generation = 0
        """Bumped on every revoke or loss: a message that waited across it is stale (positions were reset)."""

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, then flush once, leave the group and return."""
        self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)
        logger.info("ClickHouse audit sink consuming %s into %s.audit_events", self.topic, self.store.database)
        try:
            while not stop.is_set():
                message = self._next_message()
                if message is not None:
                    self._take(message, stop, self._generation)
                if self._batch_due():
                    self._flush(stop)
        except _Stopping:
            pass
        finally:
            self._final_flush()
            self._consumer.close()
            self._dead_letters.flush(5.0)
        logger.info("ClickHouse audit sink stopped: %s", self.stats)

    def _batch_due(self) -> bool:
        """Full, or its oldest message has waited max_wait_s (poison-only batches too: offsets must move)."""
        if self._batch.is_empty():
            return False
        return len(self._batch.rows) >= self._max_rows or self._batch.age_s() >= self._max_wait_s

    def _next_message(self) -> Message | None:
        """The next message to process: held-back ones first (partition order), else one poll.

        One message per poll, processed before the next poll: a rebalance callback runs inside
        poll, so a message in hand is never older than the current assignment (a batch from
        consume() could mix messages from before and after a revoke).
        """
        if self._held:
            return self._held.popleft()
        wait = 0.5 if self._batch.is_empty() else max(0.01, min(0.5, self._max_wait_s - self._batch.age_s()))
        message = self._consumer.poll(wait)
        if message is None:
            return None
        error = message.error()
        if error is None:
            return message
        if error.fatal():
            raise ServiceUnavailableError(f"Kafka consumer failed fatally: {error.name()}")
        logger.debug("Kafka consumer: %s", error.name())
        return None

    def _take(self, message: Message, stop: threading.Event, generation: int) -> None:
        """Turn one message into a batch row, or a dead letter, before its offset may be committed.

        A rebalance while this message waited makes it stale: it is not added, its partition's new
        position (the committed offset) re-reads it.
        """
        partition, offset = position(message)
        attempt = 0
        while True:
            try:
                result = self._processor.process(message.value())
                break
            except SchemaRegistryError as exc:
                logger.warning("schema registry unavailable (%s); retrying partition %d offset %d", exc, partition, offset)
                self._wait_paused(attempt, stop)
                attempt += 1
        if isinstance(result, Rejection):
            self._write_dead_letter(message, result, stop)
        if self._generation == generation:
            self._batch.add(partition, offset, None if isinstance(result, Rejection) else result)

    def _write_dead_letter(self, message: Message, rejection: Rejection, stop: threading.Event) -> None:
        letter = dead_letter(message, reason=rejection.reason, error_class=rejection.error_class, attempts=1)
        attempt = 0
        while True:
            try:
                self._dead_letters.write(self.dead_letter_topic, message.key(), letter)
                break
            except (DeadLetterError, KafkaException, BufferError) as exc:
                logger.warning("dead letter for partition %d offset %d not written (%s); retrying", *position(message), exc)
                self._wait_paused(attempt, stop)
                attempt += 1
        self.stats.dead_lettered += 1
        logger.warning("audit message at partition %d offset %d dead-lettered: %s", *position(message),
                       rejection.error_class)

    def _flush(self, stop: threading.Event) -> None:
        """Insert the batch, retrying with partitions paused until it lands; then commit."""
        attempt = 0
        outage_logged_at = 0.0
        while not self._batch.is_empty():
            try:
                self.store.insert([row for _, row in self._batch.rows])
                if attempt:
                    logger.info("ClickHouse insert succeeded after %d retries; consumption resumes", attempt)
                break
            except StoreUnavailableError as exc:
                self.stats.insert_failures += 1
                if time.monotonic() - outage_logged_at >= OUTAGE_LOG_INTERVAL_S:
                    outage_logged_at = time.monotonic()
                    logger.warning("ClickHouse insert of %d rows failed (%s); consumption paused, retrying",
                                   len(self._batch.rows), exc)
                self._wait_paused(attempt, stop)
                attempt += 1
        self._commit_batch()
        self._resume()

    def _final_flush(self) -> None:
        """One attempt at shutdown; what does not land stays uncommitted and is re-read on restart."""
        if self._batch.is_empty():
            return
        try:
            self.store.insert([row for _, row in self._batch.rows])
        except StoreUnavailableError as exc:
            logger.warning("ClickHouse unavailable at shutdown (%s); %d rows left uncommitted for the next run",
                           exc, len(self._batch.rows))
            return
        self._commit_batch()

    def _commit_batch(self) -> None:
        if self._on_insert is not None and self._batch.rows:
            self._on_insert(max(row[1] for _, row in self._batch.rows).timestamp())
        rows, offsets = len(self._batch.rows), dict(self._batch.next_offsets)
        self.stats.rows_inserted += rows
        self.stats.batches_inserted += 1 if rows else 0
        self._batch = _Batch()
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()], asynchronous=False)
        except KafkaException as exc:
            # The rows are stored; a later commit covers these offsets, or a re-read collapses on event id.
            self.stats.commit_failures += 1
            logger.warning("offset commit failed (%s); rows are stored, a re-read would only duplicate", exc.args[0].name())

    def _wait_paused(self, attempt: int, stop: threading.Event) -> None:
        """Back off with every partition paused, still serving heartbeats and rebalances."""
        if stop.is_set():
            raise _Stopping
        self._pause()
        deadline = time.monotonic() + self._backoff.delay(attempt, self._rng)
        while (remaining := deadline - time.monotonic()) > 0:
            if stop.is_set():
                raise _Stopping
            message = self._consumer.poll(min(remaining, 0.5))
            if message is not None and message.error() is None:
                self._held.append(message)

    def _pause(self) -> None:
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.pause(assignment)
        self._paused = True

    def _resume(self) -> None:
        if not self._paused:
            return
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.resume(assignment)
        self._paused = False

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.assign(partitions)
        if partitions:
            # librdkafka keeps a partition's pause flag across revoke and re-assign: set it explicitly.
            (consumer.pause if self._paused else consumer.resume)(partitions)
        logger.info("assigned %s partitions %s", self.topic, sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what can be stored now; give up the rest uncommitted for the next owner."""
        revoked = {tp.partition for tp in partitions}
        self.stats.revocations += 1
        self._generation += 1
        self._held = deque(message for message in self._held if message.partition() not in revoked)
        if revoked & set(self._batch.next_offsets):
            try:
                self.store.insert([row for _, row in self._batch.rows])
                self._commit_batch()
            except StoreUnavailableError:
                self._batch.drop_partitions(revoked)
        logger.info("revoked %s partitions %s", self.topic, sorted(revoked))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost partitions cannot be committed to: forget their uncommitted work."""
        lost = {tp.partition for tp in partitions}
        self._generation += 1
        self._held = deque(message for message in self._held if message.partition() not in lost)
        self._batch.drop_partitions(lost)
        logger.warning("lost %s partitions %s; their uncommitted rows will be re-read", self.topic, sorted(lost))
