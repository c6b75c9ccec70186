"""The telephony side, simulated: publishes scripted calls as the voice agent would and reads the replies.

Used by `callstream replay FILE`, the demo and the end-to-end tests. Calls run side by side; within a
call each event waits for the reply to the previous one when the voice agent would (after an intent,
a slot choice, or an identification that answers a request for identity), so the pipeline sees the
same order and pacing as with a real caller. A scripted slot choice may name ``OFFERED.<n>``: the
n-th slot (1-based) offered in the call's last reply, since slot ids are only known once offered.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from callstream.errors import ConfigError, ServiceUnavailableError
from guards.replies import INTERIM_TEMPLATES
from schemas.errors import SchemaError
from schemas.models import CallerIdentified, CallEvent, IntentRecognised, Reply, SlotChosen
from schemas.registry import SchemaRegistryClient
from schemas.serde import AvroSerde
from schemas.topics import CALL_EVENTS, REPLIES, topic_named

OFFERED_SLOT = re.compile(r"^OFFERED\.([1-9][0-9]?)\Z")
IDENTITY_REQUESTS = frozenset({"ASK_IDENTITY", "MEDICATION_REQUEST_FORWARDED_NEED_IDENTITY"})
INTERIM_TEMPLATE_NAMES = frozenset(template.value for template in INTERIM_TEMPLATES)
DEFAULT_REPLY_TIMEOUT_S = 30.0
MAX_SCRIPT_BYTES = 64 * 1024 * 1024


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


@dataclass
class CallProgress:
    """One call as the simulator sees it: what was sent, what came back."""

    events: list[CallEvent]
    sent: int = 0
    waiting_for: str | None = None
    waiting_since: float = 0.0
    replies: list[Reply] = field(default_factory=list)
    timed_out: int = 0

    @property
    def done(self) -> bool:
        return self.sent == len(self.events) and self.waiting_for is None


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
                 reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S) -> None:
        self._producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 1,
                                   "log.connection.close": False})
        self._events = AvroSerde.for_topic(CALL_EVENTS, registry=registry)
        self._replies = AvroSerde.for_topic(REPLIES, registry=registry)
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"callstream-telephony-{uuid.uuid4().hex}",
                                   "enable.auto.commit": False, "auto.offset.reset": "latest",
                                   "log.connection.close": False})
        self._reply_timeout_s = reply_timeout_s
        self._listening = False

    def close(self) -> None:
        self._producer.flush(10)
        self._consumer.close()

    def listen(self) -> None:
        """Start reading replies from now on (before the first event is published)."""
        partitions = topic_named(REPLIES).partitions
        try:
            ends = [self._consumer.get_watermark_offsets(TopicPartition(REPLIES, p), timeout=10)[1]
                    for p in range(partitions)]
        except KafkaException as exc:
            raise ServiceUnavailableError(f"cannot read {REPLIES}: {exc.args[0].name()}") from None
        self._consumer.assign([TopicPartition(REPLIES, p, end) for p, end in enumerate(ends)])
        self._listening = True

    def publish(self, event: CallEvent) -> None:
        """One call event, Avro-encoded and keyed by call id, as the telephony producer sends it."""
        self.publish_raw(event.call_id.encode(), self._events.encode(event.to_avro()))

    def publish_raw(self, key: bytes | None, value: bytes | None) -> None:
        """Bytes as they are (the demo's malformed event)."""
        self._producer.produce(CALL_EVENTS, key=key, value=value)
        self._producer.poll(0)

    def flush(self) -> None:
        if self._producer.flush(15):
            raise ServiceUnavailableError(f"the broker did not acknowledge events on {CALL_EVENTS}")

    def replay(self, calls: Sequence[Sequence[CallEvent]], *, wait_for_replies: bool = True,
               max_concurrent_calls: int = 64) -> ReplayReport:
        """Play the calls; with ``wait_for_replies`` each call paces itself on its replies."""
        if not self._listening:
            self.listen()
        started = time.monotonic()
        progress = [CallProgress(list(events)) for events in calls]
        by_event: dict[str, CallProgress] = {}
        active: list[CallProgress] = []
        queue = list(progress)
        while queue or active:
            while queue and len(active) < max_concurrent_calls:
                active.append(queue.pop(0))
            for call in active:
                self._advance(call, by_event, wait_for_replies)
            self.flush_soon()
            self._collect(by_event, timeout_s=0.05 if any(c.waiting_for for c in active) else 0.0)
            now = time.monotonic()
            for call in active:
                if call.waiting_for is not None and now - call.waiting_since > self._reply_timeout_s:
                    call.timed_out += 1
                    by_event.pop(call.waiting_for, None)
                    call.waiting_for = None
            active = [call for call in active if not call.done]
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

    def _advance(self, call: CallProgress, by_event: dict[str, CallProgress], wait: bool) -> None:
        while call.waiting_for is None and call.sent < len(call.events):
            event = self._resolve_offer(call, call.events[call.sent])
            self.publish(event)
            call.sent += 1
            if wait and _expects_reply(event, call.replies):
                call.waiting_for = str(event.event_id)
                call.waiting_since = time.monotonic()
                by_event[call.waiting_for] = call

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
                reply = Reply.from_avro(self._replies.decode(value))
            except SchemaError:
                continue
            if reply.template in INTERIM_TEMPLATE_NAMES:
                # "Please hold" is heard, but the turn's answer is still to come: keep waiting for it.
                call = by_event.get(str(reply.in_reply_to))
                if call is not None:
                    call.replies.append(reply)
                continue
            call = by_event.pop(str(reply.in_reply_to), None)
            if call is not None:
                call.replies.append(reply)
                if call.waiting_for == str(reply.in_reply_to):
                    call.waiting_for = None

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
