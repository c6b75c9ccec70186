"""The pipeline's outputs to Kafka: replies, audit records, review-queue commands, dead letters, alarms.

librdkafka producers (confluent-kafka), off the Faust producer: producing is a C call that never blocks
the event loop, so a reply leaves within a millisecond of being decided while audit records follow it.
Every publish returns an asyncio future that completes when the broker acknowledged the record
(acks=all): the agent acks a call event only once everything it caused is durable, which is what makes
a crash at any point safe (at-least-once, de-duplicated downstream by the deterministic reply and audit
ids).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Producer

from schemas.models import Alarm, AuditEvent, AvroModel, CommandMessage, DeadLetter, Reply
from schemas.registry import SchemaRegistryClient
from schemas.serde import AvroSerde
from schemas.topics import ALARMS, AUDIT, COMMANDS, DEAD_LETTER, REPLIES, Topic, topic_named

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 0.001
"""How often delivery reports are served while records are in flight (idle: not at all)."""
FULL_QUEUE_BACKOFF_S = 0.005
PARTITION_BY_KEY = -1
"""librdkafka's RD_KAFKA_PARTITION_UA: the configured partitioner picks the partition from the key."""


class OutputDeliveryError(RuntimeError):
    """The broker did not take a record; the event that caused it stays un-acked (and is redelivered)."""


def producer_settings(bootstrap: str, *, linger_ms: float = 1.0, idempotent: bool = False) -> dict[str, Any]:
    """Fully acknowledged, with a tiny linger: replies are on the caller's clock.

    Idempotence is opt-in: on the embedded Tansu broker an idempotent producer next to a consumer group
    held records back for up to a second (measured in the pipeline benchmark). Without it a retried
    batch may be written twice, which every reader already tolerates: reply, audit and command ids are
    derived from their source event, and the consumers de-duplicate on them.
    """
    return {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": idempotent,
        "linger.ms": linger_ms,
        "log.connection.close": False,
    }


REPLY_LINGER_MS = 1.0
BULK_LINGER_MS = 10.0


class Outputs(Protocol):
    """What handling a call event publishes (``streams.processor``): each call returns a future that completes
    once the broker acknowledged the record, or fails with OutputDeliveryError. ``KafkaOutputs`` in the
    worker; tests that need no broker use an in-memory one."""

    def reply(self, reply: Reply) -> asyncio.Future[None]: ...

    def audit(self, event: AuditEvent) -> asyncio.Future[None]: ...

    def command(self, command: CommandMessage) -> asyncio.Future[None]: ...

    def dead_letter(self, letter: DeadLetter) -> asyncio.Future[None]: ...


class KafkaOutputs:
    """Publishes the pipeline's records; each call returns a future that completes on acknowledgement.

    Two producers: replies, on the caller's clock, leave with a 1 ms linger; everything else (audit,
    commands, table changelogs, dead letters, alarms) is only awaited before the event is acknowledged
    and rides in 10 ms batches, a fraction of the produce requests the broker would otherwise serve
    (on two cores the broker's share of the CPU is the worker's loss).

    Delivery reports are served on the event loop (``poll(0)`` between awaits), not by a thread: a
    second thread calling into librdkafka would contend for the GIL on every produce.
    """

    def __init__(self, bootstrap: str, *, registry: SchemaRegistryClient | None = None,
                 reply_linger_ms: float = REPLY_LINGER_MS, bulk_linger_ms: float = BULK_LINGER_MS,
                 idempotent: bool = False) -> None:
        self._replies = Producer(producer_settings(bootstrap, linger_ms=reply_linger_ms, idempotent=idempotent))
        self._bulk = Producer(producer_settings(bootstrap, linger_ms=bulk_linger_ms, idempotent=idempotent))
        self._producers = (self._replies, self._bulk)
        self._serdes: dict[str, AvroSerde] = {}
        self._registry = registry
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Task[None] | None = None
        self._pending = 0
        self._wake = asyncio.Event()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve delivery reports on ``loop`` until close()."""
        self._loop = loop
        self._server = loop.create_task(self._serve_reports())

    async def _serve_reports(self) -> None:
        while True:
            if self._pending == 0:
                self._wake.clear()
                await self._wake.wait()
            for producer in self._producers:
                producer.poll(0)
            await asyncio.sleep(REPORT_INTERVAL_S)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Wait (bounded) for what is in flight, then stop serving reports."""
        deadline = time.monotonic() + timeout_s
        while self._unacknowledged() and time.monotonic() < deadline:
            for producer in self._producers:
                producer.poll(0.005)
            await asyncio.sleep(0)
        if self._unacknowledged():
            log.warning("%d output records were not acknowledged before shutdown", self._unacknowledged())
        if self._server is not None:
            self._server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._server

    def _unacknowledged(self) -> int:
        return sum(len(producer) for producer in self._producers)

    def reply(self, reply: Reply) -> asyncio.Future[None]:
        return self._publish(topic_named(REPLIES), reply)

    def audit(self, event: AuditEvent) -> asyncio.Future[None]:
        return self._publish(topic_named(AUDIT), event)

    def command(self, command: CommandMessage) -> asyncio.Future[None]:
        return self._publish(topic_named(COMMANDS), command)

    def dead_letter(self, letter: DeadLetter) -> asyncio.Future[None]:
        return self._publish(topic_named(DEAD_LETTER), letter, key=letter.key)

    def alarm(self, alarm: Alarm) -> asyncio.Future[None]:
        return self._publish(topic_named(ALARMS), alarm)

    def _completion(self, future: asyncio.Future[None], topic: str) -> Callable[[KafkaError | None, object], None]:
        """The delivery report handler; it runs inside poll(), on the loop's thread."""
        def done(error: KafkaError | None, _message: object) -> None:
            self._pending -= 1
            _resolve(future, None if error is None else OutputDeliveryError(f"{topic}: {error.name()}"))

        return done

    def _serde(self, topic: Topic) -> AvroSerde:
        serde = self._serdes.get(topic.name)
        if serde is None:
            serde = self._serdes[topic.name] = AvroSerde.for_topic(topic, registry=self._registry)
        return serde

    def changelog(self, topic: str, partition: int, key: bytes, value: bytes | None, *,
                  on_callers_clock: bool = False) -> asyncio.Future[None]:
        """One table changelog record, already serialized (``value`` None: a tombstone).

        Table writes ride on these librdkafka producers rather than Faust's Python producer: encoding and
        sending them in C took about a fifth of the worker's event-loop time off it (pipeline benchmark).
        ``on_callers_clock``: something the caller waits for waits for this acknowledgement (a write-ahead
        ledger entry before its ModMed write), so it leaves with the replies' 1 ms linger, not in a batch."""
        return self._produce(self._replies if on_callers_clock else self._bulk, topic, value, key, partition)

    def _publish(self, topic: Topic, model: AvroModel, *, key: bytes | None = None) -> asyncio.Future[None]:
        record = model.to_avro()
        value = self._serde(topic).encode(record)
        producer = self._replies if topic.name == REPLIES else self._bulk
        return self._produce(producer, topic.name, value, key if topic.name == DEAD_LETTER else topic.key_of(record))

    def _produce(self, producer: Producer, topic: str, value: bytes | None, key: bytes | None,
                 partition: int | None = None) -> asyncio.Future[None]:
        loop = self._loop
        if loop is None:
            raise RuntimeError("KafkaOutputs.start() was not called")
        future: asyncio.Future[None] = loop.create_future()
        on_delivery = self._completion(future, topic)
        target = PARTITION_BY_KEY if partition is None else partition
        while True:
            try:
                producer.produce(topic, value=value, key=key, partition=target, on_delivery=on_delivery)
                self._pending += 1
                self._wake.set()
                return future
            except BufferError:  # the local queue is full: serve delivery reports until it drains
                producer.poll(FULL_QUEUE_BACKOFF_S)
            except KafkaException as exc:  # refused before sending (e.g. too large): the caller's future fails
                future.set_exception(OutputDeliveryError(f"{topic}: {exc.args[0].name()}"))
                return future


def _resolve(future: asyncio.Future[None], error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
