"""The call flow reads each practice's own office hours (guards.hours), defaulting to Mon-Fri 08-17."""

from __future__ import annotations

from datetime import UTC, datetime

from callstream.tenants import Practice
from tests.streams.callflow.helpers import Call, Driver, practice, replies

SATURDAY_10_NY = datetime(2026, 3, 7, 15, 0, tzinfo=UTC)


def _with_hours(office_hours: dict) -> Practice:
    return Practice.model_validate({**practice().model_dump(mode="json"), "office_hours": office_hours})


def _message_reply(driver: Driver) -> str:
    call = Call()
    driver.send(call.started())
    return replies(driver.send(call.intent("GENERAL_QUESTION")))[-1].template.value


def test_saturday_is_after_hours_by_default_but_not_where_the_practice_opens() -> None:
    assert _message_reply(Driver(now=SATURDAY_10_NY)) == "MESSAGE_FORWARDED_AFTER_HOURS"
    saturday_clinic = _with_hours({"weekly": {"sat": [{"opens": "09:00", "closes": "13:00"}]}})
    assert _message_reply(Driver(practice=saturday_clinic, now=SATURDAY_10_NY)) == "MESSAGE_FORWARDED"


def test_a_holiday_closes_a_weekday() -> None:
    tuesday_10_ny = datetime(2026, 3, 3, 15, 0, tzinfo=UTC)
    assert _message_reply(Driver(now=tuesday_10_ny)) == "MESSAGE_FORWARDED"
    closed = _with_hours({"holidays": ["2026-03-03"]})
    assert _message_reply(Driver(practice=closed, now=tuesday_10_ny)) == "MESSAGE_FORWARDED_AFTER_HOURS"


def test_a_practice_that_holds_after_hours_bookings_offers_then_queues_for_staff() -> None:
    from tests.streams.callflow.helpers import reviews

    held = _with_hours({"after_hours_bookings": "staff_confirm"})
    driver, call = Driver(practice=held, now=SATURDAY_10_NY), Call()
    driver.send(call.started())
    driver.send(call.identified())
    offered = replies(driver.send(call.intent("BOOK_APPOINTMENT", visit_reason="esi")))
    assert offered[-1].template.value == "OFFER_SLOTS_STAFF_WILL_CONFIRM" and offered[-1].offered_slots
    outputs = driver.send(call.chose(offered[-1].offered_slots[0].slot_id))
    (queued,) = reviews(outputs)
    assert queued.params["reason"] == "after_hours_rule"
    assert replies(outputs)[-1].template.value == "BOOKING_QUEUED_FOR_REVIEW"
    weekday = Driver(practice=held)  # Tuesday 10:00: open, so the booking is made
    call = Call()
    weekday.send(call.started())
    weekday.send(call.identified())
    weekday.send(call.intent("BOOK_APPOINTMENT", visit_reason="esi"))
    assert replies(weekday.send(call.chose("slot-1")))[-1].template.value == "BOOKING_CONFIRMED"
