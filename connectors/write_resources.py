"""The FHIR resources callstream writes to ModMed, built from an operation's checked arguments.

One place for what each write looks like at the practice: the idempotency-key identifier every write
carries (the "did it land?" checks find it again), the call reference, the codings staff and ModMed
filter on, and the limits on free text. Pure functions: the operations (connectors.operations) check
arguments, read what a write depends on and send the result.
"""

from __future__ import annotations

import datetime as dt

from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.task import Task

from callstream.references import clean_reference
from connectors.slot_offers import SlotOffer
from connectors.vocabulary import (
    CALL_REFERENCE_SYSTEM,
    COVERAGE_CLASS_SYSTEM,
    EXT_PREFERRED_PHARMACY,
    IDEMPOTENCY_KEY_SYSTEM,
    IDENTIFIER_TYPE_SYSTEM,
    SUBSCRIBER_RELATIONSHIP_SYSTEM,
    TASK_KIND_SYSTEM,
    VISIT_REASON_SYSTEM,
)
from schemas.models import InsuranceDetails, NewPatientDetails

TRANSCRIPT_INPUT = "transcript-reference"
"""Task.input type text of the call's transcript reference (where the telephony side keeps the transcript)."""


def new_appointment(key: str, call_id: str, patient_id: str, offer: SlotOffer) -> Appointment:
    """The booking of ``offer``: visit reason, duration, provider and room all come from the slot."""
    return Appointment.model_validate(
        {
            "resourceType": "Appointment",
            "status": "booked",
            "identifier": [
                {"system": IDEMPOTENCY_KEY_SYSTEM, "value": key},
                {"system": CALL_REFERENCE_SYSTEM, "value": call_id},
            ],
            "appointmentType": {"coding": [{"system": VISIT_REASON_SYSTEM, "code": offer.visit_reason.value}]},
            "serviceType": [{"coding": [{"system": VISIT_REASON_SYSTEM, "code": offer.visit_reason.value}]}],
            "slot": [{"reference": f"Slot/{offer.slot_id}"}],
            "start": offer.start.isoformat(),
            "end": offer.end.isoformat(),
            "minutesDuration": offer.minutes,
            "participant": [
                {"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"},
                {"actor": {"reference": f"Practitioner/{offer.practitioner_id}"}, "status": "accepted"},
                {"actor": {"reference": f"Location/{offer.location_id}"}, "status": "accepted"},
            ],
        }
    )


def moved_appointment(current: Appointment, offer: SlotOffer) -> Appointment:
    """``current`` moved to ``offer``'s slot, provider and room; its patient and everything else kept."""
    body = current.model_dump(mode="json", exclude_none=True)
    patients = [p for p in body["participant"] if str(p.get("actor", {}).get("reference", "")).startswith("Patient/")]
    body.update(
        slot=[{"reference": f"Slot/{offer.slot_id}"}],
        start=offer.start.isoformat(),
        end=offer.end.isoformat(),
        minutesDuration=offer.minutes,
        participant=[
            *patients,
            {"actor": {"reference": f"Practitioner/{offer.practitioner_id}"}, "status": "accepted"},
            {"actor": {"reference": f"Location/{offer.location_id}"}, "status": "accepted"},
        ],
    )
    return Appointment.model_validate(body)


def cancelled_appointment(current: Appointment, reason: str) -> Appointment:
    body = current.model_dump(mode="json", exclude_none=True)
    body.update(status="cancelled", cancelationReason={"text": reason[:200]})
    return Appointment.model_validate(body)


def new_task(
    key: str,
    call_id: str,
    patient_id: str,
    task_code: str,
    description: str,
    owner_id: str | None,
    pdmp_last_checked: dt.datetime | None,
    transcript_ref: str | None,
) -> Task:
    """A routine task for the practice's queue; the transcript reference is scrubbed, or left out if refused."""
    body: dict[str, object] = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "priority": "routine",
        "identifier": [
            {"system": IDEMPOTENCY_KEY_SYSTEM, "value": key},
            {"system": CALL_REFERENCE_SYSTEM, "value": call_id},
        ],
        "code": {"coding": [{"system": TASK_KIND_SYSTEM, "code": task_code}]},
        "description": description[:1000],
        "for": {"reference": f"Patient/{patient_id}"},
        "authoredOn": dt.datetime.now(dt.UTC).isoformat(),
    }
    if owner_id is not None:
        body["owner"] = {"reference": f"Practitioner/{owner_id}"}
    inputs: list[dict[str, object]] = []
    if pdmp_last_checked is not None:
        inputs.append({"type": {"text": "pdmp-last-checked"}, "valueDateTime": pdmp_last_checked.isoformat()})
    transcript = clean_reference(transcript_ref) if transcript_ref else None
    if transcript is not None:
        inputs.append({"type": {"text": TRANSCRIPT_INPUT}, "valueString": transcript})
        line = f" Transcript reference: {transcript}"
        body["description"] = description[: 1000 - len(line)] + line if len(line) < 1000 else description[:1000]
    if inputs:
        body["input"] = inputs
    return Task.model_validate(body)


def new_document_reference(key: str, patient_id: str, title: str, url: str, content_type: str) -> DocumentReference:
    """Intake results for the chart; the key is the master identifier (ModMed has no identifier search here)."""
    return DocumentReference.model_validate(
        {
            "resourceType": "DocumentReference",
            "masterIdentifier": {"system": IDEMPOTENCY_KEY_SYSTEM, "value": key},
            "status": "current",
            "type": {"text": "Intake form results"},
            "category": [{"text": "intake"}],
            "subject": {"reference": f"Patient/{patient_id}"},
            "date": dt.datetime.now(dt.UTC).isoformat(),
            "content": [{"attachment": {"contentType": content_type, "url": url, "title": title[:200]}}],
        }
    )


def new_patient(
    key: str,
    call_id: str,
    family: str,
    given: str,
    birthdate: dt.date,
    details: NewPatientDetails,
    phone: str | None,
    email: str | None,
) -> Patient:
    """A new caller's chart; ModMed assigns the MRN."""
    address = details.address
    telecom = [{"system": "phone", "value": phone, "use": "mobile"}] if phone else []
    if email:
        telecom.append({"system": "email", "value": email, "use": "home"})
    body: dict[str, object] = {
        "resourceType": "Patient",
        "active": True,
        "identifier": [
            {"system": IDEMPOTENCY_KEY_SYSTEM, "value": key},
            {"system": CALL_REFERENCE_SYSTEM, "value": call_id},
        ],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": details.gender,
        "birthDate": birthdate.isoformat(),
        "address": [{"use": "home", "type": "both", "line": [address.line], "city": address.city,
                     "state": address.state, "postalCode": address.postal_code, "country": "US"}],
    }
    if telecom:
        body["telecom"] = telecom
    if details.preferred_pharmacy is not None:
        pharmacy = [{"url": "name", "valueString": details.preferred_pharmacy.name}]
        if details.preferred_pharmacy.phone:
            pharmacy.append({"url": "phone", "valueString": details.preferred_pharmacy.phone})
        body["extension"] = [{"url": EXT_PREFERRED_PHARMACY, "extension": pharmacy}]
    return Patient.model_validate(body)


def new_coverage(key: str, patient_id: str, insurance: InsuranceDetails) -> Coverage:
    """The insurance card as a Coverage; the patient is its subscriber only when the relationship is self."""
    body: dict[str, object] = {
        "resourceType": "Coverage",
        "status": "active",
        "identifier": [
            {"system": IDEMPOTENCY_KEY_SYSTEM, "value": key},
            {"type": {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": "MB"}]}, "value": insurance.member_id},
        ],
        "subscriberId": insurance.member_id,
        "beneficiary": {"reference": f"Patient/{patient_id}"},
        "relationship": {"coding": [{"system": SUBSCRIBER_RELATIONSHIP_SYSTEM, "code": insurance.relationship}]},
        "payor": [{"display": insurance.payer_name}],
    }
    if insurance.relationship == "self":
        body["subscriber"] = {"reference": f"Patient/{patient_id}"}
    if insurance.group_number:
        body["class"] = [{"type": {"coding": [{"system": COVERAGE_CLASS_SYSTEM, "code": "group"}]},
                          "value": insurance.group_number}]
    return Coverage.model_validate(body)
