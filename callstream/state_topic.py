"""One-partition compacted state topics: creating one, and reading it whole (the records up to a fence this
reader wrote).

Tansu reports stale high watermarks, so "whole" cannot mean "up to the high watermark": the reader writes a fence
(a random value under FENCE_KEY) and reads from the beginning until its own fence comes back. The sinks' backlog
state (sinks/backlog_io.py) and the intake poller's cursors (streams/intake_poller.py) are read this way; the
dead-letter replay log (streams/dlq.py) is created here too.
"""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from callstream.errors import ServiceUnavailableError

FENCE_KEY = b"__fence__"
"""State records are keyed by practice id, which starts with a letter or digit, so the fence can never be one."""


def ensure_compacted_topic(bootstrap: str, name: str) -> None:
    """Create the topic (one compacted partition) when it is missing."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    if name in admin.list_topics(timeout=10).topics:
        return
    topic = NewTopic(name, num_partitions=1, replication_factor=1, config={"cleanup.policy": "compact"})
    try:
        admin.create_topics([topic], operation_timeout=10)[name].result(timeout=15)
    except KafkaException as exc:
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise ServiceUnavailableError(f"cannot create {name} on {bootstrap}: {exc}") from None


def read_to_fence(bootstrap: str, topic: str, producer: Producer, what: str, logger: logging.Logger,
                  timeout_s: float = 30.0) -> list[tuple[str, bytes | None]]:
    """The topic's (key, value) records in log order, fences left out (``what`` names the topic in errors).

    Raises:
        ServiceUnavailableError: the fence was not acknowledged, or did not come back, within the timeout.
    """
    fence = uuid.uuid4().hex.encode()
    producer.produce(topic, key=FENCE_KEY, value=fence)
    if producer.flush(timeout_s) != 0:
        raise ServiceUnavailableError(f"{what} {topic} did not acknowledge a write")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-reader", "enable.auto.commit": False,
                         "log.connection.close": False, "logger": logger})
    records: list[tuple[str, bytes | None]] = []
    deadline = time.monotonic() + timeout_s
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            key = message.key() or b""
            if key == FENCE_KEY:
                if message.value() == fence:
                    return records
                continue
            records.append((key.decode("utf-8", "replace"), message.value()))
    finally:
        consumer.close()
    raise ServiceUnavailableError(f"{what} {topic} not read to its end within {timeout_s:.0f} s")
