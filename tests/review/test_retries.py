"""Issue 16's retry path for bookings and its guards, with real parts: the pipeline's Tansu broker (the command
record a retry reads back), the ModMed sandbox, the embedded ClickHouse store, the dispatcher and ledger.

A write-phase booking ModMed failed is booked once ModMed answers, exactly one Appointment also when a
predecessor was killed after its booking landed (a new process, an empty ledger); a slot taken meanwhile and a booking the guards refuse now (the
agreement expired since the call) stay open for staff, with that reason and nothing written. Each scenario runs
one attempt in-process, all side by side. The stale alarm's stored state carries over to a successor process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Producer
from fhir.resources.R4B.appointment import Appointment

from callstream.tenants import Practice, TenantDirectory
from connectors.dispatch import Dispatcher
from connectors.fhir import ModMedClient
from connectors.ledger import InMemoryLedger
from connectors.operations import ModMedConnector
from connectors.slot_offers import SlotOffer
from connectors.vocabulary import CALL_REFERENCE_SYSTEM
from guards import Intent, IntentRequest, VisitReason, filter_and_rank
from review import core
from review.command_log import CommandLog
from review.core import ItemState, Reason
from review.service import ReviewQueue
from review.store import ReviewStore, StoredAlarm
from schemas.models import Alarm, AlarmKind, AlarmState, CommandMessage, CommandRoute
from schemas.serde import AvroSerde
from schemas.topics import ALARMS, COMMANDS, topic_named
from streams.callflow import EARLIER_CS_REQUESTS_PARAM, GUARD_REQUEST_PARAM
from devkit.cast import Caller, PracticeCast
from streams.outputs import KafkaOutputs
from tests.fixtures.pipeline import TopicReader

pytestmark = pytest.mark.broker
PRACTICE = "pain-1002"  # write phase


@dataclass
class Parts:
    store: ReviewStore
    tenants: TenantDirectory
    client: ModMedClient
    outputs: KafkaOutputs
    commands: CommandLog
    bootstrap: str

    def queue(self) -> ReviewQueue:
        """A queue process's parts with a ledger of its own (a new process after a kill starts with none)."""
        ledger = InMemoryLedger()
        return ReviewQueue(self.store, self.tenants, Dispatcher(ModMedConnector(self.client, ledger), ledger),
                           self.outputs, self.commands)


@pytest.fixture
async def parts(pipeline_broker: str, pipeline_tenants: tuple[Path, TenantDirectory], clickhouse_dsn: str, clickhouse_database: str) -> AsyncIterator[Parts]:
    store = ReviewStore.open(clickhouse_dsn, clickhouse_database)
    store.migrate()
    outputs = KafkaOutputs(pipeline_broker)
    outputs.start(asyncio.get_running_loop())
    commands = CommandLog(pipeline_broker, 6000)
    try:
        async with ModMedClient() as client:
            yield Parts(store, pipeline_tenants[1], client, outputs, commands, pipeline_broker)
    finally:
        commands.close()
        await outputs.close()


def publish(bootstrap: str, command: CommandMessage) -> tuple[int, int]:
    """The command record as the worker writes it; returns where it landed (the item points there)."""
    topic = topic_named(COMMANDS)
    record = command.to_avro()
    landed: dict[str, int] = {}
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(COMMANDS, value=AvroSerde.for_topic(topic).encode(record), key=topic.key_of(record),
                     on_delivery=lambda _, message: landed.update(partition=message.partition(),
                                                                  offset=message.offset()))
    producer.flush(15)
    return landed["partition"], landed["offset"]


async def free_slots(parts: Parts, practice: Practice, visit_reason: VisitReason, patient_id: str) -> list[SlotOffer]:
    """Slots the live path would offer (found free, then ranked by the scheduling rules)."""
    today = datetime.now(UTC).date()
    found = await parts.queue().dispatcher.search_slots(practice, visit_reason=visit_reason,
                                                        date_from=today + timedelta(days=2),
                                                        date_to=today + timedelta(days=12), patient_id=patient_id)
    ranked = {c.slot_id for c in filter_and_rank([o.to_candidate() for o in found.value], visit_reason,
                                                  now=datetime.now(UTC), patient_is_new=False, limit=20)}
    return [offer for offer in found.value if offer.slot_id in ranked]


def queued_booking(parts: Parts, caller: Caller, slot: SlotOffer, visit_reason: VisitReason) -> core.ReviewItem:
    """What the worker queues when ModMed fails the booking of the slot the caller chose (write phase)."""
    call_id = f"call-{uuid.uuid4().hex[:12]}"
    request = IntentRequest(intent=Intent.BOOK_APPOINTMENT, visit_reason=visit_reason)
    command = CommandMessage(
        command_id=uuid.uuid4(), call_id=call_id, practice_id=PRACTICE, kind="BOOK_APPOINTMENT",
        route=CommandRoute.REVIEW_QUEUE, idempotency_key=f"{call_id}:BOOK_APPOINTMENT:{slot.slot_id}",
        params={"reason": "RetryableError", "slot_id": slot.slot_id, "visit_reason": visit_reason.value,
                "start": slot.start.isoformat(), "practitioner_id": slot.practitioner_id,
                "patient_id": caller.patient_id, GUARD_REQUEST_PARAM: request.model_dump_json(exclude_none=True),
                EARLIER_CS_REQUESTS_PARAM: "0"},
        issued_at=datetime.now(UTC))
    partition, offset = publish(parts.bootstrap, command)
    item = core.item_from_command(command, partition, offset, datetime.now(UTC), retries=True)
    assert core.due(item, datetime.now(UTC)), "a write-phase booking ModMed failed is retried"
    parts.store.put(item)
    return item


async def appointments_of(parts: Parts, practice: Practice, caller: Caller, call_id: str) -> list[Appointment]:
    found = await parts.client.search(practice, Appointment, {"patient": caller.patient_id})
    return [a for a in found.matches
            if any(i.system == CALL_REFERENCE_SYSTEM and i.value == call_id for i in a.identifier or ())]


async def test_a_booking_is_retried_once_modmed_answers_and_stays_with_staff_when_the_slot_or_the_guards_say_no(
    parts: Parts, pipeline_cast: dict[str, PracticeCast],
) -> None:
    practice = parts.tenants[PRACTICE]
    cast = pipeline_cast[PRACTICE]
    booker, other, blocked = cast.plain[-1], cast.plain[-2], cast.expired[-1]
    by_start = {offer.start: offer for offer in await free_slots(parts, practice, VisitReason.FOLLOW_UP, booker.patient_id)}
    slots = list(by_start.values())  # one per start: a booking is found again by its patient and start
    controlled = await free_slots(parts, practice, VisitReason.MEDICATION_MANAGEMENT, blocked.patient_id)
    assert len(slots) >= 3 and controlled, "the sandbox schedule has free slots two days out"
    delivered = queued_booking(parts, booker, slots[0], VisitReason.FOLLOW_UP)
    relanded = queued_booking(parts, booker, slots[1], VisitReason.FOLLOW_UP)
    taken = queued_booking(parts, booker, slots[2], VisitReason.FOLLOW_UP)
    refused = queued_booking(parts, blocked, controlled[0], VisitReason.MEDICATION_MANAGEMENT)
    # Somebody else takes the third slot while its item waits.
    await parts.queue().dispatcher.book(practice, call_id=f"call-{uuid.uuid4().hex[:12]}", patient_id=other.patient_id,
                                        slot_id=slots[2].slot_id, found_on=CommandRoute.FHIR)
    # A queue process booked the second one and was killed before recording it; its lease ran out since.
    landed = await parts.queue().dispatcher.book(practice, call_id=relanded.call_id, patient_id=booker.patient_id,
                                                 slot_id=slots[1].slot_id, found_on=CommandRoute.FHIR)
    lapsed = core.start_attempt(relanded, datetime.now(UTC) - timedelta(minutes=5))
    parts.store.put(lapsed)

    # Each attempt as a new process would make it (a ledger of its own), side by side.
    await asyncio.gather(*(parts.queue().attempt(item) for item in (delivered, lapsed, taken, refused)))

    for item, slot in ((delivered, slots[0]), (relanded, slots[1])):
        done = parts.store.get(item.item_id)
        [appointment] = await appointments_of(parts, practice, booker, item.call_id)  # exactly one, ever
        assert (done.state, done.resource_type, done.resource_id) == (ItemState.DELIVERED, "Appointment",
                                                                      appointment.id)
        assert appointment.slot and appointment.slot[0].reference == f"Slot/{slot.slot_id}"
    assert parts.store.get(relanded.item_id).resource_id == landed.resource_id

    gone = parts.store.get(taken.item_id)
    assert (gone.state, gone.reason, gone.next_attempt_at) == (ItemState.OPEN, Reason.SLOT_UNAVAILABLE, None)
    assert not await appointments_of(parts, practice, booker, taken.call_id)

    stopped = parts.store.get(refused.item_id)
    assert (stopped.state, stopped.reason, stopped.next_attempt_at) == (ItemState.OPEN, Reason.GUARD_REFUSED, None)
    assert "AGREEMENT_BLOCKS_CONTROLLED_VISIT" in (stopped.last_error_class or "")
    assert not await appointments_of(parts, practice, blocked, refused.call_id), "an expired agreement books nothing"
    listed = {i.item_id for i in parts.store.select_items(PRACTICE, core.UNFINISHED)}
    assert {taken.item_id, refused.item_id} <= listed and delivered.item_id not in listed


async def test_a_stale_alarm_a_predecessor_stored_is_announced_and_cleared_by_its_successor(parts: Parts) -> None:
    """The predecessor stored FIRING and died before the broker acknowledged it; its items are done since."""
    practice_id = f"prac-{uuid.uuid4().hex[:8]}"
    parts.store.put_alarm(StoredAlarm(practice_id, AlarmKind.REVIEW_QUEUE_STALE.value, AlarmState.FIRING.value, 960.0,
                                      datetime.now(UTC), announced=False, revision=1))
    alarms = TopicReader(parts.bootstrap, ALARMS, Alarm)
    try:
        await parts.queue().check_staleness()
        await parts.queue().check_staleness()  # and once more after another restart: nothing new
        alarms.wait_for(lambda records: len([r for r in records if r and r.practice_id == practice_id]) >= 2, 15)
        alarms.poll(1.0)
        states = [r.state for r in alarms.records if r is not None and r.practice_id == practice_id]
    finally:
        alarms.close()
    assert states == [AlarmState.FIRING, AlarmState.CLEARED]
    [stored] = [a for a in parts.store.alarm_states() if a.practice_id == practice_id]
    assert (stored.state, stored.announced) == (AlarmState.CLEARED.value, True)
