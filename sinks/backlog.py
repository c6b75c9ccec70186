"""Durable per-practice SIEM delivery, the pure core: retry schedule, outage horizon, backlog state.

A practice whose endpoint keeps failing is *parked*: its undelivered events stay where they already
are durably (the audit topic, retained 30 days, one partition per practice because it is the key),
and a small `Backlog` record says from which offset of that partition they are owed. The firehose
then commits its offsets past them, so the practices sharing the partition are never held up, and
re-reads the parked practice's events from `resume_offset` on its own schedule.

Schedule (like Standard Webhooks'): a few attempts seconds apart while the practice is live (the
firehose's `SiemPolicy`), then, parked, attempts of the oldest undelivered event after 30 s, 5 min,
30 min, 2 h, 5 h and every 10 h, honouring a longer Retry-After. Only when an endpoint has failed
without a break for longer than the horizon (default 72 h) is the backlog dead-lettered; a 410
dead-letters at once. Everything here is synchronous and takes the time as an argument, so hours
of outage are tested in microseconds.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol

BACKLOG_DELAYS_S: tuple[float, ...] = (30.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
"""Seconds between attempts of a parked practice's oldest event; the last one repeats."""
DEFAULT_HORIZON_S = 72 * 3600.0
DEFAULT_ALARM_AFTER_S = 15 * 60.0
"""A practice whose oldest undelivered event waits this long raises SIEM_DELIVERY."""
RECORD_VERSION = 1


class BacklogRecordError(ValueError):
    """A backlog record on the state topic that this version cannot read (never echoes its content)."""


class Clock(Protocol):
    """Wall time for the schedule and the horizon; tests inject a faster one."""

    def now(self) -> float:
        """Seconds since the epoch."""

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


@dataclass(frozen=True, slots=True)
class DeliverySchedule:
    """When a parked practice is tried again, and when its backlog is given up."""

    backlog_delays_s: tuple[float, ...] = BACKLOG_DELAYS_S
    horizon_s: float = DEFAULT_HORIZON_S
    max_retry_after_s: float = 36000.0
    """A receiver's Retry-After is honoured up to this, so a hostile header cannot park a practice for days."""

    def __post_init__(self) -> None:
        if not self.backlog_delays_s or min(self.backlog_delays_s) <= 0 or self.horizon_s <= 0:
            raise ValueError("backlog delays and the horizon must be positive")

    def delay(self, failures: int, retry_after_s: float | None = None) -> float:
        """Seconds before the next attempt after `failures` consecutive failed attempts while parked."""
        planned = self.backlog_delays_s[min(max(failures, 1), len(self.backlog_delays_s)) - 1]
        return max(planned, min(retry_after_s or 0.0, self.max_retry_after_s))

    def wake_at(self, next_attempt_at: float, failing_since: float | None) -> float:
        """When a parked practice's task must look again: its next attempt, or the horizon if sooner."""
        return next_attempt_at if failing_since is None else min(next_attempt_at, failing_since + self.horizon_s)

    def past_horizon(self, failing_since: float | None, now: float) -> bool:
        """The endpoint has failed without a single success for longer than the horizon."""
        return failing_since is not None and now - failing_since >= self.horizon_s


@dataclass(frozen=True, slots=True)
class Backlog:
    """A parked practice: where its owed events start, and where its schedule stands."""

    practice_id: str
    partition: int
    resume_offset: int
    """Offset of the oldest event of this practice not yet delivered or dead-lettered."""
    waiting_since: float
    """When the oldest owed event first failed: the age the alarm and the gauge report."""
    failing_since: float | None
    """Start of the current unbroken run of failures (None right after a success): the horizon's clock."""
    failures: int
    next_attempt_at: float
    pending: int = 0
    """Owed events this process knows of (approximate after a restart: it is persisted as last seen)."""

    @classmethod
    def park(cls, practice_id: str, partition: int, offset: int, failed_since: float, now: float,
             schedule: DeliverySchedule, pending: int, retry_after_s: float | None = None) -> Backlog:
        """A practice whose event at `offset` failed its live attempts (the first of them at `failed_since`)."""
        return cls(practice_id, partition, offset, waiting_since=failed_since, failing_since=failed_since,
                   failures=1, next_attempt_at=now + schedule.delay(1, retry_after_s), pending=pending)

    def failed(self, now: float, schedule: DeliverySchedule, retry_after_s: float | None = None) -> Backlog:
        """One more failed attempt of the oldest owed event."""
        failures = self.failures + 1
        return replace(self, failures=failures, failing_since=self.failing_since if self.failing_since is not None
                       else now, next_attempt_at=now + schedule.delay(failures, retry_after_s))

    def settled(self, offset: int, now: float, *, delivered: bool) -> Backlog:
        """The event at `offset` was delivered (the endpoint works again) or dead-lettered."""
        return replace(self, resume_offset=offset + 1, pending=max(0, self.pending - 1),
                       failures=0 if delivered else self.failures,
                       failing_since=None if delivered else self.failing_since,
                       next_attempt_at=now if delivered else self.next_attempt_at)

    def passed_over(self, offset: int) -> Backlog:
        """A message of the partition that is not this practice's (or not a valid event of it)."""
        return replace(self, resume_offset=max(self.resume_offset, offset + 1))

    def age_s(self, now: float) -> float:
        return max(0.0, now - self.waiting_since)

    def encode(self) -> bytes:
        """The state-topic value (key: the practice id): compact JSON, no event content."""
        return json.dumps({"v": RECORD_VERSION, "partition": self.partition, "resume_offset": self.resume_offset,
                           "waiting_since": self.waiting_since, "failing_since": self.failing_since,
                           "failures": self.failures, "next_attempt_at": self.next_attempt_at,
                           "pending": self.pending}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, practice_id: str, value: bytes) -> Backlog:
        """Raises BacklogRecordError for anything but a record of this version."""
        try:
            data = json.loads(value)
            if data.get("v") != RECORD_VERSION:
                raise BacklogRecordError(f"backlog record of practice {practice_id} has an unknown version")
            failing_since = data["failing_since"]
            return cls(practice_id, int(data["partition"]), int(data["resume_offset"]), float(data["waiting_since"]),
                       None if failing_since is None else float(failing_since), int(data["failures"]),
                       float(data["next_attempt_at"]), int(data["pending"]))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            if isinstance(exc, BacklogRecordError):
                raise
            raise BacklogRecordError(f"backlog record of practice {practice_id} is malformed "
                                     f"({type(exc).__name__})") from None


def latest_backlogs(records: list[tuple[str, bytes | None]]) -> dict[str, bytes]:
    """The state topic read in order → the last record per practice (a None value deletes it)."""
    latest: dict[str, bytes] = {}
    for practice_id, value in records:
        if value is None:
            latest.pop(practice_id, None)
        else:
            latest[practice_id] = value
    return latest


@dataclass(frozen=True, slots=True)
class BacklogFigures:
    """One parked practice, as the gauges show it."""

    practice_id: str
    events: int
    oldest_age_s: float


class AlarmTransition(StrEnum):
    FIRING = "FIRING"
    CLEARED = "CLEARED"


@dataclass
class OutageAlarms:
    """SIEM_DELIVERY per practice: fires once when the oldest owed event waits past the threshold,
    clears once when nothing is owed any more."""

    threshold_s: float = DEFAULT_ALARM_AFTER_S
    firing: set[str] = field(default_factory=set)

    def observe(self, practice_id: str, age_s: float | None) -> AlarmTransition | None:
        """`age_s` None: the practice owes nothing. Returns the transition to publish, if any."""
        if age_s is not None and age_s >= self.threshold_s and practice_id not in self.firing:
            self.firing.add(practice_id)
            return AlarmTransition.FIRING
        if age_s is None and practice_id in self.firing:
            self.firing.discard(practice_id)
            return AlarmTransition.CLEARED
        return None
