"""What the connector refuses before it reads or writes anything at ModMed.

A write outside the practice's write phases or on the read-only certified track, an id that is not a
FHIR id, a slot or appointment of another visit reason than the guard decided: each is refused here,
before the ledger or the practice hears of it, with the typed error of connectors.errors. The FHIR
operations (connectors.operations) and the EMA screen commands (connectors.ema.commands) share these
checks, so a write is allowed or refused by the same rule whichever way it reaches ModMed.
"""

from __future__ import annotations

from callstream.tenants import ApiTrack, Practice
from connectors.allow_lists import FHIR_ID
from connectors.errors import (
    CapabilityMissing,
    InvalidRequestError,
    InvalidResponseError,
    VisitReasonMismatch,
    WriteNotAllowed,
)
from connectors.vocabulary import VISIT_REASON_SYSTEM
from guards.model import GoLivePhase, VisitReason

WRITE_PHASES = frozenset({GoLivePhase.SANDBOX, GoLivePhase.WRITE})
"""Go-live phases in which callstream writes to ModMed, over FHIR and on the EMA screens alike."""


def require_write_phase(practice: Practice, resource_type: str) -> None:
    """Writes, over FHIR or on EMA screens, only in the sandbox and write phases (read-only: review queue)."""
    if practice.phase not in WRITE_PHASES:
        raise WriteNotAllowed(
            f"practice is in the {practice.phase.value} phase: writes go to the review queue",
            practice_id=practice.practice_id, resource_type=resource_type,
        )


def require_fhir_writes(practice: Practice, resource_type: str) -> None:
    """FHIR writes only in the write phases, and never on the read-only certified track."""
    require_write_phase(practice, resource_type)
    if practice.track is ApiTrack.CERTIFIED:
        raise CapabilityMissing(
            "the certified FHIR track is read-only", practice_id=practice.practice_id, resource_type=resource_type
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


def require_visit_reason(practice: Practice, actual: VisitReason, expected: VisitReason | None) -> None:
    """The slot or appointment is of the visit reason the guard decided (when it decided one)."""
    if expected is not None and actual is not expected:
        raise VisitReasonMismatch(
            f"the slot is for {actual.value}, the guard decided {expected.value}",
            practice_id=practice.practice_id, resource_type="Slot",
        )


def visit_reason_of(practice: Practice, concept: object) -> VisitReason:
    """The visit reason coded on a Slot's or Appointment's appointmentType; InvalidResponseError if none."""
    for coding in getattr(concept, "coding", None) or ():
        if coding.system == VISIT_REASON_SYSTEM:
            try:
                return VisitReason(coding.code)
            except ValueError:
                break
    raise InvalidResponseError(
        "resource carries no known visit-reason code", practice_id=practice.practice_id
    )


def check_id(practice: Practice, resource_type: str, resource_id: str) -> str:
    """``resource_id`` when it is a FHIR id; InvalidRequestError before it reaches a URL otherwise."""
    if not isinstance(resource_id, str) or FHIR_ID.match(resource_id) is None:
        raise InvalidRequestError("not a FHIR id", practice_id=practice.practice_id, resource_type=resource_type)
    return resource_id
