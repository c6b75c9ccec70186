"""Office hours, holidays and the after-hours rule of one practice: pure, no clock (``now`` is passed in).

A practice's hours live in the tenant directory (``office_hours`` of a practice entry); the rule answers one
question, "is the office closed at this moment, in the practice's own time zone?", which the guards read as
``CallContext.after_hours`` (AFTER_HOURS_POLICY: the reply says the office is closed and points emergencies
to 911, tasks say they came in after hours). A practice without ``office_hours`` keeps the long-standing
default, Monday to Friday 08:00-17:00 local time, no holidays.

A practice's calendar day (`local_day_window`: the day the digest and the audit read API count calls of)
is a day of the same zone, in UTC bounds.

Times are wall-clock times of the practice's zone (zoneinfo), so a daylight-saving change moves nothing:
08:00 stays 08:00 local. An interval may not cross midnight (a night clinic lists two intervals instead).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo

from pydantic import BeforeValidator, Field, PlainSerializer, model_validator

from guards.model import FrozenModel

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""In datetime.weekday() order."""


_CLOCK = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)(?::00)?\Z")


def _clock_time(value: object) -> object:
    """'08:00' or '17:30' (24-hour, minutes precision; '24:00' is midnight at the end of the day): what a
    practice administrator writes in YAML, and what the directory is dumped as."""
    if isinstance(value, str):
        match = _CLOCK.match(value)
        if match is None or (int(match[1]) == 24 and match[2] != "00"):
            raise ValueError("must be a 24-hour time like 08:00")
        return time.max if int(match[1]) == 24 else time(int(match[1]), int(match[2]))
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError("must be a 24-hour time like 08:00 (quoted in YAML)")  # YAML 1.1 reads 08:00 as 480
    return value


def _clock_text(value: time) -> str:
    return "24:00" if value == time.max else value.strftime("%H:%M")


ClockTime = Annotated[time, BeforeValidator(_clock_time), PlainSerializer(_clock_text, when_used="json")]


class OpenInterval(FrozenModel):
    """One opening, ``opens`` inclusive, ``closes`` exclusive, within a single day."""

    opens: ClockTime
    closes: ClockTime

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.closes <= self.opens:
            raise ValueError("closes must be after opens (an interval cannot cross midnight)")
        return self

    def contains(self, moment: time) -> bool:
        return self.opens <= moment < self.closes or (self.closes == time.max and moment >= self.opens)


_DEFAULT_DAY = (OpenInterval(opens=time(8, 0), closes=time(17, 0)),)


def _default_week() -> dict[Weekday, tuple[OpenInterval, ...]]:
    return {day: _DEFAULT_DAY for day in WEEKDAYS[:5]}


class OfficeHours(FrozenModel):
    """When the office answers the phone; every other moment is after hours.

    ``weekly``: the openings of each weekday (a day left out is closed all day); ``holidays``: whole days
    closed whatever the weekday says; ``special_days``: dates with their own openings (a half day before a
    holiday), which win over both.
    """

    weekly: dict[Weekday, Annotated[tuple[OpenInterval, ...], Field(max_length=8)]] = Field(
        default_factory=_default_week)
    holidays: Annotated[tuple[date, ...], Field(max_length=400)] = ()
    after_hours_bookings: Literal["book", "staff_confirm"] = "book"
    """What a booking, reschedule or cancellation does after hours: ``book`` (the schedule is live, the default)
    or ``staff_confirm`` (slots are offered, the chosen one waits for staff, the caller hears staff will confirm)."""
    special_days: Annotated[dict[date, Annotated[tuple[OpenInterval, ...], Field(max_length=8)]],
                            Field(max_length=400)] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _no_overlaps(self) -> Self:
        """Overlapping openings are almost always a typo (a 13:00 meant as 15:00): refuse them at load."""
        for label, intervals in [*self.weekly.items(), *((str(d), i) for d, i in self.special_days.items())]:
            ordered = sorted(intervals, key=lambda interval: interval.opens)
            for earlier, later in zip(ordered, ordered[1:]):
                if later.opens < earlier.closes:
                    raise ValueError(f"{label}: opening hours overlap")
        return self

    def __hash__(self) -> int:  # a Practice (frozen, hashable) holds one; dicts are not hashable by default
        return hash((tuple(sorted(self.weekly.items())), self.holidays, tuple(sorted(self.special_days.items())),
                     self.after_hours_bookings))

    def openings(self, day: date) -> tuple[OpenInterval, ...]:
        """The openings of one local calendar day."""
        if day in self.special_days:
            return self.special_days[day]
        if day in self.holidays:
            return ()
        return self.weekly.get(WEEKDAYS[day.weekday()], ())


DEFAULT_OFFICE_HOURS = OfficeHours()
"""Monday to Friday 08:00-17:00 local time: what a practice without office_hours configured gets."""


def is_after_hours(now: datetime, timezone: str, hours: OfficeHours = DEFAULT_OFFICE_HOURS) -> bool:
    """Whether the office is closed at ``now`` (any aware datetime) in the practice's zone ``timezone``."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    local = now.astimezone(ZoneInfo(timezone))
    moment = local.time().replace(tzinfo=None)
    return not any(interval.contains(moment) for interval in hours.openings(local.date()))


def local_day_window(day: date, zone: str) -> tuple[datetime, datetime]:
    """[start, end) in UTC of a calendar day in a time zone (23 or 25 hours on a DST change)."""
    tz = ZoneInfo(zone)
    start = datetime.combine(day, time(0), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)
