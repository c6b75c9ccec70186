"""The EmaPort commands in real headless Chromium against the sandbox's EMA screens.

Every write is checked where the dispatcher will look for it: over FHIR (or, on the certified track
that has no Appointment/Task API, in the sandbox's own store). One keeper serves the whole module, so
the module also shows the session being reused.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.slot import Slot
from fhir.resources.R4B.task import Task

from callstream.tenants import Practice
from connectors.compliance import compliance_flags
from connectors.ema.commands import TASK_KEY_LINE, EmaCommands
from connectors.ema.directory import FhirEmaDirectory
from connectors.ema.errors import (
    EmaConflictError,
    EmaInvalidCommand,
    EmaNotFoundError,
    EmaScreenError,
    EmaVisitReasonMismatch,
)
from connectors.ema.evidence import EvidenceStore
from connectors.ema.locks import EmaLockStore
from connectors.ema.screens import Screen
from connectors.ema.session import EmaBrowser, EmaSessions
from connectors.errors import CapabilityMissing, WriteNotAllowed
from connectors.fhir import ModMedClient
from connectors.ledger import InMemoryLedger
from connectors.operations import ModMedConnector
from connectors.vocabulary import (
    CALL_REFERENCE_SYSTEM,
    COMPLIANCE_SYSTEM,
    EXT_AGREEMENT_STATUS,
    EXT_LAST_REFILL_DATE,
    EXT_RESTRICTION,
    TASK_KIND_SYSTEM,
)
from guards.engine import decide
from guards.model import (
    TASK_AUDIENCE,
    AgreementStatus,
    CallContext,
    GoLivePhase,
    Intent,
    IntentRequest,
    PhoneRestriction,
    TaskAudience,
    TaskKind,
    TaskReason,
    TaskSpec,
    VisitReason,
)
from guards.scheduling import slot_rejections
from sandbox import writes
from sandbox.world import SandboxWorld
from tests.connectors.ema.helpers import (
    EmaPracticeSet,
    ScreenLog,
    distinct_charts,
    flags_of,
    patients_where,
    pdmp_checks,
    phi_of,
)
from tests.fixtures.sandbox import SandboxServer


@dataclass
class Rig:
    sessions: EmaSessions
    commands: EmaCommands
    client: ModMedClient
    data_dir: Path


@pytest.fixture(scope="module")
async def rig(
    ema_browser: EmaBrowser, ema_sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    data_dir = tmp_path_factory.mktemp("ema-commands")
    sessions = EmaSessions(
        browser=ema_browser, locks=EmaLockStore.under(data_dir), evidence=EvidenceStore.under(data_dir),
        step_timeout_s=5.0,
    )
    async with ModMedClient() as client:
        yield Rig(sessions, EmaCommands(sessions, FhirEmaDirectory(client)), client, data_dir)
        await sessions.close()


def local_today(world: SandboxWorld, practice: Practice) -> dt.date:
    return world.now().astimezone(ZoneInfo(practice.timezone)).date()


def plain_patients(world: SandboxWorld, practice_id: str) -> list[str]:
    """Patients without compliance flags (so booking guards would let them book anything)."""
    return patients_where(world, practice_id, lambda tenant, pid: not flags_of(tenant, pid))


def chart_flag(world: SandboxWorld, practice_id: str, patient_id: str, code: str, **fields: object) -> None:
    """Put one more active compliance Flag on a chart (the provider's doing, in ModMed)."""
    tenant = world.tenants[practice_id]
    flag = {"resourceType": "Flag", "status": "active", "code": {"coding": [{"system": COMPLIANCE_SYSTEM, "code": code}]},
            "subject": {"reference": f"Patient/{patient_id}"}, **fields}
    with tenant.lock:
        flag["id"] = tenant.store.next_id(tenant.id_prefix("flag"))
        tenant.store.add(writes.validate_resource("Flag", flag), world.now())


def agreement(status: str, renewal: str) -> dict[str, object]:
    return {"extension": [{"url": EXT_AGREEMENT_STATUS, "valueCode": status}], "period": {"end": renewal}}


async def turn(rig: Rig, practice: Practice, world: SandboxWorld, call_id: str, patient: str,
               request: IntentRequest) -> list[str]:
    """One turn on an EMA practice: flags from the screens, the guard's decision, its tasks in the PM queue."""
    flags = await rig.commands.read_compliance(practice, patient)
    context = CallContext(call_id=call_id, practice_id=practice.practice_id, caller_identified=True, patient_id=patient)
    decision = decide(context, request, flags.to_chart_flags(), GoLivePhase.WRITE, world.now())
    return [
        (await rig.commands.create_staff_task(practice, call_id=call_id, task=task, note="Routed from the phone line.")).resource_id
        for task in decision.tasks
    ]


async def test_ema_only_template_is_searched_and_booked_on_screens_and_visible_over_fhir(
    rig: Rig, ema_practices: EmaPracticeSet, ema_world: SandboxWorld
) -> None:
    practice = ema_practices.practice("pain-1001")
    patient = plain_patients(ema_world, "pain-1001")[0]
    today = local_today(ema_world, practice)
    first, last = today + dt.timedelta(days=8), today + dt.timedelta(days=14)
    fhir_slots = await rig.client.search(
        practice, Slot, {"appointment-type": "kyphoplasty", "date": [f"ge{first}", f"le{last}"]}
    )
    assert fhir_slots.matches == []  # FHIR does not enumerate the EMA-only template: that is why EMA is needed

    offers = await rig.commands.search_template_slots(
        practice, visit_reason=VisitReason.KYPHOPLASTY, date_from=first, date_to=last, patient_id=patient
    )
    assert offers
    staff = {m.practitioner_id: m for m in ema_world.tenants["pain-1001"].profile.staff}
    for offer in offers:
        assert offer.practice_id == "pain-1001" and offer.visit_reason is VisitReason.KYPHOPLASTY
        assert first <= offer.start.astimezone(ZoneInfo(practice.timezone)).date() <= last
        assert offer.minutes == 60 and offer.room_kind == "procedure-room" and "fluoroscopy" in offer.equipment
        assert "kyphoplasty" in staff[offer.practitioner_id].performs
        assert offer.practitioner_name == staff[offer.practitioner_id].display_name
    now = ema_world.now()
    valid = [o for o in offers if not slot_rejections(
        o.to_candidate(), VisitReason.KYPHOPLASTY, now=now, patient_is_new=False
    )]
    assert valid
    chosen = valid[0]

    result = await rig.commands.book_template(
        practice, call_id="call-ema-book-1", patient_id=patient, slot_id=chosen.slot_id,
        expected_visit_reason=VisitReason.KYPHOPLASTY,
    )
    assert result.resource_type == "Appointment"
    assert result.deep_link == practice.chart_deep_link(patient)
    appointment = await rig.client.read(practice, Appointment, result.resource_id)
    assert appointment.status == "booked" and appointment.start == chosen.start
    assert [s.reference for s in appointment.slot] == [f"Slot/{chosen.slot_id}"]
    actors = {p.actor.reference for p in appointment.participant}
    assert actors == {f"Patient/{patient}", f"Practitioner/{chosen.practitioner_id}", f"Location/{chosen.location_id}"}

    redelivered = await rig.commands.book_template(
        practice, call_id="call-ema-book-1", patient_id=patient, slot_id=chosen.slot_id
    )
    assert redelivered == result
    booked = await rig.client.search(practice, Appointment, {"patient": patient})
    assert [a.id for a in booked.matches if a.start == chosen.start and a.status == "booked"] == [result.resource_id]


async def test_certified_practice_books_its_ema_only_template(
    rig: Rig, ema_practices: EmaPracticeSet, ema_world: SandboxWorld
) -> None:
    practice = ema_practices.practice("pain-1003")
    patient = plain_patients(ema_world, "pain-1003")[0]
    today = local_today(ema_world, practice)
    offers = await rig.commands.search_template_slots(
        practice, visit_reason=VisitReason.SCS_TRIAL, date_from=today + dt.timedelta(days=16),
        date_to=today + dt.timedelta(days=22), patient_id=patient,
    )
    assert offers and all(o.minutes == 90 and o.room_kind == "procedure-room" for o in offers)
    result = await rig.commands.book_template(
        practice, call_id="call-ema-book-2", patient_id=patient, slot_id=offers[0].slot_id
    )
    stored = ema_world.tenants["pain-1003"].store.get("Appointment", result.resource_id)  # no Appointment API here
    assert stored is not None and stored["status"] == "booked"
    assert stored["slot"] == [{"reference": f"Slot/{offers[0].slot_id}"}]
    assert {"reference": f"Patient/{patient}"} in [p["actor"] for p in stored["participant"]]
    assert result.deep_link == f"{ema_practices.listing('pain-1003')['ema_base_url']}/chart/{patient}"


async def test_a_slot_taken_in_the_meantime_is_a_conflict(
    rig: Rig, ema_practices: EmaPracticeSet, ema_world: SandboxWorld
) -> None:
    practice = ema_practices.practice("pain-1001")
    first_patient, second_patient = plain_patients(ema_world, "pain-1001")[1:3]
    day = local_today(ema_world, practice) + dt.timedelta(days=21)
    offers = await rig.commands.search_template_slots(
        practice, visit_reason=VisitReason.KYPHOPLASTY, date_from=day, date_to=day + dt.timedelta(days=6),
        patient_id=first_patient,
    )
    await rig.commands.book_template(practice, call_id="call-ema-first", patient_id=first_patient, slot_id=offers[0].slot_id)
    with pytest.raises(EmaConflictError):
        await rig.commands.book_template(
            practice, call_id="call-ema-second", patient_id=second_patient, slot_id=offers[0].slot_id
        )


async def test_booking_refuses_slots_it_did_not_offer_and_read_only_practices(
    rig: Rig, ema_practices: EmaPracticeSet, ema_world: SandboxWorld, screen_log: ScreenLog
) -> None:
    main = ema_practices.practice("pain-1001")
    certified = ema_practices.practice("pain-1003")
    patient = plain_patients(ema_world, "pain-1001")[0]
    day = local_today(ema_world, main) + dt.timedelta(days=28)
    offers = await rig.commands.search_template_slots(
        main, visit_reason=VisitReason.KYPHOPLASTY, date_from=day, date_to=day + dt.timedelta(days=6), patient_id=patient
    )
    before = screen_log.screens("pain-1001"), screen_log.screens("pain-1003")
    with pytest.raises(EmaInvalidCommand, match="not offered"):
        await rig.commands.book_template(main, call_id="call-x", patient_id=patient, slot_id="slot-1001-999-esi-202601010800")
    with pytest.raises(EmaInvalidCommand, match="not offered"):  # offered at another practice
        await rig.commands.book_template(certified, call_id="call-x", patient_id=patient, slot_id=offers[0].slot_id)
    with pytest.raises(EmaInvalidCommand, match="not a ModMed id"):
        await rig.commands.book_template(main, call_id="call-x", patient_id="../pdmp", slot_id=offers[0].slot_id)
    with pytest.raises(EmaInvalidCommand, match="call reference"):
        await rig.commands.book_template(main, call_id="call with spaces", patient_id=patient, slot_id=offers[0].slot_id)
    with pytest.raises(EmaVisitReasonMismatch, match="the slot is for kyphoplasty, the guard decided esi"):
        await rig.commands.book_template(main, call_id="call-x", patient_id=patient, slot_id=offers[0].slot_id,
                                         expected_visit_reason=VisitReason.ESI)
    with pytest.raises(EmaInvalidCommand, match="not a visit reason"):
        await rig.commands.book_template(main, call_id="call-x", patient_id=patient, slot_id=offers[0].slot_id,
                                         expected_visit_reason="botox")  # type: ignore[arg-type]
    read_only = ema_practices.practice("pain-1001", phase="read_only")
    with pytest.raises(WriteNotAllowed, match="read_only"):
        await rig.commands.book_template(read_only, call_id="call-x", patient_id=patient, slot_id=offers[0].slot_id)
    assert (screen_log.screens("pain-1001"), screen_log.screens("pain-1003")) == before


@pytest.mark.parametrize(
    ("visit_reason", "days", "message"),
    [
        ("botox", (1, 2), "not a visit reason"),
        (VisitReason.KYPHOPLASTY, (5, 1), "in order"),
        (VisitReason.KYPHOPLASTY, (1, 40), "1 to 31 days"),
    ],
)
async def test_slot_search_refuses_malformed_requests(
    rig: Rig, ema_practices: EmaPracticeSet, visit_reason: object, days: tuple[int, int], message: str
) -> None:
    practice = ema_practices.practice("pain-1001")
    today = dt.date(2026, 12, 1)
    with pytest.raises(EmaInvalidCommand, match=message):
        await rig.commands.search_template_slots(
            practice, visit_reason=visit_reason,  # type: ignore[arg-type]
            date_from=today + dt.timedelta(days=days[0]), date_to=today + dt.timedelta(days=days[1]),
        )


async def test_slot_search_takes_dates_and_ids_only(rig: Rig, ema_practices: EmaPracticeSet) -> None:
    practice = ema_practices.practice("pain-1001")
    today = dt.date(2026, 12, 1)
    with pytest.raises(EmaInvalidCommand, match="must be dates"):
        await rig.commands.search_template_slots(
            practice, visit_reason=VisitReason.ESI, date_from=dt.datetime(2026, 12, 1, tzinfo=dt.UTC), date_to=today
        )
    with pytest.raises(EmaInvalidCommand, match="not a ModMed id"):
        await rig.commands.search_template_slots(
            practice, visit_reason=VisitReason.ESI, date_from=today, date_to=today, patient_id="pt 1/../x"
        )


TASK_CASES = [
    (TaskKind.PROVIDER_REFILL_REVIEW, TaskReason.REFILL_REQUESTED, "refill-request", {"interventionalist"}),
    (TaskKind.CS_COORDINATOR_UDS, TaskReason.UDS_DUE, "uds-scheduling", {"controlled-substance-coordinator"}),
    (TaskKind.PRIOR_AUTH_FOLLOWUP, TaskReason.PRIOR_AUTH_QUESTION, "prior-auth-followup", {"scheduler"}),
    (TaskKind.PREOP_CLEARANCE, TaskReason.PREOP_CLEARANCE_QUESTION, "preop-clearance", {"nurse"}),
    (TaskKind.CLINICAL_TEAM_REVIEW, TaskReason.AGREEMENT_EXPIRED, "agreement-renewal", {"nurse"}),
]


@pytest.mark.parametrize(("kind", "reason", "queue_kind", "roles"), TASK_CASES)
async def test_staff_task_lands_in_the_pm_queue_and_over_fhir(
    rig: Rig,
    ema_practices: EmaPracticeSet,
    ema_world: SandboxWorld,
    kind: TaskKind,
    reason: TaskReason,
    queue_kind: str,
    roles: set[str],
) -> None:
    practice = ema_practices.practice("pain-1001")
    tenant = ema_world.tenants["pain-1001"]
    patient = patients_where(ema_world, "pain-1001", lambda t, pid: "chronic-opioid" in flags_of(t, pid))[0]
    call_id = f"call-ema-task-{queue_kind}"
    checked = dt.datetime(2026, 10, 2, 15, 30, tzinfo=dt.UTC)
    audience = TASK_AUDIENCE[kind]
    spec = TaskSpec(
        kind=kind, audience=audience, reason=reason, call_id=call_id, practice_id="pain-1001", patient_id=patient,
        transcript_ref="s3://calls/abc", pdmp_last_checked=checked if audience is TaskAudience.PROVIDER else None,
    )

    result = await rig.commands.create_staff_task(practice, call_id=call_id, task=spec, note="Caller asked; see call.")
    assert result.resource_type == "Task" and result.deep_link == practice.chart_deep_link(patient)
    task = await rig.client.read(practice, Task, result.resource_id)
    assert task.status == "requested"
    assert (task.code.coding[0].system, task.code.coding[0].code) == (TASK_KIND_SYSTEM, queue_kind)
    assert task.for_fhir.reference == f"Patient/{patient}"
    owner = task.owner.reference.removeprefix("Practitioner/")
    assert tenant.profile.staff_member(owner).role in roles
    if kind is TaskKind.CS_COORDINATOR_UDS:
        assert owner == ema_practices.listing("pain-1001")["controlled_substance_coordinator"]
    assert [(i.system, i.value) for i in task.identifier] == [(CALL_REFERENCE_SYSTEM, call_id)]
    note = task.note[0].text
    assert note.startswith("Caller asked; see call.") and "Transcript reference: s3://calls/abc" in note
    assert ("PDMP last checked: 2026-10-02T15:30:00+00:00" in note) is (audience is TaskAudience.PROVIDER)

    redelivered = await rig.commands.create_staff_task(practice, call_id=call_id, task=spec, note="Caller asked; see call.")
    assert redelivered == result
    same_call = await rig.client.search(practice, Task, {"identifier": f"{CALL_REFERENCE_SYSTEM}|{call_id}"})
    assert [t.id for t in same_call.matches] == [result.resource_id]


async def test_a_violated_agreement_medication_visit_queues_the_provider_and_the_clinical_task(
    rig: Rig, ema_practices: EmaPracticeSet, ema_world: SandboxWorld
) -> None:
    practice = ema_practices.practice("pain-1001")
    tenant = ema_world.tenants["pain-1001"]
    patient = plain_patients(ema_world, "pain-1001")[-1]
    chart_flag(ema_world, "pain-1001", patient, "chronic-opioid",
               extension=[{"url": EXT_LAST_REFILL_DATE, "valueDate": "2026-01-05"}])
    chart_flag(ema_world, "pain-1001", patient, "opioid-agreement", **agreement("violated", "2026-09-01"))
    call_id = "call-ema-escalate"
    request = IntentRequest(intent=Intent.BOOK_APPOINTMENT, visit_reason=VisitReason.MEDICATION_MANAGEMENT)

    created = await turn(rig, practice, ema_world, call_id, patient, request)
    assert len(set(created)) == 2  # neither task answered with the other's id
    queued = (await rig.client.search(practice, Task, {"identifier": f"{CALL_REFERENCE_SYSTEM}|{call_id}"})).matches
    by_kind = {task.code.coding[0].code: task for task in queued}
    assert set(by_kind) == {"provider-review", "clinical-review"} and {t.id for t in queued} == set(created)
    provider, nurse = by_kind["provider-review"], by_kind["clinical-review"]
    assert tenant.profile.staff_member(provider.owner.reference.removeprefix("Practitioner/")).role == "interventionalist"
    assert tenant.profile.staff_member(nurse.owner.reference.removeprefix("Practitioner/")).role == "nurse"
    assert provider.note[0].text.endswith(f"{TASK_KEY_LINE}{call_id}:PROVIDER_CONTROLLED_SUBSTANCE_REVIEW:"
                                          f"CONTROLLED_SUBSTANCE_VISIT:{patient}")

    assert await turn(rig, practice, ema_world, call_id, patient, request) == created  # a redelivered turn
    again = await rig.client.search(practice, Task, {"identifier": f"{CALL_REFERENCE_SYSTEM}|{call_id}"})
    assert sorted(t.id for t in again.matches) == sorted(created)


async def test_a_nurse_task_of_an_earlier_turn_never_swallows_a_later_escalation(
    rig: Rig, ema_practices: EmaPracticeSet, ema_world: SandboxWorld
) -> None:
    practice = ema_practices.practice("pain-1001")
    patient = plain_patients(ema_world, "pain-1001")[-2]
    chart_flag(ema_world, "pain-1001", patient, "chronic-opioid")
    chart_flag(ema_world, "pain-1001", patient, "opioid-agreement", **agreement("violated", "2026-09-01"))
    call_id = "call-ema-turns"
    booking = IntentRequest(intent=Intent.BOOK_APPOINTMENT, visit_reason=VisitReason.AGREEMENT_REVIEW)
    (nurse_task,) = await turn(rig, practice, ema_world, call_id, patient, booking)  # turn 1: clinical team only
    medication = IntentRequest(intent=Intent.BOOK_APPOINTMENT, visit_reason=VisitReason.MEDICATION_MANAGEMENT)
    provider_task, same_nurse_task = await turn(rig, practice, ema_world, call_id, patient, medication)
    (results_task,) = await turn(rig, practice, ema_world, call_id, patient, IntentRequest(intent=Intent.RESULTS_REQUEST))
    assert same_nurse_task == nurse_task  # the same TaskSpec decided again: the same task
    assert len({nurse_task, provider_task, results_task}) == 3  # a later task of the same queue kind is its own task
    queued = (await rig.client.search(practice, Task, {"identifier": f"{CALL_REFERENCE_SYSTEM}|{call_id}"})).matches
    assert sorted((t.code.coding[0].code, t.id) for t in queued) == sorted(
        [("clinical-review", nurse_task), ("provider-review", provider_task), ("clinical-review", results_task)])


async def test_ema_and_fhir_agree_on_a_chart_with_several_flags_of_a_kind(
    rig: Rig, ema_practices: EmaPracticeSet, ema_world: SandboxWorld
) -> None:
    practice = ema_practices.practice("pain-1001")
    patient = plain_patients(ema_world, "pain-1001")[-3]
    for refill in ("2026-01-05", "2026-02-11"):
        chart_flag(ema_world, "pain-1001", patient, "chronic-opioid",
                   extension=[{"url": EXT_LAST_REFILL_DATE, "valueDate": refill}])
    chart_flag(ema_world, "pain-1001", patient, "opioid-agreement", **agreement("active", "2027-01-01"))
    chart_flag(ema_world, "pain-1001", patient, "opioid-agreement", **agreement("expired", "2026-06-01"))
    for restriction in ("no-scheduling", "no-refill-requests"):
        chart_flag(ema_world, "pain-1001", patient, "phone-request-restriction",
                   extension=[{"url": EXT_RESTRICTION, "valueCode": restriction}])
    from_screens = await rig.commands.read_compliance(practice, patient)
    over_fhir = await ModMedConnector(rig.client, InMemoryLedger()).read_compliance_flags(practice, patient)
    assert from_screens == over_fhir
    assert from_screens.phone_restrictions == {PhoneRestriction.NO_SCHEDULING, PhoneRestriction.NO_REFILL_REQUESTS}
    assert from_screens.agreement_status is AgreementStatus.EXPIRED  # the most severe, not the first on file
    assert (from_screens.agreement_renewal_due, from_screens.last_refill_date) == (dt.date(2027, 1, 1), dt.date(2026, 2, 11))


async def test_a_pinned_assignee_receives_the_audience_tasks(
    rig: Rig, ema_practices: EmaPracticeSet, ema_world: SandboxWorld
) -> None:
    practice = ema_practices.practice("pain-1001")
    patient = plain_patients(ema_world, "pain-1001")[3]
    pinned = EmaCommands(
        rig.sessions, FhirEmaDirectory(rig.client), task_assignees={"pain-1001": {TaskAudience.PROVIDER: "prac-1001-04"}}
    )
    spec = TaskSpec(kind=TaskKind.PROVIDER_REFILL_REVIEW, audience=TaskAudience.PROVIDER,
                    reason=TaskReason.REFILL_REQUESTED, call_id="call-ema-pinned", practice_id="pain-1001", patient_id=patient)
    result = await pinned.create_staff_task(practice, call_id="call-ema-pinned", task=spec, note="Refill request.")
    task = await rig.client.read(practice, Task, result.resource_id)
    assert task.owner.reference == "Practitioner/prac-1001-04"
    elsewhere = EmaCommands(
        rig.sessions, FhirEmaDirectory(rig.client), task_assignees={"pain-1001": {TaskAudience.PROVIDER: "prac-9999-01"}}
    )
    other = spec.model_copy(update={"call_id": "call-ema-pinned-2"})
    with pytest.raises(EmaScreenError, match="pinned provider assignee"):
        await elsewhere.create_staff_task(practice, call_id="call-ema-pinned-2", task=other, note="Refill request.")


def _spec(**changes: object) -> TaskSpec:
    base = {"kind": TaskKind.FRONT_DESK_MESSAGE, "audience": TaskAudience.FRONT_DESK, "reason": TaskReason.GENERAL_MESSAGE,
            "call_id": "call-ema-refuse", "practice_id": "pain-1001", "patient_id": "pt-1001-000001"}
    return TaskSpec.model_validate({**base, **changes})


@pytest.mark.parametrize(
    ("call_id", "task", "note", "error", "message"),
    [
        ("call-ema-refuse", {"kind": "FRONT_DESK_MESSAGE"}, "hi", EmaInvalidCommand, "guard's TaskSpec"),
        ("call-ema-refuse", _spec(practice_id="pain-1002"), "hi", EmaInvalidCommand, "another practice or call"),
        ("call-other", _spec(), "hi", EmaInvalidCommand, "another practice or call"),
        ("call-ema-refuse", _spec(patient_id=None), "hi", EmaInvalidCommand, "patient's chart id"),
        ("call-ema-refuse", _spec(), "bell\x07", EmaInvalidCommand, "control characters"),
        ("call-ema-refuse", _spec(), "x" * 2001, EmaInvalidCommand, "2000 characters"),
        ("c" * 101, _spec(call_id="c" * 101), "hi", EmaInvalidCommand, "call reference"),
    ],
)
async def test_staff_task_refuses_what_the_guard_did_not_decide(
    rig: Rig, ema_practices: EmaPracticeSet, screen_log: ScreenLog,
    call_id: str, task: object, note: str, error: type[Exception], message: str,
) -> None:
    practice = ema_practices.practice("pain-1001")
    before = screen_log.screens("pain-1001")
    with pytest.raises(error, match=message):
        await rig.commands.create_staff_task(practice, call_id=call_id, task=task, note=note)  # type: ignore[arg-type]
    assert screen_log.screens("pain-1001") == before


async def test_staff_task_is_refused_in_the_read_only_phase(rig: Rig, ema_practices: EmaPracticeSet) -> None:
    practice = ema_practices.practice("pain-1001", phase="read_only")
    with pytest.raises(WriteNotAllowed):
        await rig.commands.create_staff_task(practice, call_id="call-ema-refuse", task=_spec(), note="hi")


@pytest.mark.parametrize("practice_id", ["pain-1001", "pain-1002"])
async def test_compliance_read_from_screens_matches_fhir_flags(
    rig: Rig, ema_practices: EmaPracticeSet, ema_world: SandboxWorld, practice_id: str
) -> None:
    practice = ema_practices.practice(practice_id)
    connector = ModMedConnector(rig.client, InMemoryLedger())
    charts = distinct_charts(ema_world, practice_id)
    assert len(charts) >= 5
    for patient in charts:
        from_screens = await rig.commands.read_compliance(practice, patient)
        assert from_screens == await connector.read_compliance_flags(practice, patient)


async def test_certified_practice_compliance_comes_from_screens_only(
    rig: Rig, ema_practices: EmaPracticeSet, ema_world: SandboxWorld
) -> None:
    practice = ema_practices.practice("pain-1003")
    tenant = ema_world.tenants["pain-1003"]
    charts = distinct_charts(ema_world, "pain-1003")
    with pytest.raises(CapabilityMissing):
        await ModMedConnector(rig.client, InMemoryLedger()).read_compliance_flags(practice, charts[0])
    for patient in charts:
        expected = compliance_flags(
            "pain-1003", patient, tenant.store.for_patient("Flag", patient), pdmp_checks(tenant, patient)
        )
        assert await rig.commands.read_compliance(practice, patient) == expected


async def test_pdmp_content_and_phi_never_leave_the_screens(
    rig: Rig, ema_practices: EmaPracticeSet, ema_world: SandboxWorld, caplog: pytest.LogCaptureFixture
) -> None:
    practice = ema_practices.practice("pain-1001")
    tenant = ema_world.tenants["pain-1001"]
    patient = patients_where(ema_world, "pain-1001", lambda t, pid: bool(pdmp_checks(t, pid)))[0]
    report = pdmp_checks(tenant, patient)[0]["note"][0]["text"]
    assert report.startswith("SYNTHETIC")
    caplog.set_level(logging.DEBUG)

    flags = await rig.commands.read_compliance(practice, patient)
    spec = _spec(call_id="call-ema-phi", patient_id=patient)
    await rig.commands.create_staff_task(practice, call_id="call-ema-phi", task=spec, note="Callback requested.")
    with pytest.raises(EmaNotFoundError):
        await rig.commands.read_compliance(practice, "pt-1001-999999")

    assert flags.pdmp_last_checked is not None
    for carrier in (flags.model_dump_json(), repr(flags), caplog.text):
        assert "SYNTHETIC" not in carrier and report not in carrier
    for phi in phi_of(ema_world, "pain-1001", patient):
        assert phi not in caplog.text
    assert "pt-1001-999999" not in caplog.text  # log lines carry practice, step, error class, evidence name


async def test_a_failed_step_leaves_restricted_evidence_for_operators(
    rig: Rig, ema_practices: EmaPracticeSet, caplog: pytest.LogCaptureFixture
) -> None:
    practice = ema_practices.practice("pain-1001")
    caplog.set_level(logging.WARNING, logger="connectors.ema.keeper")
    with pytest.raises(EmaNotFoundError) as failure:
        await rig.commands.read_compliance(practice, "pt-1001-888888")
    error = failure.value
    assert error.step == "read_chart" and error.evidence is not None
    assert "pt-1001-888888" not in str(error) and "[EMA step read_chart]" in str(error)
    assert rig.sessions.evidence.names("pain-1001")[-1] == error.evidence
    folder = rig.data_dir / "ema-evidence" / "pain-1001"
    screenshot, record = folder / f"{error.evidence}.png", folder / f"{error.evidence}.json"
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    details = json.loads(record.read_text())
    assert details["step"] == "read_chart" and details["error_class"] == "EmaNotFoundError"
    assert details["url"] == f"{practice.ema_url}/chart/pt-1001-888888"
    assert dt.datetime.fromisoformat(details["captured_at"]).tzinfo is not None
    assert (folder.stat().st_mode & 0o777, (rig.data_dir / "ema-evidence").stat().st_mode & 0o777) == (0o700, 0o700)
    assert {screenshot.stat().st_mode & 0o777, record.stat().st_mode & 0o777} == {0o600}
    assert error.evidence in caplog.text and "step read_chart" in caplog.text


def test_the_ema_layer_has_no_prescription_path() -> None:
    public = {name for name, _ in inspect.getmembers(EmaCommands, inspect.isfunction) if not name.startswith("_")}
    assert public == {"search_template_slots", "book_template", "create_staff_task", "read_compliance"}
    words = ("medic", "prescri", "rx", "refill", "pharm")
    assert not [s for s in Screen if any(w in s.value for w in words)]
    assert Screen.PDMP.value.endswith("/pdmp")  # opened for reading; no method submits its attestation form
