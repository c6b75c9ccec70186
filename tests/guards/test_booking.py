"""Ids the voice agent names reach a write only when the call earned them (guards.booking)."""

from __future__ import annotations

import pytest

from guards import Command, GuardInputError, Outcome, VisitReason
from guards.booking import (
    ChoiceRefusal,
    change_needing_ownership,
    is_callers_appointment,
    refuse_choice,
    search_again,
)
from guards.decision import Decision
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


def _allowed(commands: tuple[Command, ...], queued: tuple[Command, ...] = ()) -> Decision:
    return Decision(outcome=Outcome.ALLOW, commands=commands, queued_commands=queued, reply=ReplyTemplate.OFFER_SLOTS,
                    guards_fired=())


def test_a_change_of_an_existing_appointment_needs_it_proved_the_callers_first() -> None:
    assert change_needing_ownership(_allowed((Command.SEARCH_SLOTS, Command.RESCHEDULE_APPOINTMENT))) \
        is Command.RESCHEDULE_APPOINTMENT
    assert change_needing_ownership(_allowed((Command.CANCEL_APPOINTMENT,))) is Command.CANCEL_APPOINTMENT
    # Queued in the read-only phase: the id still reaches staff only once it is proved the caller's.
    assert change_needing_ownership(_allowed((Command.SEARCH_SLOTS,), queued=(Command.RESCHEDULE_APPOINTMENT,))) \
        is Command.RESCHEDULE_APPOINTMENT
    assert change_needing_ownership(_allowed((), queued=(Command.CANCEL_APPOINTMENT,))) is Command.CANCEL_APPOINTMENT
    both = _allowed((Command.CANCEL_APPOINTMENT, Command.RESCHEDULE_APPOINTMENT))
    assert change_needing_ownership(both) is Command.RESCHEDULE_APPOINTMENT, "a reschedule is checked before a cancel"


def test_a_new_booking_or_a_task_changes_no_appointment_of_the_callers() -> None:
    assert change_needing_ownership(_allowed((Command.SEARCH_SLOTS, Command.BOOK_APPOINTMENT))) is None
    assert change_needing_ownership(_allowed((Command.SEARCH_SLOTS,), queued=(Command.BOOK_APPOINTMENT,))) is None
    assert change_needing_ownership(_allowed(())) is None


def test_a_taken_slot_searches_again_for_the_same_write_and_nothing_more() -> None:
    again = search_again(Command.RESCHEDULE_APPOINTMENT, VisitReason.ESI)
    assert (again.outcome, again.commands, again.visit_reason, again.reply, again.guards_fired) == (
        Outcome.ALLOW, (Command.SEARCH_SLOTS, Command.RESCHEDULE_APPOINTMENT), VisitReason.ESI,
        ReplyTemplate.OFFER_SLOTS, ())
    with pytest.raises(GuardInputError):
        search_again(Command.CANCEL_APPOINTMENT, VisitReason.ESI)
