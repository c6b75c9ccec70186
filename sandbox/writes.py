"""Write rules of the proprietary FHIR API, enforced like ModMed does.

Each write body is validated twice: first as a FHIR R4B resource (fhir.resources models),
then against the tenant's own data (references must name this practice's resources, an
Appointment must hold a free slot of its visit reason, ...). Structural problems are 422
with an OperationOutcome, a taken slot is 409, a stale If-Match is 412.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from functools import lru_cache

from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel, ValidationError

from sandbox.errors import FhirError, validation_issues
from sandbox.generator import appointment_resource, mrn_system
from sandbox.scheduling import SlotInfo
from sandbox.store import fhir_instant, patient_ids_of, reference_id
from sandbox.vocabulary import OCCUPYING_APPOINTMENT_STATUSES, VISIT_REASON_SYSTEM, VISIT_REASONS
from sandbox.world import Tenant



@lru_cache(maxsize=64)
def fhir_model(resource_type: str) -> type[BaseModel]:
    return get_fhir_model_class(resource_type)


def validate_resource(resource_type: str, body: object) -> dict:
    """R4B validation of a client body; returns the normalised JSON form the store keeps."""
    if not isinstance(body, dict):
        raise FhirError(400, "the request body must be a JSON object")
    if body.get("resourceType") != resource_type:
        raise FhirError(400, f"resourceType must be {resource_type}")
    try:
        model = fhir_model(resource_type).model_validate(body)
    except ValidationError as error:
        raise FhirError(
            422, f"{resource_type} failed FHIR R4B validation",
            issues=validation_issues(resource_type, error.errors(include_input=False)),
        ) from error
    except (ValueError, TypeError) as error:
        raise FhirError(422, f"{resource_type} failed FHIR R4B validation") from error
    return json.loads(model.model_dump_json())


def _require_reference(tenant: Tenant, reference: object, resource_type: str, element: str) -> str:
    ref = reference.get("reference") if isinstance(reference, dict) else None
    rid = reference_id(ref, resource_type)
    if rid is None:
        raise FhirError(422, f"{element} must reference a {resource_type}")
    if not tenant.store.exists(resource_type, rid):
        raise FhirError(422, f"{element} references an unknown {resource_type}")
    return rid


def _check_version(current: dict, if_match: str | None) -> None:
    if if_match is None:
        return
    expected = if_match.strip().removeprefix("W/").strip('"')
    if expected != current["meta"]["versionId"]:
        raise FhirError(412, "If-Match does not name the current version")


PARTICIPANT_STATUSES = frozenset({"accepted", "declined", "tentative", "needs-action"})
"""FHIR's required binding, which the R4B models do not enforce on their own."""


# --- Appointment ----------------------------------------------------------------------------

def _participants(tenant: Tenant, appointment: dict) -> dict[str, str]:
    found: dict[str, str] = {}
    for participant in appointment.get("participant") or []:
        if participant.get("status") not in PARTICIPANT_STATUSES:
            raise FhirError(422, "Appointment.participant.status must be accepted, declined, tentative or needs-action")
        reference = (participant.get("actor") or {}).get("reference", "")
        for kind in ("Patient", "Practitioner", "Location"):
            if reference_id(reference, kind):
                if kind in found:
                    raise FhirError(422, f"Appointment has more than one {kind} participant")
                found[kind] = _require_reference(tenant, participant["actor"], kind, f"Appointment.participant({kind})")
    missing = [kind for kind in ("Patient", "Practitioner", "Location") if kind not in found]
    if missing:
        raise FhirError(422, f"Appointment needs Patient, Practitioner and Location participants; missing {missing}")
    return found


def _visit_reason(appointment: dict) -> str:
    codes = [
        c.get("code") for c in (appointment.get("appointmentType") or {}).get("coding") or []
        if c.get("system") == VISIT_REASON_SYSTEM
    ]
    if len(codes) != 1 or codes[0] not in VISIT_REASONS:
        raise FhirError(422, f"Appointment.appointmentType needs one visit-reason coding ({VISIT_REASON_SYSTEM})")
    return str(codes[0])


def _slot_of(tenant: Tenant, appointment: dict) -> SlotInfo:
    slots = appointment.get("slot") or []
    if len(slots) != 1:
        raise FhirError(422, "Appointment.slot must reference exactly one Slot")
    slot_id = reference_id(slots[0].get("reference"), "Slot")
    slot = tenant.slots.slots.get(slot_id or "")
    if slot is None:
        raise FhirError(422, "Appointment.slot references an unknown Slot")
    if not slot.api_visible:
        raise FhirError(422, f"the {slot.visit_reason} template is bookable only through EMA, not the API")
    return slot


def _same_instant(text: object, moment: dt.datetime) -> bool:
    if not isinstance(text, str):
        return False
    try:
        return dt.datetime.fromisoformat(text) == moment
    except ValueError:
        return False


def _check_appointment_matches_slot(appointment: dict, slot: SlotInfo, participants: dict[str, str]) -> None:
    if _visit_reason(appointment) != slot.visit_reason:
        raise FhirError(422, "Appointment.appointmentType does not match the slot's visit reason")
    if participants["Practitioner"] != slot.practitioner_id or participants["Location"] != slot.location_id:
        raise FhirError(422, "Appointment participants must be the slot's practitioner and room")
    if not (_same_instant(appointment.get("start"), slot.start) and _same_instant(appointment.get("end"), slot.end)):
        raise FhirError(422, "Appointment.start and end must equal the slot's start and end")
    minutes = appointment.get("minutesDuration")
    if minutes is not None and minutes != int((slot.end - slot.start).total_seconds() // 60):
        raise FhirError(422, "Appointment.minutesDuration does not match the procedure template")


def _hold(tenant: Tenant, slot: SlotInfo, now: dt.datetime, appointment_id: str | None, check_timing: bool) -> None:
    if check_timing and (problem := tenant.slots.timing_problem(slot, now)):
        raise FhirError(422, f"the slot cannot be booked: {problem}")
    if conflict := tenant.slots.conflict(slot, ignore_appointment=appointment_id):
        raise FhirError(409, f"the slot is taken: {conflict}")


def create_appointment(tenant: Tenant, body: object, now: dt.datetime) -> dict:
    appointment = validate_resource("Appointment", body)
    if appointment.get("status") != "booked":
        raise FhirError(422, "a new Appointment must have status 'booked'")
    participants = _participants(tenant, appointment)
    with tenant.lock:
        slot = _slot_of(tenant, appointment)
        _check_appointment_matches_slot(appointment, slot, participants)
        _hold(tenant, slot, now, None, check_timing=True)
        appointment["id"] = tenant.store.next_id(tenant.id_prefix("appt"))
        appointment.setdefault("created", fhir_instant(now))
        appointment.pop("meta", None)
        stored = tenant.store.add(appointment, now)
        tenant.slots.book(appointment["id"], slot, now)
        return stored


def update_appointment(tenant: Tenant, appointment_id: str, body: object, now: dt.datetime, if_match: str | None) -> dict:
    appointment = validate_resource("Appointment", body)
    if appointment.get("id") != appointment_id:
        raise FhirError(400, "the body id must equal the id in the URL")
    with tenant.lock:
        current = tenant.store.get("Appointment", appointment_id)
        if current is None:
            raise FhirError(404, f"Appointment/{appointment_id} not found")
        _check_version(current, if_match)
        participants = _participants(tenant, appointment)
        if participants["Patient"] not in patient_ids_of(current):
            raise FhirError(422, "an Appointment cannot be moved to another patient")
        occupying = appointment.get("status") in OCCUPYING_APPOINTMENT_STATUSES
        if occupying:
            slot = _slot_of(tenant, appointment)
            _check_appointment_matches_slot(appointment, slot, participants)
            moved = (current.get("slot") or [{}])[0].get("reference") != f"Slot/{slot.slot_id}"
            revived = current.get("status") not in OCCUPYING_APPOINTMENT_STATUSES
            _hold(tenant, slot, now, appointment_id, check_timing=moved or revived)
            tenant.slots.book(appointment_id, slot, now)
        else:
            tenant.slots.release(appointment_id, now)
        if current.get("created"):
            appointment["created"] = current["created"]
        appointment.pop("meta", None)
        return tenant.store.replace(appointment, now)


def book_through_screen(tenant: Tenant, patient_id: str, slot_id: str, now: dt.datetime) -> dict:
    """An EMA booking: any template, including the EMA-only ones FHIR Slot does not enumerate."""
    with tenant.lock:
        slot = tenant.slots.slots.get(slot_id)
        if slot is None:
            raise FhirError(404, "unknown slot")
        if not tenant.store.exists("Patient", patient_id):
            raise FhirError(404, "unknown patient")
        _hold(tenant, slot, now, None, check_timing=True)
        appointment_id = tenant.store.next_id(tenant.id_prefix("appt"))
        resource = appointment_resource(appointment_id, slot, patient_id, "booked", fhir_instant(now))
        stored = tenant.store.add(validate_resource("Appointment", resource), now)
        tenant.slots.book(appointment_id, slot, now)
        return stored


# --- other resources ------------------------------------------------------------------------

def _patient_key(patient: dict) -> tuple[str, str, str]:
    name = (patient.get("name") or [{}])[0]
    given = (name.get("given") or [""])[0]
    return (str(name.get("family", "")).casefold(), str(given).casefold(), str(patient.get("birthDate", "")))


ADMINISTRATIVE_GENDERS = frozenset({"male", "female", "other", "unknown"})
US_STATES = frozenset(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND OH OK "
    "OR PA RI SC SD TN TX UT VT VA WA WV WI WY AS GU MP PR VI".split())
_ZIP = re.compile(r"^\d{5}(-\d{4})?$")
_PHONE = re.compile(r"^\+?[0-9][0-9 ().\-]{6,20}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[A-Za-z]{2,63}$")
SUBSCRIBER_RELATIONSHIP_SYSTEM = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
SUBSCRIBER_RELATIONSHIPS = frozenset({"child", "parent", "spouse", "common", "other", "self", "injured"})


def _check_patient(patient: dict, now: dt.datetime) -> None:
    """What ModMed's PM demands of a chart: a name, a birth date not in the future, a sex, and well-formed
    contact details (a US address with state and ZIP; phone numbers and e-mail addresses that are such)."""
    name = (patient.get("name") or [{}])[0]
    if not name.get("family") or not name.get("given"):
        raise FhirError(422, "Patient.name needs a family and a given name")
    if not patient.get("birthDate"):
        raise FhirError(422, "Patient.birthDate is required")
    if str(patient["birthDate"]) > now.date().isoformat():
        raise FhirError(422, "Patient.birthDate is in the future")
    if patient.get("gender") not in ADMINISTRATIVE_GENDERS:
        raise FhirError(422, "Patient.gender is required (male, female, other or unknown)")
    for address in patient.get("address") or []:
        if not address.get("line") or not address.get("city"):
            raise FhirError(422, "Patient.address needs a line and a city")
        if address.get("state") not in US_STATES or not _ZIP.match(str(address.get("postalCode", ""))):
            raise FhirError(422, "Patient.address needs a US state code and a ZIP code")
    for contact in patient.get("telecom") or []:
        pattern = {"phone": _PHONE, "sms": _PHONE, "email": _EMAIL}.get(contact.get("system"))
        if pattern is not None and not pattern.match(str(contact.get("value", ""))):
            raise FhirError(422, f"Patient.telecom has a malformed {contact.get('system')} value")
    for identifier in patient.get("identifier") or []:
        if not identifier.get("system") or not identifier.get("value"):
            raise FhirError(422, "Patient.identifier needs a system and a value")


def create_patient(tenant: Tenant, body: object, now: dt.datetime) -> dict:
    patient = validate_resource("Patient", body)
    _check_patient(patient, now)
    system = mrn_system(tenant.practice_id)
    if any(i.get("system") == system for i in patient.get("identifier") or []):
        raise FhirError(422, "the MRN is assigned by the practice: a new Patient may not carry one")
    with tenant.lock:
        key = _patient_key(patient)
        if any(_patient_key(existing) == key for existing in tenant.store.all_of("Patient")):
            raise FhirError(409, "a patient with this name and birth date exists already")
        patient["id"] = tenant.store.next_id(tenant.id_prefix("pt"))
        identifiers = patient.get("identifier") or []
        sequence = tenant.store.count("Patient") + 1
        patient["identifier"] = [*identifiers, {"use": "usual", "system": system, "value": f"E{tenant.profile.firm_number}{sequence:05d}N"}]
        patient.pop("meta", None)
        return tenant.store.add(patient, now)


def update_patient(tenant: Tenant, patient_id: str, body: object, now: dt.datetime, if_match: str | None) -> dict:
    patient = validate_resource("Patient", body)
    if patient.get("id") != patient_id:
        raise FhirError(400, "the body id must equal the id in the URL")
    _check_patient(patient, now)
    with tenant.lock:
        current = tenant.store.get("Patient", patient_id)
        if current is None:
            raise FhirError(404, f"Patient/{patient_id} not found")
        _check_version(current, if_match)
        system = mrn_system(tenant.practice_id)
        mrn = [i for i in current.get("identifier") or [] if i.get("system") == system]
        patient["identifier"] = [i for i in patient.get("identifier") or [] if i.get("system") != system] + mrn
        patient.pop("meta", None)
        return tenant.store.replace(patient, now)


def create_document_reference(tenant: Tenant, body: object, now: dt.datetime) -> dict:
    document = validate_resource("DocumentReference", body)
    _require_reference(tenant, document.get("subject"), "Patient", "DocumentReference.subject")
    attachment = ((document.get("content") or [{}])[0]).get("attachment") or {}
    if not attachment.get("url") and not attachment.get("data"):
        raise FhirError(422, "DocumentReference.content.attachment needs a url (ModMed uploads from a URL) or data")
    return _add_new(tenant, document, "doc", now)


def create_coverage(tenant: Tenant, body: object, now: dt.datetime) -> dict:
    """Coverage is create-only at ModMed: an active plan with a payor and the member id, for a known patient;
    the same plan and member id twice for one patient is refused (409)."""
    coverage = validate_resource("Coverage", body)
    patient_id = _require_reference(tenant, coverage.get("beneficiary"), "Patient", "Coverage.beneficiary")
    if coverage.get("status") != "active":
        raise FhirError(422, "a new Coverage must have status 'active'")
    payors = coverage.get("payor") or []
    if not payors or not all(p.get("display") or p.get("reference") for p in payors):
        raise FhirError(422, "Coverage.payor needs the insurer (a display or an Organization reference)")
    member = coverage.get("subscriberId")
    if not member or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9\- ]{1,39}", str(member)):
        raise FhirError(422, "Coverage.subscriberId (the member id on the card) is required")
    codings = (coverage.get("relationship") or {}).get("coding") or []
    if any(c.get("system") == SUBSCRIBER_RELATIONSHIP_SYSTEM and c.get("code") not in SUBSCRIBER_RELATIONSHIPS
           for c in codings):
        raise FhirError(422, "Coverage.relationship is not a subscriber-relationship code")
    if coverage.get("subscriber") is not None:
        _require_reference(tenant, coverage.get("subscriber"), "Patient", "Coverage.subscriber")
    plan = (str(payors[0].get("display") or payors[0].get("reference")).casefold(), str(member))
    with tenant.lock:
        for existing in tenant.store.for_patient("Coverage", patient_id):
            first = (existing.get("payor") or [{}])[0]
            if (str(first.get("display") or first.get("reference")).casefold(), str(existing.get("subscriberId"))) == plan:
                raise FhirError(409, "this patient already has this plan and member id")
        return _add_new(tenant, coverage, "cov", now)


def create_charge_item(tenant: Tenant, body: object, now: dt.datetime) -> tuple[dict, bool]:
    """ChargeItem create; a repeated identifier (ModMed's transactionId) returns the first one."""
    charge = validate_resource("ChargeItem", body)
    _require_reference(tenant, charge.get("subject"), "Patient", "ChargeItem.subject")
    identifiers = {(i.get("system"), i.get("value")) for i in charge.get("identifier") or [] if i.get("value")}
    with tenant.lock:
        for existing in tenant.store.all_of("ChargeItem"):
            if identifiers & {(i.get("system"), i.get("value")) for i in existing.get("identifier") or []}:
                return tenant.store.get("ChargeItem", existing["id"]) or existing, False
        return _add_new(tenant, charge, "chg", now), True


def create_task(tenant: Tenant, body: object, now: dt.datetime) -> dict:
    task = validate_resource("Task", body)
    _require_reference(tenant, task.get("for"), "Patient", "Task.for")
    if not (task.get("code") or {}).get("coding"):
        raise FhirError(422, "Task.code needs a coding (the task kind)")
    if task.get("owner") is not None:
        _require_reference(tenant, task.get("owner"), "Practitioner", "Task.owner")
    task.setdefault("authoredOn", fhir_instant(now))
    return _add_new(tenant, task, "task", now)


def _add_new(tenant: Tenant, resource: dict, kind: str, now: dt.datetime) -> dict:
    with tenant.lock:
        resource["id"] = tenant.store.next_id(tenant.id_prefix(kind))
        resource.pop("meta", None)
        return tenant.store.add(resource, now)
