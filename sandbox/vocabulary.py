"""Code systems, extension URLs and fixed vocabularies the sandbox serves.

They live in one module because the connector, the guards and the EMA automation all
read the same codes (see docs/CONTRACTS.md); a typo here would silently break matching.
"""

from __future__ import annotations

from typing import Final

CALLSTREAM_FHIR: Final = "https://callstream.dev/fhir"
VISIT_REASON_SYSTEM: Final = f"{CALLSTREAM_FHIR}/CodeSystem/visit-reason"
COMPLIANCE_SYSTEM: Final = f"{CALLSTREAM_FHIR}/CodeSystem/pain-compliance"
ROOM_KIND_SYSTEM: Final = f"{CALLSTREAM_FHIR}/CodeSystem/room-kind"
EQUIPMENT_SYSTEM: Final = f"{CALLSTREAM_FHIR}/CodeSystem/room-equipment"
TASK_KIND_SYSTEM: Final = f"{CALLSTREAM_FHIR}/CodeSystem/task-kind"
STAFF_ROLE_SYSTEM: Final = f"{CALLSTREAM_FHIR}/CodeSystem/staff-role"
CALL_REFERENCE_SYSTEM: Final = f"{CALLSTREAM_FHIR}/NamingSystem/call-id"
STRUCTURE_DEFINITION: Final = f"{CALLSTREAM_FHIR}/StructureDefinition"

EXT_LAST_REFILL_DATE: Final = f"{STRUCTURE_DEFINITION}/last-refill-date"
EXT_AGREEMENT_STATUS: Final = f"{STRUCTURE_DEFINITION}/agreement-status"
EXT_RESTRICTION: Final = f"{STRUCTURE_DEFINITION}/restriction"
EXT_STATE_OF_RECORD: Final = f"{STRUCTURE_DEFINITION}/state-of-record"
EXT_ROOM_EQUIPMENT: Final = f"{STRUCTURE_DEFINITION}/room-equipment"
EXT_STAFF_ROLE: Final = f"{STRUCTURE_DEFINITION}/staff-role"

NPI_SYSTEM: Final = "http://hl7.org/fhir/sid/us-npi"
LOINC_SYSTEM: Final = "http://loinc.org"
OBSERVATION_CATEGORY_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
LOCATION_PHYSICAL_TYPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/location-physical-type"
UCUM_SYSTEM: Final = "http://unitsofmeasure.org"

VISIT_REASONS: Final[dict[str, str]] = {
    "new-patient-consult": "New patient consult",
    "follow-up": "Follow-up visit",
    "medication-management": "Medication management",
    "agreement-review": "Opioid agreement review",
    "esi": "Epidural steroid injection",
    "facet-injection": "Facet joint injection",
    "rfa": "Radiofrequency ablation",
    "scs-trial": "Spinal cord stimulator trial",
    "kyphoplasty": "Kyphoplasty",
    "trigger-point": "Trigger-point injection",
}
"""Exactly the visit-reason codes of docs/CONTRACTS.md, with the display the sandbox serves."""

CLINIC_VISIT_REASONS: Final = frozenset(
    {"new-patient-consult", "follow-up", "medication-management", "agreement-review", "trigger-point"}
)
PROCEDURE_VISIT_REASONS: Final = frozenset({"esi", "facet-injection", "rfa", "scs-trial", "kyphoplasty"})

ROOM_KINDS: Final[dict[str, str]] = {
    "exam-room": "Exam room",
    "procedure-room": "Procedure room",
}
EQUIPMENT: Final[dict[str, str]] = {
    "fluoroscopy": "Fluoroscopy (C-arm)",
    "rf-generator": "Radiofrequency generator",
    "ultrasound": "Ultrasound",
}

COMPLIANCE_FLAG_CODES: Final[dict[str, str]] = {
    "chronic-opioid": "Chronic opioid therapy",
    "opioid-agreement": "Opioid treatment agreement",
    "phone-request-restriction": "Provider restriction on phone requests",
    "aberrant-uds": "Aberrant urine drug screen",
    "uds-due": "Urine drug screen due",
}
PDMP_CHECK_CODE: Final = "pdmp-check"
UDS_CODE: Final = "uds"

TASK_KINDS: Final[dict[str, str]] = {
    "refill-request": "Refill request for provider review",
    "provider-review": "Controlled-substance request for provider review",
    "uds-scheduling": "UDS due: schedule collection",
    "agreement-renewal": "Opioid agreement renewal",
    "prior-auth-followup": "Prior authorization follow-up",
    "preop-clearance": "Pre-op clearance tracking",
    "callback": "Call the patient back",
    "clinical-review": "Clinical team review",
    "general": "General front-desk task",
}
"""Task kinds the PM task-queue screen offers; FHIR Task.code uses the same codes."""

STAFF_ROLES: Final[dict[str, str]] = {
    "interventionalist": "Interventional pain physician",
    "advanced-practice-provider": "Nurse practitioner / physician assistant",
    "controlled-substance-coordinator": "Controlled-substance coordinator",
    "nurse": "Clinical nurse",
    "scheduler": "Front-desk scheduler",
}

OCCUPYING_APPOINTMENT_STATUSES: Final = frozenset({"pending", "booked", "arrived", "fulfilled", "checked-in"})
"""Appointment statuses that hold their slot; every other status frees it."""
