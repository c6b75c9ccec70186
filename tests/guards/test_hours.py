"""Office hours per practice (guards.hours): pure rule, zone-aware, the old Mon-Fri 08-17 by default."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

import pytest
from pydantic import ValidationError

from guards.hours import DEFAULT_OFFICE_HOURS, OfficeHours, is_after_hours, local_day_window

NY = "America/New_York"


def _local(text: str, zone: str = NY) -> datetime:
    from zoneinfo import ZoneInfo

    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))


@pytest.mark.parametrize(("moment", "closed"), [
    ("2026-03-02T07:59", True),   # Monday before opening
    ("2026-03-02T08:00", False),  # opening is inclusive
    ("2026-03-02T16:59", False),
    ("2026-03-02T17:00", True),   # closing is exclusive
    ("2026-03-07T10:00", True),   # Saturday
    ("2026-03-08T10:00", True),   # Sunday
])
def test_default_is_the_old_weekday_rule(moment: str, closed: bool) -> None:
    assert is_after_hours(_local(moment), NY) is closed
    assert is_after_hours(_local(moment), NY, DEFAULT_OFFICE_HOURS) is closed


def test_judged_in_the_practice_zone_across_daylight_saving() -> None:
    # 13:30 UTC is 08:30 in New York in winter (EST) but 09:30 in summer (EDT); 12:30 UTC is 07:30 / 08:30.
    assert not is_after_hours(datetime(2026, 1, 5, 13, 30, tzinfo=UTC), NY)
    assert is_after_hours(datetime(2026, 1, 5, 12, 30, tzinfo=UTC), NY)
    assert not is_after_hours(datetime(2026, 7, 6, 12, 30, tzinfo=UTC), NY)
    # The same instant is open in New York and closed in Los Angeles (05:30 there).
    assert is_after_hours(datetime(2026, 1, 5, 13, 30, tzinfo=UTC), "America/Los_Angeles")


def test_configured_week_holidays_and_special_days() -> None:
    hours = OfficeHours.model_validate({
        "weekly": {
            "mon": [{"opens": "07:30", "closes": "12:00"}, {"opens": "13:00", "closes": "19:00"}],
            "sat": [{"opens": "09:00", "closes": "12:00"}],
        },
        "holidays": ["2026-12-25"],
        "special_days": {"2026-12-24": [{"opens": "08:00", "closes": "12:00"}]},
    })
    assert not is_after_hours(_local("2026-03-02T07:30"), NY, hours)
    assert is_after_hours(_local("2026-03-02T12:30"), NY, hours)  # lunch break
    assert not is_after_hours(_local("2026-03-02T18:59"), NY, hours)
    assert is_after_hours(_local("2026-03-03T10:00"), NY, hours)  # Tuesday is not listed: closed
    assert not is_after_hours(_local("2026-03-07T09:00"), NY, hours)  # Saturday morning
    assert is_after_hours(_local("2026-12-25T10:00"), NY, hours)  # a Friday, but a holiday
    assert is_after_hours(_local("2026-12-24T13:00"), NY, hours)  # Thursday half day
    assert hours.openings(date(2026, 12, 24)) == hours.special_days[date(2026, 12, 24)]


def test_open_until_midnight() -> None:
    hours = OfficeHours.model_validate({"weekly": {"fri": [{"opens": "20:00", "closes": "24:00"}]}})
    assert not is_after_hours(_local("2026-03-06T23:59:59"), NY, hours)
    assert is_after_hours(_local("2026-03-07T00:00"), NY, hours)


@pytest.mark.parametrize("bad", [
    {"weekly": {"mon": [{"opens": "17:00", "closes": "08:00"}]}},  # crosses midnight / reversed
    {"weekly": {"mon": [{"opens": "08:00", "closes": "13:00"}, {"opens": "12:00", "closes": "17:00"}]}},
    {"weekly": {"monday": [{"opens": "08:00", "closes": "17:00"}]}},  # unknown weekday name
    {"weekly": {"mon": [{"opens": "8am", "closes": "17:00"}]}},
    {"weekly": {"mon": [{"opens": 480, "closes": "17:00"}]}},  # YAML's unquoted 08:00
    {"holidays": ["25/12/2026"]},
    {"closed_on_sundays": True},
])
def test_malformed_hours_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        OfficeHours.model_validate(bad)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        is_after_hours(datetime(2026, 3, 2, 9, 0), NY)
    assert DEFAULT_OFFICE_HOURS.openings(date(2026, 3, 2))[0].opens == time(8, 0)


def test_dumped_hours_load_again() -> None:
    hours = OfficeHours.model_validate({"weekly": {"fri": [{"opens": "07:30", "closes": "24:00"}]},
                                        "special_days": {"2026-12-24": [{"opens": "08:00", "closes": "12:00"}]}})
    assert OfficeHours.model_validate(hours.model_dump(mode="json")) == hours
    assert OfficeHours.model_validate(DEFAULT_OFFICE_HOURS.model_dump(mode="json")) == DEFAULT_OFFICE_HOURS


def test_the_after_hours_rule_holds_appointment_writes_but_never_an_escalation() -> None:
    from guards import CallContext, ChartFlags, Command, GoLivePhase, Intent, IntentRequest, Outcome, decide
    from guards.model import VisitReason

    held = CallContext(call_id="c-1", practice_id="p-1", caller_identified=True, patient_id="pt-1",
                       after_hours=True, after_hours_bookings_held=True)
    now = datetime(2026, 3, 7, 15, 0, tzinfo=UTC)
    booking = decide(held, IntentRequest(intent=Intent.BOOK_APPOINTMENT, visit_reason=VisitReason.FOLLOW_UP),
                     ChartFlags(), GoLivePhase.WRITE, now)
    assert booking.commands == (Command.SEARCH_SLOTS,) and booking.queued_commands == (Command.BOOK_APPOINTMENT,)
    assert booking.outcome is Outcome.REVIEW_QUEUE and booking.reply.value == "OFFER_SLOTS_STAFF_WILL_CONFIRM"
    refill = decide(held, IntentRequest(intent=Intent.REFILL_REQUEST, medication_mentioned=True), ChartFlags(),
                    GoLivePhase.WRITE, now)
    assert refill.outcome is Outcome.ESCALATE and Command.CREATE_TASK in refill.commands and not refill.queued_commands
    open_hours = held.model_copy(update={"after_hours": False})
    assert decide(open_hours, IntentRequest(intent=Intent.BOOK_APPOINTMENT, visit_reason=VisitReason.FOLLOW_UP),
                  ChartFlags(), GoLivePhase.WRITE, now).queued_commands == ()


def test_a_practice_day_is_its_local_midnight_to_midnight_in_utc_23_or_25_hours_on_a_dst_change() -> None:
    assert local_day_window(date(2026, 3, 14), "America/Chicago") == (
        datetime(2026, 3, 14, 5, 0, tzinfo=UTC), datetime(2026, 3, 15, 5, 0, tzinfo=UTC))
    spring, autumn = local_day_window(date(2026, 3, 8), "America/Chicago"), local_day_window(date(2026, 11, 1), "UTC")
    assert (spring[1] - spring[0]).total_seconds() == 23 * 3600
    assert (autumn[1] - autumn[0]).total_seconds() == 24 * 3600
    fall = local_day_window(date(2026, 11, 1), "America/Chicago")
    assert (fall[1] - fall[0]).total_seconds() == 25 * 3600
