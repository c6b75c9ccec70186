"""`callstream intake run`: the long-running process that keeps completed intake forms flowing onto the chart.

Each practice with an intake ``completions_url`` is polled on an interval; a pass is connectors.intake.sync_practice
(verify, file one DocumentReference, audit). What makes it a service rather than a cron job:

- the cursor is durable: one record per practice on the compacted topic ``callstream-intake-cursors`` (key the
  practice id, value ``{"after": N}``), written only after the pass's audit events were acknowledged, read whole at
  start (callstream.state_topic). A crash between a
  filing and its cursor record re-lists the completion on restart; the connector then finds the DocumentReference
  by its master identifier and files nothing twice;
- a practice whose listing or ModMed write fails waits the shared backoff (callstream.retry.Backoff) before its next
  poll, without holding up the others;
- /metrics, /healthz and /readyz (callstream.metrics_server): documents filed, poll failures, and the age of the
  oldest completed form that is not on the chart yet (the IntakeFormUnfiled alert).

Log lines carry practice ids, counts and error classes only: a form's reference, URL or patient never.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from callstream.errors import ServiceUnavailableError
from callstream.retry import Backoff
from callstream.state_topic import ensure_compacted_topic, read_to_fence
from callstream.tenants import Practice
from connectors.intake import sync_practice
from connectors.operations import ModMedConnector
from streams.outputs import KafkaOutputs

log = logging.getLogger(__name__)

CURSOR_TOPIC = "callstream-intake-cursors"
STALL_AFTER_S = 300.0
"""Liveness: the loop must finish a round within this (a round's polls are each bounded by the poll timeout)."""


class CursorStore:
    """Each practice's listing cursor on a compacted topic (blocking calls: run them in a thread)."""

    def __init__(self, bootstrap: str, topic: str = CURSOR_TOPIC) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self._producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.timeout.ms": 20_000,
                                   "log.connection.close": False, "logger": logging.getLogger("streams.kafka")})

    def ensure_topic(self) -> None:
        ensure_compacted_topic(self._bootstrap, self.topic)

    def save(self, practice_id: str, after: int, timeout_s: float = 20.0) -> None:
        """Record the cursor and wait until the log has it."""
        self._producer.produce(self.topic, key=practice_id.encode(), value=json.dumps({"after": after}).encode())
        if self._producer.flush(timeout_s) != 0:
            raise ServiceUnavailableError(f"intake cursor topic {self.topic} did not acknowledge a write")

    def load(self, timeout_s: float = 30.0) -> dict[str, int]:
        """Every practice's last cursor. An unreadable record is logged and skipped (that practice starts at 0:
        slower, never a duplicate document).

        Raises:
            ServiceUnavailableError: the topic was not read up to this reader's fence within the timeout.
        """
        cursors: dict[str, int] = {}
        for practice_id, value in read_to_fence(self._bootstrap, self.topic, self._producer, "intake cursor topic",
                                                logging.getLogger("streams.kafka"), timeout_s):
            _apply(cursors, practice_id, value)
        return cursors

    def close(self) -> None:
        self._producer.flush(5)


def _apply(cursors: dict[str, int], practice_id: str, value: bytes | None) -> None:
    """One cursor record over the ones before it (a tombstone forgets the practice)."""
    if value is None:
        cursors.pop(practice_id, None)
        return
    try:
        after = json.loads(value)["after"]
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            raise ValueError("after must be a non-negative integer")
    except (ValueError, KeyError, TypeError) as exc:
        log.error("intake cursor record of practice %s is unreadable (%s); it is not resumed", practice_id,
                  type(exc).__name__)
        return
    cursors[practice_id] = after


@dataclass
class PracticeState:
    """One practice's place in the loop."""

    practice: Practice
    after: int = 0
    failures: int = 0
    """Consecutive failed polls: the backoff's attempt number."""
    due: float = 0.0
    """Monotonic time of its next poll."""
    oldest_unfiled: datetime | None = None
    """Completion time of the oldest listed form ModMed could not take yet (None: nothing waiting, as far as known)."""


class UnfiledAgeCollector(Collector):
    """The oldest unfiled completed form's age per practice, computed at scrape time so it grows while the loop
    is stuck or the practice is backing off."""

    def __init__(self, states: Callable[[], Iterable[PracticeState]], clock: Callable[[], datetime]) -> None:
        self._states = states
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("callstream_intake_oldest_unfiled_age_seconds",
                                   "Age of the oldest completed intake form not yet filed on the chart",
                                   labels=["practice_id"])
        now = self._clock()
        for state in self._states():
            age = 0.0 if state.oldest_unfiled is None else max(0.0, (now - state.oldest_unfiled).total_seconds())
            family.add_metric([state.practice.practice_id], age)
        yield family


class IntakeMetrics:
    """What SRE and the PrometheusRule watch; label values are practice ids and outcomes only."""

    def __init__(self, states: Callable[[], Iterable[PracticeState]] = tuple,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.registry = CollectorRegistry()
        self.filed = Counter("callstream_intake_documents_filed", "Completed intake forms filed as DocumentReferences",
                             ["practice_id"], registry=self.registry)
        self.refused = Counter("callstream_intake_completions_refused",
                               "Listed completions refused for good (unsigned reference, malformed entry, "
                               "appointment without one patient)", ["practice_id"], registry=self.registry)
        self.poll_failures = Counter("callstream_intake_poll_failures",
                                     "Polls that failed (listing unreachable or malformed, ModMed refused a write)",
                                     ["practice_id"], registry=self.registry)
        self.registry.register(UnfiledAgeCollector(states, clock))


@dataclass
class Heartbeat:
    """When the loop last finished a round: live while it turns, ready once the cursors are loaded and a round ran."""

    stall_after_s: float = STALL_AFTER_S
    monotonic: Callable[[], float] = time.monotonic
    last: float | None = None

    def __post_init__(self) -> None:
        self.started = self.monotonic()

    def beat(self) -> None:
        self.last = self.monotonic()

    def live(self) -> bool:
        return self.monotonic() - (self.started if self.last is None else self.last) <= self.stall_after_s

    def ready(self) -> bool:
        return self.last is not None and self.live()


def next_delay(every_s: float, failures: int, backoff: Backoff, rng: random.Random) -> float:
    """Seconds until a practice's next poll: the interval, or the backoff after failures (never less)."""
    if failures == 0:
        return every_s
    return max(every_s, backoff.delay(failures - 1, rng))


@dataclass
class IntakePoller:
    """Polls every practice on its own schedule; see the module docstring."""

    practices: list[Practice]
    connector: ModMedConnector
    http: httpx.AsyncClient
    outputs: KafkaOutputs
    cursors: CursorStore
    every_s: float = 60.0
    backoff: Backoff = field(default_factory=lambda: Backoff(base_s=60.0, cap_s=900.0))
    poll_timeout_s: float = 120.0
    initial_after: dict[str, int] = field(default_factory=dict)
    """Where a practice without a stored cursor starts (default 0: its whole listing)."""
    rng: random.Random = field(default_factory=random.Random)
    heartbeat: Heartbeat = field(default_factory=Heartbeat)

    def __post_init__(self) -> None:
        self.states = {p.practice_id: PracticeState(p, after=self.initial_after.get(p.practice_id, 0))
                       for p in self.practices}
        self.metrics = IntakeMetrics(lambda: list(self.states.values()))

    async def load_cursors(self) -> None:
        """Resume every practice where the cursor topic says it stopped."""
        await asyncio.to_thread(self.cursors.ensure_topic)
        stored = await asyncio.to_thread(self.cursors.load)
        for practice_id, state in self.states.items():
            state.after = stored.get(practice_id, state.after)
        log.info("intake run: %d practices, resumed %d stored cursors", len(self.states),
                 sum(1 for practice_id in self.states if practice_id in stored))

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; each round polls the practices that are due, concurrently."""
        await self.load_cursors()
        while not stop.is_set():
            now = time.monotonic()
            due = [state for state in self.states.values() if state.due <= now]
            await asyncio.gather(*(self.poll(state) for state in due))
            self.heartbeat.beat()
            earliest = min((state.due for state in self.states.values()), default=now + self.every_s)
            try:
                await asyncio.wait_for(stop.wait(), timeout=min(1.0, max(0.0, earliest - time.monotonic())))
            except TimeoutError:
                pass

    async def poll(self, state: PracticeState) -> None:
        """One pass over a practice's listing; failures count towards its backoff, never escape."""
        practice_id = state.practice.practice_id
        try:
            report = await asyncio.wait_for(
                sync_practice(self.connector, self.http, state.practice, state.after, datetime.now(UTC)),
                timeout=self.poll_timeout_s)
            await asyncio.gather(*(self.outputs.audit(event) for event in report.audits))
            if report.next_after != state.after:
                await asyncio.to_thread(self.cursors.save, practice_id, report.next_after)
        except Exception as exc:  # any failure of one practice's pass: back off, keep the others running
            self._failed(state, type(exc).__name__)
            return
        state.after = report.next_after
        state.oldest_unfiled = report.oldest_unfiled
        self.metrics.filed.labels(practice_id).inc(report.recorded)
        self.metrics.refused.labels(practice_id).inc(report.refused)
        if report.recorded or report.refused or report.failed:
            log.info("intake %s: filed %d, refused %d, failed %d, cursor %d", practice_id, report.recorded,
                     report.refused, report.failed, report.next_after)
        if report.failed:
            self._failed(state, "ModMedError")
            return
        state.failures = 0
        state.due = time.monotonic() + self.every_s

    def _failed(self, state: PracticeState, error_class: str) -> None:
        state.failures += 1
        delay = next_delay(self.every_s, state.failures, self.backoff, self.rng)
        state.due = time.monotonic() + delay
        self.metrics.poll_failures.labels(state.practice.practice_id).inc()
        log.warning("intake %s: poll failed (%s), attempt %d, next in %.1f s", state.practice.practice_id,
                    error_class, state.failures, delay)
