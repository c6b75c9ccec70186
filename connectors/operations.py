"""The connector's operations, one per guards Command, in and out as fhir.resources R4B models.

``ModMedConnector`` is what the dispatcher calls. Reads go straight through the client; every write
is checked first (connectors.preconditions), built as the resource ModMed stores
(connectors.write_resources) and sent through the idempotency ledger *and* a practice check
(connectors.idempotent_writes), because ModMed has no idempotency keys: before (re)creating anything
the connector asks ModMed whether the write already landed (Appointment by patient + start, Task,
Patient and Coverage by identifier, DocumentReference by master identifier), so a retry, a lost
response or a redelivered event never books twice. Each operation here says which check proves its
write, and whether it must ask before the first attempt.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from dataclasses import dataclass

from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.slot import Slot
from fhir.resources.R4B.task import Task

from callstream.tenants import Practice
from callstream.work_scope import BACKGROUND, WorkScope
from connectors.compliance import ComplianceFlags, compliance_flags
from connectors.errors import CapabilityMissing, ConflictError, InvalidRequestError, RetryableError
from connectors.fhir import ModMedClient
from connectors.idempotent_writes import IdempotentWriter
from connectors.ledger import IdempotencyLedger, idempotency_key
from connectors.preconditions import (
    check_id,
    expected_reason,
    require_fhir_writes,
    require_visit_reason,
    visit_reason_of,
)
from connectors.slot_offers import SlotDirectory, SlotOffer, reference_id
from connectors.vocabulary import (
    COMPLIANCE_SYSTEM,
    OCCUPYING_APPOINTMENT_STATUSES,
    PDMP_CHECK_CODE,
    VISIT_REASON_SYSTEM,
)
from connectors.write_resources import (
    cancelled_appointment,
    moved_appointment,
    new_appointment,
    new_coverage,
    new_document_reference,
    new_patient,
    new_task,
)
from guards.model import Command, MatchKind, VisitReason
from schemas.models import InsuranceDetails, NewPatientDetails

TASK_CODE = re.compile(r"^[a-z][a-z0-9-]{1,63}\Z")


@dataclass(frozen=True, slots=True)
class PatientMatch:
    """The outcome of a caller lookup: one chart, several (the agent must ask more), or none (new patient)."""

    kind: MatchKind
    candidates: tuple[Patient, ...]

    @property
    def patient(self) -> Patient:
        if self.kind is not MatchKind.UNIQUE:
            raise ValueError(f"patient lookup was {self.kind}, not unique")
        return self.candidates[0]

    def __repr__(self) -> str:  # the candidates are PHI: show ids only
        return f"PatientMatch(kind={self.kind.value}, ids={[p.id for p in self.candidates]})"


class ModMedConnector:
    """The dispatcher's entry point: reads, and ledger-guarded idempotent writes."""

    def __init__(self, client: ModMedClient, ledger: IdempotencyLedger) -> None:
        self.client = client
        self._ledger = ledger
        self._writes = IdempotentWriter(client, ledger)
        self._slots = SlotDirectory(client)

    # ------------------------------------------------------------------------------- reads

    async def search_patients(
        self, practice: Practice, *, family: str, given: str, birthdate: dt.date, phone: str | None = None,
        scope: WorkScope = BACKGROUND,
    ) -> PatientMatch:
        """Find the caller's chart by name and date of birth; a phone number breaks ties."""
        family, given = _checked_names(practice, family, given)
        result = await self.client.search(
            practice, Patient,
            {"family": family, "given": given, "birthdate": birthdate.isoformat(), "_count": "50"}, scope=scope,
        )
        candidates = [p for p in result.matches if p.active is not False and p.birthDate == birthdate]
        if len(candidates) > 1 and phone:
            wanted = _phone_key(phone)
            by_phone = [p for p in candidates if any(
                t.system == "phone" and t.value and _phone_key(t.value) == wanted for t in p.telecom or ()
            )]
            if by_phone:
                candidates = by_phone
        if not candidates:
            return PatientMatch(MatchKind.NONE, ())
        kind = MatchKind.UNIQUE if len(candidates) == 1 else MatchKind.AMBIGUOUS
        return PatientMatch(kind, tuple(candidates))

    async def read_compliance_flags(self, practice: Practice, patient_id: str, *,
                                    scope: WorkScope = BACKGROUND) -> ComplianceFlags:
        """The chart's routing flags only; PDMP content and UDS results never leave ModMed."""
        check_id(practice, "Patient", patient_id)
        if not practice.capabilities.fhir_compliance_flags:
            raise CapabilityMissing(
                "practice exposes no compliance flags over FHIR", practice_id=practice.practice_id,
                resource_type="Flag",
            )
        flags, checks = await asyncio.gather(
            self.client.search_json(practice, "Flag", {"patient": patient_id}, scope=scope),
            self.client.search_json(
                practice, "Observation", {"patient": patient_id, "code": f"{COMPLIANCE_SYSTEM}|{PDMP_CHECK_CODE}"},
                scope=scope,
            ),
        )
        return compliance_flags(practice.practice_id, patient_id, flags, checks)

    async def search_slots(
        self,
        practice: Practice,
        *,
        visit_reason: VisitReason,
        date_from: dt.date,
        date_to: dt.date,
        provider: str | None = None,
        location: str | None = None,
        scope: WorkScope = BACKGROUND,
    ) -> list[SlotOffer]:
        """Free slots of one visit reason in [date_from, date_to], with provider, room and equipment."""
        if date_to < date_from or (date_to - date_from).days > 92:
            raise InvalidRequestError(
                "slot search needs date_from <= date_to within 92 days", practice_id=practice.practice_id,
                resource_type="Slot",
            )
        params: dict[str, str | list[str]] = {
            "appointment-type": f"{VISIT_REASON_SYSTEM}|{VisitReason(visit_reason).value}",
            "date": [f"ge{date_from.isoformat()}", f"le{date_to.isoformat()}"],
        }
        if provider is not None:
            params["provider"] = f"Practitioner/{check_id(practice, 'Practitioner', provider)}"
        if location is not None:
            params["location"] = f"Location/{check_id(practice, 'Location', location)}"
        result = await self.client.search(practice, Slot, params, scope=scope)
        offers = []
        for slot in result.matches:
            if slot.status != "free" or slot.id is None:
                continue
            offers.append(await self._slots.offer(practice, slot, VisitReason(visit_reason), scope=scope))
        return sorted(offers, key=lambda offer: (offer.start, offer.slot_id))

    # ------------------------------------------------------------------------------ writes

    async def book_appointment(
        self,
        practice: Practice,
        *,
        call_id: str,
        patient_id: str,
        slot_id: str,
        expected_visit_reason: VisitReason | None = None,
        scope: WorkScope = BACKGROUND,
    ) -> Appointment:
        """Book the patient into a free slot: visit reason, duration, provider and room come from the slot.

        ``expected_visit_reason`` is the guard's decision; a slot of another reason is refused with
        VisitReasonMismatch before anything is written (defense in depth behind the dispatcher).
        """
        require_fhir_writes(practice, "Appointment")
        check_id(practice, "Patient", patient_id)
        check_id(practice, "Slot", slot_id)
        expected_visit_reason = expected_reason(practice, expected_visit_reason)
        key = idempotency_key(call_id, Command.BOOK_APPOINTMENT, f"Patient/{patient_id}|Slot/{slot_id}")
        done = await self._writes.already_done(practice, key, Appointment, scope)
        if done is not None:
            require_visit_reason(practice, visit_reason_of(practice, done.appointmentType), expected_visit_reason)
            return done
        slot = await self.client.read(practice, Slot, slot_id, scope=scope)
        reason = visit_reason_of(practice, slot.appointmentType)
        require_visit_reason(practice, reason, expected_visit_reason)
        offer = await self._slots.offer(practice, slot, reason, scope=scope)
        appointment = new_appointment(key, call_id, patient_id, offer)

        async def landed() -> Appointment | None:
            return await self._booking_at(practice, patient_id, offer, scope)

        # Asked before every booking, even one never attempted: the check also finds a booking staff made
        # for this patient at this time, which a ledger cannot know of.
        return await self._writes.write(practice, key, Command.BOOK_APPOINTMENT, "POST", appointment, landed,
                                        ask_first=True, scope=scope)

    async def reschedule_appointment(
        self,
        practice: Practice,
        *,
        call_id: str,
        appointment_id: str,
        new_slot_id: str,
        expected_visit_reason: VisitReason | None = None,
        scope: WorkScope = BACKGROUND,
    ) -> Appointment:
        """Move a booked appointment to another free slot of the same visit reason (PUT).

        ``expected_visit_reason`` is the guard's decision: an appointment (and so a new slot) of another
        reason is refused with VisitReasonMismatch before anything is written.
        """
        require_fhir_writes(practice, "Appointment")
        check_id(practice, "Appointment", appointment_id)
        check_id(practice, "Slot", new_slot_id)
        expected_visit_reason = expected_reason(practice, expected_visit_reason)
        key = idempotency_key(call_id, Command.RESCHEDULE_APPOINTMENT, f"Appointment/{appointment_id}|Slot/{new_slot_id}")
        done = await self._writes.already_done(practice, key, Appointment, scope)
        if done is not None:
            require_visit_reason(practice, visit_reason_of(practice, done.appointmentType), expected_visit_reason)
            return done
        current = await self.client.read(practice, Appointment, appointment_id, scope=scope)
        require_visit_reason(practice, visit_reason_of(practice, current.appointmentType), expected_visit_reason)
        if _holds_slot(current, new_slot_id):
            await self._ledger.complete(key, "Appointment", appointment_id, scope=scope)
            return current
        if current.status not in OCCUPYING_APPOINTMENT_STATUSES:
            raise ConflictError(
                "only a booked appointment can be rescheduled", practice_id=practice.practice_id,
                resource_type="Appointment", method="PUT",
            )
        slot = await self.client.read(practice, Slot, new_slot_id, scope=scope)
        reason = visit_reason_of(practice, current.appointmentType)
        if visit_reason_of(practice, slot.appointmentType) is not reason:
            raise ConflictError(
                "the new slot is for another visit reason", practice_id=practice.practice_id,
                resource_type="Slot", method="PUT",
            )
        offer = await self._slots.offer(practice, slot, reason, scope=scope)
        moved = moved_appointment(current, offer)

        async def landed() -> Appointment | None:
            latest = await self.client.read(practice, Appointment, appointment_id, scope=scope)
            return latest if _holds_slot(latest, new_slot_id) else None

        # ``current``, just read, shows the move has not landed: no need to ask again before the first PUT.
        return await self._writes.write(practice, key, Command.RESCHEDULE_APPOINTMENT, "PUT", moved, landed,
                                        ask_first=False, scope=scope)

    async def cancel_appointment(
        self, practice: Practice, *, call_id: str, appointment_id: str, reason: str = "patient request",
        scope: WorkScope = BACKGROUND,
    ) -> Appointment:
        """Cancel an appointment (PUT status=cancelled); cancelling twice is a no-op."""
        require_fhir_writes(practice, "Appointment")
        check_id(practice, "Appointment", appointment_id)
        key = idempotency_key(call_id, Command.CANCEL_APPOINTMENT, f"Appointment/{appointment_id}")
        done = await self._writes.already_done(practice, key, Appointment, scope)
        if done is not None:
            return done
        current = await self.client.read(practice, Appointment, appointment_id, scope=scope)
        if current.status == "cancelled":
            await self._ledger.complete(key, "Appointment", appointment_id, scope=scope)
            return current
        cancelled = cancelled_appointment(current, reason)

        async def landed() -> Appointment | None:
            latest = await self.client.read(practice, Appointment, appointment_id, scope=scope)
            return latest if latest.status == "cancelled" else None

        # ``current``, just read, shows it is not cancelled yet.
        return await self._writes.write(practice, key, Command.CANCEL_APPOINTMENT, "PUT", cancelled, landed,
                                        ask_first=False, scope=scope)

    async def create_task(
        self,
        practice: Practice,
        *,
        call_id: str,
        patient_id: str,
        task_code: str,
        description: str,
        owner_id: str | None = None,
        pdmp_last_checked: dt.datetime | None = None,
        transcript_ref: str | None = None,
        scope: WorkScope = BACKGROUND,
    ) -> Task:
        """A task in the practice's queue; CapabilityMissing where ModMed has no FHIR Task create (use EMA).

        ``description`` comes from the guard's templates (call context, never clinical content); the
        PDMP last-check time is the only clinical-adjacent value a task may carry. The task carries the call
        reference (an identifier) and ``transcript_ref`` (an input, and a line of the description), scrubbed
        like every reference that leaves callstream; one the scrubber refuses is left out.
        """
        require_fhir_writes(practice, "Task")
        if not practice.capabilities.fhir_task_create:
            raise CapabilityMissing(
                "practice has no FHIR Task create", practice_id=practice.practice_id, resource_type="Task",
                method="POST",
            )
        check_id(practice, "Patient", patient_id)
        if owner_id is not None:
            check_id(practice, "Practitioner", owner_id)
        if not TASK_CODE.match(task_code):
            raise InvalidRequestError(
                "task_code must be a lowercase task-kind code", practice_id=practice.practice_id, resource_type="Task"
            )
        key = idempotency_key(call_id, Command.CREATE_TASK, f"Patient/{patient_id}|{task_code}")
        done = await self._writes.already_done(practice, key, Task, scope)
        if done is not None:
            return done
        task = new_task(key, call_id, patient_id, task_code, description, owner_id, pdmp_last_checked, transcript_ref)
        # Only callstream writes this identifier: a write-ahead ledger without the key proves no Task has it.
        return await self._writes.write(practice, key, Command.CREATE_TASK, "POST", task,
                                        self._writes.carrying_key(practice, Task, key, scope),
                                        ask_first=not self._ledger.proves_unattempted(key, scope=scope), scope=scope)

    async def create_document_reference(
        self,
        practice: Practice,
        *,
        call_id: str,
        patient_id: str,
        title: str,
        url: str,
        content_type: str = "application/pdf",
        scope: WorkScope = BACKGROUND,
    ) -> DocumentReference:
        """Intake results onto the chart: ModMed uploads the document from ``url``."""
        require_fhir_writes(practice, "DocumentReference")
        check_id(practice, "Patient", patient_id)
        if not url.startswith("https://") or len(url) > 2000 or any(c.isspace() for c in url):
            raise InvalidRequestError(
                "document url must be an https URL", practice_id=practice.practice_id,
                resource_type="DocumentReference",
            )
        key = idempotency_key(call_id, Command.CREATE_DOCUMENT_REFERENCE, f"Patient/{patient_id}|{url}")
        done = await self._writes.already_done(practice, key, DocumentReference, scope)
        if done is not None:
            return done
        document = new_document_reference(key, patient_id, title, url, content_type)

        async def landed() -> DocumentReference | None:
            # By patient (ModMed has no identifier search here), no date bound: a form filed long ago is found too.
            found = await self.client.search(practice, DocumentReference, {"patient": patient_id}, scope=scope)
            match = next((d for d in found.matches if d.masterIdentifier and d.masterIdentifier.value == key), None)
            if match is None and found.truncated:  # unread pages may hold it: not proven unfiled, so never resend
                raise RetryableError("the chart's documents exceed the search page budget", method="GET",
                                     practice_id=practice.practice_id, resource_type="DocumentReference")
            return match

        # Only callstream writes this master identifier (as for Tasks).
        return await self._writes.write(practice, key, Command.CREATE_DOCUMENT_REFERENCE, "POST", document,
                                        landed, ask_first=not self._ledger.proves_unattempted(key, scope=scope),
                                        scope=scope)

    async def register_patient(
        self,
        practice: Practice,
        *,
        call_id: str,
        family: str,
        given: str,
        birthdate: dt.date,
        details: NewPatientDetails,
        phone: str | None = None,
        email: str | None = None,
        scope: WorkScope = BACKGROUND,
    ) -> Patient:
        """Create the chart of a caller no search matched: at most one Patient per call (the ledger key names the
        call, and the Patient carries it as an identifier, so a lost answer is found again, never created twice).
        ModMed assigns the MRN; a second chart with the same name and birth date is refused there (ConflictError).
        The caller must have been searched again just before (streams.callflow does)."""
        require_fhir_writes(practice, "Patient")
        family, given = _checked_names(practice, family, given)
        key = idempotency_key(call_id, Command.REGISTER_PATIENT, "Patient")
        done = await self._writes.already_done(practice, key, Patient, scope)
        if done is not None:
            return done
        patient = new_patient(key, call_id, family, given, birthdate, details, phone, email)
        # Only callstream writes this identifier: a write-ahead ledger without the key proves no Patient has it.
        return await self._writes.write(practice, key, Command.REGISTER_PATIENT, "POST", patient,
                                        self._writes.carrying_key(practice, Patient, key, scope),
                                        ask_first=not self._ledger.proves_unattempted(key, scope=scope), scope=scope)

    async def create_coverage(
        self, practice: Practice, *, call_id: str, patient_id: str, insurance: InsuranceDetails,
        scope: WorkScope = BACKGROUND,
    ) -> Coverage:
        """The insurance card of a patient registered in this call, as a Coverage (create-only at ModMed)."""
        require_fhir_writes(practice, "Coverage")
        check_id(practice, "Patient", patient_id)
        key = idempotency_key(call_id, Command.CREATE_COVERAGE, f"Patient/{patient_id}")
        done = await self._writes.already_done(practice, key, Coverage, scope)
        if done is not None:
            return done
        coverage = new_coverage(key, patient_id, insurance)
        # ModMed searches Coverage by patient, not by identifier.
        return await self._writes.write(practice, key, Command.CREATE_COVERAGE, "POST", coverage,
                                        self._writes.carrying_key(practice, Coverage, key, scope,
                                                                  {"patient": patient_id}),
                                        ask_first=not self._ledger.proves_unattempted(key, scope=scope), scope=scope)

    # ------------------------------------------------------------------------- internals

    async def _booking_at(self, practice: Practice, patient_id: str, offer: SlotOffer,
                          scope: WorkScope) -> Appointment | None:
        """The patient's occupying appointment at the offer's start, if any (ours or anybody's)."""
        found = await self.client.search(
            practice, Appointment, {"patient": patient_id, "date": offer.start.isoformat()}, scope=scope
        )
        for appointment in found.matches:
            if appointment.status in OCCUPYING_APPOINTMENT_STATUSES and appointment.start == offer.start:
                return appointment
        return None


def _checked_names(practice: Practice, family: str, given: str) -> tuple[str, str]:
    family, given = family.strip(), given.strip()
    if not family or not given or len(family) > 100 or len(given) > 100:
        raise InvalidRequestError(
            "family and given names must be 1-100 characters", practice_id=practice.practice_id,
            resource_type="Patient",
        )
    return family, given


def _holds_slot(appointment: Appointment, slot_id: str) -> bool:
    return appointment.status in OCCUPYING_APPOINTMENT_STATUSES and any(
        reference_id(ref.reference, "Slot") == slot_id for ref in appointment.slot or ()
    )


def _phone_key(text: str) -> str:
    return re.sub(r"\D", "", text)[-10:]
