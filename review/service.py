"""`callstream queue run`: the process that owns the review queue (thin wiring around review.core).

One asyncio loop does four things, all against the one store this process owns:

- **intake**: consumes callstream.commands.v1 (group ``callstream-review-queue``, review.command_log), makes every
  REVIEW_QUEUE command an open item unless the item already exists (a redelivery), and commits the
  offsets only after the items are stored;
  A controlled-substance request a command names (``cs_request``) is counted as escalated
  (``callstream_cs_escalations_total``) once its item is stored: staff-visible, not merely on a topic;
- **retries**: delivers due items (team tasks; in the write phases, bookings) through the same Dispatcher,
  guards and idempotency keys as the worker. Each attempt first decides the request again with
  ``guards.decide`` on the chart's flags as they are now (review.core.recheck) and, for a booking, checks
  the chosen slot with ``guards.filter_and_rank``; a write they no longer allow, or a slot gone, is left
  to staff with that reason. The ledger is not write-ahead, so every write first asks ModMed whether it
  landed (a Task with the key, the patient's appointment at the slot's start): exactly one Task or
  Appointment per request even after a worker's lost answer or this process's kill -9. The delivery's
  audit record is acknowledged before the item is marked delivered (a crash in between repeats the
  record with the same id, which the sinks de-duplicate);
- **age alarm**: REVIEW_QUEUE_STALE per practice on callstream.alarms.v1 and as metrics; each practice's
  alarm state is stored (review_alarms) before its transition is published and marked announced after,
  so a restarted process clears an alarm its predecessor raised and re-announces one it may not have;
- **HTTP API** on 127.0.0.1 (``/items?practice=&state=&call=``, ``/items/{id}``, ``/items/{id}/resolve``,
  ``/metrics``, ``/healthz``): the staff CLI goes through it, so the store keeps a single writer and the embedded
  chDB (one process per data directory) stays usable while this process runs. The API has no
  authentication, so it never leaves the loopback interface; Prometheus and the kubelet read
  ``/metrics``, ``/healthz`` and ``/readyz`` from the separate metrics endpoint (review/cli.py),
  whose probes ask ``Rounds`` whether the loop still turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from callstream.retry import Backoff
from callstream.tenants import Practice, TenantDirectory
from pydantic import ValidationError

from connectors.dispatch import Dispatcher, Written
from connectors.errors import ConflictError, InvalidResponseError
from guards import GoLivePhase, IntentRequest, MatchKind, VisitReason, filter_and_rank
from guards.model import TaskAudience, TaskKind, TaskReason, TaskSpec
from review import core
from review.command_log import CommandLog
from review.core import ItemBusy, ItemClosed, ItemNotFound, ItemState, Reason, ReviewItem, ReviewQueueError
from review.store import StoredAlarm, ReviewStore
from schemas.models import (
    EMA_DEEP_LINK_PATTERN,
    Alarm,
    AlarmKind,
    AlarmState,
    AuditAction,
    AuditEvent,
    AuditOutcome,
    CommandKind,
    CommandRoute,
)
from streams.callflow import (
    CS_REQUEST_PARAM,
    EARLIER_CS_REQUESTS_PARAM,
    GUARD_REQUEST_PARAM,
    REPLY_NAMESPACE,
    is_after_hours,
    task_note,
)

log = logging.getLogger(__name__)

DEFAULT_API_PORT = 19096
DISPATCH_TIMEOUT_S = 30.0
"""Bound of one delivery (search, flags, Task); the attempt's lease (review.core.ATTEMPT_LEASE) is longer."""
_DEEP_LINK = re.compile(EMA_DEEP_LINK_PATTERN)


@dataclass(frozen=True)
class QueueOptions:
    api_host: str = "127.0.0.1"
    api_port: int = DEFAULT_API_PORT
    tick_s: float = 1.0
    stale_after: timedelta = core.STALE_AFTER
    backoff: Backoff = core.RETRY_BACKOFF
    lease: timedelta = core.ATTEMPT_LEASE
    session_timeout_ms: int = 6000


STALL_AFTER_S = 120.0
"""A loop that has not finished a round (intake, retries, age alarm) for this long is stuck: not live, not ready."""

Clock = Callable[[], datetime]
STALE_KIND = AlarmKind.REVIEW_QUEUE_STALE.value


@dataclass(frozen=True, slots=True)
class ForStaff:
    """An attempt that showed a person must act: the honest reason, and what exactly (a guard, a class)."""

    reason: Reason
    error_class: str


def _decided_request(params: dict[str, str]) -> tuple[IntentRequest, int]:
    """The request the worker's guards decided on, from the command record (review.core.recheck decides it again).

    Raises:
        ReviewQueueError: the record is gone or predates the request param; staff take the item.
    """
    raw = params.get(GUARD_REQUEST_PARAM)
    if raw is None:
        raise ReviewQueueError("the command record with the decided request is gone from the topic")
    try:
        return IntentRequest.model_validate_json(raw), int(params.get(EARLIER_CS_REQUESTS_PARAM, "0"))
    except (ValidationError, ValueError):
        raise ReviewQueueError("the command record's decided request does not read") from None


def utc_now() -> datetime:
    return datetime.now(UTC)


class QueueMetrics:
    """What SRE and the PrometheusRule watch; label values are practice ids and codes only."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.open_items = Gauge("callstream_review_open_items", "Open or retrying review-queue items",
                                ["practice_id", "kind"], registry=self.registry)
        self.oldest_cs_age = Gauge("callstream_review_oldest_open_cs_age_seconds",
                                   "Age of the oldest open controlled-substance review item", ["practice_id"],
                                   registry=self.registry)
        self.alarm_state = Gauge("callstream_alarm_state", "1 while a sentinel alarm fires", ["practice_id", "kind"],
                                 registry=self.registry)
        self.deliveries = Counter("callstream_review_deliveries_total", "Review-item delivery attempts by outcome",
                                  ["practice_id", "outcome"], registry=self.registry)
        self.cs_escalations = Counter(
            "callstream_cs_escalations", "Controlled-substance requests escalated: here, those whose review item is "
            "stored and staff-visible (the worker counts those whose provider Task reached ModMed)",
            ["practice_id"], registry=self.registry)

    def refresh(self, items: list[ReviewItem], now: datetime, firing: set[str], watched: set[str]) -> None:
        self.open_items.clear()
        self.oldest_cs_age.clear()
        counts: dict[tuple[str, str], int] = {}
        oldest: dict[str, float] = {}
        for item in items:
            counts[(item.practice_id, item.kind.value)] = counts.get((item.practice_id, item.kind.value), 0) + 1
            if item.controlled_substance:
                age = (now - item.created_at).total_seconds()
                oldest[item.practice_id] = max(age, oldest.get(item.practice_id, 0.0))
        for (practice_id, kind), count in counts.items():
            self.open_items.labels(practice_id, kind).set(count)
        for practice_id, age in oldest.items():
            self.oldest_cs_age.labels(practice_id).set(age)
        for practice_id in watched | firing:
            self.alarm_state.labels(practice_id, "REVIEW_QUEUE_STALE").set(1 if practice_id in firing else 0)


@dataclass
class Rounds:
    """When the serve loop last finished a round: the probes' evidence that intake, retries and the age
    alarm still run (a hung ClickHouse or broker call stops the loop, not the metrics thread)."""

    stall_after_s: float = STALL_AFTER_S
    monotonic: Callable[[], float] = time.monotonic
    last: float | None = None

    def __post_init__(self) -> None:
        self._started = self.monotonic()

    def done(self) -> None:
        self.last = self.monotonic()

    def live(self) -> bool:
        """Still turning; before the first round, the start counts as one (the consumer may take a while to join)."""
        return self.monotonic() - (self._started if self.last is None else self.last) <= self.stall_after_s

    def ready(self) -> bool:
        """Has finished a round, recently."""
        return self.last is not None and self.live()


@dataclass
class ReviewQueue:
    """Intake, retries, age alarm and the staff operations over one store (see the module docstring)."""

    store: ReviewStore
    tenants: TenantDirectory
    dispatcher: Dispatcher
    outputs: Any
    """streams.outputs.KafkaOutputs (audit and alarm records, each awaited until acknowledged)."""
    commands: CommandLog
    options: QueueOptions = field(default_factory=QueueOptions)
    clock: Clock = utc_now
    rng: random.Random = field(default_factory=random.Random)
    metrics: QueueMetrics = field(default_factory=QueueMetrics)
    rounds: Rounds = field(default_factory=Rounds)

    def __post_init__(self) -> None:
        stored = [alarm for alarm in self.store.alarm_states() if alarm.kind == STALE_KIND]
        self._alarm_revisions = {alarm.practice_id: alarm.revision for alarm in stored}
        self._unannounced = [alarm for alarm in stored if not alarm.announced]
        self.alarms = core.StaleAlarms(self.options.stale_after,
                                       firing=(a.practice_id for a in stored if a.state == AlarmState.FIRING.value))
        self._attempts: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------------------------------ intake

    async def intake(self) -> int:
        """Store the next batch of review commands; returns how many new items were stored."""
        batch = await asyncio.to_thread(self.commands.poll)
        stored = 0
        for partition, offset, command in batch:
            if command is None:
                log.warning("commands[%d]@%d does not decode; skipped by the review queue", partition, offset)
                continue
            if command.route is not CommandRoute.REVIEW_QUEUE:
                continue
            item = self.store.find(str(command.command_id))
            if item is None:
                practice = self._practice(command.practice_id)
                retries = practice is not None and practice.phase is not GoLivePhase.READ_ONLY
                item = core.item_from_command(command, partition, offset, self.clock(), retries=retries)
                self.store.put(item)
                stored += 1
            self._confirm_escalation(item, command.params.get(CS_REQUEST_PARAM))
        if batch:
            await asyncio.to_thread(self.commands.commit, batch)
        return stored

    def _confirm_escalation(self, item: ReviewItem, request_id: str | None) -> None:
        """Count the controlled-substance request the command names as escalated, now that its item is stored
        (once per request: the id is kept on the item, so a redelivered command counts nothing)."""
        if not request_id:
            return
        confirmed = core.confirm_escalation(item, request_id, self.clock())
        if confirmed is None:
            return
        self.store.put(confirmed)  # an attempt in flight keeps it (_store_outcome)
        self.metrics.cs_escalations.labels(item.practice_id).inc()

    # ----------------------------------------------------------------------------------- retries

    def start_due(self) -> None:
        """Start an attempt for every due item not already being attempted."""
        now = self.clock()
        for item in self.store.open_items():
            if core.due(item, now) and item.item_id not in self._attempts and self._practice(item.practice_id):
                task = asyncio.create_task(self.attempt(item))
                self._attempts[item.item_id] = task
                task.add_done_callback(lambda _, item_id=item.item_id: self._attempts.pop(item_id, None))

    async def settle(self) -> None:
        """Wait for the attempts in flight (shutdown, tests)."""
        await asyncio.gather(*self._attempts.values(), return_exceptions=True)

    async def attempt(self, item: ReviewItem) -> None:
        """One delivery attempt of one item, recorded whatever happens."""
        practice = self._practice(item.practice_id)
        assert practice is not None
        item = core.start_attempt(item, self.clock(), self.options.lease)
        self.store.put(item)
        started = time.perf_counter()
        try:
            outcome = await asyncio.wait_for(self._deliver(practice, item), DISPATCH_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any ModMed failure is this item's, recorded on it
            error = type(exc).__name__
            final = core.reason_for(error) not in core.TRANSIENT
            log.warning("review item %s (practice %s): attempt %d failed with %s%s", item.item_id, item.practice_id,
                        item.attempts, error, "; left for staff" if final else "")
            await self.outputs.audit(self._attempt_audit(item, error, started))
            self._store_outcome(item, lambda it: core.attempt_failed(it, error, self.clock(), self.rng,
                                                                     backoff=self.options.backoff, final=final))
            self.metrics.deliveries.labels(item.practice_id, "failed").inc()
            return
        if isinstance(outcome, ForStaff):
            log.warning("review item %s (practice %s): left for staff (%s: %s)", item.item_id, item.practice_id,
                        outcome.reason.value, outcome.error_class)
            await self.outputs.audit(self._attempt_audit(item, outcome.error_class, started, outcome.reason))
            self._store_outcome(item, lambda it: core.to_staff(it, outcome.reason, outcome.error_class, self.clock()))
            self.metrics.deliveries.labels(item.practice_id, outcome.reason.value).inc()
            return
        await self.outputs.audit(self._delivery_audit(item, outcome, started))
        self._store_outcome(item, lambda it: core.delivered(it, outcome.resource_type, outcome.resource_id,
                                                            self.clock()))
        self.metrics.deliveries.labels(item.practice_id, "delivered").inc()
        log.info("review item %s (practice %s) delivered as %s/%s", item.item_id, item.practice_id,
                 outcome.resource_type, outcome.resource_id)

    def _store_outcome(self, item: ReviewItem, outcome: Callable[[ReviewItem], ReviewItem]) -> None:
        """Store the attempt's outcome on the newest stored revision's detail: intake may have confirmed an
        escalation on the item meanwhile (both run on this loop, and nothing awaits between read and write)."""
        stored = self.store.find(item.item_id)
        if stored is not None and stored.revision > item.revision:
            item = replace(item, detail=stored.detail, revision=stored.revision)
        self.store.put(outcome(item))

    async def _deliver(self, practice: Practice, item: ReviewItem) -> Written | ForStaff:
        """The item's write, if the guards still allow it: the Task on the chart the item names (or, after a
        failed search, the chart found now), or the booking of the chosen slot."""
        command = await asyncio.to_thread(self.commands.read, item.source_partition, item.source_offset)
        params = command.params if command is not None else {}
        request, earlier = _decided_request(params)
        detail = item.detail
        patient_id = detail.get("patient_id")
        if patient_id is None:
            patient_id = await self._search_again(practice, params)
            if patient_id is None:
                return ForStaff(Reason.CALLER_NOT_MATCHED, "caller_not_matched")
        flags = (await self.dispatcher.read_flags(practice, patient_id)).value
        now = self.clock()
        refusal = core.recheck(item, request, earlier, patient_id, flags.to_chart_flags(), practice.phase,
                               is_after_hours(now, practice), now)
        if refusal is not None:
            return ForStaff(Reason.GUARD_REFUSED, refusal)
        if item.command == "BOOK_APPOINTMENT":
            return await self._book(practice, item, patient_id, now)
        audience = TaskAudience(detail["audience"])
        task = TaskSpec(kind=TaskKind(detail["task_kind"]), audience=audience, reason=TaskReason(detail["task_reason"]),
                        call_id=item.call_id, practice_id=item.practice_id, patient_id=patient_id,
                        # the PDMP check time reaches providers only (TaskSpec refuses it elsewhere)
                        pdmp_last_checked=flags.pdmp_last_checked if audience is TaskAudience.PROVIDER else None,
                        merged_reasons=core.merged_reasons(detail))
        return await self.dispatcher.create_task(practice, call_id=item.call_id, task=task, note=task_note(task))

    async def _book(self, practice: Practice, item: ReviewItem, patient_id: str, now: datetime) -> Written | ForStaff:
        """Book the slot the caller chose, if it is still one the scheduling rules would offer. A slot no longer
        free is booked only if this request already holds it (the connector finds the landed booking first);
        otherwise ModMed refuses it (409) and staff offer another."""
        visit_reason = VisitReason(item.detail["visit_reason"])
        slot_id = item.detail["slot_id"]
        start = datetime.fromisoformat(item.detail["start"])
        if start <= now:  # the search lists future slots only: a passed one must not reach the booking below
            return ForStaff(Reason.SLOT_UNAVAILABLE, "SlotInThePast")
        day = start.astimezone(ZoneInfo(practice.timezone)).date()
        found = await self.dispatcher.search_slots(practice, visit_reason=visit_reason, date_from=day - timedelta(days=1),
                                                   date_to=day + timedelta(days=1), patient_id=patient_id)
        free = next((offer for offer in found.value if offer.slot_id == slot_id), None)
        if free is not None:
            try:
                ranked = filter_and_rank([free.to_candidate()], visit_reason, now=now, patient_is_new=False, limit=1)
            except (InvalidResponseError, ValidationError):
                ranked = []
            if not ranked:
                return ForStaff(Reason.SLOT_UNAVAILABLE, "SlotNoLongerOffered")
        try:
            return await self.dispatcher.book(practice, call_id=item.call_id, patient_id=patient_id, slot_id=slot_id,
                                              found_on=found.route)
        except ConflictError:
            return ForStaff(Reason.SLOT_UNAVAILABLE, "ConflictError")

    async def _search_again(self, practice: Practice, params: dict[str, str]) -> str | None:
        if not {"family_name", "given_name", "birth_date"} <= params.keys():
            raise ReviewQueueError("the command record with the caller's identity is gone from the topic")
        match = await self.dispatcher.search_patient(
            practice, family=params["family_name"], given=params["given_name"],
            birth_date=date.fromisoformat(params["birth_date"]), phone=params.get("callback_number"))
        return match.patient.id if match.kind is MatchKind.UNIQUE else None

    # -------------------------------------------------------------------------------- age alarm

    async def check_staleness(self) -> None:
        """Raise or clear REVIEW_QUEUE_STALE per practice, and refresh the gauges."""
        now = self.clock()
        items = self.store.open_items()
        stale = core.stale_by_practice(items, now, self.options.stale_after)
        threshold = self.options.stale_after.total_seconds()
        for unannounced in self._unannounced:  # stored by a predecessor that died before the broker acknowledged
            await self._announce(unannounced, stale, now, threshold)
        self._unannounced = []
        for transition in self.alarms.update(stale):
            revision = self._alarm_revisions.get(transition.practice_id, 0) + 1
            self._alarm_revisions[transition.practice_id] = revision
            state = StoredAlarm(transition.practice_id, STALE_KIND, transition.state.value, transition.value, now,
                                announced=False, revision=revision)
            self.store.put_alarm(state)
            await self._announce(state, stale, now, threshold)
        watched = {item.practice_id for item in items if item.controlled_substance}
        self.metrics.refresh(items, now, self.alarms.firing, watched)

    async def _announce(self, state: StoredAlarm, stale: dict[str, core.Staleness], now: datetime,
                        threshold: float) -> None:
        """Publish a stored transition and, once the broker has it, mark it announced."""
        count = stale[state.practice_id].count if state.practice_id in stale else 0
        await self.outputs.alarm(Alarm(
            alarm_id=uuid.uuid5(REPLY_NAMESPACE, f"review-alarm:{state.practice_id}:{state.revision}"),
            practice_id=state.practice_id, kind=AlarmKind.REVIEW_QUEUE_STALE, state=AlarmState(state.state),
            value=state.value, threshold=threshold, window_start=now - self.options.stale_after, window_end=now,
            raised_at=now, detail={"open_items": str(count)},
        ))
        revision = self._alarm_revisions[state.practice_id] = max(self._alarm_revisions.get(state.practice_id, 0),
                                                                  state.revision) + 1
        self.store.put_alarm(replace(state, announced=True, revision=revision))
        log.warning("practice %s: REVIEW_QUEUE_STALE %s", state.practice_id, state.state)

    # ---------------------------------------------------------------------------------- staff

    async def resolve(self, item_id: str, by: str, note: str) -> ReviewItem:
        """Staff closed an item; audited (who, never the note, which staff might fill with PHI)."""
        item = core.resolve(self.store.get(item_id), by, note, self.clock())
        await self.outputs.audit(AuditEvent(
            event_id=uuid.uuid5(REPLY_NAMESPACE, f"review:{item.item_id}:resolved"), occurred_at=item.updated_at,
            practice_id=item.practice_id, call_id=item.call_id, action=AuditAction.REVIEW_QUEUED,
            outcome=AuditOutcome.SUCCESS, command=_command_kind(item.command),
            detail={"queue": "review", "review_item": item.item_id, "resolution": "staff",
                    "resolved_by": item.resolved_by or "", "kind": item.kind.value},
        ))
        self.store.put(item)
        return item

    # ---------------------------------------------------------------------------------- helpers

    def _practice(self, practice_id: str) -> Practice | None:
        try:
            return self.tenants[practice_id]
        except KeyError:
            return None

    def _delivery_audit(self, item: ReviewItem, written: Written, started: float) -> AuditEvent:
        ref = f"{written.resource_type}/{written.resource_id}"
        return AuditEvent(
            event_id=uuid.uuid5(REPLY_NAMESPACE, f"review:{item.item_id}:delivered"), occurred_at=self.clock(),
            practice_id=item.practice_id, call_id=item.call_id,
            action=AuditAction.EMA_WRITE if written.route is CommandRoute.EMA else AuditAction.FHIR_WRITE,
            outcome=AuditOutcome.SUCCESS, resource_type=written.resource_type, resource_ids=[written.resource_id],
            ema_deep_link=written.deep_link if written.deep_link and _DEEP_LINK.fullmatch(written.deep_link) else None,
            task_refs=[ref] if written.resource_type == "Task" else [], command=_command_kind(item.command),
            latency_ms=_ms(started), slot_id=item.detail.get("slot_id") if written.resource_type == "Appointment" else None,
            detail={"queue": "review", "review_item": item.item_id, "attempt": str(item.attempts),
                    "route": written.route.value, "kind": item.kind.value, "reason": item.reason.value},
        )

    def _attempt_audit(self, item: ReviewItem, error: str, started: float, for_staff: Reason | None = None) -> AuditEvent:
        """A failed attempt; ``for_staff``: the reason the item now waits for a person (a guard, the slot gone)."""
        booking = item.command == "BOOK_APPOINTMENT"
        return AuditEvent(
            event_id=uuid.uuid5(REPLY_NAMESPACE, f"review:{item.item_id}:attempt:{item.attempts}"),
            occurred_at=self.clock(), practice_id=item.practice_id, call_id=item.call_id,
            action=AuditAction.FHIR_WRITE, outcome=AuditOutcome.BLOCKED if for_staff is Reason.GUARD_REFUSED
            else AuditOutcome.FAILURE, resource_type="Appointment" if booking else "Task",
            command=_command_kind(item.command), error_class=error[:64], latency_ms=_ms(started),
            slot_id=item.detail.get("slot_id") if booking else None,
            detail={"queue": "review", "review_item": item.item_id, "attempt": str(item.attempts),
                    **({"for_staff": for_staff.value} if for_staff else {})},
        )


def _command_kind(value: str) -> CommandKind | None:
    try:
        return CommandKind(value)
    except ValueError:
        return None


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


# -------------------------------------------------------------------------------------- HTTP API

_ERROR_STATUS: dict[type[ReviewQueueError], int] = {ItemNotFound: 404, ItemBusy: 409, ItemClosed: 409}


def api_app(queue: ReviewQueue) -> web.Application:
    """The staff CLI's API; listens on the loopback interface only (no authentication of its own)."""

    async def list_items(request: web.Request) -> web.Response:
        try:  # state: one state or several, comma-separated (the CLI's --state open asks for open,retrying)
            wanted = {ItemState(state) for state in request.query.get("state", "").split(",") if state}
            limit = min(int(request.query.get("limit", "500")), 5000)
        except ValueError:
            return web.json_response({"error": "state must be open, retrying, delivered or resolved (comma-separated)"},
                                     status=400)
        items = queue.store.select_items(request.query.get("practice") or None, wanted, limit,
                                         call_id=request.query.get("call") or None)
        return web.json_response({"items": [item.to_json_dict() for item in items]})

    async def show_item(request: web.Request) -> web.Response:
        return web.json_response(queue.store.get(request.match_info["item_id"]).to_json_dict())

    async def resolve_item(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("by"), str) or not isinstance(body.get("note"), str):
            return web.json_response({"error": "send JSON with 'by' and 'note'"}, status=400)
        item = await queue.resolve(request.match_info["item_id"], body["by"], body["note"])
        return web.json_response(item.to_json_dict())

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(queue.metrics.registry), content_type="text/plain", charset="utf-8")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    @web.middleware
    async def errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except ReviewQueueError as exc:
            return web.json_response({"error": str(exc)}, status=_ERROR_STATUS.get(type(exc), 400))

    app = web.Application(middlewares=[errors])
    app.add_routes([
        web.get("/items", list_items), web.get("/items/{item_id}", show_item),
        web.post("/items/{item_id}/resolve", resolve_item), web.get("/metrics", metrics), web.get("/healthz", healthz),
    ])
    return app


async def serve(queue: ReviewQueue, stop: asyncio.Event) -> None:
    """Run intake, retries and the age alarm every tick, and the API, until ``stop`` is set."""
    runner = web.AppRunner(api_app(queue), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, queue.options.api_host, queue.options.api_port)
    await site.start()
    log.warning("review queue: API on %s:%d", queue.options.api_host, queue.options.api_port)
    try:
        while not stop.is_set():
            await queue.intake()
            queue.start_due()
            await queue.check_staleness()
            queue.rounds.done()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), queue.options.tick_s)
        await queue.settle()
    finally:
        await runner.cleanup()
