"""The SIEM firehose: the Kafka consumer of `callstream.audit.v1` and one live delivery chain per practice.

It routes each audit event to its practice's chain (or the dead-letter topic when the key names
another practice or the event is undecodable), delivers with a few retries, and hands a practice
whose endpoint keeps failing to sinks/siem/parking.py. Offsets are committed only past settled events
(sinks/siem/offsets.py); too many pending events pause the partitions; once a second it has the
SIEM_DELIVERY alarm checked (sinks/siem/alarms.py). The guarantees are listed in sinks/siem/__init__.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from callstream.backends import ensure_topics
from callstream.errors import ServiceUnavailableError
from callstream.siem_delivery import SiemOutcome
from callstream.tenants import TenantDirectory
from schemas.errors import SchemaError, SchemaRegistryError
from schemas.topics import ALARMS, AUDIT, SIEM_DEAD_LETTER
from sinks.backlog import BacklogFigures, Clock, OutageAlarms, SystemClock
from sinks.backlog_io import BacklogStore, PartitionReader, state_topic_for
from sinks.formats import render_body
from sinks.kafka_io import AuditDecoder, DeadLetterWriter, consumer_config, position, producer_config
from sinks.payload import AuditRecord, audit_record
from sinks.siem.alarms import DeliveryAlarms
from sinks.siem.courier import Courier
from sinks.siem.endpoints import EndpointDirectory, Undeliverable
from sinks.siem.offsets import OffsetTracker
from sinks.siem.outcomes import DeliveryTally, SiemMetrics
from sinks.siem.parking import ParkedPractices
from sinks.siem.policy import SiemPolicy

logger = logging.getLogger(__name__)

SIEM_GROUP = "callstream-audit-siem"
MAX_MESSAGES_PER_TURN = 500
"""Messages routed before the loop yields to the delivery chains."""
ALARM_CHECK_INTERVAL_S = 1.0


@dataclass(slots=True)
class Delivery:
    """One audit event on its way to one practice's endpoint."""

    message: Message
    partition: int
    offset: int
    practice_id: str
    record: AuditRecord


@dataclass
class _Chain:
    """One practice's queue and the task draining it."""

    queue: deque[Delivery] = field(default_factory=deque)
    current: Delivery | None = None
    task: asyncio.Task[None] | None = None


class SiemFirehose:
    """Kafka consumer + per-practice async delivery chains. Run with `run(stop)` in its own thread."""

    def __init__(
        self,
        tenants: TenantDirectory,
        *,
        bootstrap: str,
        topic: str = AUDIT,
        group_id: str = SIEM_GROUP,
        dead_letter_topic: str = SIEM_DEAD_LETTER,
        policy: SiemPolicy = SiemPolicy(),
        metrics: SiemMetrics | None = None,
        decoder: AuditDecoder | None = None,
        session_timeout_ms: int = 6000,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        backlog_topic: str | None = None,
        alarms: OutageAlarms | None = None,
        alarm_topic: str = ALARMS,
        on_alarm: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.policy = policy
        self.endpoints = EndpointDirectory(tenants)
        self.metrics: SiemMetrics = metrics or DeliveryTally()
        self._decoder = decoder or AuditDecoder()
        self._rng = rng or random.Random()
        self.clock: Clock = clock or SystemClock()
        self._bootstrap = bootstrap
        kafka_logger = logging.getLogger("sinks.kafka")
        self._consumer = Consumer({**consumer_config(bootstrap, group_id, session_timeout_ms), "logger": kafka_logger,
                                   "on_commit": self._on_commit})
        producer = Producer({**producer_config(bootstrap), "logger": kafka_logger})
        self._dead_letters = DeadLetterWriter(producer)
        self.backlog_store = BacklogStore(bootstrap, backlog_topic or state_topic_for(group_id), producer)
        self._reader = PartitionReader(bootstrap, topic, group_id)
        self._courier = Courier(self.endpoints, self.metrics, self._dead_letters, dead_letter_topic, policy, self._rng)
        self._positions: dict[int, int] = {}
        """Per partition, the next offset the group consumer routes: where a parked practice rejoins it."""
        self._parked = ParkedPractices(self._courier, self.backlog_store, self._reader, self._decoder, policy,
                                       self.clock, self._rng, lambda partition: self._positions.get(partition, 0))
        self._tracker = OffsetTracker()
        self._chains: dict[str, _Chain] = {}
        self._paused = False
        self._alarms = DeliveryAlarms(producer, self.backlog_figures, self.clock, alarms or OutageAlarms(), alarm_topic,
                                      on_alarm)
        self._orphans: set[asyncio.Task[None]] = set()
        """Dead-letter writes of messages that never reached a chain (undecodable, key mismatch)."""

    def run(self, stop: threading.Event) -> None:
        """Consume and deliver until `stop` is set; drain briefly, commit, leave the group."""
        asyncio.run(self._run(stop))

    async def _run(self, stop: threading.Event) -> None:
        limits = httpx.Limits(max_connections=self.policy.max_connections, max_keepalive_connections=self.policy.max_connections)
        ensure_topics(self._bootstrap, [(self.backlog_store.topic, 1)])
        async with httpx.AsyncHTTPTransport(limits=limits) as transport:
            self._courier.transport = transport
            self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                     on_lost=self._on_lost)
            logger.info("SIEM firehose consuming %s for %d practices with an endpoint", self.topic, self.endpoints.configured)
            try:
                await self._consume_until(stop)
            finally:
                await self._drain()
                self._commit(synchronous=True)
                self._consumer.close()
                self._reader.close()
                self._dead_letters.flush(5.0)
                logger.info("SIEM firehose stopped: %s", self._summary())

    def backlog_figures(self) -> list[BacklogFigures]:
        """Parked practices now (any thread: a metrics scrape)."""
        return self._parked.figures()

    async def _consume_until(self, stop: threading.Event) -> None:
        last_commit = time.monotonic()
        last_alarm_check = time.monotonic()
        registry_retry = 0
        while not stop.is_set():
            self._dead_letters.poll()
            self._apply_backpressure()
            taken, rewound = self._take_available()
            if time.monotonic() - last_commit >= self.policy.commit_interval_s:
                self._commit(synchronous=False)
                last_commit = time.monotonic()
            if time.monotonic() - last_alarm_check >= ALARM_CHECK_INTERVAL_S:
                self._alarms.check()
                last_alarm_check = time.monotonic()
            if rewound:
                await asyncio.sleep(self.policy.backoff.delay(registry_retry, self._rng))
                registry_retry += 1
                continue
            registry_retry = 0 if taken else registry_retry
            await asyncio.sleep(0 if taken else 0.02)

    def _take_available(self) -> tuple[int, bool]:
        """Route waiting messages, at most up to max_pending; (how many, whether a partition was rewound).

        One poll per message, each routed before the next poll: a rebalance callback runs inside
        poll, so no message in hand predates the current assignment.
        """
        room = max(1, min(MAX_MESSAGES_PER_TURN, self.policy.max_pending - self._tracker.pending))
        for taken in range(room):
            message = self._consumer.poll(0)  # at least one poll per turn: it also serves rebalances
            if message is None:
                return taken, False
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise ServiceUnavailableError(f"Kafka consumer failed fatally: {error.name()}")
                logger.debug("Kafka consumer: %s", error.name())
            elif not self._accept(message):
                return taken + 1, True
        return room, False

    def _accept(self, message: Message) -> bool:
        """Route one message: to its practice's chain, the dead-letter topic, or nowhere.

        Returns False when the message must be read again later (the schema registry is down: not
        the message's fault); its partition is rewound to it and nothing after it is taken.
        """
        partition, offset = position(message)
        try:
            event = self._decoder.decode(message.value())
        except SchemaError as exc:
            self._tracker.start(partition, offset)
            self._positions[partition] = offset + 1
            self._spawn_dead_letter(message, None, f"not a valid audit event: {exc}", type(exc).__name__, 0)
            return True
        except SchemaRegistryError as exc:
            logger.warning("schema registry unavailable (%s); re-reading partition %d from offset %d", exc, partition, offset)
            self._consumer.seek(TopicPartition(self.topic, partition, offset))
            return False
        self._tracker.start(partition, offset)
        self._positions[partition] = offset + 1
        key = message.key()
        if key is not None and key != event.practice_id.encode():
            self._spawn_dead_letter(message, event.practice_id, "message key does not match the event's practice_id",
                                    "PracticeKeyMismatch", 0)
            return True
        if self._parked.owes(event.practice_id, partition, offset):
            self._tracker.finish(partition, offset)
            return True
        chain = self._chains.setdefault(event.practice_id, _Chain())
        chain.queue.append(Delivery(message, partition, offset, event.practice_id, audit_record(event)))
        if chain.task is None or chain.task.done():
            chain.task = asyncio.get_running_loop().create_task(self._drain_chain(event.practice_id, chain))
        return True

    async def _drain_chain(self, practice_id: str, chain: _Chain) -> None:
        """Deliver one practice's events strictly one after another."""
        while chain.queue:
            delivery = chain.queue.popleft()
            chain.current = delivery
            try:
                await self._deliver(delivery)
            except Exception as exc:  # noqa: BLE001 - a bug must not stall the practice's offsets forever
                logger.error("SIEM delivery of event %s to practice %s crashed (%s); dead-lettered",
                             delivery.record.event_id, practice_id, type(exc).__name__)
                await self._courier.dead_letter(delivery.message, practice_id, f"internal error ({type(exc).__name__})",
                                                type(exc).__name__, 0)
            chain.current = None
            self._tracker.finish(delivery.partition, delivery.offset)

    async def _deliver(self, delivery: Delivery) -> None:
        """Deliver with retries, or dead-letter; returns once the event is settled."""
        target = self.endpoints.endpoint_for(delivery.practice_id)
        if isinstance(target, Undeliverable):
            if target.dead_letter:
                if target.outcome is not None:
                    self._courier.record(delivery.practice_id, target.outcome)
                await self._courier.dead_letter(delivery.message, delivery.practice_id, target.reason,
                                                target.error_class, 0)
            return
        body = render_body(delivery.record, target.body_format)
        first_failure_at: float | None = None
        retry_after_s: float | None = None
        for attempt in range(1, self.policy.max_attempts + 1):
            status, retry_after_s, seconds, last_failure = await self._courier.post(target, delivery.record.event_id, body)
            if status is not None and 200 <= status < 300:
                self._courier.record(delivery.practice_id, SiemOutcome.DELIVERED, seconds)
                return
            if status == 410:
                self.endpoints.disable(delivery.practice_id, "endpoint answered 410 Gone")
                self._courier.record(delivery.practice_id, SiemOutcome.DISABLED, seconds)
                await self._courier.dead_letter(delivery.message, delivery.practice_id,
                                                "endpoint answered 410 Gone; practice endpoint disabled",
                                                "EndpointGone", attempt)
                return
            first_failure_at = first_failure_at if first_failure_at is not None else self.clock.now()
            self._courier.record(delivery.practice_id, SiemOutcome.RETRIED, seconds)
            if attempt < self.policy.max_attempts:
                delay = self.policy.backoff.delay(attempt - 1, self._rng)
                await self.clock.sleep(min(max(delay, retry_after_s or 0.0), self.policy.backoff.cap_s))
        assert first_failure_at is not None
        logger.warning("SIEM delivery of event %s to practice %s failed %d times (last: %s); parking the practice",
                       delivery.record.event_id, delivery.practice_id, self.policy.max_attempts, last_failure)
        await self._park(delivery, first_failure_at, retry_after_s)

    async def _park(self, delivery: Delivery, failed_since: float, retry_after_s: float | None) -> None:
        """Hand the practice's events from `delivery` on to a backlog task, once the log has its record.

        Until the record is acknowledged the practice's queued events stay tracked, so no commit can
        pass an event that nothing durable owes.
        """
        chain = self._chains[delivery.practice_id]
        if not await self._parked.park(delivery.practice_id, delivery.partition, delivery.offset, failed_since,
                                       retry_after_s, pending=1 + len(chain.queue)):
            return  # the partition was revoked meanwhile; its next owner reads the record
        pending = 1 + len(chain.queue)
        while chain.queue:
            queued = chain.queue.popleft()
            self._tracker.finish(queued.partition, queued.offset)
        self._parked.activate(delivery.practice_id, pending)

    def _spawn_dead_letter(self, message: Message, practice_id: str | None, reason: str, error_class: str,
                           attempts: int) -> None:
        """Dead-letter a message that never reaches a chain; its offset finishes once written."""
        async def write_then_finish() -> None:
            await self._courier.dead_letter(message, practice_id, reason, error_class, attempts)
            self._tracker.finish(*position(message))

        logger.warning("audit message at partition %d offset %d dead-lettered: %s", *position(message), error_class)
        task = asyncio.get_running_loop().create_task(write_then_finish())
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    def _apply_backpressure(self) -> None:
        """Pause all partitions while too much is pending; resume below half the limit."""
        pending = self._tracker.pending
        assignment = self._consumer.assignment()
        if not self._paused and pending >= self.policy.max_pending:
            if assignment:
                self._consumer.pause(assignment)
            self._paused = True
            logger.info("SIEM firehose paused: %d events awaiting delivery", pending)
        elif self._paused and pending <= self.policy.max_pending // 2:
            if assignment:
                self._consumer.resume(assignment)
            self._paused = False

    def _commit(self, *, synchronous: bool) -> None:
        offsets = self._tracker.take_committable()
        if not offsets:
            return
        positions = [TopicPartition(self.topic, partition, offset) for partition, offset in offsets.items()]
        try:
            if synchronous:
                self._consumer.commit(offsets=positions, asynchronous=False)
            else:
                self._consumer.commit(offsets=positions, asynchronous=True)
        except KafkaException as exc:
            logger.warning("offset commit failed (%s); the events are settled, a re-read only duplicates",
                           exc.args[0].name())

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            logger.warning("offset commit failed (%s); the events are settled, a re-read only duplicates", error.name())

    async def _drain(self) -> None:
        """Give in-flight chains a moment to settle, then cancel what is left (it is re-read later).

        Parked practices stop at once: their progress is written, the next run resumes them.
        """
        await self._parked.stop()
        tasks = [chain.task for chain in self._chains.values() if chain.task is not None] + list(self._orphans)
        deadline = time.monotonic() + self.policy.drain_timeout_s
        while any(not task.done() for task in tasks) and time.monotonic() < deadline:
            self._dead_letters.poll()  # dead-letter acknowledgements arrive through the producer's poll
            await asyncio.sleep(0.02)
        unfinished = [task for task in tasks if not task.done()]
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        self._chains.clear()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.assign(partitions)
        if partitions:
            # librdkafka keeps a partition's pause flag across revoke and re-assign: set it explicitly.
            (consumer.pause if self._paused else consumer.resume)(partitions)
            self._resume_parked(consumer, partitions)
        logger.info("assigned %s partitions %s", self.topic, sorted(tp.partition for tp in partitions))

    def _resume_parked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Learn where the group consumer resumes these partitions, then start the backlog tasks of practices
        parked on them (by this or another process)."""
        try:
            committed = consumer.committed(partitions, timeout=10)
        except KafkaException as exc:
            raise ServiceUnavailableError(f"committed offsets of {self.topic} unreadable: {exc.args[0].name()}") from None
        for tp in committed:
            self._positions[tp.partition] = max(tp.offset, 0)
        self._parked.resume({tp.partition for tp in partitions})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what is settled, write parked practices' progress, abandon the rest to the next owner."""
        self._commit(synchronous=True)
        revoked = {tp.partition for tp in partitions}
        self._parked.save(revoked)
        self._dead_letters.flush(5.0)
        self._abandon(revoked)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._abandon({tp.partition for tp in partitions})

    def _abandon(self, partitions: set[int]) -> None:
        """Drop queued and in-flight deliveries of these partitions (re-read by the next owner; the
        receiver de-duplicates whatever was already sent)."""
        loop = asyncio.get_running_loop()
        for practice_id, chain in list(self._chains.items()):
            chain.queue = deque(d for d in chain.queue if d.partition not in partitions)
            if chain.current is not None and chain.current.partition in partitions and chain.task is not None:
                chain.task.cancel()
                chain.current = None
                chain.task = loop.create_task(self._drain_chain(practice_id, chain)) if chain.queue else None
        self._parked.abandon(partitions)
        for partition in partitions:
            self._positions.pop(partition, None)
        self._tracker.forget(partitions)
        logger.info("revoked %s partitions %s", self.topic, sorted(partitions))

    def _summary(self) -> str:
        if isinstance(self.metrics, DeliveryTally):
            return self.metrics.summary()
        return f"{len(self.endpoints.disabled)} endpoints disabled"
