"""A new patient's call through the real broker, worker and sandbox: no chart matches, the caller's details
register a Patient and a Coverage, the new-patient consult is booked, the confirmation with the practice's intake
link reaches the caller by SMS (local receiver), and the completed form lands on the new chart as a
DocumentReference."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.patient import Patient

from callstream.messaging import verified_appointment
from callstream.tenants import TenantDirectory
from connectors.fhir import ModMedClient
from connectors.vocabulary import CALL_REFERENCE_SYSTEM
from guards.replies import INTERIM_TEMPLATES, ReplyTemplate
from schemas.models import AuditAction, AuditOutcome
from devkit.cast import PracticeCast, Script
from devkit.telephony import Telephony
from tests.fixtures.pipeline import E2E_INTAKE_FORM, E2E_INTAKE_LINK_SECRET, TopicReader, WorkerProcess
from tests.fixtures.receivers import shared_sms_receiver
from tests.fixtures.sandbox import SandboxServer

pytestmark = pytest.mark.broker
CALLER_PHONE = "+15125550187"


async def test_new_patient_is_registered_booked_and_gets_the_intake_link_by_sms(
    telephony: Telephony, audit: TopicReader, pipeline_broker: str, modmed: ModMedClient, sandbox: SandboxServer,
    pipeline_cast: dict[str, PracticeCast], pipeline_tenants: tuple[Path, TenantDirectory],
    pipeline_worker: WorkerProcess,
) -> None:
    practice = pipeline_tenants[1]["pain-1002"]
    family = f"Newpatient{uuid.uuid4().hex[:6]}"
    identity = {"type": "caller_identified", "family_name": family, "given_name": "Imogen", "birth_date": "1983-09-21"}
    script = Script(pipeline_cast["pain-1002"].called_number, caller_number=CALLER_PHONE).started()
    script.add(identity)
    script.intent("BOOK_APPOINTMENT", visit_reason="new-patient-consult").chooses("OFFERED.1")
    script.add({**identity, "contact_channel": "sms", "registration": {  # asked for by ASK_NEW_PATIENT_DETAILS
        "gender": "female", "address": {"line": "77 Lamar Blvd", "city": "Austin", "state": "TX", "postal_code": "78703"},
        "insurance": {"payer_name": "UnitedHealthcare", "member_id": "UHC4455667"},
        "preferred_pharmacy": {"name": "H-E-B Pharmacy Lamar"}}})
    script.ended()
    sms = shared_sms_receiver()
    before = len(sms.received)
    report = await asyncio.to_thread(telephony.replay, [script.events])
    answers = [r for r in report.answers(script.call_id) if ReplyTemplate(r.template) not in INTERIM_TEMPLATES]
    assert [r.template for r in answers] == ["OFFER_SLOTS", "ASK_NEW_PATIENT_DETAILS", "BOOKING_CONFIRMED_INTAKE_SENT"]

    [patient] = (await modmed.search(practice, Patient, {"family": family, "birthdate": "1983-09-21"})).matches
    assert patient.gender == "female" and patient.address[0].city == "Austin"
    [coverage] = (await modmed.search(practice, Coverage, {"patient": patient.id})).matches
    assert coverage.subscriberId == "UHC4455667"
    booked = (await modmed.search(practice, Appointment, {"patient": patient.id})).matches
    [appointment] = [a for a in booked if any(i.system == CALL_REFERENCE_SYSTEM and i.value == script.call_id
                                               for i in a.identifier or ())]
    assert appointment.appointmentType.coding[0].code == "new-patient-consult"

    [message] = sms.received[before:]
    assert message["to"] == CALLER_PHONE and message["body"].startswith("Pain 1002 Spine: your new patient")
    link = message["body"].rsplit(" ", 1)[-1]
    assert link.startswith(f"{E2E_INTAKE_FORM}?ref=")
    reference = link.split("ref=", 1)[1]
    assert verified_appointment(E2E_INTAKE_LINK_SECRET, "pain-1002", reference) == appointment.id

    records = audit.wait_for(lambda rs: any(r.call_id == script.call_id and r.state_to == "ended" for r in rs))
    mine = [r for r in records if r.call_id == script.call_id]
    writes = [(r.resource_type, r.outcome) for r in mine if r.action is AuditAction.FHIR_WRITE]
    assert writes == [("Patient", AuditOutcome.SUCCESS), ("Coverage", AuditOutcome.SUCCESS),
                      ("Appointment", AuditOutcome.SUCCESS)]
    [sent] = [r for r in mine if r.action is AuditAction.PATIENT_MESSAGE]
    assert sent.outcome is AuditOutcome.SUCCESS and sent.detail["channel"] == "sms"
    assert CALLER_PHONE not in str(sent.detail) and "Lamar" not in str(sent.detail)

    # The patient completes the form; the intake service lists it; `callstream intake sync` files it on the new
    # chart through the allow-list and audits the write.
    service = f"{sandbox.base_url}/_intake/pain-1002/completions"
    async with httpx.AsyncClient() as http:
        assert (await http.post(service, json={"ref": reference, "form": "new-patient"})).status_code == 201
    sync = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "callstream.cli", "intake", "sync", "--practice", "pain-1002",
                         "--tenants", str(pipeline_tenants[0]), "-b", pipeline_broker],
        capture_output=True, text=True, timeout=120)
    assert sync.returncode == 0, sync.stderr[-2000:]
    summary = json.loads(sync.stdout.strip().splitlines()[-1])
    assert summary["practice_id"] == "pain-1002" and summary["recorded"] >= 1 and summary["failed"] == 0
    [document] = (await modmed.search(practice, DocumentReference, {"patient": patient.id})).matches
    assert document.content[0].attachment.url.startswith("https://intake.sandbox.callstream.dev/pain-1002/")
    records = audit.wait_for(lambda rs: any(r.resource_type == "DocumentReference" and document.id in r.resource_ids
                                             for r in rs))
    [write] = [r for r in records if r.resource_type == "DocumentReference" and document.id in r.resource_ids]
    assert write.action is AuditAction.FHIR_WRITE and write.outcome is AuditOutcome.SUCCESS
    assert write.detail["appointment_id"] == appointment.id
    assert reference not in sync.stdout + sync.stderr and family not in sync.stdout + sync.stderr

    log = pipeline_worker.log_text()
    for phi in (family, CALLER_PHONE, "77 Lamar Blvd", "UHC4455667", reference):
        assert phi not in log, "PHI reached the worker log"
