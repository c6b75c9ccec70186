"""The faust-streaming application: thin wiring around streams.processor and streams.callflow.

One agent on callstream.call-events.v1 does the caller's whole path (ingest → resolve practice →
guard → dispatch → reply) so a reply is one topic hop from its event; audit records, review-queue
commands, dead letters and alarms are produced on the side (streams.outputs). Events are taken with
manual acks: each is handed to a per-call chain (``CallSequencer``) and acked once everything it
caused is acknowledged by the broker, so different calls and practices run concurrently while one
call's events stay in order. Events finish out of order; the committed offset only moves past the
prefix of a partition's events that have all finished (``streams.offsets``), so a worker killed at any
moment resumes at or before every event still in flight.

Changelogged tables (Faust's own JSON, docs/events.md):

- ``calls``: per-call state (``CallState``), keyed by call id on the event's partition; PHI is purged at
  call end (a PHI-free marker stays) and by the TTL timer for abandoned calls. Its changelog records are
  written by the outputs producer (``streams.faust_boundary.ChangelogCallStates``) and acknowledged
  before their event is;
- ``ledger``: the idempotency ledger of every write (``streams.faust_boundary.ChangelogLedger``), so a
  redelivered or duplicated event never books or queues twice, even on another worker. It is write-ahead: an entry is
  acknowledged by the broker before its ModMed write leaves. Entries past the redelivery horizon are
  tombstoned by a timer (``streams.horizon``), so memory and restore time stay bounded;
- ``drift``: tumbling windows of per-practice counters (writes, controlled-substance requests and
  escalations, bypass attempts) that feed ``streams.drift.DriftMonitor``;
- ``drift-state``: each practice's DriftMonitor state, so alarms survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
import mode
from faust.types import TP
from mode.signals import BaseSignalT

from callstream.alerts import Alert, AlertWebhook
from callstream.deadline import TurnBudget
from callstream.messaging import Messenger
from callstream.metrics_server import MetricsServer, serve_metrics
from callstream.settings import Settings
from callstream.tenants import TenantDirectory, unresolvable_credentials
from connectors.dispatch import DEFAULT_PRACTICE_CONCURRENCY, Dispatcher, EmaPort
from connectors.fhir import ModMedClient
from connectors.operations import ModMedConnector
from connectors.ratelimit import RateLimiterRegistry, worker_share
from schemas.models import Alarm, AlarmState
from schemas.registry import SchemaRegistryClient
from schemas.topics import CALL_EVENTS, topic_named
from streams.drift import DriftInputError, DriftMonitor, PracticeDriftState, WindowStats
from streams.drift_counts import DriftCounts
from streams.faust_boundary import FAUST_MACHINERY_LOG, ChangelogCallStates, ChangelogLedger, PipelineFaustApp
from streams.horizon import RedeliveryHorizon
from streams.metrics import Metrics
from streams.observers import FhirRequestMetrics
from streams.offsets import InFlight
from streams.outputs import KafkaOutputs
from streams.processor import CallProcessor
from streams.records import RawEvent
from streams.sequencer import CallSequencer
from streams.retention import purge_expired

if TYPE_CHECKING:
    from connectors.ema.session import EmaSessions

log = logging.getLogger(__name__)

DEFAULT_APP_ID = "callstream-worker"
"""Consumer group and changelog prefix (docs/events.md: callstream-worker-<table>-changelog)."""
GC_YOUNG_THRESHOLD = 20_000
"""Allocations between young-generation GC passes: events free their objects by reference counting, so
a pass finds little; the ModMed client frees its responses itself for the same reason."""


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How one worker runs; the CLI builds it from flags and settings."""

    app_id: str = DEFAULT_APP_ID
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9464
    drift_window_s: float = 60.0
    ttl_sweep_s: float = 60.0
    ledger_sweep_s: float = 3600.0
    lag_interval_s: float = 15.0
    max_in_flight: int = 2000
    per_practice_concurrency: int = DEFAULT_PRACTICE_CONCURRENCY
    use_ema: bool = True
    ema_upkeep_s: float = 60.0
    """How often the EMA session keeper closes idle contexts and health-checks the rest."""
    ema_idle_close_s: float = 900.0
    """A practice whose EMA context no command used for this long gives it back (Chromium memory)."""
    idempotent_outputs: bool = False
    data_dir: str = "var"


class PipelineRuntime(mode.Service):
    """The worker's I/O resources (ModMed client, EMA browser, output producer, metrics endpoint),
    opened when the worker starts and closed when it stops."""

    logger = FAUST_MACHINERY_LOG

    def __init__(self, pipeline: Pipeline, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.ready = asyncio.Event()
        self.processor: CallProcessor | None = None
        self.outputs: KafkaOutputs | None = None
        self._client: ModMedClient | None = None
        self._messenger: Messenger | None = None
        self._ema_close: list[Callable[[], Any]] = []
        self.ema_sessions: EmaSessions | None = None
        self._metrics_server: MetricsServer | None = None
        self.webhook: AlertWebhook | None = None

    async def on_start(self) -> None:
        pipeline = self.pipeline
        settings = pipeline.settings
        registry = SchemaRegistryClient(settings.schema_registry_url) if settings.schema_registry_url else None
        self.outputs = KafkaOutputs(settings.bootstrap_servers, registry=registry,
                                    idempotent=pipeline.options.idempotent_outputs)
        self.outputs.start(asyncio.get_running_loop())
        self._client = ModMedClient(limiters=pipeline.limiters, observer=FhirRequestMetrics(pipeline.metrics))
        self._messenger = Messenger()
        ledger = pipeline.write_ledger
        ema = await self._ema(settings, self._client) if pipeline.options.use_ema else None
        dispatcher = Dispatcher(ModMedConnector(self._client, ledger), ledger, ema,
                                per_practice_concurrency=pipeline.options.per_practice_concurrency)
        self.processor = CallProcessor(
            tenants=pipeline.tenants, dispatcher=dispatcher, outputs=self.outputs, states=pipeline.call_states,
            metrics=pipeline.metrics, drift=pipeline.count_drift, registry=registry,
            turns=TurnBudget(settings.turn_hold_after_ms / 1000, settings.turn_budget_ms / 1000),
            horizon=pipeline.horizon, messenger=self._messenger,
        )
        if settings.alert_webhook_url:
            self.webhook = AlertWebhook(settings.alert_webhook_url)
        self._metrics_server = serve_metrics(pipeline.metrics.registry, pipeline.options.metrics_host,
                                             pipeline.options.metrics_port, readiness=pipeline.is_ready)
        logging.getLogger("callstream.worker").info(
            "callstream worker %s: metrics on http://%s:%d/metrics (probes /healthz, /readyz)", pipeline.options.app_id,
            pipeline.options.metrics_host, self._metrics_server.port)
        # Everything built so far (Faust, clients, schemas) lives as long as the worker: keep the cyclic GC
        # from rescanning it, and collect the young generation less often (each event allocates thousands
        # of short-lived objects, nearly all freed by reference counting).
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        self.ready.set()

    async def _ema(self, settings: Settings, client: ModMedClient) -> EmaPort:
        """EMA automation for practices whose API stops short; the browser starts on first use only."""
        from connectors.ema.commands import EmaCommands
        from connectors.ema.directory import FhirEmaDirectory
        from connectors.ema.session import EmaBrowser, EmaSessions

        options = self.pipeline.options
        browser = EmaBrowser()
        sessions = EmaSessions.from_settings(settings.model_copy(update={"data_dir": options.data_dir}),
                                             browser=browser, observer=self.pipeline.metrics)
        keeper = asyncio.ensure_future(sessions.keep(every_s=options.ema_upkeep_s, idle_for_s=options.ema_idle_close_s))
        self.ema_sessions = sessions
        self._ema_close = [functools.partial(_cancelled, keeper), sessions.close, browser.close]
        return EmaCommands(sessions, FhirEmaDirectory(client))

    async def on_stop(self) -> None:
        self.ready.clear()
        if self.outputs is not None:
            await self.outputs.close()
        for close in self._ema_close:
            await close()
        if self._client is not None:
            await self._client.aclose()
        if self._messenger is not None:
            await self._messenger.aclose()
        if self.webhook is not None:
            await self.webhook.aclose()
        if self._metrics_server is not None:
            self._metrics_server.close()


class Pipeline:
    """The Faust app with its agent, tables and timers (see the module docstring)."""

    def __init__(self, settings: Settings, tenants: TenantDirectory, options: WorkerOptions,
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.tenants = tenants
        self.options = options
        self.metrics = metrics or Metrics()
        self.credential_problems = unresolvable_credentials(tenants)
        """Credential references that did not resolve at start: the worker runs (other practices' calls go on)
        but never reports ready, so a bad rollout stops here; fix the reference and restart."""
        for problem in self.credential_problems:
            log.error("not ready: %s", problem)
        partitions = topic_named(CALL_EVENTS).partitions
        Path(options.data_dir, "faust").mkdir(parents=True, exist_ok=True)
        self.app = PipelineFaustApp(
            options.app_id,
            broker=f"kafka://{settings.bootstrap_servers}",
            store="memory://",
            topic_partitions=partitions,
            topic_replication_factor=1,
            broker_session_timeout=settings.consumer_session_timeout_ms / 1000,
            broker_heartbeat_interval=1.0,
            # How long a rebalance waits for members to rejoin: a worker killed without leaving the group must
            # not hold its successor for Faust's default minute (the calls on its partitions wait meanwhile).
            broker_rebalance_timeout=max(10.0, 2 * settings.consumer_session_timeout_ms / 1000),
            consumer_auto_offset_reset="earliest",
            web_enabled=False,
            datadir=f"{options.data_dir}/faust",
            producer_acks=-1,
            # Changelog writes ride in batches: they are off the caller's path (replies leave through the
            # outputs producer), and one produce request per table write cost more CPU than the guard.
            producer_linger=0.02,
            producer_max_batch_size=256 * 1024,
            # No standby copies: each worker restores its active partitions from the changelog, and its
            # consumer fetches only the call events it serves (standby changelogs slowed every fetch).
            table_standby_replicas=0,
        )
        self.offsets = self.app.track_offsets(frozenset({CALL_EVENTS}))
        self.limiters = RateLimiterRegistry()
        self.limiters.set_share(worker_share(0, partitions, settings.rate_budget_reserve))
        self.source = self.app.topic(CALL_EVENTS, key_type=bytes, value_type=bytes, key_serializer="raw",
                                     value_serializer="raw", partitions=partitions)
        # Call state and ledger entries as the JSON pydantic writes (raw bytes): no dict round trip through
        # Faust's JSON codec.
        raw_state: faust.Schema = faust.Schema(key_type=str, value_type=bytes, key_serializer="json",
                                               value_serializer="raw")
        self.calls = self.app.Table("calls", default=None, partitions=partitions, schema=raw_state)
        self.ledger = self.app.Table("ledger", default=None, partitions=partitions, schema=raw_state)
        self.drift = self.app.Table("drift", default=None, partitions=partitions).tumbling(
            options.drift_window_s, expires=timedelta(seconds=options.drift_window_s * 4),
        ).relative_to(_wall_clock)  # type: ignore[attr-defined]  # WindowWrapper's, missing in the stubs
        self.drift_state = self.app.Table("drift-state", default=None, partitions=partitions, use_partitioner=True)
        self.monitor = DriftMonitor()
        self.runtime = PipelineRuntime(self, loop=None)
        self.call_states = ChangelogCallStates(self.calls, self.runtime)
        self.horizon = RedeliveryHorizon.of(settings)
        self.write_ledger = ChangelogLedger(self.ledger, self.runtime, self.horizon)
        self.app.add_dependency(self.runtime)
        self._practices_counted: set[str] = set()
        self._recovered = threading.Event()
        self.app.on_rebalance_complete.connect(self._on_rebalance_complete)
        self.app.on_partitions_revoked.connect(self._on_partitions_revoked)
        self._background: set[asyncio.Future[Any]] = set()
        self.app.agent(self.source, name="call-events")(self._agent)
        self.app.timer(options.ttl_sweep_s)(self._sweep_expired)
        self.app.timer(options.ledger_sweep_s)(self._sweep_ledger)
        self.app.timer(max(0.5, options.drift_window_s / 4))(self._close_drift_windows)
        self.app.timer(options.lag_interval_s)(self._record_lag)

    # ---------------------------------------------------------------------------------- the agent

    async def _agent(self, stream: faust.StreamT[bytes]) -> None:
        await self.runtime.ready.wait()
        sequencer = CallSequencer(self.options.max_in_flight, self.metrics)
        processor = self.runtime.processor
        assert processor is not None
        async for event in stream.noack().events():  # type: ignore[attr-defined]  # Stream's, missing in the stubs
            message = event.message
            raw = RawEvent(message.topic, message.partition, message.offset, event.key, event.value)
            delivered = self.offsets.started(message.tp, message.offset)
            if sequencer.busy(event.key):
                processor.queued(raw)  # its caller may hear PLEASE_HOLD while it waits
            await sequencer.submit(event.key, _bind(processor.handle, raw), _acker(self, event, delivered))

    def stop_on_failure(self, error: BaseException) -> None:
        """Only infrastructure failures reach here (outputs undeliverable): stop, so the event is redelivered."""
        log.critical("stopping the worker: %s", type(error).__name__)
        self._spawn(self.app.crash(error))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def is_ready(self) -> bool:
        """Readiness: every credential reference resolved at start, resources open, partitions assigned and
        tables recovered.

        Called from the metrics server's thread, so it reads flags only: Faust's lazily built services
        (``app.tables.recovery``) must never be created here, outside the event loop they belong to."""
        return (not self.credential_problems and self.runtime.ready.is_set() and self._recovered.is_set()
                and not self.app.rebalancing)

    async def _on_rebalance_complete(self, sender: Any, /, *_: Any, signal: BaseSignalT[Any], **__: Any) -> None:
        """Faust's signal: tables are recovered and streams resumed after an assignment. The partitions' end
        offsets now (at or past those at assignment) mark where fresh events begin (ChangelogLedger)."""
        self._recovered.set()
        owned = self._owned()
        # Each practice's ModMed budget is split among the workers by the partitions they own.
        self.limiters.set_share(worker_share(len(owned), topic_named(CALL_EVENTS).partitions,
                                             self.settings.rate_budget_reserve))
        if owned:
            ends = await self.app.consumer.highwaters(*owned)
            self.write_ledger.partitions_assigned({tp.partition: offset for tp, offset in ends.items()})

    async def _on_partitions_revoked(self, sender: Any, /, *_: Any, signal: BaseSignalT[Any], **__: Any) -> None:
        self.write_ledger.partitions_revoked()

    # ------------------------------------------------------------------------------- drift windows

    def count_drift(self, practice_id: str, counts: DriftCounts) -> None:
        """Add one event's counters to the practice's current window (runs inside the event's task)."""
        try:
            current = self.drift[practice_id].value()
        except KeyError:  # the window's first count
            current = None
        self.drift[practice_id] = DriftCounts.from_dict(current).add(counts).to_dict()
        self._practices_counted.add(practice_id)

    async def _close_drift_windows(self) -> None:
        """Evaluate the last closed window of every practice that counted something or has an alarm firing
        (empty windows let bypass and escalation alarms clear); the monitor ignores windows it has seen."""
        size = self.options.drift_window_s
        start = (time.time() // size - 1) * size
        window_range = self.drift.table.window.current(start)
        practices = self._practices_counted | {practice for practice, _ in self.monitor.firing()}
        for practice_id in sorted(practices):
            self._restore_drift_state(practice_id)
            counts = DriftCounts.from_dict(self.drift.table.get((practice_id, window_range)))
            before = self.monitor.practice_state(practice_id)
            try:
                stats = WindowStats(practice_id, _utc(start), _utc(start + size), **counts.to_dict())
                transitions = self.monitor.observe(stats)
            except DriftInputError as exc:
                log.warning("practice %s: drift window skipped (%s)", practice_id, exc)
                continue
            after = self.monitor.practice_state(practice_id)
            if after is not None and after != before:
                self.drift_state[practice_id] = after.to_dict()
            for transition in transitions:
                await self._raise_alarm(transition)

    def _restore_drift_state(self, practice_id: str) -> None:
        if self.monitor.practice_state(practice_id) is not None:
            return
        stored = self.drift_state.get(practice_id)
        if stored is None:
            return
        try:
            self.monitor.restore_practice(practice_id, PracticeDriftState.from_dict(stored))
        except DriftInputError:
            log.warning("practice %s: stored drift state unreadable; starting afresh", practice_id)

    async def _raise_alarm(self, transition: Any) -> None:
        outputs = self.runtime.outputs
        assert outputs is not None
        firing = transition.state is AlarmState.FIRING
        self.metrics.set_alarm_state(transition.practice_id, transition.kind.value, firing)
        alarm = Alarm(
            alarm_id=uuid.uuid4(),
            practice_id=transition.practice_id,
            kind=transition.kind,
            state=transition.state,
            value=transition.value,
            threshold=transition.threshold,
            window_start=transition.window_start,
            window_end=transition.window_end,
            raised_at=datetime.now(UTC),
            detail=dict(transition.detail),
        )
        log.warning("alarm %s %s for practice %s", alarm.kind.value, alarm.state.value, alarm.practice_id)
        await outputs.alarm(alarm)
        webhook = self.runtime.webhook
        if webhook is not None:
            self._spawn(_send_alert(webhook, Alert.from_alarm(transition)))

    # ------------------------------------------------------------------------------ TTL and lag

    def _owned(self) -> list[TP]:
        """The call-events partitions this worker consumes now."""
        return [tp for tp in self.app.consumer.assignment() if tp.topic == CALL_EVENTS]

    async def _sweep_expired(self) -> None:
        """Purge abandoned calls (PHI) and old ended markers of the partitions this worker owns."""
        if not self.is_ready():
            return
        owned = {tp.partition for tp in self._owned()}
        await purge_expired(self.call_states, owned, self.runtime.outputs, datetime.now(UTC))

    async def _sweep_ledger(self) -> None:
        """Forget the ledger entries past the redelivery horizon on the partitions this worker owns."""
        if not self.is_ready():
            return
        owned = {tp.partition for tp in self._owned()}
        forgotten = await self.write_ledger.forget_past_horizon(owned, datetime.now(UTC))
        if forgotten:
            log.info("ledger: %d entries past the redelivery horizon tombstoned", forgotten)

    async def _record_lag(self) -> None:
        if not self.is_ready():
            return
        tps = self._owned()
        if not tps:
            return
        highwaters = await self.app.consumer.highwaters(*tps)
        for tp in tps:
            position = await self.app.consumer.position(tp)
            if position is not None and tp in highwaters:
                self.metrics.set_consumer_lag(tp.topic, tp.partition, self.options.app_id,
                                              max(0, highwaters[tp] - position))


def _bind(handle: Callable[[RawEvent], Any], raw: RawEvent) -> Callable[[], Any]:
    return lambda: handle(raw)


def _acker(pipeline: Pipeline, event: Any, delivered: InFlight) -> Callable[[BaseException | None], None]:
    """A finished event moves the committable offset (streams.offsets); a failed one never does, so it is
    redelivered from the committed offset once the worker has stopped."""

    def done(error: BaseException | None) -> None:
        if error is None:
            pipeline.offsets.finish(delivered)
            event.ack()
        else:
            pipeline.stop_on_failure(error)

    return done


async def _send_alert(webhook: AlertWebhook, alert: Alert) -> None:
    try:
        await webhook.send(alert)
    except Exception as exc:  # noqa: BLE001 - the alarm is on the alarms topic either way
        log.warning("alert webhook delivery failed: %s", type(exc).__name__)


async def _cancelled(task: asyncio.Future[None]) -> None:
    """Stop a background task and wait until it has (before what it uses is closed)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _wall_clock(_event: object = None) -> float:
    return time.time()


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)
