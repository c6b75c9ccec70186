"""CallProcessor, the shell around the core, with real parts: the pipeline broker for its outputs and the
sandbox behind the dispatcher. Hostile and malformed input never raises; PHI never reaches the logs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.task import Task

from callstream.tenants import TenantDirectory, parse_tenant_directory
from callstream.work_scope import BACKGROUND, WorkScope
from connectors.dispatch import Dispatcher
from connectors.fhir import ModMedClient
from connectors.ledger import InMemoryLedger, LedgerEntry, LedgerState
from connectors.operations import ModMedConnector
from guards.replies import INTERIM_TEMPLATES, ReplyTemplate
from schemas.models import AuditAction, AuditEvent, AuditOutcome, CommandMessage, DeadLetter, Reply
from schemas.serde import AvroSerde
from schemas.topics import AUDIT, CALL_EVENTS, COMMANDS, DEAD_LETTER, REPLIES
from streams import callflow
from devkit.cast import PracticeCast, Script, booking
from streams.metrics import Metrics
from streams.outputs import KafkaOutputs, OutputDeliveryError
from streams.observers import FhirRequestMetrics
from streams.call_states import InMemoryCallStates
from streams.drift_counts import DriftCounts
from streams.processor import CallProcessor
from streams.records import RawEvent
from tests.fixtures.pipeline import TopicReader
from tests.guards.spoken_text import broken_promises
from tests.fixtures.sandbox import SandboxServer

pytestmark = pytest.mark.broker
EVENTS = AvroSerde.for_topic(CALL_EVENTS)


@pytest.fixture
def readers(pipeline_broker: str) -> Iterator[dict[str, TopicReader]]:
    opened = {
        REPLIES: TopicReader(pipeline_broker, REPLIES, Reply),
        AUDIT: TopicReader(pipeline_broker, AUDIT, AuditEvent),
        DEAD_LETTER: TopicReader(pipeline_broker, DEAD_LETTER, DeadLetter),
        COMMANDS: TopicReader(pipeline_broker, COMMANDS, CommandMessage),
    }
    try:
        yield opened
    finally:
        for reader in opened.values():
            reader.close()


class Harness:
    def __init__(self, processor: CallProcessor, states: InMemoryCallStates, drift: list[tuple[str, DriftCounts]]) -> None:
        self.processor = processor
        self.states = states
        self.drift = drift
        self.offset = 0

    async def send(self, event: Any, *, key: bytes | None = None, value: bytes | None = None, raw: bool = False) -> None:
        """Hand one message to the processor as the agent would (event encoded unless raw bytes are given)."""
        self.offset += 1
        if not raw:
            key, value = event.call_id.encode(), EVENTS.encode(event.to_avro())
        await self.processor.handle(RawEvent(CALL_EVENTS, 4, self.offset, key, value))


async def harness_for(tenants: TenantDirectory, outputs: KafkaOutputs) -> AsyncIterator[Harness]:
    metrics = Metrics()
    async with ModMedClient(observer=FhirRequestMetrics(metrics)) as client:  # wired as the worker wires it
        ledger = InMemoryLedger()
        states = InMemoryCallStates()
        drift: list[tuple[str, DriftCounts]] = []
        processor = CallProcessor(
            tenants=tenants, dispatcher=Dispatcher(ModMedConnector(client, ledger), ledger), outputs=outputs,
            states=states, metrics=metrics, drift=lambda practice, counts: drift.append((practice, counts)),
        )
        yield Harness(processor, states, drift)


@pytest.fixture
async def harness(pipeline_tenants: tuple[Path, TenantDirectory], outputs: KafkaOutputs) -> AsyncIterator[Harness]:
    async for made in harness_for(pipeline_tenants[1], outputs):
        yield made


def valid_event(called_number: str, **overrides: Any) -> Any:
    return Script(called_number).started().events[0].model_copy(update=overrides)


MALFORMED: list[tuple[str, bytes | None, bytes | None]] = [
    ("tombstone", b"call-x1", None),
    ("empty", b"call-x2", b""),
    ("garbage", b"call-x3", b"\x07\x08not avro"),
    ("json", b"call-x4", json.dumps({"call_id": "call-x4", "payload": {"type": "call_started"}}).encode()),
    ("truncated", b"call-x5", b"\xc3\x01" + b"\x00" * 8 + b"\x02"),
    ("oversized", b"call-x6", b"\xc3\x01" + b"\x00" * (2 * 1024 * 1024)),
]


@pytest.mark.parametrize(("label", "key", "value"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_messages_are_dead_lettered_with_their_bytes_and_audited(
    harness: Harness, readers: dict[str, TopicReader], label: str, key: bytes, value: bytes | None,
) -> None:
    await harness.send(None, key=key, value=value, raw=True)
    letters = readers[DEAD_LETTER].wait_for(lambda rs: any(r is not None and r.key == key for r in rs))
    [letter] = [r for r in letters if r is not None and r.key == key]
    assert letter.error_class == "SchemaError"
    original = value or b""
    if label == "oversized":  # too large to ride inside a dead letter: size, digest and head; the rest stays put
        assert letter.value_truncated and letter.value == original[:1024] and letter.value_size == len(original)
        assert "left at its partition and offset" in letter.reason
    else:
        assert letter.value == original and not letter.value_truncated
    assert letter.value_sha256 == hashlib.sha256(original).hexdigest()
    assert letter.source_topic == CALL_EVENTS and letter.source_partition == 4
    audits = readers[AUDIT].wait_for(lambda rs: any(r is not None and r.action is AuditAction.DEAD_LETTER
                                                    and r.detail.get("topic") == CALL_EVENTS for r in rs))
    assert any(r is not None and r.practice_id == "unresolved" and r.error_class == "SchemaError" for r in audits)
    call_id = key.decode()  # the key is the call id by contract: the caller is not left in silence
    replies = readers[REPLIES].wait_for(lambda rs: any(r is not None and r.call_id == call_id for r in rs))
    [reply] = [r for r in replies if r is not None and r.call_id == call_id]
    assert reply.template == "TRANSFER_TO_STAFF" and reply.practice_id is None and not reply.escalated
    assert harness.states == {}


async def test_a_key_that_is_not_the_call_id_is_refused(harness: Harness, readers: dict[str, TopicReader],
                                                        pipeline_cast: dict[str, PracticeCast]) -> None:
    event = valid_event(pipeline_cast["pain-1002"].called_number)
    await harness.send(None, key=b"someone-else", value=EVENTS.encode(event.to_avro()), raw=True)
    letters = readers[DEAD_LETTER].wait_for(lambda rs: any(r is not None and r.key == b"someone-else" for r in rs))
    [letter] = [r for r in letters if r is not None and r.key == b"someone-else"]
    assert "key" in letter.reason and harness.states == {}


async def test_an_unknown_called_number_is_dead_lettered_and_audited_as_unresolved(
    harness: Harness, readers: dict[str, TopicReader],
) -> None:
    event = valid_event("+19995550111")
    await harness.send(event)
    letters = readers[DEAD_LETTER].wait_for(lambda rs: any(r is not None and r.key == event.call_id.encode() for r in rs))
    [letter] = [r for r in letters if r is not None and r.key == event.call_id.encode()]
    assert letter.error_class == "UnknownCalledNumber" and letter.practice_id is None
    audits = readers[AUDIT].wait_for(lambda rs: len([r for r in rs if r is not None and r.call_id == event.call_id]) >= 2)
    mine = [r for r in audits if r is not None and r.call_id == event.call_id]
    assert {r.action for r in mine} == {AuditAction.DEAD_LETTER, AuditAction.REPLY_SENT}
    assert all(r.practice_id == "unresolved" and r.caller_number is None for r in mine)
    replies = readers[REPLIES].wait_for(lambda rs: any(r is not None and r.call_id == event.call_id for r in rs))
    [reply] = [r for r in replies if r is not None and r.call_id == event.call_id]
    assert reply.template == "TRANSFER_TO_STAFF" and reply.practice_id is None and reply.in_reply_to == event.event_id


async def test_a_seq_reused_by_another_event_is_dead_lettered_without_touching_the_call(
    harness: Harness, readers: dict[str, TopicReader], pipeline_cast: dict[str, PracticeCast],
) -> None:
    script = Script(pipeline_cast["pain-1002"].called_number).started()
    await harness.send(script.events[0])
    stored = harness.states[script.call_id]
    impostor = script.events[0].model_copy(update={"event_id": uuid.uuid4()})
    await harness.send(impostor)
    letters = readers[DEAD_LETTER].wait_for(lambda rs: any(r is not None and r.error_class == "CallFlowError"
                                                           and r.key == script.call_id.encode() for r in rs))
    assert any(r is not None and r.key == script.call_id.encode() for r in letters)
    assert harness.states[script.call_id] == stored
    replies = readers[REPLIES].wait_for(lambda rs: any(r is not None and r.in_reply_to == impostor.event_id for r in rs))
    [reply] = [r for r in replies if r is not None and r.in_reply_to == impostor.event_id]
    assert reply.template == "TRANSFER_TO_STAFF" and reply.practice_id == "pain-1002"


async def test_a_booking_call_through_the_processor_and_phi_purged_at_call_end(
    harness: Harness, readers: dict[str, TopicReader], pipeline_cast: dict[str, PracticeCast],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    cast = pipeline_cast["pain-1002"]
    caller = cast.plain[8]
    script = booking(cast, caller, visit_reason="follow-up")
    for event in script.events[:3]:
        await harness.send(event)
    live = callflow.CallState.model_validate_json(harness.states[script.call_id])
    assert live.holds_phi and live.offer is not None and live.patient_id == caller.patient_id
    chosen = script.events[3].model_copy(update={"payload": script.events[3].payload.model_copy(
        update={"slot_id": live.offer.slots[0].slot_id})})
    await harness.send(chosen)
    await harness.send(script.events[4])

    ended = callflow.CallState.model_validate_json(harness.states[script.call_id])
    assert ended.phase is callflow.CallPhase.ENDED and not ended.holds_phi
    assert ended.identity is None and ended.caller_number is None and ended.chart is None
    replies = readers[REPLIES].wait_for(lambda rs: len([r for r in rs if r is not None and r.call_id == script.call_id]) >= 2)
    mine = [r for r in replies if r is not None and r.call_id == script.call_id]
    assert [r.template for r in mine] == ["OFFER_SLOTS", "BOOKING_CONFIRMED"]
    assert [(practice, counts.write_successes) for practice, counts in harness.drift] == [("pain-1002", 1)]
    for value in (caller.family, caller.birth_date, caller.phone, caller.given):
        assert value not in caplog.text


async def test_a_write_modmed_answers_500_counts_as_a_failed_write_request_though_the_command_recovers(
    harness: Harness, readers: dict[str, TopicReader], pipeline_cast: dict[str, PracticeCast], sandbox: SandboxServer,
) -> None:
    """Write drift is judged per request: the landed check saves the command, the 500 is still counted."""
    cast = pipeline_cast["pain-1002"]
    script = Script(cast.called_number).started().identified(cast.plain[9]).intent("PRIOR_AUTH_FOLLOWUP")
    for event in script.events[:2]:
        await harness.send(event)
    sandbox.set_faults("pain-1002", error_5xx_after_write_ratio=1.0)
    try:
        await harness.send(script.events[2])
    finally:
        sandbox.clear_faults("pain-1002")
    audit = readers[AUDIT].wait_for(lambda rs: any(r is not None and r.call_id == script.call_id
                                                   and r.action is AuditAction.FHIR_WRITE for r in rs))
    [write] = [r for r in audit if r is not None and r.call_id == script.call_id and r.action is AuditAction.FHIR_WRITE]
    assert write.outcome is AuditOutcome.SUCCESS and write.task_refs
    assert harness.drift == [("pain-1002", DriftCounts(write_attempts=1, write_successes=0))]


async def processor_at_last_event(client: ModMedClient, ledger: InMemoryLedger, tenants: TenantDirectory,
                                  outputs: KafkaOutputs, script: Script) -> tuple[CallProcessor, RawEvent]:
    """A processor over ``ledger`` that has handled all but the script's last event, and that event."""
    processor = CallProcessor(tenants=tenants, dispatcher=Dispatcher(ModMedConnector(client, ledger), ledger),
                              outputs=outputs, states=InMemoryCallStates(), metrics=Metrics())
    raws = [RawEvent(CALL_EVENTS, 4, n, e.call_id.encode(), EVENTS.encode(e.to_avro()))
            for n, e in enumerate(script.events)]
    for raw in raws[:-1]:
        await processor.handle(raw)
    return processor, raws[-1]


class OutcomesHeldLedger(InMemoryLedger):
    """A ledger that, as the pipeline's changelog ledger, holds the event's acknowledgement on the record of
    each write's outcome; here the test decides when that record is acknowledged."""

    def __init__(self) -> None:
        super().__init__()
        self.acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def _put(self, entry: LedgerEntry, scope: WorkScope) -> LedgerEntry:
        if entry.state is not LedgerState.PENDING:
            scope.hold_ack(lambda: self.acknowledged)
        return await super()._put(entry, scope)


async def test_a_write_outcome_record_holds_the_events_ack_but_not_its_reply(
    pipeline_tenants: tuple[Path, TenantDirectory], outputs: KafkaOutputs, readers: dict[str, TopicReader],
    pipeline_cast: dict[str, PracticeCast],
) -> None:
    cast = pipeline_cast["pain-1002"]
    script = Script(cast.called_number).started().identified(cast.plain[10]).intent("PRIOR_AUTH_FOLLOWUP")
    async with ModMedClient() as client:
        ledger = OutcomesHeldLedger()
        processor, last = await processor_at_last_event(client, ledger, pipeline_tenants[1], outputs, script)
        handling = asyncio.create_task(processor.handle(last))
        replies = await asyncio.to_thread(readers[REPLIES].wait_for, lambda rs: any(
            r is not None and r.call_id == script.call_id and r.template.startswith("MESSAGE_FORWARDED") for r in rs))
        assert any(r is not None and r.call_id == script.call_id and r.template.startswith("MESSAGE_FORWARDED")
                   for r in replies), "the reply (office hours or after) left before the outcome record's ack"
        assert not handling.done(), "the event is not done while its task's outcome record is unacknowledged"
        ledger.acknowledged.set_result(None)
        await asyncio.wait_for(handling, 10)
    published: list[str] = []
    with pytest.raises(RuntimeError):  # outside an event nothing could wait for it: nothing is published
        BACKGROUND.hold_ack(lambda: published.append("record"))  # type: ignore[arg-type, func-returns-value]
    assert published == []


class BrokerRefusingLedger(InMemoryLedger):
    """A write-ahead record the broker does not take, as KafkaOutputs reports it."""

    async def _put(self, entry: LedgerEntry, scope: WorkScope) -> LedgerEntry:
        raise OutputDeliveryError("callstream-worker-ledger-changelog: _MSG_TIMED_OUT")


async def test_a_ledger_record_the_broker_refuses_fails_the_event_for_redelivery_and_writes_nothing(
    pipeline_tenants: tuple[Path, TenantDirectory], outputs: KafkaOutputs, readers: dict[str, TopicReader],
    pipeline_cast: dict[str, PracticeCast], sandbox: SandboxServer,
) -> None:
    """Not a practice failure to route to staff: the event stays unacknowledged and comes back."""
    cast = pipeline_cast["pain-1002"]
    caller = cast.plain[11]
    script = Script(cast.called_number).started().identified(caller).intent("PRIOR_AUTH_FOLLOWUP")
    async with ModMedClient() as client:
        ledger = BrokerRefusingLedger()
        processor, last = await processor_at_last_event(client, ledger, pipeline_tenants[1], outputs, script)
        with pytest.raises(OutputDeliveryError):
            await processor.handle(last)
        tasks = await client.search(pipeline_tenants[1]["pain-1002"], Task, {"patient": caller.patient_id})
    assert not [t for t in tasks.matches if any(i.value == script.call_id for i in t.identifier or ())]


async def test_a_practice_modmed_refuses_hands_the_caller_to_staff_instead_of_failing(
    pipeline_tenants: tuple[Path, TenantDirectory], outputs: KafkaOutputs, readers: dict[str, TopicReader],
    pipeline_cast: dict[str, PracticeCast],
) -> None:
    entry = pipeline_tenants[1]["pain-1002"].model_dump(mode="json")
    entry["auth"]["credentials_ref"] = "env:CALLSTREAM_TEST_UNSET_CREDENTIALS"
    broken = parse_tenant_directory({"practices": [entry]}, "broken-credentials")
    cast = pipeline_cast["pain-1002"]
    script = Script(cast.called_number).started().intent("BOOK_APPOINTMENT", visit_reason="esi").identified(cast.plain[9])
    async for harness in harness_for(broken, outputs):
        for event in script.events:
            await harness.send(event)
    replies = readers[REPLIES].wait_for(lambda rs: any(r is not None and r.call_id == script.call_id for r in rs))
    replies = readers[REPLIES].wait_for(lambda rs: len([r for r in rs if r is not None and r.call_id == script.call_id]) >= 2)
    asked, handed_off = [r for r in replies if r is not None and r.call_id == script.call_id]
    assert asked.template == "ASK_IDENTITY"
    assert handed_off.template in ("ROUTED_TO_CARE_TEAM", "ROUTED_TO_CARE_TEAM_AFTER_HOURS") and handed_off.escalated
    audits = readers[AUDIT].wait_for(lambda rs: any(r is not None and r.call_id == script.call_id
                                                    and r.error_class == "AuthError" for r in rs))
    assert any(r is not None and r.call_id == script.call_id and r.action is AuditAction.FHIR_READ
               and r.error_class == "AuthError" for r in audits)
    commands = readers[COMMANDS].wait_for(lambda rs: any(r is not None and r.call_id == script.call_id for r in rs))
    [handoff] = [r for r in commands if r is not None and r.call_id == script.call_id]
    assert handoff.route.value == "REVIEW_QUEUE" and handoff.params["reason"] == "AuthError"


def test_the_worker_counts_a_controlled_substance_escalation_only_once_its_task_is_in_modmed() -> None:
    """A queued one is the review queue's to count, once its item is stored (tests/review)."""
    from types import SimpleNamespace

    from streams.processor import CallProcessor

    metrics = Metrics()
    for outcome in (AuditOutcome.SUCCESS, AuditOutcome.QUEUED, AuditOutcome.FAILURE):
        CallProcessor._count(SimpleNamespace(metrics=metrics), "prac-0001",  # type: ignore[arg-type]
                             callflow.AuditOut(action=AuditAction.ESCALATION, outcome=outcome,
                                               detail={"trigger": "controlled_substance"}))
    sample = metrics.registry.get_sample_value
    assert sample("callstream_cs_requests_total", {"practice_id": "prac-0001"}) == 3
    assert sample("callstream_cs_escalations_total", {"practice_id": "prac-0001"}) == 1


# ------------------------------------------------------------------------ the caller's time budget

HAND_OFF_TEMPLATES = {"ROUTED_TO_CARE_TEAM", "ROUTED_TO_CARE_TEAM_AFTER_HOURS"}


def turn_replies(readers: dict[str, TopicReader], event: Any, count: int) -> list[Reply]:
    found = readers[REPLIES].wait_for(
        lambda rs: len([r for r in rs if r is not None and r.in_reply_to == event.event_id]) >= count, timeout_s=30)
    return [r for r in found if r is not None and r.in_reply_to == event.event_id]  # one partition: in order


def produced_now(event: Any) -> Any:
    return event.model_copy(update={"occurred_at": datetime.now(UTC)})


async def test_a_slow_practice_gets_the_caller_a_hold_message_then_an_honest_answer_within_the_budget(
    harness: Harness, readers: dict[str, TopicReader], pipeline_cast: dict[str, PracticeCast], sandbox: SandboxServer,
) -> None:
    """ModMed answers after 6 s: PLEASE_HOLD at 0.7 s, then at the 4 s budget the slot search is cut and the
    request goes to staff, honestly; the caller is never told they were not found."""
    cast = pipeline_cast["pain-1002"]
    script = Script(cast.called_number).started().identified(cast.plain[12]).intent(
        "BOOK_APPOINTMENT", visit_reason="follow-up")
    for event in script.events[:2]:
        await harness.send(event)
    intent = produced_now(script.events[2])
    sandbox.set_faults("pain-1002", latency_ms=6000)
    try:
        started = time.monotonic()
        await harness.send(intent)
        took = time.monotonic() - started
    finally:
        sandbox.clear_faults("pain-1002")
    hold, answer = turn_replies(readers, intent, 2)
    assert hold.template == "PLEASE_HOLD" and not hold.escalated
    assert 0.6 <= (hold.created_at - intent.occurred_at).total_seconds() <= 1.5
    assert answer.template in HAND_OFF_TEMPLATES and answer.escalated and not broken_promises(answer.text)
    assert 3.5 <= took <= 5.0, "the answer went out at the budget"
    commands = readers[COMMANDS].wait_for(lambda rs: any(r is not None and r.call_id == script.call_id for r in rs))
    [queued] = [r for r in commands if r is not None and r.call_id == script.call_id]
    assert queued.params["reason"] == "TimeoutError"


async def test_a_429_pause_past_the_budget_answers_at_once_and_sends_nothing_during_the_pause(
    harness: Harness, readers: dict[str, TopicReader], pipeline_cast: dict[str, PracticeCast], sandbox: SandboxServer,
) -> None:
    """The reported failure: Retry-After 40 s kept callers 30 s in silence. Now the first 429 hands the
    request to staff at once, and the next caller's request is refused by the limiter, unsent."""
    cast = pipeline_cast["pain-1002"]
    first, second = (Script(cast.called_number).started().identified(caller).intent(
        "BOOK_APPOINTMENT", visit_reason="follow-up") for caller in (cast.plain[13], cast.plain[14]))
    for script in (first, second):
        for event in script.events[:2]:
            await harness.send(event)
    calls_before = sandbox.stats("pain-1002")["calls"]
    sandbox.set_faults("pain-1002", burst_429=1000, burst_retry_after_s=40)
    try:
        started = time.monotonic()
        for script in (first, second):
            await harness.send(produced_now(script.events[2]))
        took = time.monotonic() - started
        calls = sandbox.stats("pain-1002")["calls"] - calls_before
    finally:
        sandbox.clear_faults("pain-1002")
    for script in (first, second):
        [answer] = turn_replies(readers, script.events[2], 1)
        assert answer.template in HAND_OFF_TEMPLATES and not broken_promises(answer.text)
    assert took < 1.5, "no wait on the 40 s pause"
    assert calls == 1, "only the request that met the 429 reached ModMed"


async def test_a_write_under_way_at_the_budget_gets_an_honest_reply_then_its_outcome(
    harness: Harness, readers: dict[str, TopicReader], pipeline_cast: dict[str, PracticeCast], sandbox: SandboxServer,
) -> None:
    """A booking that left is never cut (its outcome would be unknown): the caller hears PLEASE_HOLD, then at
    the budget that the request is recorded and staff will follow up, then the booking itself, audited."""
    cast = pipeline_cast["pain-1002"]
    caller = cast.plain[15]
    script = booking(cast, caller, visit_reason="follow-up")
    for event in script.events[:3]:
        await harness.send(event)
    offer = callflow.CallState.model_validate_json(harness.states[script.call_id]).offer
    assert offer is not None
    chosen = produced_now(script.events[3].model_copy(update={"payload": script.events[3].payload.model_copy(
        update={"slot_id": offer.slots[0].slot_id})}))
    sandbox.set_faults("pain-1002", latency_ms=1800)
    try:
        await harness.send(chosen)
    finally:
        sandbox.clear_faults("pain-1002")
    replies = turn_replies(readers, chosen, 3)
    assert [r.template for r in replies] == ["PLEASE_HOLD", "STILL_WORKING_STAFF_WILL_FOLLOW_UP", "BOOKING_CONFIRMED"]
    assert 3.8 <= (replies[1].created_at - chosen.occurred_at).total_seconds() <= 4.8, "at the budget"
    assert not broken_promises(replies[1].text)
    audits = readers[AUDIT].wait_for(lambda rs: any(r is not None and r.call_id == script.call_id
                                                    and r.action is AuditAction.FHIR_WRITE for r in rs))
    [written] = [r for r in audits if r is not None and r.call_id == script.call_id and r.action is AuditAction.FHIR_WRITE]
    assert written.outcome is AuditOutcome.SUCCESS and written.resource_ids
    interim = [r for r in audits if r is not None and r.call_id == script.call_id and r.action is AuditAction.REPLY_SENT
               and r.detail.get("interim") == "true"]
    assert {r.detail["template"] for r in interim} == {"PLEASE_HOLD", "STILL_WORKING_STAFF_WILL_FOLLOW_UP"}


async def test_a_reschedule_naming_another_practices_appointment_is_clarified_and_nothing_is_queued(
    harness: Harness, readers: dict[str, TopicReader], pipeline_cast: dict[str, PracticeCast],
) -> None:
    """Nothing is offered, promised or queued with an id that is not the practice's own (pain-1002 does not
    know pain-1003's appointment)."""
    cast = pipeline_cast["pain-1002"]
    foreign = "appt-1003-000001"
    script = Script(cast.called_number).started().identified(cast.plain[5]).intent(
        "RESCHEDULE_APPOINTMENT", appointment_id=foreign, visit_reason="follow-up")
    for event in script.events:
        await harness.send(event)
    [answer] = turn_replies(readers, script.events[2], 1)
    assert answer.template == "CLARIFY" and not answer.offered_slots and not broken_promises(answer.text)
    readers[COMMANDS].poll(1.0)
    assert not [r for r in readers[COMMANDS].records if r is not None and r.call_id == script.call_id]
    audits = readers[AUDIT].wait_for(lambda rs: any(r is not None and r.call_id == script.call_id
                                                    and r.error_class == "AppointmentNotForPatient" for r in rs))
    assert all(foreign not in r.resource_ids for r in audits if r is not None and r.call_id == script.call_id)


async def test_a_question_waiting_behind_its_calls_previous_event_hears_a_hold_message_while_it_waits(
    harness: Harness, readers: dict[str, TopicReader], pipeline_cast: dict[str, PracticeCast],
) -> None:
    """The sequencer runs a call's events in order: a question asked while the chart lookup is still at a
    slow ModMed waits, and its caller hears PLEASE_HOLD at the hold threshold, not when its turn starts."""
    cast = pipeline_cast["pain-1002"]
    script = Script(cast.called_number).started().identified(cast.plain[16]).intent("GENERAL_QUESTION")
    for event in script.events[:2]:
        await harness.send(event)
    intent = produced_now(script.events[2])
    raw = RawEvent(CALL_EVENTS, 4, 10_000, intent.call_id.encode(), EVENTS.encode(intent.to_avro()))
    harness.processor.queued(raw)  # the agent saw the call busy
    await asyncio.sleep(1.2)  # the event loop runs the hold timer (the topic reader below blocks it)
    [hold] = turn_replies(readers, intent, 1)
    assert hold.template == "PLEASE_HOLD"
    assert 0.6 <= (hold.created_at - intent.occurred_at).total_seconds() <= 1.5
    await harness.processor.handle(raw)
    replies = turn_replies(readers, intent, 2)
    assert [r.template for r in replies][0] == "PLEASE_HOLD"
    assert ReplyTemplate(replies[-1].template) not in INTERIM_TEMPLATES
    assert len([r for r in replies if r.template == "PLEASE_HOLD"]) == 1, "held once, not again when it ran"
