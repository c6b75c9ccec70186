"""The connector's operations over real HTTP against the sandbox: reads, idempotent writes, capabilities."""

from __future__ import annotations

import datetime as dt

import pytest
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.task import Task

from callstream.errors import ConfigError
from callstream.tenants import Practice
from connectors.errors import CapabilityMissing, ConflictError, InvalidRequestError, VisitReasonMismatch, WriteNotAllowed
from connectors.fhir import ClientConfig, ModMedClient
from connectors.ledger import InMemoryLedger, LedgerState, MappingLedger, idempotency_key
from connectors.operations import ModMedConnector
from connectors.slot_offers import SlotOffer
from connectors.vocabulary import CALL_REFERENCE_SYSTEM, IDEMPOTENCY_KEY_SYSTEM
from connectors.write_resources import TRANSCRIPT_INPUT
from guards import GoLivePhase, MatchKind
from guards.model import Command, VisitReason
from guards.scheduling import BlockKind, Equipment, RoomKind, slot_rejections
from sandbox.world import SandboxWorld
from tests.connectors.helpers import PracticeSet, Recorder
from tests.fixtures.sandbox import SandboxServer

TODAY = dt.date.today()


async def some_patients(client: ModMedClient, practice: Practice, count: int = 20) -> list[Patient]:
    found = await client.search(practice, Patient, {"_count": str(count)}, max_pages=1)
    assert len(found.matches) == count
    return found.matches


async def free_offers(connector: ModMedConnector, practice: Practice, reason: VisitReason = VisitReason.FOLLOW_UP) -> list[SlotOffer]:
    offers = await connector.search_slots(
        practice, visit_reason=reason, date_from=TODAY + dt.timedelta(days=3), date_to=TODAY + dt.timedelta(days=20)
    )
    assert len(offers) >= 4
    return offers


async def test_patient_search_by_name_and_birth_date(client: ModMedClient, main_practice: Practice) -> None:
    connector = ModMedConnector(client, InMemoryLedger())
    patient = (await some_patients(client, main_practice))[7]
    name = patient.name[0]
    match = await connector.search_patients(
        main_practice, family=name.family.upper(), given=name.given[0][:3], birthdate=patient.birthDate
    )
    assert match.kind is MatchKind.UNIQUE and match.patient.id == patient.id
    assert name.family not in repr(match)  # the repr shows ids only
    nobody = await connector.search_patients(
        main_practice, family=name.family, given=name.given[0], birthdate=patient.birthDate - dt.timedelta(days=1)
    )
    assert nobody.kind is MatchKind.NONE and nobody.candidates == ()
    with pytest.raises(ValueError):
        nobody.patient  # noqa: B018
    with pytest.raises(InvalidRequestError):
        await connector.search_patients(main_practice, family=" ", given="x", birthdate=patient.birthDate)


async def test_same_name_and_birth_date_is_ambiguous_until_the_phone_decides(
    client: ModMedClient, private_world: SandboxWorld, private_practices: PracticeSet
) -> None:
    practice = private_practices.proprietary(fhir_task_create=False)
    store = private_world.tenants[practice.practice_id].store
    template = store.get("Patient", store.all_of("Patient")[0]["id"])
    for suffix, phone in (("a", "+15035550181"), ("b", "+15035550182")):
        twin = {**template, "id": f"pt-twin-{suffix}", "name": [{"family": "Twinley", "given": ["Morgan"]}],
                "birthDate": "1971-04-09", "telecom": [{"system": "phone", "value": phone}]}
        twin.pop("meta", None)
        store.add(twin, dt.datetime.now(dt.UTC))
    connector = ModMedConnector(client, InMemoryLedger())
    birth = dt.date(1971, 4, 9)
    both = await connector.search_patients(practice, family="Twinley", given="Morgan", birthdate=birth)
    assert both.kind is MatchKind.AMBIGUOUS and {p.id for p in both.candidates} == {"pt-twin-a", "pt-twin-b"}
    by_phone = await connector.search_patients(practice, family="Twinley", given="Mor", birthdate=birth, phone="(503) 555-0182")
    assert by_phone.kind is MatchKind.UNIQUE and by_phone.patient.id == "pt-twin-b"
    unknown = await connector.search_patients(practice, family="Twinley", given="Morgan", birthdate=birth, phone="+15550000000")
    assert unknown.kind is MatchKind.AMBIGUOUS


async def test_slot_search_carries_provider_room_and_equipment(client: ModMedClient, main_practice: Practice) -> None:
    connector = ModMedConnector(client, InMemoryLedger())
    offers = await free_offers(connector, main_practice, VisitReason.ESI)
    for offer in offers:
        assert offer.visit_reason is VisitReason.ESI and offer.slot.status == "free"
        assert offer.room_kind == "procedure-room" and "fluoroscopy" in offer.equipment
        assert offer.minutes == 30 and offer.practitioner_name
    assert [o.start for o in offers] == sorted(o.start for o in offers)
    first = offers[0]
    by_provider = await connector.search_slots(
        main_practice, visit_reason=VisitReason.ESI, date_from=TODAY, date_to=TODAY + dt.timedelta(days=20),
        provider=first.practitioner_id, location=first.location_id,
    )
    assert by_provider and {(o.practitioner_id, o.location_id) for o in by_provider} == {(first.practitioner_id, first.location_id)}
    candidate = first.to_candidate()
    assert (candidate.room_kind, candidate.block_kind) == (RoomKind.PROCEDURE_ROOM, BlockKind.PROCEDURE)
    assert Equipment.FLUOROSCOPY in candidate.room_equipment
    assert slot_rejections(candidate, VisitReason.ESI, now=dt.datetime.now(dt.UTC), patient_is_new=False) == ()
    with pytest.raises(InvalidRequestError):
        await connector.search_slots(main_practice, visit_reason=VisitReason.ESI, date_from=TODAY, date_to=TODAY - dt.timedelta(days=1))


async def test_booking_twice_for_the_same_call_books_once(
    client: ModMedClient, main_practice: Practice, recorder: Recorder
) -> None:
    ledger = InMemoryLedger()
    connector = ModMedConnector(client, ledger)
    patient = (await some_patients(client, main_practice))[3]
    offer = (await free_offers(connector, main_practice))[0]
    booked = await connector.book_appointment(main_practice, call_id="call-book-1", patient_id=patient.id, slot_id=offer.slot_id)
    assert booked.status == "booked" and booked.start == offer.start and booked.minutesDuration == offer.minutes
    assert {p.actor.reference for p in booked.participant} == {
        f"Patient/{patient.id}", f"Practitioner/{offer.practitioner_id}", f"Location/{offer.location_id}"
    }
    key = idempotency_key("call-book-1", Command.BOOK_APPOINTMENT, f"Patient/{patient.id}|Slot/{offer.slot_id}")
    entry = ledger.get(key)
    assert entry is not None and entry.state is LedgerState.DONE and entry.resource_id == booked.id
    posts = recorder.count(resource="Appointment", method="POST")
    # The same event again (same process) and redelivered to a worker with an empty ledger.
    again = await connector.book_appointment(main_practice, call_id="call-book-1", patient_id=patient.id, slot_id=offer.slot_id)
    fresh_worker = ModMedConnector(client, InMemoryLedger())
    redelivered = await fresh_worker.book_appointment(main_practice, call_id="call-book-1", patient_id=patient.id, slot_id=offer.slot_id)
    assert again.id == redelivered.id == booked.id
    assert recorder.count(resource="Appointment", method="POST") == posts  # the practice check found it
    mine = await client.search(main_practice, Appointment, {"patient": patient.id, "date": offer.start.isoformat()})
    assert [a.id for a in mine.matches if a.status == "booked"] == [booked.id]


async def test_a_slot_of_another_visit_reason_than_the_guard_decided_is_never_booked(
    client: ModMedClient, main_practice: Practice, recorder: Recorder
) -> None:
    connector = ModMedConnector(client, InMemoryLedger())
    patient = (await some_patients(client, main_practice))[9]
    injection = (await free_offers(connector, main_practice, VisitReason.ESI))[1]
    with pytest.raises(VisitReasonMismatch, match="the slot is for esi, the guard decided medication-management"):
        await connector.book_appointment(main_practice, call_id="call-reason", patient_id=patient.id,
                                         slot_id=injection.slot_id, expected_visit_reason=VisitReason.MEDICATION_MANAGEMENT)
    with pytest.raises(InvalidRequestError, match="not a visit reason"):
        await connector.book_appointment(main_practice, call_id="call-reason", patient_id=patient.id,
                                         slot_id=injection.slot_id, expected_visit_reason="botox")  # type: ignore[arg-type]
    assert recorder.count(resource="Appointment", method="POST") == 0
    booked = await connector.book_appointment(main_practice, call_id="call-reason", patient_id=patient.id,
                                              slot_id=injection.slot_id, expected_visit_reason=VisitReason.ESI)
    assert booked.appointmentType.coding[0].code == "esi"
    other = next(o for o in (await free_offers(connector, main_practice, VisitReason.ESI))[2:] if o.start != injection.start)
    with pytest.raises(VisitReasonMismatch):
        await connector.reschedule_appointment(main_practice, call_id="call-reason", appointment_id=booked.id,
                                               new_slot_id=other.slot_id, expected_visit_reason=VisitReason.FOLLOW_UP)
    assert recorder.count(resource="Appointment", method="PUT") == 0
    with pytest.raises(VisitReasonMismatch):  # a redelivery of the booked event is checked against the decision too
        await connector.book_appointment(main_practice, call_id="call-reason", patient_id=patient.id,
                                         slot_id=injection.slot_id, expected_visit_reason=VisitReason.FOLLOW_UP)
    moved = await connector.reschedule_appointment(main_practice, call_id="call-reason", appointment_id=booked.id,
                                                   new_slot_id=other.slot_id, expected_visit_reason=VisitReason.ESI)
    assert moved.start == other.start


async def test_reschedule_and_cancel_are_idempotent(client: ModMedClient, main_practice: Practice) -> None:
    connector = ModMedConnector(client, InMemoryLedger())
    patient = (await some_patients(client, main_practice))[5]
    offers = await free_offers(connector, main_practice)
    booked = await connector.book_appointment(main_practice, call_id="call-move", patient_id=patient.id, slot_id=offers[1].slot_id)
    target = next(o for o in offers[2:] if o.start != offers[1].start)
    moved = await connector.reschedule_appointment(
        main_practice, call_id="call-move", appointment_id=booked.id, new_slot_id=target.slot_id
    )
    assert moved.id == booked.id and moved.start == target.start and moved.slot[0].reference == f"Slot/{target.slot_id}"
    assert {p.actor.reference for p in moved.participant} >= {f"Practitioner/{target.practitioner_id}", f"Location/{target.location_id}"}
    replay = await ModMedConnector(client, InMemoryLedger()).reschedule_appointment(
        main_practice, call_id="call-move", appointment_id=booked.id, new_slot_id=target.slot_id
    )
    assert replay.meta.versionId == moved.meta.versionId  # already there: no second PUT
    cancelled = await connector.cancel_appointment(main_practice, call_id="call-move", appointment_id=booked.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(ConflictError) as stale:  # an update based on an old version never overwrites
        await client.write(main_practice, "PUT", moved)
    assert stale.value.status == 412
    again = await ModMedConnector(client, InMemoryLedger()).cancel_appointment(
        main_practice, call_id="call-move-2", appointment_id=booked.id
    )
    assert again.meta.versionId == cancelled.meta.versionId


async def test_task_create_where_supported_and_capability_missing_elsewhere(
    client: ModMedClient, task_practice: Practice, main_practice: Practice, sandbox_practices: PracticeSet,
    recorder: Recorder,
) -> None:
    connector = ModMedConnector(client, InMemoryLedger())
    patient = (await some_patients(client, task_practice))[2]
    checked = dt.datetime(2026, 1, 5, 9, 30, tzinfo=dt.UTC)
    task = await connector.create_task(
        task_practice, call_id="call-task-1", patient_id=patient.id, task_code="refill-request",
        description="Refill request from the phone line; call reference attached.", pdmp_last_checked=checked,
    )
    assert task.status == "requested" and task.for_fhir.reference == f"Patient/{patient.id}"
    assert task.input[0].valueDateTime == checked
    replay = await ModMedConnector(client, InMemoryLedger()).create_task(
        task_practice, call_id="call-task-1", patient_id=patient.id, task_code="refill-request", description="again",
    )
    assert replay.id == task.id
    key = idempotency_key("call-task-1", Command.CREATE_TASK, f"Patient/{patient.id}|refill-request")
    found = await client.search(task_practice, Task, {"identifier": f"{IDEMPOTENCY_KEY_SYSTEM}|{key}"})
    assert [t.id for t in found.matches] == [task.id]
    before = len(recorder.calls)
    for practice in (main_practice, sandbox_practices.certified()):
        with pytest.raises(CapabilityMissing):
            await connector.create_task(
                practice, call_id="call-task-2", patient_id=patient.id, task_code="callback", description="x"
            )
    assert len(recorder.calls) == before  # refused before any request


async def test_document_reference_create_is_idempotent(client: ModMedClient, task_practice: Practice) -> None:
    connector = ModMedConnector(client, InMemoryLedger())
    patient = (await some_patients(client, task_practice))[4]
    url = "https://intake.example.invalid/results/call-doc-1.pdf"
    document = await connector.create_document_reference(
        task_practice, call_id="call-doc-1", patient_id=patient.id, title="Intake results", url=url
    )
    assert document.content[0].attachment.url == url and document.subject.reference == f"Patient/{patient.id}"
    replay = await ModMedConnector(client, InMemoryLedger()).create_document_reference(
        task_practice, call_id="call-doc-1", patient_id=patient.id, title="Intake results", url=url
    )
    assert replay.id == document.id
    mine = await client.search(task_practice, DocumentReference, {"patient": patient.id})
    assert sum(1 for d in mine.matches if d.masterIdentifier and d.masterIdentifier.value == document.masterIdentifier.value) == 1
    with pytest.raises(InvalidRequestError):
        await connector.create_document_reference(
            task_practice, call_id="c", patient_id=patient.id, title="x", url="http://plain.example/x"
        )


class WriteAheadLedger(MappingLedger):
    """A ledger whose entries are durable before ``begin`` returns (as the pipeline's changelog ledger)."""

    write_ahead = True


async def test_a_write_ahead_ledger_lets_a_first_task_or_document_skip_the_landed_check(
    client: ModMedClient, task_practice: Practice, recorder: Recorder
) -> None:
    connector = ModMedConnector(client, WriteAheadLedger({}))
    patient = (await some_patients(client, task_practice))[6]
    before = len(recorder.calls)
    task = await connector.create_task(task_practice, call_id="call-wal-1", patient_id=patient.id,
                                       task_code="callback", description="Callback request from the phone line.")
    url = "https://intake.example.invalid/results/call-wal-1.pdf"
    document = await connector.create_document_reference(task_practice, call_id="call-wal-1", patient_id=patient.id,
                                                          title="Intake results", url=url)
    assert [(r, m) for _, r, m, _ in recorder.calls[before:]] == [("Task", "POST"), ("DocumentReference", "POST")]
    assert task.id and document.id


async def test_a_pending_write_ahead_entry_still_asks_the_practice_before_writing_again(
    client: ModMedClient, task_practice: Practice, recorder: Recorder
) -> None:
    """A worker that died after its entry was acknowledged may or may not have sent the POST."""
    first = ModMedConnector(client, WriteAheadLedger({}))
    patient = (await some_patients(client, task_practice))[8]
    task = await first.create_task(task_practice, call_id="call-wal-2", patient_id=patient.id,
                                   task_code="callback", description="Callback request from the phone line.")
    key = idempotency_key("call-wal-2", Command.CREATE_TASK, f"Patient/{patient.id}|callback")
    died_mid_write = WriteAheadLedger({})
    await died_mid_write.begin(key, Command.CREATE_TASK.value)  # the POST above stands for the one that left
    before = len(recorder.calls)
    again = await ModMedConnector(client, died_mid_write).create_task(
        task_practice, call_id="call-wal-2", patient_id=patient.id, task_code="callback", description="again")
    assert again.id == task.id
    assert [(r, m) for _, r, m, _ in recorder.calls[before:]] == [("Task", "GET")], "found by its key, not resent"
    entry = died_mid_write.get(key)
    assert entry is not None and entry.state is LedgerState.DONE and entry.resource_id == task.id
    found = await client.search(task_practice, Task, {"identifier": f"{IDEMPOTENCY_KEY_SYSTEM}|{key}"})
    assert [t.id for t in found.matches] == [task.id]


async def test_a_booking_asks_the_practice_first_even_with_a_write_ahead_ledger(
    client: ModMedClient, main_practice: Practice, recorder: Recorder
) -> None:
    """Staff may have booked the caller at that time: the ledger cannot know, the practice can."""
    connector = ModMedConnector(client, WriteAheadLedger({}))
    patient = (await some_patients(client, main_practice))[11]
    offer = (await free_offers(connector, main_practice))[-1]
    staff_booking = await ModMedConnector(client, InMemoryLedger()).book_appointment(
        main_practice, call_id="front-desk", patient_id=patient.id, slot_id=offer.slot_id)
    posts = recorder.count(resource="Appointment", method="POST")
    booked = await connector.book_appointment(main_practice, call_id="call-wal-3", patient_id=patient.id,
                                              slot_id=offer.slot_id)
    assert booked.id == staff_booking.id
    assert recorder.count(resource="Appointment", method="POST") == posts


async def test_reschedule_and_cancel_read_the_appointment_once_before_their_put(
    client: ModMedClient, main_practice: Practice, recorder: Recorder
) -> None:
    connector = ModMedConnector(client, InMemoryLedger())
    patient = (await some_patients(client, main_practice))[12]
    offers = await free_offers(connector, main_practice)
    booked = await connector.book_appointment(main_practice, call_id="call-once", patient_id=patient.id,
                                              slot_id=offers[0].slot_id)
    target = next(o for o in offers[1:] if o.start != offers[0].start)
    before = len(recorder.calls)
    await connector.reschedule_appointment(main_practice, call_id="call-once", appointment_id=booked.id,
                                           new_slot_id=target.slot_id)
    await connector.cancel_appointment(main_practice, call_id="call-once", appointment_id=booked.id)
    appointment_calls = [m for _, r, m, _ in recorder.calls[before:] if r == "Appointment"]
    assert appointment_calls == ["GET", "PUT", "GET", "PUT"]


async def test_read_only_phase_and_certified_track_refuse_writes_before_sending(
    client: ModMedClient, sandbox: SandboxServer, sandbox_practices: PracticeSet, recorder: Recorder
) -> None:
    listing = sandbox_practices.listing(track="proprietary", fhir_task_create=True)
    read_only = sandbox_practices.entry(listing, phase=GoLivePhase.READ_ONLY.value)
    connector = ModMedConnector(client, InMemoryLedger())
    with pytest.raises(WriteNotAllowed, match="read_only"):
        await connector.book_appointment(read_only, call_id="c", patient_id="pt-1", slot_id="slot-1")
    with pytest.raises(WriteNotAllowed):
        await connector.cancel_appointment(read_only, call_id="c", appointment_id="appt-1")
    with pytest.raises(CapabilityMissing):
        await connector.book_appointment(sandbox_practices.certified(), call_id="c", patient_id="p", slot_id="s")
    with pytest.raises(InvalidRequestError):
        await connector.book_appointment(sandbox_practices.proprietary(fhir_task_create=False), call_id="c",
                                         patient_id="../Patient", slot_id="s")
    assert recorder.calls == []


def test_connector_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="attempts"):
        ClientConfig(attempts=0)
    with pytest.raises(ConfigError, match="read_timeout_s"):
        ClientConfig(read_timeout_s=-1.0)


async def test_certified_track_reads_with_smart_backend_services(client: ModMedClient, sandbox_practices: PracticeSet) -> None:
    certified = sandbox_practices.certified()
    patients = await some_patients(client, certified, count=5)
    read = await client.read(certified, Patient, patients[0].id)
    assert read.id == patients[0].id
    with pytest.raises(CapabilityMissing):
        await ModMedConnector(client, InMemoryLedger()).read_compliance_flags(certified, patients[0].id)



async def test_a_task_carries_the_call_reference_and_the_scrubbed_transcript_reference(
    client: ModMedClient, task_practice: Practice,
) -> None:
    """Issue 18 item 4: provider and clinical Tasks carry the call and transcript references; a transcript
    store that names its folders after the patient leaves callstream scrubbed, as in the SIEM bodies."""
    patient = (await some_patients(client, task_practice))[1]
    task = await ModMedConnector(client, InMemoryLedger()).create_task(
        task_practice, call_id="call-task-tr", patient_id=patient.id, task_code="refill-request",
        description="Phone request routed by callstream.",
        transcript_ref="s3://transcripts/Romero-Gabriel-1947-07-17/call-task-tr.json?X-Amz-Signature=abc",
    )
    stored = await client.read(task_practice, Task, task.id)
    [transcript] = [i.valueString for i in stored.input or () if i.type.text == TRANSCRIPT_INPUT]
    assert transcript == "s3://transcripts/redacted/call-task-tr.json"
    assert stored.description.endswith(f"Transcript reference: {transcript}")
    assert "Romero" not in stored.model_dump_json() and "1947" not in stored.model_dump_json()
    assert {(i.system, i.value) for i in stored.identifier} >= {(CALL_REFERENCE_SYSTEM, "call-task-tr")}
