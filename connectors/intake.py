"""Completed intake forms onto the chart: each becomes one DocumentReference, through the FHIR allow-list.

The intake service lists completed forms (``IntakeCompletion``: the link's signed reference and the document's
URL); callstream verifies the reference with the practice's link secret (callstream.messaging), reads the
appointment it names to find the patient (the form lands on that chart and no other), and creates the
DocumentReference with ModMedConnector.create_document_reference (ModMed uploads from the URL; the ledger and the
master identifier make a completion listed twice one document).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

import httpx
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.documentreference import DocumentReference
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from callstream.tenants import Practice
from connectors.errors import InvalidRequestError, ModMedError
from callstream.messaging import verified_appointment
from callstream.secrets import read_secret
from connectors.operations import ModMedConnector
from schemas.models import AuditAction, AuditEvent, AuditOutcome, CommandKind

AUDIT_NAMESPACE = uuid.UUID("0c5b8a4e-3d1f-4a57-9b8e-2f6a1c7d9e30")
"""uuid5 namespace of intake audit ids: one per practice and completion seq."""


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


@dataclass
class SyncReport:
    """One practice's pass over its intake listing."""

    practice_id: str
    recorded: int = 0
    refused: int = 0
    """Completions that will never land (a reference this practice did not sign, an appointment without one patient)."""
    failed: int = 0
    """Completions ModMed could not take now: the cursor stops before the first, so the next run tries again."""
    next_after: int = 0
    oldest_unfiled: datetime | None = None
    """When the oldest completion ModMed could not take was completed (the age the unfiled-form alert watches)."""
    audits: list[AuditEvent] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {"practice_id": self.practice_id, "recorded": self.recorded, "refused": self.refused,
                "failed": self.failed, "next_after": self.next_after}


def completion_audit(practice: Practice, completion: IntakeCompletion, now: datetime,
                     recorded: IntakeRecorded | None = None, error_class: str | None = None) -> AuditEvent:
    """The FHIR_WRITE record of filing one completion (no PHI: ids, the form name and the seq)."""
    return AuditEvent(
        event_id=uuid.uuid5(AUDIT_NAMESPACE, f"{practice.practice_id}:{completion.seq}"),
        occurred_at=now,
        practice_id=practice.practice_id,
        action=AuditAction.FHIR_WRITE,
        outcome=AuditOutcome.SUCCESS if recorded is not None else AuditOutcome.FAILURE,
        resource_type="DocumentReference",
        resource_ids=[recorded.document.id] if recorded is not None and recorded.document.id else [],
        ema_deep_link=practice.chart_deep_link(recorded.patient_id) if recorded is not None else None,
        command=CommandKind.CREATE_DOCUMENT_REFERENCE,
        error_class=error_class,
        detail={"operation": "intake_completion", "form": completion.form, "seq": str(completion.seq),
                **({"appointment_id": recorded.appointment_id} if recorded is not None else {})},
    )


async def sync_practice(connector: ModMedConnector, http: httpx.AsyncClient, practice: Practice, after: int,
                        now: datetime) -> SyncReport:
    """File every completion listed after ``after``; the report's audits are for the caller to publish."""
    report = SyncReport(practice.practice_id, next_after=after)
    url = practice.intake.completions_url if practice.intake is not None else None
    if url is None:
        return report
    response = await http.get(url, params={"after": str(after)})
    response.raise_for_status()
    completions, malformed = parse_completions(response.json())
    report.refused += malformed
    blocked = False
    for completion in sorted(completions, key=lambda c: c.seq):
        try:
            recorded = await record_completion(connector, practice, completion)
        except InvalidRequestError as exc:
            report.refused += 1
            report.audits.append(completion_audit(practice, completion, now, error_class=type(exc).__name__))
        except ModMedError as exc:
            report.failed += 1
            blocked = True
            if report.oldest_unfiled is None or completion.completed_at < report.oldest_unfiled:
                report.oldest_unfiled = completion.completed_at
            report.audits.append(completion_audit(practice, completion, now, error_class=type(exc).__name__))
            continue
        else:
            report.recorded += 1
            report.audits.append(completion_audit(practice, completion, now, recorded))
        if not blocked:
            report.next_after = completion.seq
    return report
