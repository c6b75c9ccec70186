"""Parked practices: a practice whose endpoint keeps failing is owed its events from a durable backlog.

After the live attempts fail, the practice is *parked*: a record on the state topic (sinks.backlog_io)
says from which offset of its partition the practice is owed events, and the group consumer's offsets
move on without it. A per-practice task here re-reads the practice's events from the audit topic and
retries the oldest on the schedule of sinks.backlog (30 s, 5 min, 30 min, 2 h, 5 h, then every 10 h);
past the outage horizon the backlog is dead-lettered. Once caught up with the group consumer, the
practice rejoins live delivery. A restarted or rebalanced firehose resumes parked practices from the
state topic. The pure backlog arithmetic is sinks.backlog's; this module owns the tasks and their I/O.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from confluent_kafka import KafkaException, Message

from callstream.siem_delivery import SiemOutcome
from schemas.errors import SchemaError, SchemaRegistryError
from schemas.models import AuditEvent
from sinks.backlog import Backlog, BacklogFigures, Clock
from sinks.backlog_io import BacklogStore, PartitionReader
from sinks.formats import render_body
from sinks.kafka_io import AuditDecoder, position
from sinks.payload import audit_record
from sinks.siem.courier import Courier
from sinks.siem.endpoints import Undeliverable
from sinks.siem.policy import SiemPolicy

logger = logging.getLogger(__name__)

PERSIST_INTERVAL_S = 1.0
"""How often a draining backlog's progress is written (a stale one only re-sends duplicates)."""


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


class ParkedPractices:
    """The practices parked on this process's partitions, each with the task draining its backlog.

    Runs on the firehose's event loop. `live_position(partition)` is the next offset the group consumer
    routes on that partition: a backlog that reaches it has caught up.
    """

    def __init__(self, courier: Courier, store: BacklogStore, reader: PartitionReader, decoder: AuditDecoder,
                 policy: SiemPolicy, clock: Clock, rng: random.Random,
                 live_position: Callable[[int], int]) -> None:
        self._courier = courier
        self._store = store
        self._reader = reader
        self._reader_lock = asyncio.Lock()
        self._decoder = decoder
        self._policy = policy
        self._clock = clock
        self._rng = rng
        self._live_position = live_position
        self._parked: dict[str, _Parked] = {}
        self._skip_below: dict[str, tuple[int, int]] = {}
        """Practice → (partition, offset): events below it were already settled by its backlog task."""

    def owes(self, practice_id: str, partition: int, offset: int) -> bool:
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

    async def park(self, practice_id: str, partition: int, offset: int, failed_since: float,
                   retry_after_s: float | None, pending: int) -> bool:
        """Write the practice's backlog record (owed from `offset` on) and wait until the log has it.

        False when the partition was revoked meanwhile: its next owner reads the record. On True the
        caller hands its queued events over and calls `activate`; until then they stay tracked, so no
        commit can pass an event that nothing durable owes.
        """
        backlog = Backlog.park(practice_id, partition, offset, failed_since, self._clock.now(),
                               self._policy.schedule, pending=pending, retry_after_s=retry_after_s)
        parked = _Parked(backlog, scan_from=offset)
        self._parked[practice_id] = parked
        await self._persist_acknowledged(parked)
        return self._parked.get(practice_id) is parked

    def activate(self, practice_id: str, pending: int) -> None:
        """Start draining the backlog of a practice `park` parked; `pending` events are owed now."""
        parked = self._parked[practice_id]
        parked.backlog = replace(parked.backlog, pending=pending)
        parked.active = True
        parked.task = asyncio.get_running_loop().create_task(self._drain_backlog(parked))
        backlog = parked.backlog
        logger.warning("SIEM practice %s parked from partition %d offset %d (%d events owed); next attempt in %.0f s",
                       practice_id, backlog.partition, backlog.resume_offset, backlog.pending,
                       backlog.next_attempt_at - self._clock.now())

    def resume(self, partitions: set[int]) -> None:
        """Start the backlog tasks of practices parked on these partitions (by this or another process)."""
        loop = asyncio.get_running_loop()
        for practice_id, backlog in self._store.load().items():
            if backlog.partition in partitions and practice_id not in self._parked:
                parked = _Parked(backlog, scan_from=backlog.resume_offset, active=True)
                parked.task = loop.create_task(self._drain_backlog(parked))
                self._parked[practice_id] = parked
                logger.info("SIEM practice %s resumed parked at partition %d offset %d", practice_id,
                            backlog.partition, backlog.resume_offset)

    def save(self, partitions: set[int] | None = None) -> None:
        """Write the progress of the active backlogs (of these partitions, or all) now."""
        for parked in self._parked.values():
            if parked.active and (partitions is None or parked.backlog.partition in partitions):
                self._persist(parked, now=True)

    async def stop(self) -> None:
        """Write every backlog's progress and stop the tasks at once: the next run resumes them."""
        tasks = [parked.task for parked in self._parked.values() if parked.task is not None]
        self.save()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def abandon(self, partitions: set[int]) -> None:
        """Forget the practices parked on revoked partitions; their next owner resumes them."""
        for practice_id, parked in list(self._parked.items()):
            if parked.backlog.partition in partitions:
                if parked.task is not None:
                    parked.task.cancel()
                del self._parked[practice_id]
        for practice_id, (partition, _) in list(self._skip_below.items()):
            if partition in partitions:
                del self._skip_below[practice_id]

    def figures(self) -> list[BacklogFigures]:
        """Parked practices now (any thread: a metrics scrape)."""
        now = self._clock.now()
        return [BacklogFigures(parked.backlog.practice_id, parked.backlog.pending, parked.backlog.age_s(now))
                for parked in list(self._parked.values()) if parked.active]

    async def _persist_acknowledged(self, parked: _Parked) -> None:
        """Write the backlog record and wait until the log has it, retrying a refusal."""
        await self._courier.until_acknowledged(lambda settle: self._store.write(parked.backlog, settle),
                                               f"backlog record of SIEM practice {parked.backlog.practice_id}")
        parked.persisted_at = time.monotonic()

    def _persist(self, parked: _Parked, *, now: bool = False) -> None:
        """Write a parked practice's progress, at most once a second unless `now`."""
        if now or time.monotonic() - parked.persisted_at >= PERSIST_INTERVAL_S:
            try:
                self._store.write(parked.backlog)
                parked.persisted_at = time.monotonic()
            except (KafkaException, BufferError) as exc:
                logger.warning("backlog record of SIEM practice %s not written (%s); the last one stands",
                               parked.backlog.practice_id, type(exc).__name__)

    async def _drain_backlog(self, parked: _Parked) -> None:
        """Deliver a parked practice's owed events in order, on the schedule, until it catches up."""
        practice_id = parked.backlog.practice_id
        schedule = self._policy.schedule
        while True:
            message, event = await self._backlog_head(parked)
            if message is None or event is None:
                self._rejoin(parked)
                return
            offset = position(message)[1]
            target = self._courier.endpoints.endpoint_for(practice_id)
            now = self._clock.now()
            if isinstance(target, Undeliverable):
                if target.outcome is not None:
                    self._courier.record(practice_id, target.outcome)
                if target.dead_letter:
                    await self._courier.dead_letter(message, practice_id, target.reason, target.error_class, 0)
                self._settle(parked, offset, delivered=False)
                continue
            if schedule.past_horizon(parked.backlog.failing_since, now):
                self._courier.record(practice_id, SiemOutcome.FAILED)
                await self._courier.dead_letter(
                    message, practice_id, f"endpoint failing for longer than the outage horizon of "
                    f"{schedule.horizon_s / 3600:g} h ({parked.backlog.failures} attempts)", "OutageHorizonPassed",
                    parked.backlog.failures)
                self._settle(parked, offset, delivered=False)
                continue
            if now < parked.backlog.next_attempt_at:
                await self._clock.sleep(schedule.wake_at(parked.backlog.next_attempt_at, parked.backlog.failing_since)
                                        - now)
                continue
            record = audit_record(event)
            body = render_body(record, target.body_format)
            status, retry_after_s, seconds, last_failure = await self._courier.post(target, record.event_id, body)
            if status is not None and 200 <= status < 300:
                self._courier.record(practice_id, SiemOutcome.DELIVERED, seconds)
                self._settle(parked, offset, delivered=True)
            elif status == 410:
                self._courier.endpoints.disable(practice_id, "endpoint answered 410 Gone")
                self._courier.record(practice_id, SiemOutcome.DISABLED, seconds)
                await self._courier.dead_letter(message, practice_id, "endpoint answered 410 Gone; practice endpoint "
                                                "disabled", "EndpointGone", parked.backlog.failures + 1)
                self._settle(parked, offset, delivered=False)
            else:
                self._courier.record(practice_id, SiemOutcome.RETRIED, seconds)
                parked.backlog = parked.backlog.failed(self._clock.now(), schedule, retry_after_s)
                self._persist(parked, now=True)
                logger.info("SIEM practice %s still failing (%s, attempt %d while parked); next attempt in %.0f s",
                            practice_id, last_failure, parked.backlog.failures,
                            parked.backlog.next_attempt_at - self._clock.now())

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
                    await asyncio.sleep(self._policy.backoff.delay(registry_retry, self._rng))
                    registry_retry += 1
                    continue
                if event is not None and event.practice_id == backlog.practice_id:
                    return message, event
                parked.buffer.popleft()  # a key naming this practice on another practice's event: dead-lettered
                parked.backlog = parked.backlog.passed_over(position(message)[1])
            parked.backlog = parked.backlog.passed_over(parked.scan_from - 1)
            if parked.scan_from >= self._live_position(backlog.partition):
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
        parked.backlog = parked.backlog.settled(offset, self._clock.now(), delivered=delivered)
        self._persist(parked)

    def _rejoin(self, parked: _Parked) -> None:
        """The practice caught up: live delivery again; the group consumer skips what its task settled."""
        backlog = parked.backlog
        self._skip_below[backlog.practice_id] = (backlog.partition, parked.scan_from)
        del self._parked[backlog.practice_id]
        self._store.delete(backlog.practice_id)
        logger.info("SIEM practice %s caught up after %.0f s parked; delivering live again", backlog.practice_id,
                    backlog.age_s(self._clock.now()))
