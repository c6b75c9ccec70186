"""QaRecords on records the call flow wrote: every filter, paging, escalations of the day, a call's detail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from qa.records import CallFilter, FilterError
from tests.qa.conftest import PRACTICE_A, PRACTICE_B, QaWorld

ZONE = ZoneInfo("America/New_York")


def listed(world: QaWorld, practice_id: str = PRACTICE_A, **query: str) -> set[str]:
    page = world.records.calls(practice_id, CallFilter.from_query(query), ZONE, page_size=50)
    return {call.call_id for call in page.calls}


def test_the_calls_list_filters_by_outcome_escalation_block_guard_review_state_and_date(qa_world: QaWorld) -> None:
    calls = qa_world.calls
    everything = listed(qa_world)
    assert {calls["a_booking"], calls["a_refill"], calls["a_blocked"]} <= everything
    assert calls["b_refill"] not in everything
    escalated = listed(qa_world, escalated="yes")
    assert calls["a_refill"] in escalated and calls["a_booking"] not in escalated
    assert calls["a_refill"] not in listed(qa_world, escalated="no")
    blocked = listed(qa_world, blocked="yes")
    assert calls["a_blocked"] in blocked and calls["a_booking"] not in blocked and calls["a_refill"] not in blocked
    assert calls["a_booking"] in listed(qa_world, outcome="appointment_written")
    assert calls["a_refill"] in listed(qa_world, outcome="task_created")
    assert calls["a_booking"] not in listed(qa_world, outcome="task_created")
    a_calls = {calls[label] for label in ("a_booking", "a_refill", "a_blocked")}
    fired = {call_id: {hit.guard for hit in qa_world.records.call(PRACTICE_A, call_id).record.guards_fired}  # type: ignore[union-attr]
             for call_id in a_calls}
    guards = qa_world.records.guard_names(PRACTICE_A)
    assert set(guards) >= set().union(*fired.values())
    for guard in guards:
        assert listed(qa_world, guard=guard) & a_calls == {call_id for call_id in a_calls if guard in fired[call_id]}
    assert any(len(listed(qa_world, guard=guard) & a_calls) == 1 for guard in guards), "a guard that tells calls apart"
    today = datetime.now(ZONE).date()
    assert calls["a_booking"] in listed(qa_world, date_from=today.isoformat(), date_to=(today + timedelta(days=1)).isoformat())
    assert not listed(qa_world, date_to=(today - timedelta(days=2)).isoformat()) & set(calls.values())
    assert listed(qa_world, PRACTICE_B, review_state="resolved") == {calls["b_refill"]}
    assert calls["a_refill"] not in listed(qa_world, review_state="open")


def test_paging_and_review_states_in_the_list(qa_world: QaWorld) -> None:
    wanted = CallFilter.from_query({})
    first = qa_world.records.calls(PRACTICE_A, wanted, ZONE, page=1, page_size=1)
    second = qa_world.records.calls(PRACTICE_A, wanted, ZONE, page=2, page_size=1)
    assert first.total >= 3 and first.pages == first.total and len(first.calls) == 1
    assert first.calls[0].call_id != second.calls[0].call_id
    assert first.calls[0].started_at >= second.calls[0].started_at, "newest first"
    [b_call] = qa_world.records.calls(PRACTICE_B, CallFilter.from_query({"review_state": "resolved"}), ZONE).calls
    assert "resolved" in b_call.review_states and b_call.caller_tail.startswith("…")


@pytest.mark.parametrize(("query", "message"), [
    ({"date_from": "yesterday"}, "date_from must be a date"),
    ({"outcome": "refilled"}, "outcome must be one of"),
    ({"escalated": "maybe"}, "escalated must be yes or no"),
    ({"review_state": "lost"}, "review_state must be one of"),
    ({"guard": "x' OR 1=1"}, "guard must be a guard name"),
    ({"date_from": "2026-03-02", "date_to": "2026-03-01"}, "must not be after"),
])
def test_bad_filters_are_refused_with_a_reason(query: dict[str, str], message: str) -> None:
    with pytest.raises(FilterError, match=message):
        CallFilter.from_query(query)


def test_escalations_of_the_day_and_a_calls_detail(qa_world: QaWorld) -> None:
    calls = qa_world.calls
    today = datetime.now(ZONE).date()
    escalations = qa_world.records.escalations(PRACTICE_A, today, ZONE)
    assert calls["a_refill"] in {item.call_id for item in escalations}
    assert not {item.call_id for item in escalations} & {calls["b_refill"]}
    assert not qa_world.records.escalations(PRACTICE_A, today - timedelta(days=3), ZONE)
    detail = qa_world.records.call(PRACTICE_A, calls["a_refill"])
    assert detail is not None
    record = detail.record
    assert [step.state_to for step in record.state_transitions][0] and record.ema_deep_links and record.tasks
    assert any(reply.text and "provider" in reply.text for reply in record.replies), "what the caller heard"
    assert any(step.action == "ESCALATION" for step in detail.timeline) and detail.escalations
    assert detail.review_items == (), "a written task needs no review item"
    blocked = qa_world.records.call(PRACTICE_A, calls["a_blocked"])
    assert blocked is not None and any(hit.guard_action == "BLOCKED" or hit.outcome == "BLOCKED"
                                       for hit in blocked.record.guards_fired)
    assert any(hit.dialogue_path for hit in blocked.record.guards_fired), "the dialogue path the guard blocked"
    queued = qa_world.records.call(PRACTICE_B, calls["b_refill"])
    assert queued is not None and queued.review_items and {item.state for item in queued.review_items} >= {"resolved"}
    assert qa_world.records.call(PRACTICE_A, calls["b_refill"]) is None
    assert qa_world.records.call_body(PRACTICE_A, calls["b_refill"]) is None
    assert all(item.at.tzinfo is UTC for item in escalations)
