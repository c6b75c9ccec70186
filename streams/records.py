"""Record mapping: what the call flow decided, as the wire records the worker publishes.

Pure functions from call-flow outputs (replies, audit entries, review requests) and from a message that
could not be processed to the Avro models of the reply, audit, command and dead-letter topics. Every id
derives from the source event or the message's place in its topic, so a redelivery repeats the very same
records (consumers de-duplicate on them). ``RawEvent`` is the consumed message as the agent hands it over.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from guards.replies import ReplyTemplate, ReplyValues, render_reply
from schemas.errors import SchemaError, SchemaRegistryError
from schemas.models import (
    EMA_DEEP_LINK_PATTERN,
    AuditEvent,
    CommandMessage,
    CommandRoute,
    DeadLetter,
    Identifier,
    OfferedSlot,
    Reply,
)
from schemas.models.commands import LONG_PARAM_CHARS, PARAM_CHARS
from schemas.serde import AvroSerde
from streams import callflow
from streams.callflow import AuditOut, ReviewOut, SentReply

MAX_DEAD_LETTER_VALUE_BYTES = 900 * 1024
"""Above this the original value cannot ride inside a dead letter (Kafka's 1 MiB message limit): the dead
letter then keeps its size, SHA-256 and first DEAD_LETTER_HEAD_BYTES, and names partition and offset, where
the original stays for the topic's retention."""
DEAD_LETTER_HEAD_BYTES = 1024
"""The first bytes of an oversized original a dead letter keeps: its framing, schema fingerprint and first fields."""
DEAD_LETTER_REPLY = ReplyTemplate.TRANSFER_TO_STAFF
"""What a caller hears when an event of their call is dead-lettered: a person takes over, nothing is promised."""
_DEEP_LINK = re.compile(EMA_DEEP_LINK_PATTERN)


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One consumed message, as the agent hands it over (nothing decoded yet)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = field(repr=False)
    value: bytes | None = field(repr=False)


def reply_record(reply: SentReply, call_id: str, practice_id: str) -> Reply:
    return Reply(
        reply_id=uuid.UUID(reply.reply_id),
        call_id=call_id,
        in_reply_to=uuid.UUID(reply.in_reply_to),
        practice_id=practice_id,
        template=reply.template.value,
        text=reply.text,
        offered_slots=[
            OfferedSlot(slot_id=slot.slot_id, start=slot.start, end=slot.end,
                        practitioner_display=slot.practitioner_display, location_display=slot.location_display,
                        visit_reason=slot.visit_reason.value)
            for slot in reply.offered_slots
        ],
        escalated=reply.escalated,
        created_at=reply.created_at,
    )


def audit_record(audit: AuditOut, id_seed: str, practice_id: str, call_id: str, caller_number: str | None,
                 now: datetime) -> AuditEvent:
    """The full audit event; ids derive from the source event, so a redelivery repeats them (de-duplicated)."""
    return AuditEvent(
        event_id=uuid.uuid5(callflow.REPLY_NAMESPACE, f"audit:{id_seed}"),
        occurred_at=now,
        practice_id=practice_id,
        call_id=call_id,
        caller_number=caller_number,
        action=audit.action,
        outcome=audit.outcome,
        state_from=audit.state_from,
        state_to=audit.state_to,
        resource_type=audit.resource_type,
        resource_ids=list(audit.resource_ids),
        # A link the schema refuses is left out (the chart id is in resource_ids): the audit record must not fail.
        ema_deep_link=audit.deep_link if audit.deep_link and _DEEP_LINK.fullmatch(audit.deep_link) else None,
        task_refs=list(audit.task_refs),
        transcript_ref=audit.transcript_ref,
        guards_fired=list(audit.guards_fired),
        command=audit.command,
        error_class=audit.error_class,
        latency_ms=audit.latency_ms,
        detail=dict(audit.detail),
        guard_action=audit.guard_action,
        dialogue_path=audit.dialogue_path,
        slot_id=audit.slot_id,
    )


@dataclass(frozen=True, slots=True)
class ReadableCall:
    """What a message that could not be processed still tells about its call (None: unreadable)."""

    call_id: str | None
    event_id: str | None = None
    called_number: str | None = field(default=None, repr=False)


_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)


def readable_call(raw: RawEvent, serde: AvroSerde) -> ReadableCall:
    """The call a dead-lettered call event belongs to, as far as it can be read.

    When the value still decodes as Avro (the event broke a rule of the model, or the call flow refused
    it), its own call_id, event_id and called_number; otherwise the message key, which is the call id by
    contract. Only a value that passes the id rules counts, so nothing hostile reaches a reply or an audit
    record. Dead letters are rare: decoding again here costs the normal path nothing."""
    record: Mapping[str, Any] = {}
    if raw.value:
        try:
            record = serde.decode(raw.value)
        except (SchemaError, SchemaRegistryError):
            pass
    from_value = _valid_identifier(record.get("call_id"))
    if from_value is None:
        key = raw.key.decode("utf-8", "replace") if raw.key is not None else None
        return ReadableCall(_valid_identifier(key))
    try:
        event_id: str | None = str(uuid.UUID(str(record.get("event_id"))))
    except ValueError:
        event_id = None
    called_number = record.get("called_number")
    return ReadableCall(from_value, event_id, called_number if isinstance(called_number, str) else None)


def _valid_identifier(value: Any) -> str | None:
    try:
        return _IDENTIFIER.validate_python(value, strict=True)
    except ValidationError:
        return None


def dead_letter_record(raw: RawEvent, reason: str, error_class: str, practice_id: str | None,
                       now: datetime) -> DeadLetter:
    """The original bytes with a PHI-free reason; an original over the broker's limit is kept as its size,
    SHA-256 and first bytes (the rest stays at its partition and offset). Its id derives from the offset."""
    value = raw.value or b""
    truncated = len(value) > MAX_DEAD_LETTER_VALUE_BYTES
    if truncated:
        reason = (f"{reason[:360]} (original value of {len(value)} bytes: its first {DEAD_LETTER_HEAD_BYTES} "
                  "kept, the whole left at its partition and offset)")
    return DeadLetter(
        dead_letter_id=uuid.uuid5(callflow.REPLY_NAMESPACE, f"{dead_letter_seed(raw)}:letter"),
        source_topic=raw.topic,
        source_partition=raw.partition,
        source_offset=raw.offset,
        key=raw.key,
        value=value[:DEAD_LETTER_HEAD_BYTES] if truncated else value,
        reason=reason[:500],
        error_class=error_class,
        failed_at=now,
        attempts=1,
        practice_id=practice_id,
        value_size=len(value),
        value_sha256=hashlib.sha256(value).hexdigest(),
        value_truncated=truncated,
    )


def dead_letter_seed(raw: RawEvent) -> str:
    """What the ids of a dead letter and its records derive from: the message's place, the same on redelivery."""
    return f"dead-letter:{raw.topic}:{raw.partition}:{raw.offset}"


def dead_letter_reply(call_id: str, in_reply_to: str, practice_id: str | None, now: datetime) -> Reply:
    """The hand-over to staff for a dead-lettered event; its id derives from the event it answers (or, for an
    event whose id is unreadable, from its offset), apart from the ids of the call flow's own replies."""
    return Reply(
        reply_id=uuid.uuid5(callflow.REPLY_NAMESPACE, f"{in_reply_to}:dead-letter-reply"),
        call_id=call_id,
        in_reply_to=uuid.UUID(in_reply_to),
        practice_id=practice_id,
        template=DEAD_LETTER_REPLY.value,
        text=render_reply(DEAD_LETTER_REPLY, ReplyValues()),
        escalated=False,
        created_at=now,
    )


COMMAND_PARAM_CHARS = {callflow.GUARD_REQUEST_PARAM: LONG_PARAM_CHARS}
"""Params that may run past PARAM_CHARS: the decided request holds a transcript snippet of up to 4,000 characters
(JSON-escaped), which the review queue's retry must decide on whole; LONG_PARAM_CHARS bounds it by construction."""


def command_record(review: ReviewOut, call_id: str, practice_id: str, now: datetime) -> CommandMessage:
    return CommandMessage(
        command_id=uuid.uuid5(callflow.REPLY_NAMESPACE, f"command:{review.idempotency_key}"),
        call_id=call_id,
        practice_id=practice_id,
        kind=review.kind,
        route=CommandRoute.REVIEW_QUEUE,
        idempotency_key=review.idempotency_key,
        params={key: value[:COMMAND_PARAM_CHARS.get(key, PARAM_CHARS)] for key, value in review.params.items()},
        issued_at=now,
    )
