"""The per-practice SIEM firehose: `callstream.audit.v1` → each practice's own signed webhook.

Guarantees, and how:

- **Isolation.** An event goes only to the endpoint of the practice named in the event; a message
  whose Kafka key names another practice is dead-lettered instead of guessed at. Each practice's
  secret signs only its own deliveries.
- **Per-practice order.** Each practice has one delivery chain: its events are delivered (or
  dead-lettered) one after another in topic order. Chains of different practices run
  concurrently, so a slow or dead endpoint delays only its own practice.
- **Nothing lost.** An offset is committed only when every event up to it is delivered,
  dead-lettered to `callstream.siem-dead-letter.v1`, or has no endpoint to go to. Redelivery
  after a crash is safe: the webhook-id is the audit event id, receivers de-duplicate on it.
- **Retries.** Exponential backoff with jitter (honouring Retry-After) up to a retry budget, then
  the dead-letter topic. After one event exhausts the budget the practice is "degraded": its next
  events get a single attempt each until one succeeds, so a dead endpoint costs one budget, not
  one per event.
- **410 Gone** disables the practice's endpoint for the life of the process: its events are
  dead-lettered without a request until the tenant directory is fixed and the sink restarted.
- **Backpressure.** When too many events await delivery the consumer pauses its partitions.

Logs name practices, partitions, offsets and event ids; never URLs (some carry tokens), secrets
or record contents.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import httpx
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from callstream import __version__
from callstream.errors import ServiceUnavailableError
from callstream.tenants import SiemFormat, TenantDirectory
from schemas.errors import SchemaError, SchemaRegistryError
from schemas.models import UNRESOLVED_PRACTICE_ID
from schemas.topics import AUDIT, SIEM_DEAD_LETTER
from sinks.formats import render_body
from sinks.kafka_io import (
    AuditDecoder,
    Backoff,
    DeadLetterWriter,
    consumer_config,
    dead_letter,
    position,
    producer_config,
)
from sinks.payload import AuditRecord, audit_record
from sinks.webhooks import WebhookSecret, WebhookSecretError, resolve_secret, retry_after_seconds, signature_headers

logger = logging.getLogger(__name__)

SIEM_GROUP = "callstream-audit-siem"
USER_AGENT = f"callstream-siem/{__version__}"
MAX_RESPONSE_BYTES = 64 * 1024
MAX_MESSAGES_PER_TURN = 500
"""Messages routed before the loop yields to the delivery chains."""
DEFAULT_SIEM_BACKOFF = Backoff(base_s=0.5, cap_s=60.0)


class SiemOutcome(StrEnum):
    """Delivery outcomes; the same values as streams.metrics.SiemOutcome."""

    DELIVERED = "delivered"
    RETRIED = "retried"
    FAILED = "failed"
    DISABLED = "disabled"


class SiemMetrics(Protocol):
    """What the firehose reports; streams.metrics.Metrics satisfies it (siem_deliveries_total)."""

    def record_siem_delivery(self, practice_id: str, outcome: SiemOutcome | str, seconds: float | None = None) -> None:
        """One outcome for one practice, with the request latency when a request was made."""


@dataclass
class DeliveryTally:
    """In-process counts per practice and outcome: the CLI's periodic summary and the tests' view."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_siem_delivery(self, practice_id: str, outcome: SiemOutcome | str, seconds: float | None = None) -> None:
        with self._lock:
            key = (practice_id, str(outcome))
            self.counts[key] = self.counts.get(key, 0) + 1

    def total(self, outcome: SiemOutcome, practice_id: str | None = None) -> int:
        with self._lock:
            return sum(n for (practice, kind), n in self.counts.items()
                       if kind == outcome.value and practice_id in (None, practice))

    def summary(self) -> str:
        """One log line: totals per outcome, no practice breakdown."""
        return ", ".join(f"{outcome.value} {self.total(outcome)}" for outcome in SiemOutcome)


@dataclass(frozen=True, slots=True)
class SiemPolicy:
    """Retry budget, timeouts and limits of the firehose."""

    max_attempts: int = 8
    backoff: Backoff = DEFAULT_SIEM_BACKOFF
    request_timeout_s: float = 10.0
    max_pending: int = 10_000
    max_connections: int = 200
    commit_interval_s: float = 0.5
    drain_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.max_pending < 1 or self.request_timeout_s <= 0:
            raise ValueError("max_attempts and max_pending must be >= 1 and request_timeout_s > 0")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how one practice receives its audit events."""

    practice_id: str
    url: str = field(repr=False)
    secret: WebhookSecret = field(repr=False)
    body_format: SiemFormat


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """Why an event of this practice is not sent: skipped (no endpoint) or dead-lettered."""

    reason: str
    error_class: str
    dead_letter: bool
    outcome: SiemOutcome | None = None


class EndpointDirectory:
    """Practice id → its own endpoint, from the tenant directory; remembers disabled endpoints."""

    def __init__(self, tenants: TenantDirectory) -> None:
        self._tenants = tenants
        self.configured = sum(1 for practice_id in tenants if tenants[practice_id].siem is not None)
        self._secrets: dict[str, WebhookSecret] = {}
        self.disabled: dict[str, str] = {}
        self._warned: set[str] = set()

    def endpoint_for(self, practice_id: str) -> Endpoint | Undeliverable:
        if practice_id == UNRESOLVED_PRACTICE_ID:
            return Undeliverable("call matched no practice", "UnresolvedPractice", dead_letter=False)
        practice = self._tenants.get(practice_id)
        if practice is None:
            self._warn_once(practice_id, "audit events for practice %s skipped: not in the tenant directory")
            return Undeliverable("practice not in the tenant directory", "UnknownPractice", dead_letter=False)
        if practice.siem is None:
            return Undeliverable("practice has no SIEM endpoint", "NoSiemEndpoint", dead_letter=False)
        if practice_id in self.disabled:
            return Undeliverable(self.disabled[practice_id], "EndpointDisabled", dead_letter=True,
                                 outcome=SiemOutcome.DISABLED)
        secret = self._secrets.get(practice_id)
        if secret is None:
            try:
                secret = resolve_secret(practice.siem.secret_ref)
            except WebhookSecretError as exc:
                self._warn_once(practice_id, "SIEM deliveries of practice %s dead-lettered: %s", exc)
                return Undeliverable(f"signing secret unavailable: {exc}", type(exc).__name__, dead_letter=True,
                                     outcome=SiemOutcome.FAILED)
            self._secrets[practice_id] = secret
        return Endpoint(practice_id, practice.siem.url, secret, practice.siem.format)

    def disable(self, practice_id: str, reason: str) -> None:
        self.disabled[practice_id] = reason
        logger.error("SIEM endpoint of practice %s disabled: %s; its audit events go to %s until the tenant "
                     "directory is updated and the sink restarted", practice_id, reason, SIEM_DEAD_LETTER)

    def _warn_once(self, practice_id: str, message: str, *details: object) -> None:
        """One warning per practice, not one per event."""
        if practice_id not in self._warned:
            self._warned.add(practice_id)
            logger.warning(message, practice_id, *details)


@dataclass(slots=True)
class Delivery:
    """One audit event on its way to one practice's endpoint."""

    message: Message
    partition: int
    offset: int
    practice_id: str
    record: AuditRecord


class OffsetTracker:
    """Per partition, the offsets consumed in order and which of them are finished.

    The committable position is one past the longest finished prefix, so an offset is never
    committed while an earlier event of its partition is still on its way.
    """

    def __init__(self) -> None:
        self._in_order: dict[int, deque[int]] = {}
        self._finished: dict[int, set[int]] = {}
        self._committable: dict[int, int] = {}

    @property
    def pending(self) -> int:
        return sum(len(offsets) for offsets in self._in_order.values())

    def start(self, partition: int, offset: int) -> None:
        self._in_order.setdefault(partition, deque()).append(offset)

    def finish(self, partition: int, offset: int) -> None:
        if partition not in self._in_order:
            return  # the partition was revoked meanwhile; its new owner re-reads the event
        finished = self._finished.setdefault(partition, set())
        finished.add(offset)
        in_order = self._in_order[partition]
        while in_order and in_order[0] in finished:
            head = in_order.popleft()
            finished.discard(head)
            self._committable[partition] = head + 1

    def take_committable(self) -> dict[int, int]:
        """Positions that advanced since the last call."""
        committable, self._committable = self._committable, {}
        return committable

    def forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._in_order.pop(partition, None)
            self._finished.pop(partition, None)
            self._committable.pop(partition, None)


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
    ) -> None:
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.policy = policy
        self.endpoints = EndpointDirectory(tenants)
        self.metrics: SiemMetrics = metrics or DeliveryTally()
        self._decoder = decoder or AuditDecoder()
        self._rng = rng or random.Random()
        kafka_logger = logging.getLogger("sinks.kafka")
        self._consumer = Consumer({**consumer_config(bootstrap, group_id, session_timeout_ms), "logger": kafka_logger,
                                   "on_commit": self._on_commit})
        self._dead_letters = DeadLetterWriter(Producer({**producer_config(bootstrap), "logger": kafka_logger}))
        self._tracker = OffsetTracker()
        self._chains: dict[str, _Chain] = {}
        self._degraded: set[str] = set()
        self._paused = False
        self._transport: httpx.AsyncHTTPTransport | None = None
        self._timeout = httpx.Timeout(policy.request_timeout_s, pool=None).as_dict()
        self._orphans: set[asyncio.Task[None]] = set()
        """Dead-letter writes of messages that never reached a chain (undecodable, key mismatch)."""
        self._metrics_failed = False

    def run(self, stop: threading.Event) -> None:
        """Consume and deliver until `stop` is set; drain briefly, commit, leave the group."""
        asyncio.run(self._run(stop))

    async def _run(self, stop: threading.Event) -> None:
        limits = httpx.Limits(max_connections=self.policy.max_connections, max_keepalive_connections=self.policy.max_connections)
        # The transport, not an AsyncClient: the client logs every request URL at INFO, and SIEM URLs
        # carry tokens. A transport never logs a URL and never follows a redirect.
        async with httpx.AsyncHTTPTransport(limits=limits) as transport:
            self._transport = transport
            self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                     on_lost=self._on_lost)
            logger.info("SIEM firehose consuming %s for %d practices with an endpoint", self.topic, self.endpoints.configured)
            try:
                await self._consume_until(stop)
            finally:
                await self._drain()
                self._commit(synchronous=True)
                self._consumer.close()
                self._dead_letters.flush(5.0)
                logger.info("SIEM firehose stopped: %s", self._summary())

    async def _consume_until(self, stop: threading.Event) -> None:
        last_commit = time.monotonic()
        registry_retry = 0
        while not stop.is_set():
            self._dead_letters.poll()
            self._apply_backpressure()
            taken, rewound = self._take_available()
            if time.monotonic() - last_commit >= self.policy.commit_interval_s:
                self._commit(synchronous=False)
                last_commit = time.monotonic()
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
            self._spawn_dead_letter(message, None, f"not a valid audit event: {exc}", type(exc).__name__, 0)
            return True
        except SchemaRegistryError as exc:
            logger.warning("schema registry unavailable (%s); re-reading partition %d from offset %d", exc, partition, offset)
            self._consumer.seek(TopicPartition(self.topic, partition, offset))
            return False
        self._tracker.start(partition, offset)
        key = message.key()
        if key is not None and key != event.practice_id.encode():
            self._spawn_dead_letter(message, event.practice_id, "message key does not match the event's practice_id",
                                    "PracticeKeyMismatch", 0)
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
                await self._write_dead_letter(delivery.message, practice_id, f"internal error ({type(exc).__name__})",
                                              type(exc).__name__, 0)
            chain.current = None
            self._tracker.finish(delivery.partition, delivery.offset)

    async def _deliver(self, delivery: Delivery) -> None:
        """Deliver with retries, or dead-letter; returns once the event is settled."""
        target = self.endpoints.endpoint_for(delivery.practice_id)
        if isinstance(target, Undeliverable):
            if target.dead_letter:
                if target.outcome is not None:
                    self._record(delivery.practice_id, target.outcome)
                await self._write_dead_letter(delivery.message, delivery.practice_id, target.reason, target.error_class, 0)
            return
        body = render_body(delivery.record, target.body_format)
        max_attempts = 1 if delivery.practice_id in self._degraded else self.policy.max_attempts
        last_failure = "no attempt"
        for attempt in range(1, max_attempts + 1):
            status, retry_after_s, seconds, last_failure = await self._post(target, delivery.record.event_id, body)
            if status is not None and 200 <= status < 300:
                self._degraded.discard(delivery.practice_id)
                self._record(delivery.practice_id, SiemOutcome.DELIVERED, seconds)
                return
            if status == 410:
                self.endpoints.disable(delivery.practice_id, "endpoint answered 410 Gone")
                self._record(delivery.practice_id, SiemOutcome.DISABLED, seconds)
                await self._write_dead_letter(delivery.message, delivery.practice_id,
                                              "endpoint answered 410 Gone; practice endpoint disabled",
                                              "EndpointGone", attempt)
                return
            if attempt < max_attempts:
                self._record(delivery.practice_id, SiemOutcome.RETRIED, seconds)
                delay = self.policy.backoff.delay(attempt - 1, self._rng)
                await asyncio.sleep(min(max(delay, retry_after_s or 0.0), self.policy.backoff.cap_s))
        self._degraded.add(delivery.practice_id)
        self._record(delivery.practice_id, SiemOutcome.FAILED)
        logger.warning("SIEM delivery of event %s to practice %s failed after %d attempts (%s); dead-lettered",
                       delivery.record.event_id, delivery.practice_id, max_attempts, last_failure)
        await self._write_dead_letter(delivery.message, delivery.practice_id,
                                      f"retry budget of {max_attempts} attempts exhausted (last: {last_failure})",
                                      "RetryBudgetExhausted", max_attempts)

    async def _post(self, endpoint: Endpoint, event_id: str, body: bytes) -> tuple[int | None, float | None, float, str]:
        """One signed attempt: (status or None, Retry-After seconds, request seconds, failure label)."""
        assert self._transport is not None
        headers = {
            **signature_headers(endpoint.secret, event_id, body),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        started = time.monotonic()
        try:
            request = httpx.Request("POST", endpoint.url, content=body, headers=headers,
                                    extensions={"timeout": self._timeout})
            response = await self._transport.handle_async_request(request)
            try:
                received = 0
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    if received > MAX_RESPONSE_BYTES:
                        break
            finally:
                await response.aclose()
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return None, None, time.monotonic() - started, type(exc).__name__
        status = response.status_code
        return status, retry_after_seconds(response.headers.get("retry-after")), time.monotonic() - started, f"HTTP {status}"

    async def _write_dead_letter(self, message: Message, practice_id: str | None, reason: str, error_class: str,
                                 attempts: int) -> None:
        """Write to the SIEM dead-letter topic, retrying until the broker acknowledges it."""
        letter = dead_letter(message, reason=reason, error_class=error_class, attempts=attempts, practice_id=practice_id)
        key = practice_id.encode() if practice_id else None
        loop = asyncio.get_running_loop()
        retry = 0
        while True:
            acknowledged: asyncio.Future[KafkaError | None] = loop.create_future()

            def settle(error: KafkaError | None, future: asyncio.Future[KafkaError | None] = acknowledged) -> None:
                if not future.done():
                    future.set_result(error)

            try:
                self._dead_letters.write_async(self.dead_letter_topic, key, letter, settle)
                refusal = await asyncio.wait_for(acknowledged, timeout=30.0)
                failure = None if refusal is None else refusal.name()
            except (KafkaException, BufferError, TimeoutError) as exc:
                failure = type(exc).__name__
            if failure is None:
                return
            logger.warning("SIEM dead letter for partition %d offset %d not written (%s); retrying",
                           *position(message), failure)
            await asyncio.sleep(self.policy.backoff.delay(retry, self._rng))
            retry += 1

    def _spawn_dead_letter(self, message: Message, practice_id: str | None, reason: str, error_class: str,
                           attempts: int) -> None:
        """Dead-letter a message that never reaches a chain; its offset finishes once written."""
        async def write_then_finish() -> None:
            await self._write_dead_letter(message, practice_id, reason, error_class, attempts)
            self._tracker.finish(*position(message))

        logger.warning("audit message at partition %d offset %d dead-lettered: %s", *position(message), error_class)
        task = asyncio.get_running_loop().create_task(write_then_finish())
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    def _record(self, practice_id: str, outcome: SiemOutcome, seconds: float | None = None) -> None:
        """Report an outcome; a failing metrics backend must not turn a delivered event into a dead letter."""
        try:
            self.metrics.record_siem_delivery(practice_id, outcome, seconds)
        except Exception as exc:  # noqa: BLE001 - metrics are best effort, deliveries are not
            if not self._metrics_failed:
                self._metrics_failed = True
                logger.warning("SIEM delivery metrics failing (%s); deliveries continue", type(exc).__name__)

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
        """Give in-flight chains a moment to settle, then cancel what is left (it is re-read later)."""
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
        logger.info("assigned %s partitions %s", self.topic, sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what is settled, then abandon the rest of these partitions to their next owner."""
        self._commit(synchronous=True)
        self._abandon({tp.partition for tp in partitions})

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
        self._tracker.forget(partitions)
        logger.info("revoked %s partitions %s", self.topic, sorted(partitions))

    def _summary(self) -> str:
        if isinstance(self.metrics, DeliveryTally):
            return self.metrics.summary()
        return f"{len(self.endpoints.disabled)} endpoints disabled"
