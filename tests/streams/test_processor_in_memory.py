"""CallProcessor against an in-memory Outputs (tests/fixtures/outputs.py): what one event publishes, and in
which order, seen exactly and without a broker; ModMed is the session sandbox where a turn needs it."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from callstream.tenants import TenantDirectory
from connectors.dispatch import Dispatcher
from connectors.fhir import ModMedClient
from connectors.ledger import InMemoryLedger
from connectors.operations import ModMedConnector
from devkit.cast import PracticeCast, booking, refill
from guards.replies import ReplyTemplate
from schemas.models import AuditAction, AuditEvent, AuditOutcome, DeadLetter, Reply
from schemas.serde import AvroSerde
from schemas.topics import CALL_EVENTS, DEAD_LETTER
from streams import callflow
from streams.call_states import InMemoryCallStates
from streams.metrics import Metrics
from streams.processor import CallProcessor
from streams.records import RawEvent
from tests.fixtures.outputs import InMemoryOutputs
from tests.guards.spoken_text import broken_promises
from tests.streams.callflow.helpers import CALLER_NUMBER, NOW, Call, practice

EVENTS = AvroSerde.for_topic(CALL_EVENTS)
FORWARDED = {template.value for template in (ReplyTemplate.MEDICATION_REQUEST_FORWARDED,
                                             ReplyTemplate.MEDICATION_REQUEST_FORWARDED_AFTER_HOURS)}


@dataclass
class Recorded:
    processor: CallProcessor
    outputs: InMemoryOutputs
    states: InMemoryCallStates

    async def send(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        await self.processor.handle(RawEvent(CALL_EVENTS, 7, offset, key, value))


@pytest.fixture
async def recorded() -> AsyncIterator[Recorded]:
    """A processor for one practice (pain-1001, called at CALLED_NUMBER) whose outputs stay in memory."""
    outputs, states, ledger = InMemoryOutputs(), InMemoryCallStates(), InMemoryLedger()
    async with ModMedClient() as client:  # never called: dead letters and call starts need no ModMed
        processor = CallProcessor(tenants=TenantDirectory([practice()]),
                                  dispatcher=Dispatcher(ModMedConnector(client, ledger), ledger), outputs=outputs,
                                  states=states, metrics=Metrics(), clock=lambda: NOW)
        yield Recorded(processor, outputs, states)


def encoded(event: Any, **payload_changes: Any) -> bytes:
    """An event as valid Avro that breaks a rule of the model (a payload field changed past its bounds)."""
    record = event.to_avro()
    name, fields = record["payload"]
    record["payload"] = (name, {**fields, **payload_changes})
    return EVENTS.encode(record)


async def test_a_malformed_event_of_a_live_call_hands_the_caller_to_staff_once_and_leaves_the_call_alone(
    recorded: Recorded,
) -> None:
    call = Call()
    await recorded.send(1, call.call_id.encode(), EVENTS.encode(call.started().to_avro()))
    stored = recorded.states[call.call_id]
    intent = call.intent("BOOK_APPOINTMENT")
    record = intent.to_avro()
    record["called_number"] = "555-0100"  # not E.164: the event fails validation, its call id is still readable
    malformed = EVENTS.encode(record)
    for _ in range(2):  # the second time as a redelivery of the same message
        await recorded.send(2, call.call_id.encode(), malformed)

    first, again = recorded.outputs.replies
    assert first == again, "a redelivered dead letter repeats the very same reply"
    assert first.template == "TRANSFER_TO_STAFF" and first.text == ReplyTemplate.TRANSFER_TO_STAFF.text
    assert (first.call_id, first.in_reply_to, first.practice_id) == (call.call_id, intent.event_id, "pain-1001")
    assert not first.escalated and first.offered_slots == [] and broken_promises(first.text) == []
    assert first.reply_id != uuid.UUID(callflow.reply_id_for(str(intent.event_id)))  # apart from the flow's replies
    audits = recorded.outputs.audits
    assert len(audits) == 4 and len({a.event_id for a in audits}) == 2
    assert {a.action for a in audits} == {AuditAction.REPLY_SENT, AuditAction.DEAD_LETTER}
    assert all(a.practice_id == "pain-1001" and a.call_id == call.call_id and a.caller_number == CALLER_NUMBER
               for a in audits)
    letter, letter_again = recorded.outputs.dead_letters
    assert letter == letter_again and letter.value == malformed and letter.practice_id == "pain-1001"
    assert letter.value_size == len(malformed) and not letter.value_truncated
    assert recorded.states[call.call_id] == stored


async def test_a_malformed_event_of_a_new_call_is_answered_under_the_practice_of_its_called_number(
    recorded: Recorded,
) -> None:
    call = Call()
    intent = call.intent("BOOK_APPOINTMENT")
    await recorded.send(3, call.call_id.encode(), encoded(intent, confidence=7.0))
    [reply] = recorded.outputs.replies
    assert (reply.practice_id, reply.in_reply_to, reply.template) == ("pain-1001", intent.event_id, "TRANSFER_TO_STAFF")
    assert {a.practice_id for a in recorded.outputs.audits} == {"pain-1001"}
    assert recorded.states == {}


async def test_an_unreadable_value_is_answered_through_its_key_and_the_ids_come_from_its_offset(
    recorded: Recorded,
) -> None:
    for offset in (5, 5, 6):
        await recorded.send(offset, b"call-garbage-7", b"\xc3\x01garbage")
    first, again, other = recorded.outputs.replies
    assert first == again and other.reply_id != first.reply_id and other.in_reply_to != first.in_reply_to
    assert first.call_id == "call-garbage-7" and first.practice_id is None
    assert {a.practice_id for a in recorded.outputs.audits} == {"unresolved"}
    assert len({letter.dead_letter_id for letter in recorded.outputs.dead_letters}) == 2


@pytest.mark.parametrize("key", [None, b"", b"\xff\xfe", b"call with spaces", b"x" * 200])
async def test_without_a_readable_call_id_there_is_nobody_to_answer(recorded: Recorded, key: bytes | None) -> None:
    await recorded.send(8, key, b"\x07 not avro")
    assert recorded.outputs.replies == []
    [audit] = recorded.outputs.audits
    assert audit.action is AuditAction.DEAD_LETTER and audit.call_id is None and audit.practice_id == "unresolved"
    [letter] = recorded.outputs.dead_letters
    assert letter.key == key and letter.value == b"\x07 not avro"


async def test_a_dead_lettered_event_of_an_ended_call_is_audited_but_not_answered(recorded: Recorded) -> None:
    call = Call()
    await recorded.send(1, call.call_id.encode(), EVENTS.encode(call.started().to_avro()))
    await recorded.send(2, call.call_id.encode(), EVENTS.encode(call.event(
        {"type": "call_ended", "transcript_ref": "s3://t/1.json", "disposition": "COMPLETED"}).to_avro()))
    ended = recorded.states[call.call_id]
    await recorded.send(3, call.call_id.encode(), encoded(call.intent("GENERAL_QUESTION"), confidence=-1.0))
    assert recorded.outputs.replies == []
    assert [a.practice_id for a in recorded.outputs.audits if a.action is AuditAction.DEAD_LETTER] == ["pain-1001"]
    assert recorded.states[call.call_id] == ended


async def test_an_event_of_an_ended_call_is_dropped_with_a_record_of_its_own(recorded: Recorded) -> None:
    """A script replayed under the same call ids: the first processing's audit ids are not reused."""
    call = Call()
    started = EVENTS.encode(call.started().to_avro())
    await recorded.send(1, call.call_id.encode(), started)
    await recorded.send(2, call.call_id.encode(), EVENTS.encode(call.ended().to_avro()))
    first = {audit.event_id for audit in recorded.outputs.audits}
    ended = recorded.states[call.call_id]
    await recorded.send(3, call.call_id.encode(), started)
    [dropped] = [audit for audit in recorded.outputs.audits if audit.event_id not in first]
    assert (dropped.detail, dropped.outcome, dropped.state_to) == ({"dropped": "call_ended", "seq": "0"},
                                                                  AuditOutcome.BLOCKED, "ended")
    assert dropped.practice_id == "pain-1001" and dropped.caller_number is None
    assert recorded.outputs.replies == [] and recorded.states[call.call_id] == ended


async def test_an_oversized_original_keeps_its_size_digest_and_first_bytes_and_its_caller_is_answered(
    recorded: Recorded,
) -> None:
    original = b"\xc3\x01" + bytes(range(256)) * 4100  # over the broker's message limit
    await recorded.send(9, b"call-huge-1", original)
    [letter] = recorded.outputs.dead_letters
    assert letter.value_truncated and letter.value == original[:1024]
    assert letter.value_size == len(original) and letter.value_sha256 == hashlib.sha256(original).hexdigest()
    assert f"{len(original)} bytes" in letter.reason and len(letter.reason) <= 500
    serde = AvroSerde.for_topic(DEAD_LETTER)
    framed = serde.encode(letter.to_avro())
    assert len(framed) < 2048 and DeadLetter.from_avro(serde.decode(framed)) == letter
    [reply] = recorded.outputs.replies
    assert reply.call_id == "call-huge-1" and reply.template == "TRANSFER_TO_STAFF"


# --------------------------------------------------------------- whole turns, ModMed at the session sandbox


@dataclass
class AtTheSandbox:
    processor: CallProcessor
    outputs: InMemoryOutputs
    states: InMemoryCallStates
    offsets: list[int] = field(default_factory=list)

    async def play(self, event: Any) -> None:
        self.offsets.append(len(self.offsets))
        await self.processor.handle(RawEvent(CALL_EVENTS, 2, self.offsets[-1], event.call_id.encode(),
                                             EVENTS.encode(event.to_avro())))

    def of_call(self, call_id: str) -> tuple[list[Reply], list[AuditEvent]]:
        return ([r for r in self.outputs.replies if r.call_id == call_id],
                [a for a in self.outputs.audits if a.call_id == call_id])


@pytest.fixture
async def at_the_sandbox(pipeline_tenants: tuple[Path, TenantDirectory]) -> AsyncIterator[AtTheSandbox]:
    outputs, states, ledger = InMemoryOutputs(), InMemoryCallStates(), InMemoryLedger()
    async with ModMedClient() as client:
        processor = CallProcessor(tenants=pipeline_tenants[1], dispatcher=Dispatcher(ModMedConnector(client, ledger), ledger),
                                  outputs=outputs, states=states, metrics=Metrics())
        yield AtTheSandbox(processor, outputs, states)


async def test_a_booking_turn_publishes_its_reply_first_then_the_audited_write(
    at_the_sandbox: AtTheSandbox, pipeline_cast: dict[str, PracticeCast],
) -> None:
    cast = pipeline_cast["pain-1002"]
    script = booking(cast, cast.plain[17], visit_reason="follow-up")
    for event in script.events[:3]:
        await at_the_sandbox.play(event)
    live = callflow.CallState.model_validate_json(at_the_sandbox.states[script.call_id])
    assert live.offer is not None
    chosen = script.events[3].model_copy(update={"payload": script.events[3].payload.model_copy(
        update={"slot_id": live.offer.slots[0].slot_id})})
    before = len(at_the_sandbox.outputs.published)
    await at_the_sandbox.play(chosen)

    turn = at_the_sandbox.outputs.published[before:]
    assert isinstance(turn[0], Reply) and turn[0].template == "BOOKING_CONFIRMED", "the reply leaves first"
    assert turn[0].in_reply_to == chosen.event_id and not broken_promises(turn[0].text)
    [written] = [r for r in turn if isinstance(r, AuditEvent) and r.action is AuditAction.FHIR_WRITE]
    assert written.outcome is AuditOutcome.SUCCESS and written.resource_type == "Appointment" and written.resource_ids
    assert written.slot_id == live.offer.slots[0].slot_id and written.caller_number == script.caller_number
    await at_the_sandbox.play(script.events[4])
    replies, audits = at_the_sandbox.of_call(script.call_id)
    assert [r.template for r in replies] == ["OFFER_SLOTS", "BOOKING_CONFIRMED"]
    assert len({a.event_id for a in audits}) == len(audits), "every audit record has an id of its own"
    assert at_the_sandbox.outputs.commands == [] and at_the_sandbox.outputs.dead_letters == []


async def test_a_controlled_substance_refill_becomes_a_provider_task_and_an_escalated_reply(
    at_the_sandbox: AtTheSandbox, pipeline_cast: dict[str, PracticeCast],
) -> None:
    cast = pipeline_cast["pain-1002"]
    script = refill(cast, cast.refill[5])
    for event in script.events:
        await at_the_sandbox.play(event)
    replies, audits = at_the_sandbox.of_call(script.call_id)
    [forwarded] = [r for r in replies if r.in_reply_to == script.events[2].event_id]
    assert forwarded.template in FORWARDED and forwarded.escalated  # the wording depends on office hours
    assert not broken_promises(forwarded.text)
    [task] = [a for a in audits if a.action is AuditAction.FHIR_WRITE]
    assert task.outcome is AuditOutcome.SUCCESS and task.resource_type == "Task" and task.task_refs
    [escalation] = [a for a in audits if a.detail.get("trigger") == "controlled_substance"]
    assert escalation.action is AuditAction.ESCALATION and escalation.outcome is AuditOutcome.SUCCESS
    assert at_the_sandbox.outputs.commands == [], "written to ModMed, not queued for review"
    assert at_the_sandbox.states[script.call_id] is not None
