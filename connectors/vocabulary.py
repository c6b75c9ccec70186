"""Code systems and extension URLs the connector matches on (values fixed by docs/CONTRACTS.md).

The sandbox serves the same values from sandbox.vocabulary; connectors may not import the sandbox,
so tests/connectors checks that both modules agree.
"""

from __future__ import annotations

from typing import Final

CALLSTREAM_FHIR: Final = "https://callstream.dev/fhir"
VISIT_REASON_SYSTEM: Final = f"{CALLSTREAM_FHIR}/CodeSystem/visit-reason"
COMPLIANCE_SYSTEM: Final = f"{CALLSTREAM_FHIR}/CodeSystem/pain-compliance"
ROOM_KIND_SYSTEM: Final = f"{CALLSTREAM_FHIR}/CodeSystem/room-kind"
EQUIPMENT_SYSTEM: Final = f"{CALLSTREAM_FHIR}/CodeSystem/room-equipment"
TASK_KIND_SYSTEM: Final = f"{CALLSTREAM_FHIR}/CodeSystem/task-kind"
CALL_REFERENCE_SYSTEM: Final = f"{CALLSTREAM_FHIR}/NamingSystem/call-id"
IDEMPOTENCY_KEY_SYSTEM: Final = f"{CALLSTREAM_FHIR}/NamingSystem/idempotency-key"
STRUCTURE_DEFINITION: Final = f"{CALLSTREAM_FHIR}/StructureDefinition"

EXT_LAST_REFILL_DATE: Final = f"{STRUCTURE_DEFINITION}/last-refill-date"
EXT_AGREEMENT_STATUS: Final = f"{STRUCTURE_DEFINITION}/agreement-status"
EXT_RESTRICTION: Final = f"{STRUCTURE_DEFINITION}/restriction"
EXT_ROOM_EQUIPMENT: Final = f"{STRUCTURE_DEFINITION}/room-equipment"
EXT_PREFERRED_PHARMACY: Final = f"{STRUCTURE_DEFINITION}/preferred-pharmacy"
"""Patient extension (complex: ``name``, optional ``phone``) holding the pharmacy a new patient named."""
SUBSCRIBER_RELATIONSHIP_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
COVERAGE_CLASS_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/coverage-class"
IDENTIFIER_TYPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"

PDMP_CHECK_CODE: Final = "pdmp-check"
UDS_CODE: Final = "uds"

OCCUPYING_APPOINTMENT_STATUSES: Final = frozenset({"pending", "booked", "arrived", "fulfilled", "checked-in"})
"""Appointment statuses that hold their slot; a booking is "already there" only in one of these."""
