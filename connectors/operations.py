"""The connector's operations, one per guards Command, in and out as fhir.resources R4B models.

``ModMedConnector`` is what the dispatcher calls. Reads go straight through the client; every
write is wrapped in the idempotency ledger *and* a practice check, because ModMed has no
idempotency keys: before (re)creating anything the connector asks ModMed whether the write already
landed (Appointment by patient + start, Task by identifier, DocumentReference by master identifier),
so a retry, a lost response or a redelivered event never books twice. A write is sent a second time
only after that check proved the first one did not land.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.location import Location
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.schedule import Schedule
from fhir.resources.R4B.slot import Slot
from fhir.resources.R4B.task import Task

from callstream.references import clean_reference
from callstream.tenants import ApiTrack, Practice
from connectors.compliance import ComplianceFlags, compliance_flags
from connectors.errors import (
    CapabilityMissing,
    ConflictError,
    InvalidResponseError,
    ModMedError,
    InvalidRequestError,
    RequestNotSentError,
    RetryableError,
    VisitReasonMismatch,
    WriteNotAllowed,
)
from connectors.fhir import FHIR_ID, ModMedClient
from connectors.ledger import IdempotencyLedger, LedgerState, idempotency_key
from connectors.vocabulary import (
    CALL_REFERENCE_SYSTEM,
    COMPLIANCE_SYSTEM,
    COVERAGE_CLASS_SYSTEM,
    EQUIPMENT_SYSTEM,
    EXT_PREFERRED_PHARMACY,
    EXT_ROOM_EQUIPMENT,
    IDEMPOTENCY_KEY_SYSTEM,
    IDENTIFIER_TYPE_SYSTEM,
    OCCUPYING_APPOINTMENT_STATUSES,
    PDMP_CHECK_CODE,
    ROOM_KIND_SYSTEM,
    SUBSCRIBER_RELATIONSHIP_SYSTEM,
    TASK_KIND_SYSTEM,
    VISIT_REASON_SYSTEM,
)
from guards.model import Command, GoLivePhase, MatchKind, VisitReason
from guards.scheduling import BlockKind, Equipment, RoomKind, SlotCandidate
from schemas.models import InsuranceDetails, NewPatientDetails

log = logging.getLogger(__name__)

DIRECTORY_TTL_S = 600.0
WRITE_PHASES = frozenset({GoLivePhase.SANDBOX, GoLivePhase.WRITE})
"""Go-live phases in which callstream writes to ModMed, over FHIR and on the EMA screens alike."""
TASK_CODE = re.compile(r"^[a-z][a-z0-9-]{1,63}\Z")
TRANSCRIPT_INPUT = "transcript-reference"
"""Task.input type text of the call's transcript reference (where the telephony side keeps the transcript)."""
W = TypeVar("W", Appointment, Task, DocumentReference, Patient, Coverage)
BLOCK_KIND_OF_REASON: dict[VisitReason, BlockKind] = {
    VisitReason.NEW_PATIENT_CONSULT: BlockKind.CONSULT,
    VisitReason.ESI: BlockKind.PROCEDURE,
    VisitReason.FACET_INJECTION: BlockKind.PROCEDURE,
    VisitReason.RFA: BlockKind.PROCEDURE,
    VisitReason.SCS_TRIAL: BlockKind.PROCEDURE,
    VisitReason.KYPHOPLASTY: BlockKind.PROCEDURE,
}
"""Schedule block kind implied by a slot's visit reason; every other reason is a clinic-block visit."""


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


@dataclass(frozen=True, slots=True)
class SlotOffer:
    """A free Slot plus what procedure-aware scheduling needs: who, which room, what equipment."""

    practice_id: str
    slot: Slot
    visit_reason: VisitReason
    schedule_id: str
    practitioner_id: str
    practitioner_name: str | None
    location_id: str
    location_name: str | None
    room_kind: str | None
    equipment: frozenset[str]

    @property
    def slot_id(self) -> str:
        assert self.slot.id is not None
        return self.slot.id

    @property
    def start(self) -> dt.datetime:
        return self.slot.start

    @property
    def end(self) -> dt.datetime:
        return self.slot.end

    @property
    def minutes(self) -> int:
        """The procedure-mapped duration: ModMed's template length, carried by the slot."""
        return int((self.slot.end - self.slot.start).total_seconds() // 60)

    def to_candidate(self) -> SlotCandidate:
        """The guards' view of this slot (guards.scheduling decides which slots to offer).

        ModMed's Slot does not carry the schedule block kind; a PM template enumerates a visit reason
        only in blocks of the template's kind, so the kind follows from the visit reason.
        """
        try:
            room_kind = RoomKind(self.room_kind)
        except ValueError:
            raise InvalidResponseError(
                "slot's room has no known room kind", practice_id=self.practice_id, resource_type="Location"
            ) from None
        known = {e.value for e in Equipment}
        return SlotCandidate(
            slot_id=self.slot_id,
            start=self.start,
            end=self.end,
            practitioner_id=self.practitioner_id,
            location_id=self.location_id,
            room_kind=room_kind,
            room_equipment=frozenset(Equipment(e) for e in self.equipment if e in known),
            block_kind=BLOCK_KIND_OF_REASON.get(self.visit_reason, BlockKind.CLINIC),
        )


@dataclass(frozen=True, slots=True)
class _ScheduleInfo:
    practitioner_id: str
    practitioner_name: str | None
    location_id: str
    location_name: str | None


@dataclass(frozen=True, slots=True)
class _RoomInfo:
    kind: str | None
    equipment: frozenset[str]


class _DirectoryCache:
    """Schedules and rooms change rarely; caching them keeps slot search at one ModMed call."""

    def __init__(self, ttl_s: float = DIRECTORY_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[tuple[str, str, str], tuple[float, object]] = {}

    async def get(self, key: tuple[str, str, str], load: Callable[[], Awaitable[object]]) -> object:
        cached = self._entries.get(key)
        if cached is not None and time.monotonic() - cached[0] < self._ttl_s:
            return cached[1]
        value = await load()
        self._entries[key] = (time.monotonic(), value)
        return value


class ModMedConnector:
    """The dispatcher's entry point: reads, and ledger-guarded idempotent writes."""

    def __init__(self, client: ModMedClient, ledger: IdempotencyLedger) -> None:
        self.client = client
        self._ledger = ledger
        self._directory = _DirectoryCache()

    # ------------------------------------------------------------------------------- reads

    async def search_patients(
        self, practice: Practice, *, family: str, given: str, birthdate: dt.date, phone: str | None = None
    ) -> PatientMatch:
        """Find the caller's chart by name and date of birth; a phone number breaks ties."""
        family, given = family.strip(), given.strip()
        if not family or not given or len(family) > 100 or len(given) > 100:
            raise InvalidRequestError(
                "family and given names must be 1-100 characters", practice_id=practice.practice_id,
                resource_type="Patient",
            )
        result = await self.client.search(
            practice, Patient,
            {"family": family, "given": given, "birthdate": birthdate.isoformat(), "_count": "50"},
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

    async def read_compliance_flags(self, practice: Practice, patient_id: str) -> ComplianceFlags:
        """The chart's routing flags only; PDMP content and UDS results never leave ModMed."""
        _check_id(practice, "Patient", patient_id)
        if not practice.capabilities.fhir_compliance_flags:
            raise CapabilityMissing(
                "practice exposes no compliance flags over FHIR", practice_id=practice.practice_id,
                resource_type="Flag",
            )
        flags, checks = await asyncio.gather(
            self.client.search_json(practice, "Flag", {"patient": patient_id}),
            self.client.search_json(
                practice, "Observation", {"patient": patient_id, "code": f"{COMPLIANCE_SYSTEM}|{PDMP_CHECK_CODE}"}
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
            params["provider"] = f"Practitioner/{_check_id(practice, 'Practitioner', provider)}"
        if location is not None:
            params["location"] = f"Location/{_check_id(practice, 'Location', location)}"
        result = await self.client.search(practice, Slot, params)
        offers = []
        for slot in result.matches:
            if slot.status != "free" or slot.id is None:
                continue
            offers.append(await self._offer(practice, slot, VisitReason(visit_reason)))
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
    ) -> Appointment:
        """Book the patient into a free slot: visit reason, duration, provider and room come from the slot.

        ``expected_visit_reason`` is the guard's decision; a slot of another reason is refused with
        VisitReasonMismatch before anything is written (defense in depth behind the dispatcher).
        """
        self._require_writes(practice, "Appointment")
        _check_id(practice, "Patient", patient_id)
        _check_id(practice, "Slot", slot_id)
        expected_visit_reason = expected_reason(practice, expected_visit_reason)
        key = idempotency_key(call_id, Command.BOOK_APPOINTMENT, f"Patient/{patient_id}|Slot/{slot_id}")
        done = await self._already_done(practice, key, Appointment)
        if done is not None:
            _require_visit_reason(practice, _visit_reason_of(practice, done.appointmentType), expected_visit_reason)
            return done
        slot = await self.client.read(practice, Slot, slot_id)
        reason = _visit_reason_of(practice, slot.appointmentType)
        _require_visit_reason(practice, reason, expected_visit_reason)
        offer = await self._offer(practice, slot, reason)
        appointment = Appointment.model_validate(
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

        async def landed() -> Appointment | None:
            return await self._booking_at(practice, patient_id, offer)

        # Asked before every booking, even one never attempted: the check also finds a booking staff made
        # for this patient at this time, which a ledger cannot know of.
        return await self._idempotent_write(practice, key, Command.BOOK_APPOINTMENT, "POST", appointment, landed,
                                            ask_first=True)

    async def reschedule_appointment(
        self,
        practice: Practice,
        *,
        call_id: str,
        appointment_id: str,
        new_slot_id: str,
        expected_visit_reason: VisitReason | None = None,
    ) -> Appointment:
        """Move a booked appointment to another free slot of the same visit reason (PUT).

        ``expected_visit_reason`` is the guard's decision: an appointment (and so a new slot) of another
        reason is refused with VisitReasonMismatch before anything is written.
        """
        self._require_writes(practice, "Appointment")
        _check_id(practice, "Appointment", appointment_id)
        _check_id(practice, "Slot", new_slot_id)
        expected_visit_reason = expected_reason(practice, expected_visit_reason)
        key = idempotency_key(call_id, Command.RESCHEDULE_APPOINTMENT, f"Appointment/{appointment_id}|Slot/{new_slot_id}")
        done = await self._already_done(practice, key, Appointment)
        if done is not None:
            _require_visit_reason(practice, _visit_reason_of(practice, done.appointmentType), expected_visit_reason)
            return done
        current = await self.client.read(practice, Appointment, appointment_id)
        _require_visit_reason(practice, _visit_reason_of(practice, current.appointmentType), expected_visit_reason)
        if _holds_slot(current, new_slot_id):
            await self._ledger.complete(key, "Appointment", appointment_id)
            return current
        if current.status not in OCCUPYING_APPOINTMENT_STATUSES:
            raise ConflictError(
                "only a booked appointment can be rescheduled", practice_id=practice.practice_id,
                resource_type="Appointment", method="PUT",
            )
        slot = await self.client.read(practice, Slot, new_slot_id)
        reason = _visit_reason_of(practice, current.appointmentType)
        if _visit_reason_of(practice, slot.appointmentType) is not reason:
            raise ConflictError(
                "the new slot is for another visit reason", practice_id=practice.practice_id,
                resource_type="Slot", method="PUT",
            )
        offer = await self._offer(practice, slot, reason)
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
        moved = Appointment.model_validate(body)

        async def landed() -> Appointment | None:
            latest = await self.client.read(practice, Appointment, appointment_id)
            return latest if _holds_slot(latest, new_slot_id) else None

        # ``current``, just read, shows the move has not landed: no need to ask again before the first PUT.
        return await self._idempotent_write(practice, key, Command.RESCHEDULE_APPOINTMENT, "PUT", moved, landed,
                                            ask_first=False)

    async def cancel_appointment(
        self, practice: Practice, *, call_id: str, appointment_id: str, reason: str = "patient request"
    ) -> Appointment:
        """Cancel an appointment (PUT status=cancelled); cancelling twice is a no-op."""
        self._require_writes(practice, "Appointment")
        _check_id(practice, "Appointment", appointment_id)
        key = idempotency_key(call_id, Command.CANCEL_APPOINTMENT, f"Appointment/{appointment_id}")
        done = await self._already_done(practice, key, Appointment)
        if done is not None:
            return done
        current = await self.client.read(practice, Appointment, appointment_id)
        if current.status == "cancelled":
            await self._ledger.complete(key, "Appointment", appointment_id)
            return current
        body = current.model_dump(mode="json", exclude_none=True)
        body.update(status="cancelled", cancelationReason={"text": reason[:200]})
        cancelled = Appointment.model_validate(body)

        async def landed() -> Appointment | None:
            latest = await self.client.read(practice, Appointment, appointment_id)
            return latest if latest.status == "cancelled" else None

        # ``current``, just read, shows it is not cancelled yet.
        return await self._idempotent_write(practice, key, Command.CANCEL_APPOINTMENT, "PUT", cancelled, landed,
                                            ask_first=False)

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
    ) -> Task:
        """A task in the practice's queue; CapabilityMissing where ModMed has no FHIR Task create (use EMA).

        ``description`` comes from the guard's templates (call context, never clinical content); the
        PDMP last-check time is the only clinical-adjacent value a task may carry. The task carries the call
        reference (an identifier) and ``transcript_ref`` (an input, and a line of the description), scrubbed
        like every reference that leaves callstream; one the scrubber refuses is left out.
        """
        self._require_writes(practice, "Task")
        if not practice.capabilities.fhir_task_create:
            raise CapabilityMissing(
                "practice has no FHIR Task create", practice_id=practice.practice_id, resource_type="Task",
                method="POST",
            )
        _check_id(practice, "Patient", patient_id)
        if owner_id is not None:
            _check_id(practice, "Practitioner", owner_id)
        if not TASK_CODE.match(task_code):
            raise InvalidRequestError(
                "task_code must be a lowercase task-kind code", practice_id=practice.practice_id, resource_type="Task"
            )
        key = idempotency_key(call_id, Command.CREATE_TASK, f"Patient/{patient_id}|{task_code}")
        done = await self._already_done(practice, key, Task)
        if done is not None:
            return done
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
        task = Task.model_validate(body)

        async def landed() -> Task | None:
            found = await self.client.search(practice, Task, {"identifier": f"{IDEMPOTENCY_KEY_SYSTEM}|{key}"})
            return found.matches[0] if found.matches else None

        # Only callstream writes this identifier: a write-ahead ledger without the key proves no Task has it.
        return await self._idempotent_write(practice, key, Command.CREATE_TASK, "POST", task, landed,
                                            ask_first=not self._ledger.proves_unattempted(key))

    async def create_document_reference(
        self,
        practice: Practice,
        *,
        call_id: str,
        patient_id: str,
        title: str,
        url: str,
        content_type: str = "application/pdf",
    ) -> DocumentReference:
        """Intake results onto the chart: ModMed uploads the document from ``url``."""
        self._require_writes(practice, "DocumentReference")
        _check_id(practice, "Patient", patient_id)
        if not url.startswith("https://") or len(url) > 2000 or any(c.isspace() for c in url):
            raise InvalidRequestError(
                "document url must be an https URL", practice_id=practice.practice_id,
                resource_type="DocumentReference",
            )
        key = idempotency_key(call_id, Command.CREATE_DOCUMENT_REFERENCE, f"Patient/{patient_id}|{url}")
        done = await self._already_done(practice, key, DocumentReference)
        if done is not None:
            return done
        started = dt.datetime.now(dt.UTC)
        document = DocumentReference.model_validate(
            {
                "resourceType": "DocumentReference",
                "masterIdentifier": {"system": IDEMPOTENCY_KEY_SYSTEM, "value": key},
                "status": "current",
                "type": {"text": "Intake form results"},
                "category": [{"text": "intake"}],
                "subject": {"reference": f"Patient/{patient_id}"},
                "date": started.isoformat(),
                "content": [{"attachment": {"contentType": content_type, "url": url, "title": title[:200]}}],
            }
        )

        async def landed() -> DocumentReference | None:
            # By patient (ModMed has no identifier search here), no date bound: a form filed long ago is found too.
            found = await self.client.search(practice, DocumentReference, {"patient": patient_id})
            match = next((d for d in found.matches if d.masterIdentifier and d.masterIdentifier.value == key), None)
            if match is None and found.truncated:  # unread pages may hold it: not proven unfiled, so never resend
                raise RetryableError("the chart's documents exceed the search page budget", method="GET",
                                     practice_id=practice.practice_id, resource_type="DocumentReference")
            return match

        # Only callstream writes this master identifier (as for Tasks).
        return await self._idempotent_write(practice, key, Command.CREATE_DOCUMENT_REFERENCE, "POST", document,
                                            landed, ask_first=not self._ledger.proves_unattempted(key))

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
    ) -> Patient:
        """Create the chart of a caller no search matched: at most one Patient per call (the ledger key names the
        call, and the Patient carries it as an identifier, so a lost answer is found again, never created twice).
        ModMed assigns the MRN; a second chart with the same name and birth date is refused there (ConflictError).
        The caller must have been searched again just before (streams.callflow does)."""
        self._require_writes(practice, "Patient")
        family, given = family.strip(), given.strip()
        if not family or not given or len(family) > 100 or len(given) > 100:
            raise InvalidRequestError(
                "family and given names must be 1-100 characters", practice_id=practice.practice_id,
                resource_type="Patient",
            )
        key = idempotency_key(call_id, Command.REGISTER_PATIENT, "Patient")
        done = await self._already_done(practice, key, Patient)
        if done is not None:
            return done
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
        patient = Patient.model_validate(body)

        async def landed() -> Patient | None:
            found = await self.client.search(practice, Patient, {"identifier": f"{IDEMPOTENCY_KEY_SYSTEM}|{key}"})
            return found.matches[0] if found.matches else None

        # Only callstream writes this identifier: a write-ahead ledger without the key proves no Patient has it.
        return await self._idempotent_write(practice, key, Command.REGISTER_PATIENT, "POST", patient, landed,
                                            ask_first=not self._ledger.proves_unattempted(key))

    async def create_coverage(
        self, practice: Practice, *, call_id: str, patient_id: str, insurance: InsuranceDetails
    ) -> Coverage:
        """The insurance card of a patient registered in this call, as a Coverage (create-only at ModMed)."""
        self._require_writes(practice, "Coverage")
        _check_id(practice, "Patient", patient_id)
        key = idempotency_key(call_id, Command.CREATE_COVERAGE, f"Patient/{patient_id}")
        done = await self._already_done(practice, key, Coverage)
        if done is not None:
            return done
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
        coverage = Coverage.model_validate(body)

        async def landed() -> Coverage | None:
            found = await self.client.search(practice, Coverage, {"patient": patient_id})
            return next((c for c in found.matches if any(
                i.system == IDEMPOTENCY_KEY_SYSTEM and i.value == key for i in c.identifier or ())), None)

        return await self._idempotent_write(practice, key, Command.CREATE_COVERAGE, "POST", coverage, landed,
                                            ask_first=not self._ledger.proves_unattempted(key))

    # ------------------------------------------------------------------------- internals

    @staticmethod
    def _require_writes(practice: Practice, resource_type: str) -> None:
        """Writes only in the write phases, and never on the read-only certified track."""
        require_write_phase(practice, resource_type)
        if practice.track is ApiTrack.CERTIFIED:
            raise CapabilityMissing(
                "the certified FHIR track is read-only", practice_id=practice.practice_id, resource_type=resource_type
            )

    async def _already_done(self, practice: Practice, key: str, model: type[W]) -> W | None:
        entry = self._ledger.get(key)
        if entry is None or entry.state is not LedgerState.DONE or entry.resource_id is None:
            return None
        return await self.client.read(practice, model, entry.resource_id)

    async def _idempotent_write(
        self,
        practice: Practice,
        key: str,
        command: Command,
        method: Literal["POST", "PUT"],
        resource: W,
        landed: Callable[[], Awaitable[W | None]],
        *,
        ask_first: bool,
    ) -> W:
        """Ledger + practice check around one write; resend only once the check proved it did not land.

        ``ask_first``: ask the practice (``landed``) before the first attempt. Callers say no only where
        that answer is already known: the write's target was just read, or only callstream writes what
        ``landed`` looks for and a write-ahead ledger proves this key never left. Otherwise the event may
        have been handled by a worker whose ledger entry was lost, or the practice's staff made the write.
        """
        resource_type = resource.get_resource_type()
        if ask_first:
            found = await landed()
            if found is not None:
                return await self._done(key, found)
        await self._ledger.begin(key, command.value)
        for attempt in (1, 2):
            try:
                written = await self.client.write(practice, method, resource)
            except RequestNotSentError as exc:
                await self._ledger.fail(key, type(exc).__name__)
                raise
            except ConflictError:
                found = await landed()  # our own earlier attempt may hold the slot
                if found is not None:
                    return await self._done(key, found)
                await self._ledger.fail(key, "ConflictError")
                raise
            except (RetryableError, InvalidResponseError) as exc:  # outcome unknown: ask the practice
                log.warning(
                    "practice %s: %s %s outcome unknown (%s); checking whether it landed",
                    practice.practice_id, method, resource_type, type(exc).__name__,
                )
                found = await landed()
                if found is not None:
                    return await self._done(key, found)
                if attempt == 2:
                    raise
                await self._ledger.begin(key, command.value)
                continue
            except ModMedError as exc:
                await self._ledger.fail(key, type(exc).__name__)
                raise
            return await self._done(key, written)  # type: ignore[arg-type]
        raise AssertionError("unreachable: the loop returns or raises")

    async def _done(self, key: str, resource: W) -> W:
        assert resource.id is not None
        await self._ledger.complete(key, resource.get_resource_type(), resource.id)
        return resource

    async def _booking_at(self, practice: Practice, patient_id: str, offer: SlotOffer) -> Appointment | None:
        """The patient's occupying appointment at the offer's start, if any (ours or anybody's)."""
        found = await self.client.search(
            practice, Appointment, {"patient": patient_id, "date": offer.start.isoformat()}
        )
        for appointment in found.matches:
            if appointment.status in OCCUPYING_APPOINTMENT_STATUSES and appointment.start == offer.start:
                return appointment
        return None

    async def _offer(self, practice: Practice, slot: Slot, visit_reason: VisitReason) -> SlotOffer:
        schedule_ref = slot.schedule.reference if slot.schedule else None
        schedule_id = _reference_id(schedule_ref, "Schedule")
        if schedule_id is None:
            raise InvalidResponseError(
                "Slot does not reference its Schedule", practice_id=practice.practice_id, resource_type="Slot"
            )
        schedule = await self._schedule(practice, schedule_id)
        room = await self._room(practice, schedule.location_id)
        return SlotOffer(
            practice_id=practice.practice_id,
            slot=slot,
            visit_reason=visit_reason,
            schedule_id=schedule_id,
            practitioner_id=schedule.practitioner_id,
            practitioner_name=schedule.practitioner_name,
            location_id=schedule.location_id,
            location_name=schedule.location_name,
            room_kind=room.kind,
            equipment=room.equipment,
        )

    async def _schedule(self, practice: Practice, schedule_id: str) -> _ScheduleInfo:
        async def load() -> _ScheduleInfo:
            schedule = await self.client.read(practice, Schedule, schedule_id)
            practitioner = location = None
            for actor in schedule.actor or ():
                practitioner = practitioner or _actor(actor, "Practitioner")
                location = location or _actor(actor, "Location")
            if practitioner is None or location is None:
                raise InvalidResponseError(
                    "Schedule lacks a Practitioner or Location actor", practice_id=practice.practice_id,
                    resource_type="Schedule",
                )
            return _ScheduleInfo(practitioner[0], practitioner[1], location[0], location[1])

        info = await self._directory.get((practice.practice_id, "Schedule", schedule_id), load)
        assert isinstance(info, _ScheduleInfo)
        return info

    async def _room(self, practice: Practice, location_id: str) -> _RoomInfo:
        async def load() -> _RoomInfo:
            location = await self.client.read(practice, Location, location_id)
            kind = next(
                (c.code for t in location.type or () for c in t.coding or () if c.system == ROOM_KIND_SYSTEM), None
            )
            equipment = frozenset(
                ext.valueCoding.code
                for ext in location.extension or ()
                if ext.url == EXT_ROOM_EQUIPMENT and ext.valueCoding is not None
                and ext.valueCoding.system == EQUIPMENT_SYSTEM and ext.valueCoding.code
            )
            return _RoomInfo(kind, equipment)

        info = await self._directory.get((practice.practice_id, "Location", location_id), load)
        assert isinstance(info, _RoomInfo)
        return info


def require_write_phase(practice: Practice, resource_type: str) -> None:
    """Writes, over FHIR or on EMA screens, only in the sandbox and write phases (read-only: review queue)."""
    if practice.phase not in WRITE_PHASES:
        raise WriteNotAllowed(
            f"practice is in the {practice.phase.value} phase: writes go to the review queue",
            practice_id=practice.practice_id, resource_type=resource_type,
        )


def expected_reason(practice: Practice, value: object) -> VisitReason | None:
    """The guard's visit reason as passed by the dispatcher, checked before anything is read or written."""
    if value is None:
        return None
    try:
        return VisitReason(value)
    except ValueError:
        raise InvalidRequestError(
            "expected_visit_reason is not a visit reason", practice_id=practice.practice_id, resource_type="Slot"
        ) from None


def _require_visit_reason(practice: Practice, actual: VisitReason, expected: VisitReason | None) -> None:
    if expected is not None and actual is not expected:
        raise VisitReasonMismatch(
            f"the slot is for {actual.value}, the guard decided {expected.value}",
            practice_id=practice.practice_id, resource_type="Slot",
        )


def _check_id(practice: Practice, resource_type: str, resource_id: str) -> str:
    if not isinstance(resource_id, str) or FHIR_ID.match(resource_id) is None:
        raise InvalidRequestError("not a FHIR id", practice_id=practice.practice_id, resource_type=resource_type)
    return resource_id


def _reference_id(reference: str | None, resource_type: str) -> str | None:
    if not reference:
        return None
    parts = reference.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type and FHIR_ID.match(parts[-1]):
        return parts[-1]
    return None


def _actor(actor: object, resource_type: str) -> tuple[str, str | None] | None:
    reference = getattr(actor, "reference", None)
    found = _reference_id(reference, resource_type)
    return (found, getattr(actor, "display", None)) if found else None


def _visit_reason_of(practice: Practice, concept: object) -> VisitReason:
    for coding in getattr(concept, "coding", None) or ():
        if coding.system == VISIT_REASON_SYSTEM:
            try:
                return VisitReason(coding.code)
            except ValueError:
                break
    raise InvalidResponseError(
        "resource carries no known visit-reason code", practice_id=practice.practice_id
    )


def _holds_slot(appointment: Appointment, slot_id: str) -> bool:
    return appointment.status in OCCUPYING_APPOINTMENT_STATUSES and any(
        _reference_id(ref.reference, "Slot") == slot_id for ref in appointment.slot or ()
    )


def _phone_key(text: str) -> str:
    return re.sub(r"\D", "", text)[-10:]

