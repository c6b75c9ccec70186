"""A free ModMed Slot as procedure-aware scheduling sees it: who, which room, what equipment.

ModMed's Slot names only its Schedule; the practitioner and location are the Schedule's actors, and
the room's kind and equipment are on the Location. ``SlotDirectory`` reads both once and caches them
(schedules and rooms change rarely), so a slot search stays at one ModMed call, and turns each Slot
into a ``SlotOffer``, which in turn gives the guards their ``SlotCandidate``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fhir.resources.R4B.location import Location
from fhir.resources.R4B.schedule import Schedule
from fhir.resources.R4B.slot import Slot

from callstream.tenants import Practice
from callstream.work_scope import BACKGROUND, WorkScope
from connectors.allow_lists import FHIR_ID
from connectors.errors import InvalidResponseError
from connectors.fhir import ModMedClient
from connectors.vocabulary import EQUIPMENT_SYSTEM, EXT_ROOM_EQUIPMENT, ROOM_KIND_SYSTEM
from guards.model import VisitReason
from guards.scheduling import BlockKind, Equipment, RoomKind, SlotCandidate

DIRECTORY_TTL_S = 600.0
BLOCK_KIND_OF_REASON: dict[VisitReason, BlockKind] = {
    VisitReason.NEW_PATIENT_CONSULT: BlockKind.CONSULT,
    VisitReason.ESI: BlockKind.PROCEDURE,
    VisitReason.FACET_INJECTION: BlockKind.PROCEDURE,
    VisitReason.RFA: BlockKind.PROCEDURE,
    VisitReason.SCS_TRIAL: BlockKind.PROCEDURE,
    VisitReason.KYPHOPLASTY: BlockKind.PROCEDURE,
}
"""Schedule block kind implied by a slot's visit reason; every other reason is a clinic-block visit."""


@dataclass(frozen=True, slots=True)
class SlotOffer:
    """A free Slot plus what procedure-aware scheduling needs: who, which room, what equipment."""

    practice_id: str
    slot: Slot
    visit_reason: VisitReason
    schedule_id: str
    practitioner_id: str
    practitioner_name: str | None
    location_id: str
    location_name: str | None
    room_kind: str | None
    equipment: frozenset[str]

    @property
    def slot_id(self) -> str:
        assert self.slot.id is not None
        return self.slot.id

    @property
    def start(self) -> dt.datetime:
        return self.slot.start

    @property
    def end(self) -> dt.datetime:
        return self.slot.end

    @property
    def minutes(self) -> int:
        """The procedure-mapped duration: ModMed's template length, carried by the slot."""
        return int((self.slot.end - self.slot.start).total_seconds() // 60)

    def to_candidate(self) -> SlotCandidate:
        """The guards' view of this slot (guards.scheduling decides which slots to offer).

        ModMed's Slot does not carry the schedule block kind; a PM template enumerates a visit reason
        only in blocks of the template's kind, so the kind follows from the visit reason.
        """
        try:
            room_kind = RoomKind(self.room_kind)
        except ValueError:
            raise InvalidResponseError(
                "slot's room has no known room kind", practice_id=self.practice_id, resource_type="Location"
            ) from None
        known = {e.value for e in Equipment}
        return SlotCandidate(
            slot_id=self.slot_id,
            start=self.start,
            end=self.end,
            practitioner_id=self.practitioner_id,
            location_id=self.location_id,
            room_kind=room_kind,
            room_equipment=frozenset(Equipment(e) for e in self.equipment if e in known),
            block_kind=BLOCK_KIND_OF_REASON.get(self.visit_reason, BlockKind.CLINIC),
        )


@dataclass(frozen=True, slots=True)
class _ScheduleInfo:
    practitioner_id: str
    practitioner_name: str | None
    location_id: str
    location_name: str | None


@dataclass(frozen=True, slots=True)
class _RoomInfo:
    kind: str | None
    equipment: frozenset[str]


class _DirectoryCache:
    """Schedules and rooms change rarely; caching them keeps slot search at one ModMed call."""

    def __init__(self, ttl_s: float = DIRECTORY_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[tuple[str, str, str], tuple[float, object]] = {}

    async def get(self, key: tuple[str, str, str], load: Callable[[], Awaitable[object]]) -> object:
        cached = self._entries.get(key)
        if cached is not None and time.monotonic() - cached[0] < self._ttl_s:
            return cached[1]
        value = await load()
        self._entries[key] = (time.monotonic(), value)
        return value


class SlotDirectory:
    """Slot → SlotOffer over the practice's Schedules and Locations, read once and cached per practice."""

    def __init__(self, client: ModMedClient) -> None:
        self._client = client
        self._directory = _DirectoryCache()

    async def offer(self, practice: Practice, slot: Slot, visit_reason: VisitReason, *,
                    scope: WorkScope = BACKGROUND) -> SlotOffer:
        """The slot with its provider and room; a directory entry not cached yet is read within ``scope``."""
        schedule_ref = slot.schedule.reference if slot.schedule else None
        schedule_id = reference_id(schedule_ref, "Schedule")
        if schedule_id is None:
            raise InvalidResponseError(
                "Slot does not reference its Schedule", practice_id=practice.practice_id, resource_type="Slot"
            )
        schedule = await self._schedule(practice, schedule_id, scope)
        room = await self._room(practice, schedule.location_id, scope)
        return SlotOffer(
            practice_id=practice.practice_id,
            slot=slot,
            visit_reason=visit_reason,
            schedule_id=schedule_id,
            practitioner_id=schedule.practitioner_id,
            practitioner_name=schedule.practitioner_name,
            location_id=schedule.location_id,
            location_name=schedule.location_name,
            room_kind=room.kind,
            equipment=room.equipment,
        )

    async def _schedule(self, practice: Practice, schedule_id: str, scope: WorkScope) -> _ScheduleInfo:
        async def load() -> _ScheduleInfo:
            schedule = await self._client.read(practice, Schedule, schedule_id, scope=scope)
            practitioner = location = None
            for actor in schedule.actor or ():
                practitioner = practitioner or _actor(actor, "Practitioner")
                location = location or _actor(actor, "Location")
            if practitioner is None or location is None:
                raise InvalidResponseError(
                    "Schedule lacks a Practitioner or Location actor", practice_id=practice.practice_id,
                    resource_type="Schedule",
                )
            return _ScheduleInfo(practitioner[0], practitioner[1], location[0], location[1])

        info = await self._directory.get((practice.practice_id, "Schedule", schedule_id), load)
        assert isinstance(info, _ScheduleInfo)
        return info

    async def _room(self, practice: Practice, location_id: str, scope: WorkScope) -> _RoomInfo:
        async def load() -> _RoomInfo:
            location = await self._client.read(practice, Location, location_id, scope=scope)
            kind = next(
                (c.code for t in location.type or () for c in t.coding or () if c.system == ROOM_KIND_SYSTEM), None
            )
            equipment = frozenset(
                ext.valueCoding.code
                for ext in location.extension or ()
                if ext.url == EXT_ROOM_EQUIPMENT and ext.valueCoding is not None
                and ext.valueCoding.system == EQUIPMENT_SYSTEM and ext.valueCoding.code
            )
            return _RoomInfo(kind, equipment)

        info = await self._directory.get((practice.practice_id, "Location", location_id), load)
        assert isinstance(info, _RoomInfo)
        return info


def reference_id(reference: str | None, resource_type: str) -> str | None:
    """The id of a ``{resource_type}/{id}`` reference (relative or absolute), None for anything else."""
    if not reference:
        return None
    parts = reference.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type and FHIR_ID.match(parts[-1]):
        return parts[-1]
    return None


def _actor(actor: object, resource_type: str) -> tuple[str, str | None] | None:
    reference = getattr(actor, "reference", None)
    found = reference_id(reference, resource_type)
    return (found, getattr(actor, "display", None)) if found else None
