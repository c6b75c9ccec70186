"""Who may book or change what: only a slot offered in this call, only the caller's own appointment; and the
decision that searches again when somebody else took the chosen slot.

The voice agent names slot and appointment ids; these rules keep such an id from reaching a write unless the
call earned it (the slot was offered to this caller, the appointment is theirs).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from enum import StrEnum

from guards.decision import Decision
from guards.errors import GuardInputError
from guards.model import Command, Outcome, VisitReason
from guards.replies import ReplyTemplate

_SLOT_WRITES = frozenset({Command.BOOK_APPOINTMENT, Command.RESCHEDULE_APPOINTMENT})
_APPOINTMENT_CHANGES = (Command.RESCHEDULE_APPOINTMENT, Command.CANCEL_APPOINTMENT)


class ChoiceRefusal(StrEnum):
    """Why a chosen slot cannot be booked (the error class of the GUARD_HIT record)."""

    NO_OPEN_OFFER = "NoOpenOffer"
    """Nothing was offered in this call (or the offer was used or withdrawn)."""
    SLOT_NOT_OFFERED = "SlotNotOffered"
    """The slot is not one of those offered."""


def refuse_choice(offered_slot_ids: Collection[str] | None, chosen_slot_id: str) -> ChoiceRefusal | None:
    """Only a slot the guards ranked and offered in this call can be booked; None when the choice is one of them.

    ``offered_slot_ids`` is None when the call has no open offer.
    """
    if offered_slot_ids is None:
        return ChoiceRefusal.NO_OPEN_OFFER
    if chosen_slot_id not in offered_slot_ids:
        return ChoiceRefusal.SLOT_NOT_OFFERED
    return None


def is_callers_appointment(appointment_patient_ids: Iterable[str], caller_patient_id: str) -> bool:
    """A caller may only move or cancel their own appointment: the caller is its one and only patient."""
    return set(appointment_patient_ids) == {caller_patient_id}


def change_needing_ownership(decision: Decision) -> Command | None:
    """Ownership before words: the change of an existing appointment (a reschedule before a cancel) the decision
    allows or queues. The appointment the caller names for it must be proved theirs (``is_callers_appointment``)
    before a slot is offered, a change promised or anything queued with its id; None when the decision changes
    no appointment."""
    return next((c for c in _APPOINTMENT_CHANGES if c in decision.commands or c in decision.queued_commands), None)


def search_again(write: Command, visit_reason: VisitReason) -> Decision:
    """Somebody else took the chosen slot between offer and choice: the same allowed booking (or reschedule)
    searches again and offers what is still free. Nothing is decided anew: the guards allowed this write
    when they offered the slots, and the new search cannot widen it."""
    if write not in _SLOT_WRITES:
        raise GuardInputError("only a booking or a reschedule searches slots again")
    return Decision(
        outcome=Outcome.ALLOW,
        commands=(Command.SEARCH_SLOTS, write),
        visit_reason=visit_reason,
        reply=ReplyTemplate.OFFER_SLOTS,
        guards_fired=(),
    )
