"""Procedure-aware slots: the PM schedule template turned into bookable FHIR Slots.

A slot exists for every (schedule block, procedure template) pair the block can host:
the block kind matches the template, the provider performs the visit reason, and the
room has the required kind and equipment (no ESI in a room without fluoroscopy). Slots
of different visit reasons overlap in time; booking one makes every overlapping slot of
the same provider or room busy, which is how a real PM schedule behaves. Block rules
(`max_per_block`) and pre-op clearance windows are applied when availability is asked.
"""

from __future__ import annotations

import bisect
import datetime as dt
import threading
from collections import defaultdict
from dataclasses import dataclass

from sandbox.profile import WEEKDAY_INDEX, PracticeProfile
from sandbox.store import fhir_instant
from sandbox.vocabulary import VISIT_REASON_SYSTEM, VISIT_REASONS


@dataclass(frozen=True, slots=True)
class SlotInfo:
    slot_id: str
    schedule_id: str
    practitioner_id: str
    location_id: str
    visit_reason: str
    start: dt.datetime
    end: dt.datetime
    block_key: str
    api_visible: bool
    preop_clearance_days: int
    max_per_block: int | None


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    schedule_id: str
    practitioner_id: str
    location_id: str
    visit_reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Booking:
    appointment_id: str
    slot_id: str
    practitioner_id: str
    location_id: str
    start: dt.datetime
    end: dt.datetime
    block_key: str
    visit_reason: str


def _overlaps(a_start: dt.datetime, a_end: dt.datetime, b_start: dt.datetime, b_end: dt.datetime) -> bool:
    return a_start < b_end and b_start < a_end


class SlotBook:
    """All slots of one practice and the bookings that hold them."""

    def __init__(self, profile: PracticeProfile, anchor: dt.date, generated_at: dt.datetime) -> None:
        self._lock = threading.RLock()
        self.profile = profile
        self.generated_at = generated_at
        self.schedules: dict[str, ScheduleInfo] = {}
        self.slots: dict[str, SlotInfo] = {}
        self._by_reason: dict[str, list[SlotInfo]] = defaultdict(list)
        self._starts_by_reason: dict[str, list[dt.datetime]] = {}
        self._bookings: dict[str, Booking] = {}
        self._by_practitioner_day: dict[tuple[str, dt.date], set[str]] = defaultdict(set)
        self._by_room_day: dict[tuple[str, dt.date], set[str]] = defaultdict(set)
        self._by_block_reason: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._changed_at: dict[tuple[str, dt.date], dt.datetime] = {}
        self._generate(anchor)

    def _generate(self, anchor: dt.date) -> None:
        profile, zone = self.profile, self.profile.zone
        first_day = anchor - dt.timedelta(days=7 * profile.weeks_back)
        days = [first_day + dt.timedelta(days=n) for n in range(7 * (profile.weeks_back + profile.weeks_ahead))]
        schedule_numbers: dict[tuple[str, str], int] = {}
        reasons_by_schedule: dict[tuple[str, str], list[str]] = defaultdict(list)
        for block_index, block in enumerate(profile.blocks):
            provider = profile.staff_member(block.practitioner_id)
            room = profile.room(block.location_id)
            if provider is None or room is None:
                raise ValueError(f"schedule block {block_index} names an unknown provider or room")
            templates = [
                t
                for t in profile.templates
                if t.block == block.kind and t.visit_reason in provider.performs and room.can_host(t)
            ]
            if not templates:
                continue
            pair = (block.practitioner_id, block.location_id)
            number = schedule_numbers.setdefault(pair, len(schedule_numbers) + 1)
            schedule_id = f"sch-{profile.firm_number}-{number:03d}"
            for template in templates:
                if template.visit_reason not in reasons_by_schedule[pair]:
                    reasons_by_schedule[pair].append(template.visit_reason)
            weekdays = {WEEKDAY_INDEX[day] for day in block.weekdays}
            for day in days:
                if day.weekday() not in weekdays:
                    continue
                block_start = dt.datetime.combine(day, block.start, tzinfo=zone)
                block_end = dt.datetime.combine(day, block.end, tzinfo=zone)
                block_key = f"{schedule_id}-{day.isoformat()}-{block_index}"
                for template in templates:
                    length = dt.timedelta(minutes=template.duration_minutes)
                    start = block_start
                    while start + length <= block_end:
                        slot_id = f"slot-{profile.firm_number}-{number:03d}-{template.visit_reason}-{start:%Y%m%d%H%M}"
                        self.slots[slot_id] = SlotInfo(
                            slot_id=slot_id,
                            schedule_id=schedule_id,
                            practitioner_id=block.practitioner_id,
                            location_id=block.location_id,
                            visit_reason=template.visit_reason,
                            start=start,
                            end=start + length,
                            block_key=block_key,
                            api_visible=not template.ema_only,
                            preop_clearance_days=template.preop_clearance_days,
                            max_per_block=template.max_per_block,
                        )
                        start += length
        for pair, number in schedule_numbers.items():
            schedule_id = f"sch-{profile.firm_number}-{number:03d}"
            self.schedules[schedule_id] = ScheduleInfo(schedule_id, pair[0], pair[1], tuple(reasons_by_schedule[pair]))
        for slot in sorted(self.slots.values(), key=lambda s: (s.start, s.slot_id)):
            self._by_reason[slot.visit_reason].append(slot)
        self._starts_by_reason = {reason: [s.start for s in slots] for reason, slots in self._by_reason.items()}

    def conflict(self, slot: SlotInfo, ignore_appointment: str | None = None) -> str | None:
        """Why `slot` cannot be booked now (another booking or a block rule), or None."""
        with self._lock:
            day = slot.start.date()
            for appointment_id in self._by_practitioner_day.get((slot.practitioner_id, day), ()):
                booking = self._bookings[appointment_id]
                if appointment_id != ignore_appointment and _overlaps(slot.start, slot.end, booking.start, booking.end):
                    return "the provider is already booked at that time"
            for appointment_id in self._by_room_day.get((slot.location_id, day), ()):
                booking = self._bookings[appointment_id]
                if appointment_id != ignore_appointment and _overlaps(slot.start, slot.end, booking.start, booking.end):
                    return "the room is already booked at that time"
            if slot.max_per_block is not None:
                holders = self._by_block_reason.get((slot.block_key, slot.visit_reason), set()) - {ignore_appointment}
                if len(holders) >= slot.max_per_block:
                    return f"the block allows at most {slot.max_per_block} {slot.visit_reason} bookings"
            return None

    def timing_problem(self, slot: SlotInfo, now: dt.datetime) -> str | None:
        """Why `slot` is not offered at `now`: in the past, or inside the pre-op clearance window."""
        if slot.start <= now:
            return "the slot is in the past"
        if slot.preop_clearance_days:
            earliest = now.astimezone(slot.start.tzinfo).date() + dt.timedelta(days=slot.preop_clearance_days)
            if slot.start.date() < earliest:
                return f"{slot.visit_reason} needs a {slot.preop_clearance_days}-day pre-op clearance window"
        return None

    def is_free(self, slot: SlotInfo, now: dt.datetime) -> bool:
        return self.timing_problem(slot, now) is None and self.conflict(slot) is None

    def book(self, appointment_id: str, slot: SlotInfo, at: dt.datetime) -> None:
        with self._lock:
            self.release(appointment_id, at)
            booking = Booking(
                appointment_id, slot.slot_id, slot.practitioner_id, slot.location_id,
                slot.start, slot.end, slot.block_key, slot.visit_reason,
            )
            self._bookings[appointment_id] = booking
            day = slot.start.date()
            self._by_practitioner_day[(slot.practitioner_id, day)].add(appointment_id)
            self._by_room_day[(slot.location_id, day)].add(appointment_id)
            self._by_block_reason[(slot.block_key, slot.visit_reason)].add(appointment_id)
            self._changed_at[(slot.practitioner_id, day)] = at

    def release(self, appointment_id: str, at: dt.datetime) -> None:
        with self._lock:
            booking = self._bookings.pop(appointment_id, None)
            if booking is None:
                return
            day = booking.start.date()
            self._by_practitioner_day[(booking.practitioner_id, day)].discard(appointment_id)
            self._by_room_day[(booking.location_id, day)].discard(appointment_id)
            self._by_block_reason[(booking.block_key, booking.visit_reason)].discard(appointment_id)
            self._changed_at[(booking.practitioner_id, day)] = at

    def holder_of(self, appointment_id: str) -> Booking | None:
        with self._lock:
            return self._bookings.get(appointment_id)

    def search(
        self,
        visit_reason: str,
        start_from: dt.datetime | None,
        start_until: dt.datetime | None,
        practitioner_ids: set[str] | None,
        location_ids: set[str] | None,
        now: dt.datetime,
        include_ema_only: bool,
    ) -> list[SlotInfo]:
        """Free slots of one visit reason whose start lies in [start_from, start_until]."""
        slots = self._by_reason.get(visit_reason, [])
        starts = self._starts_by_reason.get(visit_reason, [])
        low = bisect.bisect_left(starts, start_from) if start_from else 0
        high = bisect.bisect_right(starts, start_until) if start_until else len(slots)
        found = []
        for slot in slots[low:high]:
            if not include_ema_only and not slot.api_visible:
                continue
            if practitioner_ids is not None and slot.practitioner_id not in practitioner_ids:
                continue
            if location_ids is not None and slot.location_id not in location_ids:
                continue
            if self.is_free(slot, now):
                found.append(slot)
        return found

    def slot_resource(self, slot: SlotInfo, now: dt.datetime) -> dict:
        """The FHIR Slot for `slot`, with its status as of `now`."""
        reason = {"system": VISIT_REASON_SYSTEM, "code": slot.visit_reason, "display": VISIT_REASONS[slot.visit_reason]}
        changed = self._changed_at.get((slot.practitioner_id, slot.start.date()), self.generated_at)
        return {
            "resourceType": "Slot",
            "id": slot.slot_id,
            "meta": {"versionId": "1", "lastUpdated": fhir_instant(changed)},
            "serviceType": [{"coding": [reason]}],
            "appointmentType": {"coding": [reason], "text": VISIT_REASONS[slot.visit_reason]},
            "schedule": {"reference": f"Schedule/{slot.schedule_id}"},
            "status": "free" if self.is_free(slot, now) else "busy",
            "start": slot.start.isoformat(),
            "end": slot.end.isoformat(),
        }
