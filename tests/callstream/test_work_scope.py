"""The work scope: one explicit value per call event, handed down from the processor to the FHIR client."""

from __future__ import annotations

import asyncio

import pytest

from callstream.deadline import Deadline
from callstream.work_scope import BACKGROUND, EventPosition, WorkScope, WriteRequests


async def test_a_scope_under_another_deadline_keeps_the_events_tally_and_held_acks() -> None:
    event = WorkScope.for_event(4, 120)
    turn = Deadline.after(4.0)
    write = event.under(turn).under(Deadline.after(30.0))
    assert event.deadline is None and event.under(turn).deadline is turn
    assert write.event == EventPosition(4, 120)
    assert write.writes is event.writes and write.held_acks is event.held_acks, "one event, one tally, one list"
    acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    write.hold_ack(lambda: acknowledged)
    assert event.held_acks == [acknowledged]


def test_background_work_has_no_deadline_no_event_and_holds_nothing() -> None:
    assert BACKGROUND.deadline is None and BACKGROUND.event is None and BACKGROUND.writes is None
    published: list[str] = []
    with pytest.raises(RuntimeError):
        BACKGROUND.hold_ack(lambda: published.append("record"))  # type: ignore[arg-type, func-returns-value]
    assert published == [], "outside an event nothing could wait for the record: it is not published"
    assert BACKGROUND.under(Deadline.after(1.0)).event is None


def test_two_events_scopes_share_nothing() -> None:
    first, second = WorkScope.for_event(1, 10), WorkScope.for_event(1, 11)
    assert first.writes is not None and second.writes is not None
    first.writes.record(201)
    first.writes.record(None)
    assert first.writes == WriteRequests(sent=2, succeeded=1)
    assert second.writes == WriteRequests() and second.held_acks == [] and second.held_acks is not first.held_acks


@pytest.mark.parametrize(("status", "succeeded"), [(200, 1), (201, 1), (299, 1), (300, 0), (409, 0), (503, 0),
                                                   (None, 0)])
def test_a_write_counts_as_succeeded_only_on_a_2xx_answer(status: int | None, succeeded: int) -> None:
    tally = WriteRequests()
    tally.record(status)
    assert tally == WriteRequests(sent=1, succeeded=succeeded)
