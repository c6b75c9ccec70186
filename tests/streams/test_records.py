"""Record mapping (streams.records): call-flow outputs and unprocessable messages as wire records, with ids that
a redelivery repeats and nothing hostile or oversized reaching a reply, an audit or a command record."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from guards.model import VisitReason
from guards.replies import ReplyTemplate
from schemas.models import AuditAction, AuditOutcome, CommandKind, CommandRoute
from schemas.serde import AvroSerde
from schemas.topics import CALL_EVENTS, COMMANDS
from streams import callflow
from streams.records import (
    DEAD_LETTER_REPLY,
    RawEvent,
    audit_record,
    command_record,
    dead_letter_reply,
    dead_letter_seed,
    readable_call,
    reply_record,
)
from tests.streams.callflow.helpers import NOW, Call

EVENTS = AvroSerde.for_topic(CALL_EVENTS)


@pytest.mark.parametrize(
    ("link", "kept"),
    [
        ("https://ema.example/firm/acme/chart/pat-1", True),
        ("http://127.0.0.1:8700/ema/acme/chart/pat-1", True),
        ("https://ema.example/firm/acme/chart/pat-1\n", False),  # re's "$" would match before the newline
        ("javascript:alert(1)", False),
    ],
)
def test_an_audit_record_keeps_only_links_the_schema_takes(link: str, kept: bool) -> None:
    """A link the schema would refuse is dropped, never allowed to fail the audit record (and the event)."""
    audit = callflow.AuditOut(AuditAction.EMA_READ, AuditOutcome.SUCCESS, resource_ids=("pat-1",), deep_link=link)
    record = audit_record(audit, "event-1:0", "pain-1001", "call-1", None, NOW)
    assert record.ema_deep_link == (link if kept else None)
    assert record.resource_ids == ["pat-1"]


def test_an_audit_records_id_derives_from_its_seed_alone() -> None:
    audit = callflow.AuditOut(AuditAction.REPLY_SENT, AuditOutcome.SUCCESS, detail={"template": "CLARIFY"})
    first = audit_record(audit, "event-1:0", "pain-1001", "call-1", "+15125550142", NOW)
    again = audit_record(audit, "event-1:0", "pain-1001", "call-1", "+15125550142", NOW + timedelta(seconds=5))
    other = audit_record(audit, "event-1:1", "pain-1001", "call-1", "+15125550142", NOW)
    assert first.event_id == again.event_id != other.event_id
    assert (first.practice_id, first.call_id, first.caller_number, first.detail) == (
        "pain-1001", "call-1", "+15125550142", {"template": "CLARIFY"})


def test_a_reply_record_carries_the_flows_ids_and_offered_slots() -> None:
    slot = callflow.SlotChoice(slot_id="slot-1", start=NOW, end=NOW + timedelta(minutes=30), practitioner_id="pr-1",
                               practitioner_display="Dr. Vale", location_display="Main clinic",
                               visit_reason=VisitReason.FOLLOW_UP, route=CommandRoute.FHIR)
    sent = callflow.SentReply(reply_id=str(uuid.uuid4()), in_reply_to=str(uuid.uuid4()),
                              template=ReplyTemplate.OFFER_SLOTS, text="Two times are open.", offered_slots=(slot,),
                              escalated=False, created_at=NOW)
    record = reply_record(sent, "call-1", "pain-1001")
    assert (str(record.reply_id), str(record.in_reply_to)) == (sent.reply_id, sent.in_reply_to)
    assert (record.template, record.text, record.practice_id) == ("OFFER_SLOTS", "Two times are open.", "pain-1001")
    [offered] = record.offered_slots
    assert (offered.slot_id, offered.visit_reason, offered.practitioner_display) == ("slot-1", "follow-up", "Dr. Vale")


def test_a_command_record_goes_to_the_review_queue_with_params_cut_to_their_limit() -> None:
    review = callflow.ReviewOut(CommandKind.CREATE_TASK, "call-1:task", {
        "note": "n" * 5000, callflow.GUARD_REQUEST_PARAM: "{}", "reason": "AuthError"})
    record = command_record(review, "call-1", "pain-1001", NOW)
    assert record.route is CommandRoute.REVIEW_QUEUE and record.kind is CommandKind.CREATE_TASK
    assert len(record.params["note"]) == 1024 and record.params["reason"] == "AuthError"
    assert record.params[callflow.GUARD_REQUEST_PARAM] == "{}"
    assert record.command_id == command_record(review, "call-1", "pain-1001", NOW + timedelta(1)).command_id


def test_the_dead_letter_reply_hands_over_to_staff_under_its_own_id() -> None:
    event_id = str(uuid.uuid4())
    reply = dead_letter_reply("call-1", event_id, None, NOW)
    assert reply.template == DEAD_LETTER_REPLY.value and reply.text == DEAD_LETTER_REPLY.text
    assert str(reply.in_reply_to) == event_id and reply.practice_id is None and not reply.escalated
    assert reply.reply_id == dead_letter_reply("call-1", event_id, "pain-1001", NOW).reply_id
    assert str(reply.reply_id) != callflow.reply_id_for(event_id)  # apart from the flow's own replies


def test_a_dead_letters_seed_is_the_messages_place() -> None:
    raw = RawEvent(CALL_EVENTS, 3, 41, b"call-1", b"x")
    assert dead_letter_seed(raw) == f"dead-letter:{CALL_EVENTS}:3:41"
    assert dead_letter_seed(RawEvent(CALL_EVENTS, 3, 41, b"other", None)) == dead_letter_seed(raw)


def test_the_call_of_a_decodable_event_is_read_from_its_value() -> None:
    call = Call()
    intent = call.intent("BOOK_APPOINTMENT")
    readable = readable_call(RawEvent(CALL_EVENTS, 0, 1, b"a-different-key", EVENTS.encode(intent.to_avro())), EVENTS)
    assert (readable.call_id, readable.event_id) == (call.call_id, str(intent.event_id))
    assert readable.called_number == intent.called_number


@pytest.mark.parametrize(("key", "call_id"), [
    (b"call-garbage-7", "call-garbage-7"),
    (None, None),
    (b"call with spaces", None),
    (b"\xff\xfe", None),
    (b"x" * 200, None),
])
def test_an_undecodable_event_names_its_call_only_through_a_key_that_passes_the_id_rules(
    key: bytes | None, call_id: str | None,
) -> None:
    readable = readable_call(RawEvent(CALL_EVENTS, 0, 1, key, b"\xc3\x01garbage"), EVENTS)
    assert (readable.call_id, readable.event_id, readable.called_number) == (call_id, None, None)


def test_a_decided_request_with_the_longest_hostile_snippet_reaches_the_review_queue_whole() -> None:
    """A refill whose 4,000-character snippet JSON-escapes to six times its length: the command record takes it
    whole (it once failed validation and the event's review command was lost), and the retry's parse reads it."""
    from guards.model import Intent, IntentRequest
    from schemas.models import CommandMessage

    request = IntentRequest(intent=Intent.REFILL_REQUEST, medication_mentioned=True,
                            controlled_substance_mentioned=True, transcript_snippet="\x01" * 3999 + '"')
    decided = request.model_dump_json(exclude_none=True)
    assert len(decided) > 20_000
    review = callflow.ReviewOut(CommandKind.CREATE_TASK, "call-1:task", {callflow.GUARD_REQUEST_PARAM: decided})
    record = command_record(review, "call-1", "pain-1001", NOW)
    assert IntentRequest.model_validate_json(record.params[callflow.GUARD_REQUEST_PARAM]) == request
    wire = AvroSerde.for_topic(COMMANDS)
    assert CommandMessage.from_avro(wire.decode(wire.encode(record.to_avro()))) == record
