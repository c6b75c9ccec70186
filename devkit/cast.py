"""Real sandbox patients for scripted calls, chosen by what their charts say.

The sandbox world is deterministic (same seed, practice count, patient count and anchor date give the
same patients), so the demo, the benchmark and the end-to-end tests build the world the running sandbox
serves and pick callers from it: patients without any compliance flag for bookings, chronic-opioid
patients with an active or an expired agreement, patients with a provider-set phone restriction, and
patients with an upcoming appointment to move. Only callers whose name and date of birth identify
exactly one chart are chosen, as the voice agent's search must match them.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sandbox.world import SandboxWorld
from schemas.models import CallEvent

COMPLIANCE_SYSTEM = "https://callstream.dev/fhir/CodeSystem/pain-compliance"
VISIT_REASON_SYSTEM = "https://callstream.dev/fhir/CodeSystem/visit-reason"
MOVABLE_VISITS = frozenset({"esi", "facet-injection", "follow-up", "trigger-point", "rfa"})
"""Visit reasons whose sandbox templates are at least as long as the guards' procedure durations."""


@dataclass(frozen=True, slots=True)
class Caller:
    """A synthetic patient as the voice agent would identify them (sandbox data only)."""

    patient_id: str
    family: str
    given: str
    birth_date: str
    phone: str


@dataclass(frozen=True, slots=True)
class Rebooking:
    caller: Caller
    appointment_id: str
    visit_reason: str


@dataclass(frozen=True, slots=True)
class PracticeCast:
    practice_id: str
    called_number: str
    plain: tuple[Caller, ...]
    """No compliance flag at all."""
    refill: tuple[Caller, ...]
    """Chronic opioid, active agreement, no restriction, no aberrant UDS."""
    expired: tuple[Caller, ...]
    """Chronic opioid, expired agreement, no restriction, no aberrant UDS."""
    restricted: tuple[Caller, ...]
    """A no-phone-requests restriction."""
    rebookings: tuple[Rebooking, ...]
    """Flag-free patients with a booked appointment at least two days ahead."""


def cast_of(world: SandboxWorld, now: datetime | None = None,
            practice_ids: Iterable[str] | None = None) -> dict[str, PracticeCast]:
    """Every practice's cast (or those of `practice_ids`: each cast generates its practice's data), in the
    world's patient order (deterministic)."""
    moment = now or datetime.now(UTC)
    chosen = list(world.profiles) if practice_ids is None else list(practice_ids)
    return {practice_id: _practice_cast(practice_id, world.tenants[practice_id].store,
                                        world.profiles[practice_id].called_numbers[0], moment)
            for practice_id in chosen}


def _practice_cast(practice_id: str, store: Any, called_number: str, now: datetime) -> PracticeCast:
    flags: dict[str, dict[str, str | None]] = defaultdict(dict)
    for flag in store.all_of("Flag"):
        patient = str(flag.get("subject", {}).get("reference", "")).rsplit("/", 1)[-1]
        coding: dict[str, Any] = next(
            (c for c in flag.get("code", {}).get("coding", []) if c.get("system") == COMPLIANCE_SYSTEM), {})
        value = next((e.get("valueCode") for e in flag.get("extension", []) if "valueCode" in e), None)
        flags[patient][str(coding.get("code"))] = value
    patients = [p for p in store.all_of("Patient") if p.get("active", True)]
    identity = Counter((p["name"][0]["family"].casefold(), p["birthDate"]) for p in patients)
    callers = [_caller(p) for p in patients if identity[(p["name"][0]["family"].casefold(), p["birthDate"])] == 1]

    def having(test: Any) -> tuple[Caller, ...]:
        return tuple(c for c in callers if test(flags.get(c.patient_id, {})))

    quiet = {"phone-request-restriction", "aberrant-uds"}
    plain = having(lambda f: not f)
    upcoming = _upcoming_appointments(store.all_of("Appointment"), now)
    return PracticeCast(
        practice_id=practice_id,
        called_number=called_number,
        plain=plain,
        refill=having(lambda f: "chronic-opioid" in f and f.get("opioid-agreement") == "active" and not quiet & set(f)),
        expired=having(lambda f: "chronic-opioid" in f and f.get("opioid-agreement") == "expired" and not quiet & set(f)),
        restricted=having(lambda f: f.get("phone-request-restriction") == "no-phone-requests"),
        rebookings=tuple(Rebooking(c, *upcoming[c.patient_id]) for c in plain if c.patient_id in upcoming),
    )


def _caller(patient: Mapping[str, Any]) -> Caller:
    phone = next((t["value"] for t in patient.get("telecom", []) if t.get("system") == "phone"), "+15555550100")
    return Caller(patient["id"], patient["name"][0]["family"], patient["name"][0]["given"][0], patient["birthDate"],
                  phone)


def _upcoming_appointments(appointments: Iterable[Mapping[str, Any]], now: datetime) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for appointment in appointments:
        if appointment.get("status") != "booked":
            continue
        start = datetime.fromisoformat(str(appointment["start"]))
        reason = next((c.get("code") for c in appointment.get("appointmentType", {}).get("coding", [])
                       if c.get("system") == VISIT_REASON_SYSTEM), None)
        patient = next((str(p["actor"]["reference"]).rsplit("/", 1)[-1] for p in appointment.get("participant", [])
                        if str(p.get("actor", {}).get("reference", "")).startswith("Patient/")), None)
        if patient and reason in MOVABLE_VISITS and start > now + timedelta(days=2) and patient not in found:
            found[patient] = (appointment["id"], str(reason))
    return found


class Script:
    """Builds one call's events in order, as the voice agent would publish them."""

    def __init__(self, called_number: str, *, call_id: str | None = None, caller_number: str = "+15555550123",
                 now: datetime | None = None) -> None:
        self.call_id = call_id or f"call-{uuid.uuid4().hex[:12]}"
        self.called_number = called_number
        self.caller_number = caller_number
        self.now = now or datetime.now(UTC)
        self.events: list[CallEvent] = []

    def add(self, payload: dict[str, Any]) -> CallEvent:
        event = CallEvent.model_validate({
            "event_id": str(uuid.uuid4()),
            "call_id": self.call_id,
            "seq": len(self.events),
            "occurred_at": (self.now + timedelta(seconds=15 * len(self.events))).isoformat(),
            "called_number": self.called_number,
            "payload": payload,
        })
        self.events.append(event)
        return event

    def started(self) -> Script:
        self.add({"type": "call_started", "caller_number": self.caller_number})
        return self

    def identified(self, caller: Caller) -> Script:
        self.add({"type": "caller_identified", "family_name": caller.family, "given_name": caller.given,
                  "birth_date": caller.birth_date})
        return self

    def intent(self, intent: str, *, snippet: str | None = None, **entities: Any) -> Script:
        self.add({"type": "intent_recognised", "intent": intent, "confidence": 0.92,
                  "medication_mentioned": entities.pop("medication_mentioned", False),
                  "controlled_substance_mentioned": entities.pop("controlled_substance_mentioned", False),
                  "transcript_snippet": snippet, **entities})
        return self

    def chooses(self, slot: str = "OFFERED.1") -> Script:
        self.add({"type": "slot_chosen", "slot_id": slot})
        return self

    def ended(self, disposition: str = "COMPLETED") -> Script:
        self.add({"type": "call_ended", "transcript_ref": f"s3://telephony-transcripts/{self.call_id}.json",
                  "disposition": disposition})
        return self


def booking(cast: PracticeCast, caller: Caller, visit_reason: str = "esi", slot: str = "OFFERED.1",
            **options: Any) -> Script:
    return (Script(cast.called_number, caller_number=caller.phone, **options).started().identified(caller)
            .intent("BOOK_APPOINTMENT", visit_reason=visit_reason).chooses(slot).ended())


def reschedule(cast: PracticeCast, rebooking: Rebooking, slot: str = "OFFERED.1", **options: Any) -> Script:
    caller = rebooking.caller
    return (Script(cast.called_number, caller_number=caller.phone, **options).started().identified(caller)
            .intent("RESCHEDULE_APPOINTMENT", visit_reason=rebooking.visit_reason,
                    appointment_id=rebooking.appointment_id)
            .chooses(slot).ended())


def refill(cast: PracticeCast, caller: Caller, **options: Any) -> Script:
    return (Script(cast.called_number, caller_number=caller.phone, **options).started().identified(caller)
            .intent("REFILL_REQUEST", medication_mentioned=True, controlled_substance_mentioned=True,
                    snippet="I'm almost out of my oxycodone and need a refill before the weekend")
            .ended())


def controlled_visit(cast: PracticeCast, caller: Caller, **options: Any) -> Script:
    """A medication-management booking: the in-office controlled-substance visit."""
    return (Script(cast.called_number, caller_number=caller.phone, **options).started().identified(caller)
            .intent("BOOK_APPOINTMENT", visit_reason="medication-management").ended())
