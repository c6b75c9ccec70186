"""The per-practice SIEM firehose: `callstream.audit.v1` → each practice's own signed webhook.

Guarantees, and how:

- **Isolation.** An event goes only to the endpoint of the practice named in the event; a message
  whose Kafka key names another practice is dead-lettered instead of guessed at. Each practice's
  secret signs only its own deliveries.
- **Per-practice order.** Each practice has one delivery chain: its events are delivered (or
  dead-lettered) one after another in topic order. Chains of different practices run
  concurrently, so a slow or dead endpoint delays only its own practice.
- **Nothing lost.** An offset is committed only when every event up to it is delivered,
  dead-lettered to `callstream.siem-dead-letter.v1`, owed by a parked practice whose backlog
  record the log has acknowledged, or has no endpoint to go to. Redelivery
  after a crash is safe: the webhook-id is the audit event id, receivers de-duplicate on it.
- **Retries, then parking.** A few attempts seconds apart (exponential backoff with jitter,
  honouring Retry-After). If the event still fails, its practice is *parked* (sinks.backlog): a
  record on the state topic says from which offset of its partition the practice is owed events,
  the offsets move on, and a per-practice task re-reads the practice's events from the audit topic
  and retries the oldest after 30 s, 5 min, 30 min, 2 h, 5 h, then every 10 h. Other practices on
  the same partitions never wait for it, and a restarted or rebalanced firehose resumes it from the
  state topic. Once caught up with the live consumer, the practice is delivered live again.
- **Dead letters.** Only when a practice's endpoint has failed without a break for longer than
  the horizon (default 72 h) is its backlog dead-lettered to `callstream.siem-dead-letter.v1`;
  `callstream siem redeliver` re-sends from there with the same webhook-id.
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
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

import httpx
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from callstream import __version__
from callstream.devstack import ensure_topics
from callstream.errors import ServiceUnavailableError
from callstream.siem_delivery import SiemOutcome
from callstream.retry import Backoff, retry_after_seconds
from callstream.tenants import SiemFormat, TenantDirectory
from callstream.webhooks import WebhookSecret, WebhookSecretError, resolve_secret, signature_headers
from schemas.errors import SchemaError, SchemaRegistryError
from schemas.models import UNRESOLVED_PRACTICE_ID, Alarm, AlarmKind, AlarmState, AuditEvent
from schemas.serde import AvroSerde
from schemas.topics import ALARMS, AUDIT, SIEM_DEAD_LETTER
from sinks.backlog import Backlog, BacklogFigures, Clock, DeliverySchedule, OutageAlarms, SystemClock
from sinks.backlog_io import BacklogStore, PartitionReader, state_topic_for
from sinks.formats import render_body
from sinks.kafka_io import (
    AuditDecoder,
    DeadLetterWriter,
    consumer_config,
    dead_letter,
    position,
    producer_config,
)
from sinks.payload import AuditRecord, audit_record

logger = logging.getLogger(__name__)

SIEM_GROUP = "callstream-audit-siem"
USER_AGENT = f"callstream-siem/{__version__}"
MAX_RESPONSE_BYTES = 64 * 1024
MAX_MESSAGES_PER_TURN = 500
"""Messages routed before the loop yields to the delivery chains."""
DEFAULT_SIEM_BACKOFF = Backoff(base_s=1.0, cap_s=8.0)
ALARM_CHECK_INTERVAL_S = 1.0
PERSIST_INTERVAL_S = 1.0
"""How often a draining backlog's progress is written (a stale one only re-sends duplicates)."""


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
    """Live attempts before parking, the parked schedule, timeouts and limits of the firehose."""

    max_attempts: int = 4
    schedule: DeliverySchedule = DeliverySchedule()
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


async def post_signed(transport: httpx.AsyncHTTPTransport, endpoint: Endpoint, event_id: str, body: bytes,
                      timeout: dict[str, float | None]) -> tuple[int | None, float | None, float, str]:
    """One signed attempt (webhook-id = the audit event id, a fresh timestamp and signature):
    (status or None, Retry-After seconds, request seconds, failure label).

    Through a transport, not an AsyncClient: the client logs every request URL at INFO, and SIEM URLs
    carry tokens. A transport never logs a URL and never follows a redirect.
    """
    headers = {
        **signature_headers(endpoint.secret, event_id, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
    started = time.monotonic()
    try:
        request = httpx.Request("POST", endpoint.url, content=body, headers=headers, extensions={"timeout": timeout})
        response = await transport.handle_async_request(request)
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
class _Parked:
    """A parked practice in this process: its backlog, read-ahead buffer and the task draining it."""

    backlog: Backlog
    scan_from: int
    """Next offset of the partition to read; every message below it is buffered or settled."""
    active: bool = False
    """False until the log acknowledged the backlog record: until then its events stay tracked."""
    buffer: deque[Message] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    persisted_at: float = 0.0


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
        self._reader_lock = asyncio.Lock()
        self._tracker = OffsetTracker()
        self._chains: dict[str, _Chain] = {}
        self._parked: dict[str, _Parked] = {}
        self._positions: dict[int, int] = {}
        """Per partition, the next offset the group consumer routes: where a parked practice rejoins it."""
        self._skip_below: dict[str, tuple[int, int]] = {}
        """Practice → (partition, offset): events below it were already settled by its backlog task."""
        self._paused = False
        self.alarms = alarms or OutageAlarms()
        self.alarm_topic = alarm_topic
        self._alarm_serde = AvroSerde.for_topic(ALARMS)
        self._producer = producer
        self._on_alarm = on_alarm
        """Told (practice id, firing) on every SIEM_DELIVERY transition: the sinks' alarm gauge."""
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
        ensure_topics(self._bootstrap, [(self.backlog_store.topic, 1)])
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
                self._reader.close()
                self._dead_letters.flush(5.0)
                logger.info("SIEM firehose stopped: %s", self._summary())

    def backlog_figures(self) -> list[BacklogFigures]:
        """Parked practices now (any thread: a metrics scrape)."""
        now = self.clock.now()
        return [BacklogFigures(parked.backlog.practice_id, parked.backlog.pending, parked.backlog.age_s(now))
                for parked in list(self._parked.values()) if parked.active]

    def _check_alarms(self) -> None:
        """SIEM_DELIVERY on callstream.alarms.v1: FIRING when a practice's oldest owed event waits past the
        threshold, CLEARED once it owes nothing."""
        now = self.clock.now()
        ages = {figures.practice_id: figures.oldest_age_s for figures in self.backlog_figures()}
        for practice_id in sorted(set(ages) | self.alarms.firing):
            transition = self.alarms.observe(practice_id, ages.get(practice_id))
            if transition is None:
                continue
            age = ages.get(practice_id, 0.0)
            moment = datetime.fromtimestamp(now, UTC)
            alarm = Alarm(alarm_id=uuid.uuid4(), practice_id=practice_id, kind=AlarmKind.SIEM_DELIVERY,
                          state=AlarmState(transition.value), value=age, threshold=self.alarms.threshold_s,
                          window_start=moment - timedelta(seconds=age), window_end=moment, raised_at=moment)
            try:
                self._producer.produce(self.alarm_topic, key=practice_id.encode(),
                                       value=self._alarm_serde.encode(alarm.to_avro()))
            except (KafkaException, BufferError) as exc:
                logger.warning("SIEM_DELIVERY alarm for practice %s not published (%s)", practice_id,
                               type(exc).__name__)
            if self._on_alarm is not None:
                self._on_alarm(practice_id, transition.value == "FIRING")
            logger.warning("SIEM_DELIVERY %s for practice %s (oldest owed event %.0f s old)", transition.value,
                           practice_id, age)

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
                self._check_alarms()
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
        if self._owed_elsewhere(event.practice_id, partition, offset):
            self._tracker.finish(partition, offset)
            return True
        chain = self._chains.setdefault(event.practice_id, _Chain())
        chain.queue.append(Delivery(message, partition, offset, event.practice_id, audit_record(event)))
        if chain.task is None or chain.task.done():
            chain.task = asyncio.get_running_loop().create_task(self._drain_chain(event.practice_id, chain))
        return True

    def _owed_elsewhere(self, practice_id: str, partition: int, offset: int) -> bool:
        """The practice is parked (its backlog task owes this event) or its backlog task already settled it."""
        parked = self._parked.get(practice_id)
        if parked is not None and parked.active:
            parked.backlog = replace(parked.backlog, pending=parked.backlog.pending + 1)
            return True
        skip = self._skip_below.get(practice_id)
        if skip is not None:
            if skip[0] == partition and offset < skip[1]:
                return True
            del self._skip_below[practice_id]
        return False

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
        first_failure_at: float | None = None
        retry_after_s: float | None = None
        for attempt in range(1, self.policy.max_attempts + 1):
            status, retry_after_s, seconds, last_failure = await self._post(target, delivery.record.event_id, body)
            if status is not None and 200 <= status < 300:
                self._record(delivery.practice_id, SiemOutcome.DELIVERED, seconds)
                return
            if status == 410:
                self.endpoints.disable(delivery.practice_id, "endpoint answered 410 Gone")
                self._record(delivery.practice_id, SiemOutcome.DISABLED, seconds)
                await self._write_dead_letter(delivery.message, delivery.practice_id,
                                              "endpoint answered 410 Gone; practice endpoint disabled",
                                              "EndpointGone", attempt)
                return
            first_failure_at = first_failure_at if first_failure_at is not None else self.clock.now()
            self._record(delivery.practice_id, SiemOutcome.RETRIED, seconds)
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
        practice_id = delivery.practice_id
        chain = self._chains[practice_id]
        backlog = Backlog.park(practice_id, delivery.partition, delivery.offset, failed_since, self.clock.now(),
                               self.policy.schedule, pending=1 + len(chain.queue), retry_after_s=retry_after_s)
        parked = _Parked(backlog, scan_from=delivery.offset)
        self._parked[practice_id] = parked
        await self._persist_acknowledged(parked)
        if self._parked.get(practice_id) is not parked:
            return  # the partition was revoked meanwhile; its next owner reads the record
        parked.backlog = replace(parked.backlog, pending=1 + len(chain.queue))
        while chain.queue:
            queued = chain.queue.popleft()
            self._tracker.finish(queued.partition, queued.offset)
        parked.active = True
        parked.task = asyncio.get_running_loop().create_task(self._drain_backlog(parked))
        logger.warning("SIEM practice %s parked from partition %d offset %d (%d events owed); next attempt in %.0f s",
                       practice_id, backlog.partition, backlog.resume_offset, parked.backlog.pending,
                       backlog.next_attempt_at - self.clock.now())

    async def _persist_acknowledged(self, parked: _Parked) -> None:
        """Write the backlog record and wait until the log has it, retrying a refusal."""
        await self._until_acknowledged(lambda settle: self.backlog_store.write(parked.backlog, settle),
                                       f"backlog record of SIEM practice {parked.backlog.practice_id}")
        parked.persisted_at = time.monotonic()

    def _persist(self, parked: _Parked, *, now: bool = False) -> None:
        """Write a parked practice's progress, at most once a second unless `now`."""
        if now or time.monotonic() - parked.persisted_at >= PERSIST_INTERVAL_S:
            try:
                self.backlog_store.write(parked.backlog)
                parked.persisted_at = time.monotonic()
            except (KafkaException, BufferError) as exc:
                logger.warning("backlog record of SIEM practice %s not written (%s); the last one stands",
                               parked.backlog.practice_id, type(exc).__name__)

    async def _drain_backlog(self, parked: _Parked) -> None:
        """Deliver a parked practice's owed events in order, on the schedule, until it catches up."""
        practice_id = parked.backlog.practice_id
        schedule = self.policy.schedule
        while True:
            message, event = await self._backlog_head(parked)
            if message is None or event is None:
                self._rejoin(parked)
                return
            offset = position(message)[1]
            target = self.endpoints.endpoint_for(practice_id)
            now = self.clock.now()
            if isinstance(target, Undeliverable):
                if target.outcome is not None:
                    self._record(practice_id, target.outcome)
                if target.dead_letter:
                    await self._write_dead_letter(message, practice_id, target.reason, target.error_class, 0)
                self._settle(parked, offset, delivered=False)
                continue
            if schedule.past_horizon(parked.backlog.failing_since, now):
                self._record(practice_id, SiemOutcome.FAILED)
                await self._write_dead_letter(
                    message, practice_id, f"endpoint failing for longer than the outage horizon of "
                    f"{schedule.horizon_s / 3600:g} h ({parked.backlog.failures} attempts)", "OutageHorizonPassed",
                    parked.backlog.failures)
                self._settle(parked, offset, delivered=False)
                continue
            if now < parked.backlog.next_attempt_at:
                await self.clock.sleep(schedule.wake_at(parked.backlog.next_attempt_at, parked.backlog.failing_since)
                                       - now)
                continue
            record = audit_record(event)
            body = render_body(record, target.body_format)
            status, retry_after_s, seconds, last_failure = await self._post(target, record.event_id, body)
            if status is not None and 200 <= status < 300:
                self._record(practice_id, SiemOutcome.DELIVERED, seconds)
                self._settle(parked, offset, delivered=True)
            elif status == 410:
                self.endpoints.disable(practice_id, "endpoint answered 410 Gone")
                self._record(practice_id, SiemOutcome.DISABLED, seconds)
                await self._write_dead_letter(message, practice_id, "endpoint answered 410 Gone; practice endpoint "
                                              "disabled", "EndpointGone", parked.backlog.failures + 1)
                self._settle(parked, offset, delivered=False)
            else:
                self._record(practice_id, SiemOutcome.RETRIED, seconds)
                parked.backlog = parked.backlog.failed(self.clock.now(), schedule, retry_after_s)
                self._persist(parked, now=True)
                logger.info("SIEM practice %s still failing (%s, attempt %d while parked); next attempt in %.0f s",
                            practice_id, last_failure, parked.backlog.failures,
                            parked.backlog.next_attempt_at - self.clock.now())

    async def _backlog_head(self, parked: _Parked) -> tuple[Message | None, AuditEvent | None]:
        """The practice's oldest owed event, reading ahead from the audit topic; (None, None) once it has
        caught up with the group consumer."""
        backlog = parked.backlog
        registry_retry = 0
        while True:
            while parked.buffer:
                message = parked.buffer[0]
                try:
                    event = self._decoder.decode(message.value())
                except SchemaError:
                    event = None  # the group consumer dead-lettered it
                except SchemaRegistryError:
                    await asyncio.sleep(self.policy.backoff.delay(registry_retry, self._rng))
                    registry_retry += 1
                    continue
                if event is not None and event.practice_id == backlog.practice_id:
                    return message, event
                parked.buffer.popleft()  # a key naming this practice on another practice's event: dead-lettered
                parked.backlog = parked.backlog.passed_over(position(message)[1])
            parked.backlog = parked.backlog.passed_over(parked.scan_from - 1)
            if parked.scan_from >= self._positions.get(backlog.partition, 0):
                return None, None
            async with self._reader_lock:
                messages = await asyncio.to_thread(self._reader.read, backlog.partition, parked.scan_from)
            wanted = backlog.practice_id.encode()
            for message in messages:
                if message.key() == wanted:
                    parked.buffer.append(message)
            if messages:
                parked.scan_from = position(messages[-1])[1] + 1

    def _settle(self, parked: _Parked, offset: int, *, delivered: bool) -> None:
        parked.buffer.popleft()
        parked.backlog = parked.backlog.settled(offset, self.clock.now(), delivered=delivered)
        self._persist(parked)

    def _rejoin(self, parked: _Parked) -> None:
        """The practice caught up: live delivery again; the group consumer skips what its task settled."""
        backlog = parked.backlog
        self._skip_below[backlog.practice_id] = (backlog.partition, parked.scan_from)
        del self._parked[backlog.practice_id]
        self.backlog_store.delete(backlog.practice_id)
        logger.info("SIEM practice %s caught up after %.0f s parked; delivering live again", backlog.practice_id,
                    backlog.age_s(self.clock.now()))

    async def _post(self, endpoint: Endpoint, event_id: str, body: bytes) -> tuple[int | None, float | None, float, str]:
        assert self._transport is not None
        return await post_signed(self._transport, endpoint, event_id, body, self._timeout)

    async def _write_dead_letter(self, message: Message, practice_id: str | None, reason: str, error_class: str,
                                 attempts: int) -> None:
        """Write to the SIEM dead-letter topic, retrying until the broker acknowledges it."""
        letter = dead_letter(message, reason=reason, error_class=error_class, attempts=attempts, practice_id=practice_id)
        key = practice_id.encode() if practice_id else None
        await self._until_acknowledged(
            lambda settle: self._dead_letters.write_async(self.dead_letter_topic, key, letter, settle),
            "SIEM dead letter for partition {} offset {}".format(*position(message)))

    async def _until_acknowledged(self, write: Callable[[Callable[[KafkaError | None], None]], None],
                                  what: str) -> None:
        """Produce with `write(on_done)` until the broker acknowledges it, backing off between refusals."""
        loop = asyncio.get_running_loop()
        retry = 0
        while True:
            acknowledged: asyncio.Future[KafkaError | None] = loop.create_future()

            def settle(error: KafkaError | None, future: asyncio.Future[KafkaError | None] = acknowledged) -> None:
                if not future.done():
                    future.set_result(error)

            try:
                write(settle)
                refusal = await asyncio.wait_for(acknowledged, timeout=30.0)
                failure = None if refusal is None else refusal.name()
            except (KafkaException, BufferError, TimeoutError) as exc:
                failure = type(exc).__name__
            if failure is None:
                return
            logger.warning("%s not written (%s); retrying", what, failure)
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
        """Give in-flight chains a moment to settle, then cancel what is left (it is re-read later).

        Parked practices stop at once: their progress is written, the next run resumes them.
        """
        parked_tasks = [parked.task for parked in self._parked.values() if parked.task is not None]
        for parked in self._parked.values():
            if parked.active:
                self._persist(parked, now=True)
        for task in parked_tasks:
            task.cancel()
        await asyncio.gather(*parked_tasks, return_exceptions=True)
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
        """Start the backlog tasks of practices parked on these partitions (by this or another process)."""
        try:
            committed = consumer.committed(partitions, timeout=10)
        except KafkaException as exc:
            raise ServiceUnavailableError(f"committed offsets of {self.topic} unreadable: {exc.args[0].name()}") from None
        for tp in committed:
            self._positions[tp.partition] = max(tp.offset, 0)
        assigned = {tp.partition for tp in partitions}
        loop = asyncio.get_running_loop()
        for practice_id, backlog in self.backlog_store.load().items():
            if backlog.partition in assigned and practice_id not in self._parked:
                parked = _Parked(backlog, scan_from=backlog.resume_offset, active=True)
                parked.task = loop.create_task(self._drain_backlog(parked))
                self._parked[practice_id] = parked
                logger.info("SIEM practice %s resumed parked at partition %d offset %d", practice_id,
                            backlog.partition, backlog.resume_offset)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what is settled, write parked practices' progress, abandon the rest to the next owner."""
        self._commit(synchronous=True)
        revoked = {tp.partition for tp in partitions}
        for parked in self._parked.values():
            if parked.active and parked.backlog.partition in revoked:
                self._persist(parked, now=True)
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
        for practice_id, parked in list(self._parked.items()):
            if parked.backlog.partition in partitions:
                if parked.task is not None:
                    parked.task.cancel()
                del self._parked[practice_id]
        for practice_id, (partition, _) in list(self._skip_below.items()):
            if partition in partitions:
                del self._skip_below[practice_id]
        for partition in partitions:
            self._positions.pop(partition, None)
        self._tracker.forget(partitions)
        logger.info("revoked %s partitions %s", self.topic, sorted(partitions))

    def _summary(self) -> str:
        if isinstance(self.metrics, DeliveryTally):
            return self.metrics.summary()
        return f"{len(self.endpoints.disabled)} endpoints disabled"
