"""Completed intake forms onto the chart: each becomes one DocumentReference, through the FHIR allow-list.

The intake service lists completed forms (``IntakeCompletion``: the link's signed reference and the document's
URL); callstream verifies the reference with the practice's link secret (callstream.messaging), reads the
appointment it names to find the patient (the form lands on that chart and no other), and creates the
DocumentReference with ModMedConnector.create_document_reference (ModMed uploads from the URL; the ledger and the
master identifier make a completion listed twice one document).
"""

from __future__ import annotations

from dataclasses import dataclass

from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.documentreference import DocumentReference
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from callstream.tenants import Practice
from connectors.errors import InvalidRequestError
from callstream.messaging import read_secret, verified_appointment
from connectors.operations import ModMedConnector


class IntakeCompletion(BaseModel):
    """One completed form as the intake service lists it (outside input: validated, extra keys refused)."""

    model_config = ConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True)

    seq: int = Field(ge=1)
    ref: str = Field(min_length=3, max_length=200, pattern=r"^[A-Za-z0-9._\-]+$")
    form: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9\-]*$")
    document_url: str = Field(max_length=2000, pattern=r"^https://\S+$")
    completed_at: AwareDatetime


@dataclass(frozen=True, slots=True)
class IntakeRecorded:
    """Where a completion landed: the DocumentReference and the appointment (and chart) it belongs to."""

    document: DocumentReference
    appointment_id: str
    patient_id: str


def parse_completions(payload: object) -> tuple[list[IntakeCompletion], int]:
    """The service's listing: the valid completions and how many entries were malformed (skipped, counted)."""
    entries = payload.get("completions") if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        raise ValueError("intake service listing must be an object with a completions list")
    valid: list[IntakeCompletion] = []
    for entry in entries:
        try:
            valid.append(IntakeCompletion.model_validate(entry))
        except ValidationError:
            continue
    return valid, len(entries) - len(valid)


async def record_completion(connector: ModMedConnector, practice: Practice, completion: IntakeCompletion) -> IntakeRecorded:
    """The completed form as a DocumentReference on the chart of the appointment its link was sent for.

    Raises:
        InvalidRequestError: the reference is not one this practice signed (a forged or altered link), or the
            appointment has not exactly one patient.
        ModMedError: reading the appointment or the write failed (the completion stays listed: call again).
    """
    if practice.intake is None:
        raise InvalidRequestError("practice has no intake configuration", practice_id=practice.practice_id,
                                  resource_type="DocumentReference")
    secret = read_secret(practice.intake.link_secret_ref, "intake link secret")
    appointment_id = verified_appointment(secret, practice.practice_id, completion.ref)
    if appointment_id is None:
        raise InvalidRequestError("intake reference is not signed by this practice", practice_id=practice.practice_id,
                                  resource_type="DocumentReference")
    appointment = await connector.client.read(practice, Appointment, appointment_id)
    patients = {
        participant.actor.reference.rsplit("/", 1)[-1]
        for participant in appointment.participant or ()
        if participant.actor is not None and (participant.actor.reference or "").startswith("Patient/")
    }
    if len(patients) != 1:
        raise InvalidRequestError("the appointment has no single patient", practice_id=practice.practice_id,
                                  resource_type="Appointment")
    (patient_id,) = patients
    document = await connector.create_document_reference(
        practice, call_id=f"intake-{appointment_id}", patient_id=patient_id,
        title=f"Intake form: {completion.form}", url=completion.document_url)
    return IntakeRecorded(document, appointment_id, patient_id)
