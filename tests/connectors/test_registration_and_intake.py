"""A new patient's Patient and Coverage, and a completed intake form as a DocumentReference, over real HTTP
against the sandbox, through the connector's allow-list and ledger."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
import pytest
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.patient import Patient

from callstream.tenants import IntakeConfig, Practice
from connectors.errors import ConflictError, InvalidRequestError
from connectors.fhir import ModMedClient
from connectors.intake import parse_completions, record_completion, sync_practice
from connectors.ledger import InMemoryLedger
from callstream.messaging import intake_reference
from connectors.operations import ModMedConnector
from connectors.vocabulary import EXT_PREFERRED_PHARMACY
from guards.model import VisitReason
from schemas.models import InsuranceDetails, NewPatientDetails
from tests.fixtures.sandbox import SandboxServer

TODAY = dt.date.today()
DETAILS = NewPatientDetails.model_validate({
    "gender": "male", "address": {"line": "9 Birch Rd", "city": "Round Rock", "state": "TX", "postal_code": "78664"},
    "insurance": {"payer_name": "Blue Cross", "member_id": "XYZ123456", "group_number": "G-1", "relationship": "self"},
    "preferred_pharmacy": {"name": "CVS on Palm Valley", "phone": "+15125550190"},
})


async def _register(connector: ModMedConnector, practice: Practice, call_id: str, family: str) -> Patient:
    return await connector.register_patient(practice, call_id=call_id, family=family, given="Theo",
                                            birthdate=dt.date(1985, 7, 14), details=DETAILS, phone="+15125550143",
                                            email="theo@example.org")


async def test_register_once_per_call_with_coverage_and_no_duplicate_chart(
    client: ModMedClient, main_practice: Practice
) -> None:
    connector = ModMedConnector(client, InMemoryLedger())
    call_id, family = f"call-{uuid.uuid4().hex[:10]}", f"Newman{uuid.uuid4().hex[:6]}"
    patient = await _register(connector, main_practice, call_id, family)
    assert patient.id and patient.gender == "male" and patient.address[0].postalCode == "78664"
    assert any(i.system.endswith("/mrn") for i in patient.identifier)  # assigned by the practice
    pharmacy = next(e for e in patient.extension if e.url == EXT_PREFERRED_PHARMACY)
    assert pharmacy.extension[0].valueString == "CVS on Palm Valley"
    assert (await _register(connector, main_practice, call_id, family)).id == patient.id  # a redelivery
    # A fresh worker (empty ledger) finds the chart by the call's key instead of creating another.
    assert (await _register(ModMedConnector(client, InMemoryLedger()), main_practice, call_id, family)).id == patient.id
    with pytest.raises(ConflictError):  # another call for the same person: ModMed refuses the duplicate
        await _register(connector, main_practice, f"call-{uuid.uuid4().hex[:10]}", family)
    found = await client.search(main_practice, Patient, {"family": family, "birthdate": "1985-07-14"})
    assert [p.id for p in found.matches] == [patient.id]

    insurance: InsuranceDetails = DETAILS.insurance  # type: ignore[assignment]
    coverage = await connector.create_coverage(main_practice, call_id=call_id, patient_id=patient.id, insurance=insurance)
    again = await ModMedConnector(client, InMemoryLedger()).create_coverage(
        main_practice, call_id=call_id, patient_id=patient.id, insurance=insurance)
    assert again.id == coverage.id and coverage.subscriberId == "XYZ123456"
    listed = await client.search(main_practice, Coverage, {"patient": patient.id})
    assert [c.id for c in listed.matches] == [coverage.id]


async def test_a_completed_intake_form_lands_once_on_the_right_chart(
    client: ModMedClient, main_practice: Practice, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INTAKE_TEST_SECRET", "intake-secret")
    practice = main_practice.model_copy(update={"intake": IntakeConfig.model_validate({
        "forms": {"follow-up": "https://forms.example/f"}, "link_secret_ref": "env:INTAKE_TEST_SECRET",
        "email": {"smtp_host": "127.0.0.1", "security": "none", "from_address": "desk@pain.example"}})})
    connector = ModMedConnector(client, InMemoryLedger())
    call_id = f"call-{uuid.uuid4().hex[:10]}"
    patient = await _register(connector, practice, call_id, f"Formfill{uuid.uuid4().hex[:6]}")
    offers = await connector.search_slots(practice, visit_reason=VisitReason.FOLLOW_UP,
                                          date_from=TODAY + dt.timedelta(days=5), date_to=TODAY + dt.timedelta(days=25))
    appointment = await connector.book_appointment(practice, call_id=call_id, patient_id=patient.id,
                                                   slot_id=offers[-1].slot_id)
    reference = intake_reference("intake-secret", practice.practice_id, appointment.id)
    service = f"{sandbox.base_url}/_intake/{practice.practice_id}/completions"
    async with httpx.AsyncClient() as http:
        assert (await http.post(service, json={"ref": reference, "form": "new-patient"})).status_code == 201
        forged = "appt-9." + reference.split(".", 1)[1]
        assert (await http.post(service, json={"ref": forged, "form": "new-patient"})).status_code == 201
        assert (await http.post(service, json={"ref": "x\ny", "form": "new-patient"})).status_code == 422
        listing = (await http.get(service, params={"after": 0})).json()
    completions, malformed = parse_completions({"completions": [*listing["completions"], {"seq": "nope"}]})
    assert malformed == 1
    mine = [c for c in completions if c.ref == reference]
    recorded = await record_completion(connector, practice, mine[0])
    assert recorded.patient_id == patient.id and recorded.appointment_id == appointment.id
    document = recorded.document
    assert document.subject.reference == f"Patient/{patient.id}"
    assert document.content[0].attachment.url == mine[0].document_url
    assert (await record_completion(ModMedConnector(client, InMemoryLedger()), practice, mine[0])).document.id == document.id
    with pytest.raises(InvalidRequestError):
        await record_completion(connector, practice, next(c for c in completions if c.ref == forged))

    # The sync pass: files what it can, refuses the forged one for good, audits each, and moves the cursor past both.
    listed = practice.model_copy(update={"intake": practice.intake.model_copy(update={"completions_url": service})})
    async with httpx.AsyncClient() as http:
        report = await sync_practice(connector, http, listed, mine[0].seq - 1, dt.datetime.now(dt.UTC))
    assert report.recorded >= 1 and report.refused >= 1 and report.failed == 0
    assert report.next_after == max(c.seq for c in completions)
    outcomes = {event.detail["seq"]: (event.outcome.value, event.error_class) for event in report.audits}
    assert outcomes[str(mine[0].seq)] == ("SUCCESS", None)
    forged_seq = next(c.seq for c in completions if c.ref == forged)
    assert outcomes[str(forged_seq)] == ("FAILURE", "InvalidRequestError")
    assert all(reference not in str(event.detail) for event in report.audits)
