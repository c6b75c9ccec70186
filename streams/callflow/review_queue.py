"""Writes and requests handed to the human review queue, with the params staff (and the queue's retry) need.

A queued item names what it is about (the appointment, the chosen slot) and carries the identity, registration
details and the decided request where the retry or staff need them: internal topic only, never logged.
"""

from __future__ import annotations

from callstream.tenants import Practice
from guards import GoLivePhase, IntentRequest
from schemas.models import AuditAction, AuditOutcome, CommandKind
from streams.callflow.protocol import AuditOut, Output, ReviewOut
from streams.callflow.state import CallState

GUARD_REQUEST_PARAM = "guard_request"
"""Review-queue command params: the decided request (IntentRequest JSON) and the count of controlled-substance
requests earlier in the call, for the retry's new decision; and the controlled-substance request (intent event
id) a queued item escalates, which the review queue counts as escalated once the item is stored."""
EARLIER_CS_REQUESTS_PARAM = "cs_earlier"
CS_REQUEST_PARAM = "cs_request"


def queued_reason(practice: Practice) -> str:
    """Why the guards queued a write: the read-only phase, or else the practice's after-hours rule."""
    return "read_only_phase" if practice.phase is GoLivePhase.READ_ONLY else "after_hours_rule"


def queue_for_review(state: CallState, kind: CommandKind, target: str, params: dict[str, str], reason: str, *,
                     resource_type: str | None = None, resource_ids: tuple[str, ...] = (), slot_id: str | None = None,
                     ) -> tuple[Output, ...]:
    """A review-queue entry and its audit record, naming what the queued write is about (the appointment a
    reschedule or cancel targets, the slot chosen) so the per-call record shows it."""
    review = ReviewOut(
        kind=kind,
        idempotency_key=f"{state.call_id}:{kind.value}:{target}"[:256],
        params={"reason": reason, **params},
    )
    audit = AuditOut(
        action=AuditAction.REVIEW_QUEUED,
        outcome=AuditOutcome.QUEUED,
        command=kind,
        resource_type=resource_type if resource_ids else None,
        resource_ids=resource_ids,
        slot_id=slot_id,
        detail={"queue": "review", "operation": reason},
    )
    return review, audit


def identity_params(state: CallState) -> dict[str, str]:
    """What staff need to register or find a caller (internal review queue only; never logged)."""
    if state.identity is None:
        return {}
    identity = state.identity
    params = {
        "family_name": identity.family_name,
        "given_name": identity.given_name,
        "birth_date": identity.birth_date.isoformat(),
    }
    callback = identity.callback_number or state.caller_number
    if callback:
        params["callback_number"] = callback
    return params


def guard_params(request: IntentRequest | None, earlier_cs_requests: int) -> dict[str, str]:
    """The request the guards decided on (the caller's words too: internal topic only, never copied into a
    review item), so the review queue's retry of the write decides it again (review.core.recheck)."""
    if request is None:
        return {}
    return {GUARD_REQUEST_PARAM: request.model_dump_json(exclude_none=True),
            EARLIER_CS_REQUESTS_PARAM: str(earlier_cs_requests)}


def registration_params(state: CallState, *, insurance_only: bool = False) -> dict[str, str]:
    """What staff need to register the caller by hand (internal review queue only; never logged)."""
    details = state.registration
    if details is None:
        return {}
    params: dict[str, str] = {}
    if not insurance_only:
        address = details.address
        params.update(gender=details.gender, address_line=address.line, address_city=address.city,
                      address_state=address.state, address_postal_code=address.postal_code)
        if details.preferred_pharmacy is not None:
            params["pharmacy_name"] = details.preferred_pharmacy.name
            if details.preferred_pharmacy.phone:
                params["pharmacy_phone"] = details.preferred_pharmacy.phone
        if state.identity is not None and state.identity.email:
            params["email"] = state.identity.email
    if details.insurance is not None:
        params.update(payer_name=details.insurance.payer_name, member_id=details.insurance.member_id,
                      subscriber_relationship=details.insurance.relationship)
        if details.insurance.group_number:
            params["group_number"] = details.insurance.group_number
    return params
