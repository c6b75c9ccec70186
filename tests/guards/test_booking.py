"""Ids the voice agent names reach a write only when the call earned them (guards.booking)."""

from __future__ import annotations

import pytest

from guards import Command, GuardInputError, Outcome, VisitReason
from guards.booking import ChoiceRefusal, is_callers_appointment, refuse_choice, search_again
from guards.replies import ReplyTemplate


def test_only_a_slot_offered_in_this_call_can_be_booked() -> None:
    assert refuse_choice(["slot-1", "slot-2"], "slot-2") is None
    assert refuse_choice(["slot-1", "slot-2"], "slot-9") is ChoiceRefusal.SLOT_NOT_OFFERED
    assert refuse_choice(None, "slot-1") is ChoiceRefusal.NO_OPEN_OFFER
    assert refuse_choice([], "slot-1") is ChoiceRefusal.SLOT_NOT_OFFERED


def test_only_the_callers_own_appointment_can_be_moved_or_cancelled() -> None:
    assert is_callers_appointment(["pt-1"], "pt-1")
    assert not is_callers_appointment(["pt-2"], "pt-1")
    assert not is_callers_appointment(["pt-1", "pt-2"], "pt-1"), "a shared appointment is not the caller's alone"
    assert not is_callers_appointment([], "pt-1")


def test_a_taken_slot_searches_again_for_the_same_write_and_nothing_more() -> None:
    again = search_again(Command.RESCHEDULE_APPOINTMENT, VisitReason.ESI)
    assert (again.outcome, again.commands, again.visit_reason, again.reply, again.guards_fired) == (
        Outcome.ALLOW, (Command.SEARCH_SLOTS, Command.RESCHEDULE_APPOINTMENT), VisitReason.ESI,
        ReplyTemplate.OFFER_SLOTS, ())
    with pytest.raises(GuardInputError):
        search_again(Command.CANCEL_APPOINTMENT, VisitReason.ESI)
