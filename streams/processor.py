"""The imperative shell around the call-flow core: one call event in, reply and audit out.

``CallProcessor.handle`` does, for one raw message of callstream.call-events.v1:

1. ingest: decode and validate (Avro + the event model), check the key is the call id; anything
   malformed, unknown or hostile goes to the dead-letter topic with a PHI-free reason and is audited;
2. resolve the practice from the called number (unknown numbers are dead-lettered and audited under
   practice ``unresolved``); an event outside the redelivery horizon (``streams.horizon``) is dead-lettered
   too, since the idempotency ledger may have forgotten its writes;
3. run the core (``streams.callflow``), executing the work it asks for through the dispatcher (guard
   decisions, FHIR first, EMA where the practice needs it; ``streams.work``) and feeding results back;
4. publish the reply first (it is on the caller's clock), then the audit records and review-queue
   commands, and wait until the broker has all of them; only then store the call state (durably), so
   a redelivered event whose outputs were lost is processed again rather than taken for a duplicate.

No input can make ``handle`` raise: bad input is dead-lettered, dispatcher failures become
``WorkFailed`` results the core turns into a hand-off to staff. Only a broken broker (outputs that
cannot be delivered) propagates, so the event stays un-acked and is redelivered after a restart.
``streams.sequencer.CallSequencer`` keeps each call's events in order while different calls (and practices)
run concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from callstream.deadline import TurnBudget
from callstream.messaging import PatientMessenger
from callstream.tenants import Practice, TenantDirectory
from callstream.work_scope import WorkScope, WriteRequests
from connectors.dispatch import Dispatcher
from guards.replies import ReplyTemplate
from schemas.errors import SchemaError
from schemas.models import (
    UNRESOLVED_PRACTICE_ID,
    AuditAction,
    AuditEvent,
    AuditOutcome,
    CallEvent,
    IntentRecognised,
    SlotChosen,
)
from schemas.registry import SchemaRegistryClient
from schemas.serde import AvroSerde
from schemas.topics import CALL_EVENTS, DEAD_LETTER
from streams import callflow
from streams.callflow import AuditOut, CallFlowError, CallState, Output, ReplyOut, ReviewOut
from streams.metrics import MetricLabelError, Metrics
from streams.horizon import DEFAULT_HORIZON, REFUSAL_CLASS, RedeliveryHorizon
from streams.outputs import Outputs
from streams.call_states import CallStateStore, stored_state
from streams.drift_counts import DriftSink, drift_counts
from streams.work import MAX_WORK_STEPS, TurnProgress, WorkRunner
from streams.records import (
    DEAD_LETTER_REPLY,
    RawEvent,
    audit_record,
    command_record,
    dead_letter_record,
    dead_letter_reply,
    dead_letter_seed,
    readable_call,
    reply_record,
)

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class CallProcessor:
    """Handles call events for every practice of the tenant directory (see the module docstring)."""

    def __init__(
        self,
        *,
        tenants: TenantDirectory,
        dispatcher: Dispatcher,
        outputs: Outputs,
        states: CallStateStore,
        metrics: Metrics,
        drift: DriftSink | None = None,
        registry: SchemaRegistryClient | None = None,
        clock: Clock = utc_now,
        turns: TurnBudget = TurnBudget(),
        horizon: RedeliveryHorizon = DEFAULT_HORIZON,
        messenger: PatientMessenger | None = None,
    ) -> None:
        self.tenants = tenants
        self._work = WorkRunner(dispatcher, messenger)
        self.outputs = outputs
        self.states = states
        self.metrics = metrics
        self._drift = drift
        self._serde = AvroSerde.for_topic(CALL_EVENTS, registry=registry)
        self._clock = clock
        self._turns = turns
        self._waiting_holds: dict[str, asyncio.TimerHandle] = {}
        self._held_early: set[str] = set()
        self._horizon = horizon
        self._events_counted = metrics.events_processed.labels(CALL_EVENTS)
        self._reply_latency: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------ ingest

    async def handle(self, raw: RawEvent) -> None:
        """Process one message completely; returns once every output is acknowledged. The event's scope
        (``callstream.work_scope``) goes down explicitly to the dispatcher, the ledger and the FHIR client."""
        scope = WorkScope.for_event(raw.partition, raw.offset)
        writes, held = scope.writes, scope.held_acks
        assert writes is not None and held is not None  # for_event starts both
        try:
            await self._handle(raw, scope, writes)
        except BaseException:
            _settle_unawaited(held)
            raise
        await asyncio.gather(*held)

    def queued(self, raw: RawEvent) -> None:
        """An event that waits behind its call's previous one: if the caller asked something, they hear
        PLEASE_HOLD at the hold threshold even while it waits (its turn's own timers start when it runs).
        Called only for events that must wait, so the common path decodes each event once."""
        try:
            event = self._decode(raw)
        except SchemaError:
            return  # dead-lettered (and answered) when its turn comes
        if not isinstance(event.payload, IntentRecognised | SlotChosen):
            return
        practice = self.tenants.resolve_called_number(event.called_number)
        if practice is None:
            return
        times = self._turns.start(event.occurred_at, self._clock())
        event_id = str(event.event_id)
        self._waiting_holds[event_id] = asyncio.get_running_loop().call_later(
            max(0.0, times.hold.remaining()), self._hold_while_queued, event, practice)

    def _hold_while_queued(self, event: CallEvent, practice: Practice) -> None:
        event_id = str(event.event_id)
        if self._waiting_holds.pop(event_id, None) is None:
            return
        self._held_early.add(event_id)
        for sent in self._send_interim(ReplyTemplate.PLEASE_HOLD, event, practice, None):
            sent.add_done_callback(_retrieve)  # best effort: the turn's answer follows in any case

    def _send_interim(self, template: ReplyTemplate, event: CallEvent, practice: Practice,
                      caller_number: str | None) -> list[asyncio.Future[None]]:
        """Publish an interim reply to ``event`` and its audit record; returns their acknowledgements."""
        at = self._clock()
        sent = []
        for output in callflow.interim_reply_for(str(event.event_id), template, practice, at):
            if isinstance(output, ReplyOut):
                sent.append(self.outputs.reply(reply_record(output.reply, event.call_id, practice.practice_id)))
            elif isinstance(output, AuditOut):
                sent.append(self.outputs.audit(audit_record(output, f"{event.event_id}:{template.value}",
                                                            practice.practice_id, event.call_id, caller_number, at)))
        return sent

    async def _handle(self, raw: RawEvent, scope: WorkScope, writes: WriteRequests) -> None:
        received = time.perf_counter()
        now = self._clock()
        self._events_counted.inc()
        try:
            event = self._decode(raw)
        except SchemaError as exc:
            await self._dead_letter(raw, str(exc), type(exc).__name__, None, None, now)
            return
        practice = self.tenants.resolve_called_number(event.called_number)
        if practice is None:
            await self._dead_letter(raw, "called number matches no practice", "UnknownCalledNumber", None,
                                    event.call_id, now)
            return
        refusal = self._horizon.refusal(event.occurred_at, now)
        if refusal is not None:  # the ledger may have forgotten its writes (streams.horizon)
            await self._dead_letter(raw, refusal, REFUSAL_CLASS, practice.practice_id, event.call_id, now)
            return
        state = self._load(event, practice, raw.partition, now)
        try:
            step = callflow.on_event(state, event, practice, now)
        except CallFlowError as exc:
            await self._dead_letter(raw, str(exc), type(exc).__name__, practice.practice_id, event.call_id, now)
            return
        if step.dropped is not None:  # recorded apart from the ids the event's own processing used
            log.info("practice %s call %s: event seq %d %s[%d]@%d dropped (%s)", practice.practice_id, event.call_id,
                     event.seq, raw.topic, raw.partition, raw.offset, step.dropped.value)
            dropped = callflow.dropped_audit(state, event.seq, step.dropped)
            await self.outputs.audit(audit_record(dropped, f"{event.event_id}:dropped", practice.practice_id,
                                                  event.call_id, None, now))
            return
        outputs = list(step.outputs)
        event_id = str(event.event_id)
        waiting = self._waiting_holds.pop(event_id, None)
        if waiting is not None:
            waiting.cancel()
        held_already = event_id in self._held_early
        self._held_early.discard(event_id)
        if step.work is not None:
            step = await self._turn(event, practice, step, outputs, now, scope, held_already)
        await self._publish(event, practice, step.state or state, outputs, writes, received, now)
        stored = None if step.state is None else step.state.model_dump_json().encode()
        await self.states.put(event.call_id, raw.partition, stored)

    def _decode(self, raw: RawEvent) -> CallEvent:
        if raw.value is None:
            raise SchemaError("CallEvent message has no value (tombstone)")
        event = CallEvent.from_avro(self._serde.decode(raw.value))
        if raw.key != event.call_id.encode():
            raise SchemaError("CallEvent message key is not its call_id")
        return event

    def _load(self, event: CallEvent, practice: Practice, partition: int, now: datetime) -> CallState:
        stored = self.states.get(event.call_id)
        if stored is not None:
            try:
                return stored_state(stored)
            except ValidationError:
                log.warning("practice %s call %s: stored call state unreadable; starting afresh",
                            practice.practice_id, event.call_id)
        return callflow.new_state(event, practice, partition, now)

    # ---------------------------------------------------------------------------------- dispatch

    async def _turn(self, event: CallEvent, practice: Practice, step: callflow.Step, outputs: list[Output],
                    now: datetime, scope: WorkScope, held_already: bool = False) -> callflow.Step:
        """Run the turn's work under its deadline (``callstream.deadline``, handed down with ``scope``), telling
        the caller meanwhile: PLEASE_HOLD once the hold threshold passes, and an honest STILL_WORKING reply if
        the budget passes while a write is under way. Reads are cut at the deadline (the core hands the request
        to staff); a write that left is never cut, so its outcome is known and audited (its reply follows the
        interim ones). What is said early holds the event's acknowledgement, not the turn."""
        times = self._turns.start(event.occurred_at, now)
        progress = TurnProgress()
        state = step.state
        assert state is not None
        timers = [] if step.work is None or not callflow.awaits_reply(state) else [
            asyncio.ensure_future(self._say_when(times.hold.remaining(), ReplyTemplate.PLEASE_HOLD, event, practice,
                                                 state, scope, lambda: not held_already)),
            asyncio.ensure_future(self._say_when(times.deadline.remaining(),
                                                 ReplyTemplate.STILL_WORKING_STAFF_WILL_FOLLOW_UP, event, practice,
                                                 state, scope, lambda: progress.writing)),
        ]
        try:
            for _ in range(MAX_WORK_STEPS):
                if step.work is None:
                    break
                result = await self._work.run(practice, event.call_id, step.work, times.deadline, progress,
                                             scope=scope)
                assert step.state is not None
                step = callflow.on_result(step.state, result, practice, now)
                outputs.extend(step.outputs)
            else:
                log.error("practice %s call %s: the turn did not settle; left for staff", practice.practice_id,
                          event.call_id)
        finally:
            for timer in timers:
                timer.cancel()
        return step

    async def _say_when(self, delay_s: float, template: ReplyTemplate, event: CallEvent, practice: Practice,
                        state: CallState, scope: WorkScope, still_needed: Callable[[], bool]) -> None:
        """After ``delay_s``, send an interim reply (and its audit record) if the turn still needs it."""
        await asyncio.sleep(max(0.0, delay_s))
        if not still_needed():
            return
        for sent in self._send_interim(template, event, practice, state.caller_number):
            scope.hold_ack(lambda sent=sent: sent)

    # ----------------------------------------------------------------------------------- outputs

    async def _publish(self, event: CallEvent, practice: Practice, state: CallState, outputs: list[Output],
                       writes: WriteRequests, received: float, now: datetime) -> None:
        """Reply first, then audit and review entries; returns once the broker acknowledged all of them."""
        pending: list[Awaitable[None]] = []
        for output in outputs:
            if isinstance(output, ReplyOut):
                pending.append(self.outputs.reply(reply_record(output.reply, event.call_id, practice.practice_id)))
                self._observe_reply_latency(_intent_label(event), time.perf_counter() - received)
        event_id = str(event.event_id)
        audit_index = 0
        for output in outputs:
            if isinstance(output, AuditOut):
                record = audit_record(output, f"{event_id}:{audit_index}", practice.practice_id, event.call_id,
                                      state.caller_number, now)
                audit_index += 1
                pending.append(self.outputs.audit(record))
                self._count(practice.practice_id, output)
            elif isinstance(output, ReviewOut):
                pending.append(self.outputs.command(command_record(output, event.call_id, practice.practice_id, now)))
        counts = drift_counts(outputs, writes)
        if counts and self._drift is not None:
            self._drift(practice.practice_id, counts)
        await asyncio.gather(*pending)

    def _observe_reply_latency(self, intent: str, seconds: float) -> None:
        """Per-event metric children are looked up once (label validation costs more than the observation)."""
        histogram = self._reply_latency.get(intent)
        if histogram is None:
            self.metrics.observe_reply_latency(intent, seconds)
            self._reply_latency[intent] = self.metrics.reply_latency_seconds.labels(intent)
        else:
            histogram.observe(seconds)

    def _count(self, practice_id: str, audit: AuditOut) -> None:
        """Metrics from the audit trail; a label the registry refuses never fails the call."""
        try:
            if audit.action in (AuditAction.FHIR_WRITE, AuditAction.EMA_WRITE, AuditAction.FHIR_READ,
                                AuditAction.EMA_READ) and audit.command is not None:
                route = "ema" if audit.action in (AuditAction.EMA_WRITE, AuditAction.EMA_READ) else "fhir"
                error = audit.error_class if audit.outcome is AuditOutcome.FAILURE else None
                self.metrics.record_command(practice_id, audit.command.value, route, error)
            elif audit.action is AuditAction.ESCALATION:
                if audit.detail.get("trigger") == "controlled_substance":
                    # Escalated here only once the provider Task is in ModMed: a queued request is counted by the
                    # review queue when its item is stored and staff-visible (review.service, same metric name).
                    self.metrics.record_controlled_substance_request(practice_id, audit.outcome is AuditOutcome.SUCCESS)
                else:
                    self.metrics.record_escalation(practice_id, audit.detail.get("escalation_kind", "unknown"))
            elif audit.action is AuditAction.GUARD_HIT:
                for guard in audit.guards_fired:
                    self.metrics.record_guard_hit(practice_id, guard)
            elif audit.action is AuditAction.BYPASS_ATTEMPT:
                self.metrics.record_bypass_attempt(practice_id, audit.detail.get("signal", "unknown"))
        except MetricLabelError:
            log.warning("practice %s: a metric label was refused", practice_id)

    async def _dead_letter(self, raw: RawEvent, reason: str, error_class: str, practice_id: str | None,
                           call_id: str | None, now: datetime) -> None:
        """The original bytes to the dead-letter topic and an audit record (never the content).

        A message that still names its call leaves no caller in silence: a hand-over to staff goes out
        first (it is on the caller's clock) and is audited, under the call's practice when the stored call
        state or the called number tells it (the reply then carries no practice). Every id derives from
        the event or its offset, so a redelivery repeats them; the stored call state is read, never written.
        """
        readable = readable_call(raw, self._serde)
        call_id = call_id or readable.call_id
        event_id = readable.event_id if readable.call_id == call_id else None
        state = self._stored_call(call_id)
        if state is not None:  # the call's own practice, even when this event's number points elsewhere
            practice_id = state.practice_id
        elif practice_id is None and readable.called_number is not None:
            practice = self.tenants.resolve_called_number(readable.called_number)
            practice_id = practice.practice_id if practice is not None else None
        caller_number = state.caller_number if state is not None else None
        seed = dead_letter_seed(raw)
        pending: list[Awaitable[None]] = []
        handed_over = call_id is not None and (state is None or not state.ended)  # an ended call has no caller
        if call_id is not None and handed_over:
            in_reply_to = event_id or str(uuid.uuid5(callflow.REPLY_NAMESPACE, seed))
            pending.append(self.outputs.reply(dead_letter_reply(call_id, in_reply_to, practice_id, now)))
            told = AuditOut(action=AuditAction.REPLY_SENT, outcome=AuditOutcome.SUCCESS,
                            detail={"template": DEAD_LETTER_REPLY.value, "cause": "dead_letter"})
            record = audit_record(told, f"{seed}:reply", practice_id or UNRESOLVED_PRACTICE_ID, call_id,
                                  caller_number, now)
            pending.append(self.outputs.audit(record))
        audit = AuditEvent(
            event_id=uuid.uuid5(callflow.REPLY_NAMESPACE, seed),
            occurred_at=now,
            practice_id=practice_id or UNRESOLVED_PRACTICE_ID,
            call_id=call_id,
            caller_number=caller_number,
            action=AuditAction.DEAD_LETTER,
            outcome=AuditOutcome.FAILURE,
            error_class=error_class,
            detail={"topic": raw.topic},
        )
        pending += [self.outputs.dead_letter(dead_letter_record(raw, reason, error_class, practice_id, now)),
                    self.outputs.audit(audit)]
        log.warning("dead-lettered %s[%d]@%d: %s%s", raw.topic, raw.partition, raw.offset, error_class,
                    "; the caller is handed to staff" if handed_over else "")
        self.metrics.record_dead_letter(DEAD_LETTER, error_class)
        await asyncio.gather(*pending)

    def _stored_call(self, call_id: str | None) -> CallState | None:
        """The stored state of the call a dead-lettered message names, if there is a readable one."""
        stored = None if call_id is None else self.states.get(call_id)
        if stored is None:
            return None
        try:
            return stored_state(stored)
        except ValidationError:
            return None


def _settle_unawaited(acknowledgements: list[Awaitable[None]]) -> None:
    """The event failed (the worker stops, the event is redelivered): its held records are no longer awaited;
    take their outcome when it comes, so none is reported as an exception never retrieved."""
    for acknowledgement in acknowledgements:
        if isinstance(acknowledgement, asyncio.Future):
            acknowledgement.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _intent_label(event: CallEvent) -> str:
    payload = event.payload
    return payload.intent.value if isinstance(payload, IntentRecognised) else payload.type
