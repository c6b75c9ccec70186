"""Kafka I/O of parked SIEM practices: the backlog state topic and random-access reads of the audit topic.

Thin wiring around `sinks.backlog`: the state topic (`<consumer group>-backlog`, one partition,
compacted) holds one JSON `Backlog` per parked practice, keyed by practice id, a tombstone once it
caught up. It is read whole when partitions are assigned, so a restarted or rebalanced firehose
resumes every parked practice where it stopped ("whole": up to a fence, callstream.state_topic).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from callstream.state_topic import read_to_fence
from sinks.backlog import Backlog, BacklogRecordError, latest_backlogs

logger = logging.getLogger(__name__)

STATE_TOPIC_SUFFIX = "-backlog"


def state_topic_for(group_id: str) -> str:
    return f"{group_id}{STATE_TOPIC_SUFFIX}"


class BacklogStore:
    """Writes and reads the parked practices' records."""

    def __init__(self, bootstrap: str, topic: str, producer: Producer) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self._producer = producer

    def write(self, backlog: Backlog, on_done: Callable[[KafkaError | None], None] | None = None) -> None:
        """Queue the record; `on_done` runs inside the producer's poll once the log has it (or refused it)."""
        self._produce(backlog.practice_id.encode(), backlog.encode(), on_done)

    def delete(self, practice_id: str) -> None:
        """The practice caught up: a tombstone (a lost one only costs re-sent duplicates after a restart)."""
        self._produce(practice_id.encode(), None, None)

    def _produce(self, key: bytes, value: bytes | None, on_done: Callable[[KafkaError | None], None] | None) -> None:
        def delivered(error: KafkaError | None, _message: Message) -> None:
            if on_done is not None:
                on_done(error)

        self._producer.produce(self.topic, key=key, value=value, on_delivery=delivered)

    def load(self, timeout_s: float = 30.0) -> dict[str, Backlog]:
        """Every parked practice, as last written.

        Raises:
            ServiceUnavailableError: the fence did not come back within the timeout.
        """
        records = read_to_fence(self._bootstrap, self.topic, self._producer, "backlog state topic",
                                logging.getLogger("sinks.kafka"), timeout_s)
        return self._decode(records)

    @staticmethod
    def _decode(records: list[tuple[str, bytes | None]]) -> dict[str, Backlog]:
        backlogs: dict[str, Backlog] = {}
        for practice_id, value in latest_backlogs(records).items():
            try:
                backlogs[practice_id] = Backlog.decode(practice_id, value)
            except BacklogRecordError as exc:
                logger.error("%s; the practice's parked events are not resumed", exc)
        return backlogs


class PartitionReader:
    """Reads a stretch of one audit partition from a given offset (no group, nothing committed)."""

    def __init__(self, bootstrap: str, topic: str, group_id: str) -> None:
        self.topic = topic
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{group_id}-reader",
                                   "enable.auto.commit": False, "enable.auto.offset.store": False,
                                   "fetch.wait.max.ms": 50, "log.connection.close": False,
                                   "logger": logging.getLogger("sinks.kafka")})
        self._lock = threading.Lock()
        """A read runs in a worker thread that cancelling its task does not stop; close waits for it."""
        self._closed = False

    def read(self, partition: int, offset: int, max_messages: int = 500, timeout_s: float = 0.3) -> list[Message]:
        """Up to `max_messages` messages from `offset` on (fewer, or none, near the log end). Blocking."""
        with self._lock:
            if self._closed:
                return []
            self._consumer.assign([TopicPartition(self.topic, partition, offset)])
            try:
                return [message for message in self._consumer.consume(max_messages, timeout_s)
                        if message.error() is None and (message.offset() or 0) >= offset]
            finally:
                self._consumer.unassign()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._consumer.close()
