"""The telephony side, simulated: publishes scripted calls as the voice agent would and reads the replies.

Used by `callstream replay FILE`, the demo and the end-to-end tests. Calls run side by side; within a
call each event waits for the reply to the previous one when the voice agent would (after an intent,
a slot choice, or an identification that answers a request for identity), so the pipeline sees the
same order and pacing as with a real caller. A scripted slot choice may name ``OFFERED.<n>``: the
n-th slot (1-based) offered in the call's last reply, since slot ids are only known once offered.

With ``watch_outcomes`` (``callstream replay``) it also reads the audit and dead-letter topics, so a call
tells what happened besides what the caller heard: an event the pipeline dead-lettered (matched by the
SHA-256 of the bytes published, which the dead letter carries) or dropped because its call had already
ended (an audit record with ``detail.dropped``) ends its wait at once instead of timing out.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from callstream.errors import ConfigError, ServiceUnavailableError
from guards.replies import INTERIM_TEMPLATES
from schemas.errors import SchemaError
from schemas.models import (
    AuditAction,
    AuditEvent,
    CallEnded,
    CallerIdentified,
    CallEvent,
    DeadLetter,
    IntentRecognised,
    Reply,
    SlotChosen,
)
from schemas.registry import SchemaRegistryClient
from schemas.serde import AvroSerde
from schemas.topics import AUDIT, CALL_EVENTS, DEAD_LETTER, REPLIES, topic_named
from streams.callflow import DROPPED_DETAIL, DropReason

OFFERED_SLOT = re.compile(r"^OFFERED\.([1-9][0-9]?)\Z")
IDENTITY_REQUESTS = frozenset({"ASK_IDENTITY", "MEDICATION_REQUEST_FORWARDED_NEED_IDENTITY", "ASK_NEW_PATIENT_DETAILS"})
"""Replies the caller answers with a CallerIdentified (name and birth date, or a new patient's details)."""
INTERIM_TEMPLATE_NAMES = frozenset(template.value for template in INTERIM_TEMPLATES)
DEFAULT_REPLY_TIMEOUT_S = 30.0
MAX_SCRIPT_BYTES = 64 * 1024 * 1024
OUTCOME_SETTLE_S = 0.3
"""With watch_outcomes, a finished call is reported this long after its last wait ended: records of its last
event on the other topics (the audit after a reply, a reply after a dead letter) arrive within it."""


def load_script(path: Path) -> list[CallEvent]:
    """Every line of a JSONL script as a CallEvent; any bad line fails the whole script (line number only)."""
    try:
        if path.stat().st_size > MAX_SCRIPT_BYTES:
            raise ConfigError(f"{path}: script larger than {MAX_SCRIPT_BYTES} bytes")
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the script: {exc.strerror}") from None
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(CallEvent.from_json_line(line))
        except SchemaError as exc:
            raise ConfigError(f"{path}:{number}: {exc}") from None
    if not events:
        raise ConfigError(f"{path}: the script holds no call events")
    return events


def calls_of(events: Iterable[CallEvent]) -> list[list[CallEvent]]:
    """Events grouped by call, in script order."""
    calls: OrderedDict[str, list[CallEvent]] = OrderedDict()
    for event in events:
        calls.setdefault(event.call_id, []).append(event)
    return list(calls.values())


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """An event of the call the pipeline dead-lettered, with the dead letter's PHI-free reason."""

    event: CallEvent
    error_class: str
    reason: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """An event of the call the pipeline dropped unprocessed: ``why`` is ``call_ended`` or ``out_of_order``."""

    seq: int
    why: str


@dataclass
class CallProgress:
    """One call as the simulator sees it: what was sent, what came back."""

    events: list[CallEvent]
    sent: int = 0
    waiting_for: str | None = None
    waiting_since: float = 0.0
    replies: list[Reply] = field(default_factory=list)
    timed_out: int = 0
    audit: list[AuditEvent] = field(default_factory=list)
    """The call's audit records (watch_outcomes only)."""
    dead_lettered: list[DeadLettered] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    finished_at: float | None = None
    """When the call was first seen done (monotonic); it is reported OUTCOME_SETTLE_S later."""

    @property
    def call_id(self) -> str:
        return self.events[0].call_id

    @property
    def done(self) -> bool:
        return self.sent == len(self.events) and self.waiting_for is None

    @property
    def ended_before(self) -> bool:
        """The pipeline already had this call as ended: every event of it is dropped, none is worth a wait."""
        return any(drop.why == DropReason.CALL_ENDED for drop in self.dropped)

    def release(self, event_id: str) -> None:
        """Stop waiting for ``event_id``: its outcome is known without a reply."""
        if self.waiting_for == event_id:
            self.waiting_for = None


@dataclass
class ReplayReport:
    calls: int
    events_sent: int
    replies: dict[str, list[Reply]]
    """Everything each call's caller heard, hold messages included."""
    timeouts: int
    seconds: float

    def answers(self, call_id: str) -> list[Reply]:
        """The call's answers: what it heard without the hold messages of slow turns."""
        return [reply for reply in self.replies.get(call_id, []) if reply.template not in INTERIM_TEMPLATE_NAMES]


class Telephony:
    """Producer of call events and consumer of replies on one cluster (see the module docstring)."""

    def __init__(self, bootstrap: str, *, registry: SchemaRegistryClient | None = None,
                 reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S, watch_outcomes: bool = False) -> None:
        self._producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 1,
                                   "log.connection.close": False})
        self._events = AvroSerde.for_topic(CALL_EVENTS, registry=registry)
        self._replies = AvroSerde.for_topic(REPLIES, registry=registry)
        self._audit = AvroSerde.for_topic(AUDIT, registry=registry)
        self._letters = AvroSerde.for_topic(DEAD_LETTER, registry=registry)
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"callstream-telephony-{uuid.uuid4().hex}",
                                   "enable.auto.commit": False, "auto.offset.reset": "latest",
                                   "log.connection.close": False})
        self._reply_timeout_s = reply_timeout_s
        self._watch_outcomes = watch_outcomes
        self._listening = False
        self._calls: dict[str, CallProgress] = {}
        """Calls of the running replay by id (watch_outcomes: their audit records and late replies)."""
        self._published: dict[str, tuple[CallProgress, CallEvent]] = {}
        """SHA-256 of each published value → its call and event (watch_outcomes: matches dead letters)."""

    def close(self) -> None:
        self._producer.flush(10)
        self._consumer.close()

    def listen(self) -> None:
        """Start reading replies (and with watch_outcomes audit records and dead letters) from now on, before
        the first event is published."""
        topics = (REPLIES, AUDIT, DEAD_LETTER) if self._watch_outcomes else (REPLIES,)
        assignment = []
        for topic in topics:
            try:
                assignment += [TopicPartition(topic, p, self._consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=10)[1]) for p in range(topic_named(topic).partitions)]
            except KafkaException as exc:
                raise ServiceUnavailableError(f"cannot read {topic}: {exc.args[0].name()}") from None
        self._consumer.assign(assignment)
        self._listening = True

    def publish(self, event: CallEvent) -> bytes:
        """One call event, Avro-encoded and keyed by call id, as the telephony producer sends it; returns the value."""
        value = self._events.encode(event.to_avro())
        self.publish_raw(event.call_id.encode(), value)
        return value

    def publish_raw(self, key: bytes | None, value: bytes | None) -> None:
        """Bytes as they are (the demo's malformed event)."""
        self._producer.produce(CALL_EVENTS, key=key, value=value)
        self._producer.poll(0)

    def flush(self) -> None:
        if self._producer.flush(15):
            raise ServiceUnavailableError(f"the broker did not acknowledge events on {CALL_EVENTS}")

    def replay(self, calls: Sequence[Sequence[CallEvent]], *, wait_for_replies: bool = True,
               max_concurrent_calls: int = 64, restamp: bool = False,
               on_call_done: Callable[[CallProgress], None] | None = None,
               on_tick: Callable[[Sequence[CallProgress]], None] | None = None) -> ReplayReport:
        """Play the calls; with ``wait_for_replies`` each call paces itself on its replies.

        ``restamp``: each event's ``occurred_at`` becomes the moment it is published, as a live telephony
        side stamps it (a script's own times would be past the worker's redelivery horizon a week later).
        ``on_call_done`` gets each call as it finishes, ``on_tick`` every call on each round (progress).
        """
        if not self._listening:
            self.listen()
        started = time.monotonic()
        progress = [CallProgress(list(events)) for events in calls]
        self._calls = {call.call_id: call for call in progress if call.events} if self._watch_outcomes else {}
        self._published = {}
        settle_s = OUTCOME_SETTLE_S if self._watch_outcomes else 0.0
        by_event: dict[str, CallProgress] = {}
        active: list[CallProgress] = []
        queue = list(progress)
        while queue or active:
            while queue and len(active) < max_concurrent_calls:
                active.append(queue.pop(0))
            for call in active:
                self._advance(call, by_event, wait_for_replies, restamp)
            self.flush_soon()
            waiting = any(c.waiting_for is not None or c.finished_at is not None for c in active)
            self._collect(by_event, timeout_s=0.05 if waiting else 0.0)
            now = time.monotonic()
            for call in active:
                if call.waiting_for is not None and now - call.waiting_since > self._reply_timeout_s:
                    call.timed_out += 1
                    by_event.pop(call.waiting_for, None)
                    call.waiting_for = None
                if call.done and call.finished_at is None:
                    call.finished_at = now
            if on_tick is not None:
                on_tick(progress)
            finished = [call for call in active if call.finished_at is not None and now - call.finished_at >= settle_s]
            for call in finished:
                if on_call_done is not None:
                    on_call_done(call)
            reported = {id(call) for call in finished}
            active = [call for call in active if id(call) not in reported]
        self.flush()
        return ReplayReport(
            calls=len(progress),
            events_sent=sum(call.sent for call in progress),
            replies={call.events[0].call_id: call.replies for call in progress if call.events},
            timeouts=sum(call.timed_out for call in progress),
            seconds=time.monotonic() - started,
        )

    def flush_soon(self) -> None:
        self._producer.poll(0)

    def _advance(self, call: CallProgress, by_event: dict[str, CallProgress], wait: bool, restamp: bool) -> None:
        while call.waiting_for is None and call.sent < len(call.events):
            event = self._resolve_offer(call, call.events[call.sent])
            if restamp:
                event = event.model_copy(update={"occurred_at": datetime.now(UTC)})
            call.events[call.sent] = event
            value = self.publish(event)
            call.sent += 1
            if self._watch_outcomes:
                self._published[hashlib.sha256(value).hexdigest()] = (call, event)
            if wait and not call.ended_before and self._awaits(event, call.replies):
                call.waiting_for = str(event.event_id)
                call.waiting_since = time.monotonic()
                by_event[call.waiting_for] = call

    def _awaits(self, event: CallEvent, replies: list[Reply]) -> bool:
        """Whether the next event waits for this one: for its reply, or (watching outcomes) for the end of the
        call to be recorded, so the call's report holds everything the pipeline did."""
        return _expects_reply(event, replies) or (self._watch_outcomes and isinstance(event.payload, CallEnded))

    def _resolve_offer(self, call: CallProgress, event: CallEvent) -> CallEvent:
        payload = event.payload
        if not isinstance(payload, SlotChosen):
            return event
        match = OFFERED_SLOT.match(payload.slot_id)
        if match is None:
            return event
        offer = next((reply for reply in reversed(call.replies) if reply.offered_slots), None)
        index = int(match.group(1)) - 1
        if offer is None or index >= len(offer.offered_slots):
            return event  # nothing offered: the script's placeholder goes out and the pipeline refuses it
        chosen = SlotChosen(slot_id=offer.offered_slots[index].slot_id, offer_id=str(offer.reply_id))
        return event.model_copy(update={"payload": chosen})

    def _collect(self, by_event: dict[str, CallProgress], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._consumer.poll(max(0.0, deadline - time.monotonic()))
            if message is None:
                return
            value = message.value()
            if message.error() is not None or value is None:
                continue
            try:
                if message.topic() == AUDIT:
                    self._on_audit(AuditEvent.from_avro(self._audit.decode(value)), by_event)
                elif message.topic() == DEAD_LETTER:
                    self._on_dead_letter(DeadLetter.from_avro(self._letters.decode(value)), by_event)
                else:
                    self._on_reply(Reply.from_avro(self._replies.decode(value)), by_event)
            except SchemaError:
                continue

    def _on_reply(self, reply: Reply, by_event: dict[str, CallProgress]) -> None:
        in_reply_to = str(reply.in_reply_to)
        call = by_event.get(in_reply_to) or self._calls.get(reply.call_id)
        if call is None or any(heard.reply_id == reply.reply_id for heard in call.replies):
            return
        call.replies.append(reply)
        if reply.template not in INTERIM_TEMPLATE_NAMES:
            # "Please hold" is heard, but the turn's answer is still to come: the wait ends with the answer.
            by_event.pop(in_reply_to, None)
            call.release(in_reply_to)

    def _on_audit(self, record: AuditEvent, by_event: dict[str, CallProgress]) -> None:
        call = self._calls.get(record.call_id or "")
        if call is None:
            return
        call.audit.append(record)
        if record.action is not AuditAction.CALL_STATE_TRANSITION:
            return
        why = record.detail.get(DROPPED_DETAIL)
        if why is not None:
            seq = int(record.detail.get("seq", "-1")) if record.detail.get("seq", "").isdigit() else -1
            call.dropped.append(Dropped(seq, why))
            dropped = [event for event in call.events[:call.sent] if why == DropReason.CALL_ENDED or event.seq == seq]
        elif record.state_to == "ended":
            dropped = [event for event in call.events[:call.sent] if isinstance(event.payload, CallEnded)]
        else:
            return
        for event in dropped:
            by_event.pop(str(event.event_id), None)
            call.release(str(event.event_id))

    def _on_dead_letter(self, letter: DeadLetter, by_event: dict[str, CallProgress]) -> None:
        digest = letter.value_sha256 or hashlib.sha256(letter.value).hexdigest()
        found = self._published.get(digest)
        if found is None:
            return
        call, event = found
        if any(seen.event.event_id == event.event_id for seen in call.dead_lettered):
            return  # the same dead letter again (a redelivery in the pipeline)
        call.dead_lettered.append(DeadLettered(event, letter.error_class, letter.reason))
        by_event.pop(str(event.event_id), None)
        call.release(str(event.event_id))

    def replies_for(self, call_ids: Iterable[str], *, until: Any = None, timeout_s: float = 30.0) -> list[Reply]:
        """Replies of the given calls seen from now until ``until(replies)`` holds (tests, the demo)."""
        wanted = set(call_ids)
        found: list[Reply] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = self._consumer.poll(0.1)
            value = message.value() if message is not None and message.error() is None else None
            if value is None:
                if until is not None and until(found):
                    return found
                continue
            try:
                reply = Reply.from_avro(self._replies.decode(value))
            except SchemaError:
                continue
            if reply.call_id in wanted:
                found.append(reply)
                if until is not None and until(found):
                    return found
        return found


def _expects_reply(event: CallEvent, replies: list[Reply]) -> bool:
    """Whether the voice agent waits for callstream before it goes on."""
    payload = event.payload
    if isinstance(payload, IntentRecognised | SlotChosen):
        return True
    if isinstance(payload, CallerIdentified):
        return bool(replies) and replies[-1].template in IDENTITY_REQUESTS
    return False
