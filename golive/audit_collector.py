"""The go-live check's reader of the worker's audit topic: every record of the run, grouped by call."""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable

from confluent_kafka import Consumer, TopicPartition

from schemas.errors import SchemaError
from schemas.models import AuditEvent
from schemas.serde import AvroSerde
from schemas.topics import AUDIT, topic_named

AUDIT_SETTLE_TIMEOUT_S = 45.0


class AuditCollector:
    """Reads the (private) audit topic from its beginning in a thread, records grouped by call id."""

    def __init__(self, bootstrap: str) -> None:
        topic = topic_named(AUDIT)
        self._serde = AvroSerde.for_topic(topic)
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"golive-audit-{uuid.uuid4().hex}",
                                   "enable.auto.commit": False, "log.connection.close": False})
        self._consumer.assign([TopicPartition(topic.name, p, 0) for p in range(topic.partitions)])
        self._lock = threading.Lock()
        self._by_call: dict[str, list[AuditEvent]] = defaultdict(list)
        self.undecodable = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="golive-audit", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(0.1)
            if message is None or message.error() is not None or message.value() is None:
                continue
            try:
                record = AuditEvent.from_avro(self._serde.decode(message.value()))
            except SchemaError:
                with self._lock:
                    self.undecodable += 1
                continue
            with self._lock:
                self._by_call[record.call_id or ""].append(record)

    def of_call(self, call_id: str) -> list[AuditEvent]:
        with self._lock:
            return list(self._by_call.get(call_id, ()))

    def wait_ended(self, call_ids: Iterable[str], timeout_s: float = AUDIT_SETTLE_TIMEOUT_S) -> set[str]:
        """Waits until every call's end is audited (and its records stopped changing); returns those still open."""
        waiting = set(call_ids)
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            waiting = {c for c in waiting if not any(r.state_to == "ended" for r in self.of_call(c))}
            time.sleep(0.1)
        time.sleep(0.5)  # records the worker published with the end (task audit after the reply) are read
        return waiting

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()
