"""Who and where an EMA slot is: the booking screen names a provider and a room; the offer needs their ids.

EMA's procedure-template booking lists free slots as "08:00-09:00 Provider Name, MD, Room name", with no
ids, while the guards rank slots by practitioner, room kind and room equipment. Practitioners and
Locations are readable over FHIR on both ModMed tracks (only the EMA-only *templates* are missing
there), so the directory reads them once per practice and caches them: a slot search costs no FHIR call
after the first. Labels are built exactly as EMA shows them; a label two practitioners share is kept as
ambiguous (None) so a slot is never attributed to the wrong provider.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from fhir.resources.R4B.location import Location
from fhir.resources.R4B.practitioner import Practitioner

from callstream.tenants import Practice
from callstream.work_scope import BACKGROUND, WorkScope
from connectors.fhir import ModMedClient
from connectors.vocabulary import EQUIPMENT_SYSTEM, EXT_ROOM_EQUIPMENT, ROOM_KIND_SYSTEM

DIRECTORY_TTL_S = 600.0


@dataclass(frozen=True, slots=True)
class EmaRoom:
    """A bookable room as the guards need it."""

    location_id: str
    name: str
    kind: str | None
    equipment: frozenset[str]


class EmaDirectory(Protocol):
    """Screen names → ModMed ids for one practice."""

    async def providers(self, practice: Practice, *, scope: WorkScope = BACKGROUND) -> Mapping[str, str | None]:
        """Provider label as EMA shows it → Practitioner id (None when the label is ambiguous)."""
        ...

    async def rooms(self, practice: Practice, *, scope: WorkScope = BACKGROUND) -> Mapping[str, EmaRoom | None]:
        """Room name → room (None when the name is ambiguous)."""
        ...


class FhirEmaDirectory:
    """EmaDirectory over the practice's FHIR Practitioner and Location resources, cached per practice."""

    def __init__(self, client: ModMedClient, *, ttl_s: float = DIRECTORY_TTL_S) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._providers: dict[str, tuple[float, dict[str, str | None]]] = {}
        self._rooms: dict[str, tuple[float, dict[str, EmaRoom | None]]] = {}

    async def providers(self, practice: Practice, *, scope: WorkScope = BACKGROUND) -> Mapping[str, str | None]:
        cached = self._providers.get(practice.practice_id)
        if cached is not None and time.monotonic() - cached[0] < self._ttl_s:
            return cached[1]
        found = await self._client.search(practice, Practitioner, {"_count": "50"}, scope=scope)
        labels: dict[str, str | None] = {}
        for practitioner in found.matches:
            label = provider_label(practitioner)
            if label is None or practitioner.id is None:
                continue
            labels[label] = None if label in labels else practitioner.id
        self._providers[practice.practice_id] = (time.monotonic(), labels)
        return labels

    async def rooms(self, practice: Practice, *, scope: WorkScope = BACKGROUND) -> Mapping[str, EmaRoom | None]:
        cached = self._rooms.get(practice.practice_id)
        if cached is not None and time.monotonic() - cached[0] < self._ttl_s:
            return cached[1]
        found = await self._client.search(practice, Location, {"_count": "50"}, scope=scope)
        rooms: dict[str, EmaRoom | None] = {}
        for location in found.matches:
            room = _room(location)
            if room is not None:
                rooms[room.name] = None if room.name in rooms else room
        self._rooms[practice.practice_id] = (time.monotonic(), rooms)
        return rooms


def provider_label(practitioner: Practitioner) -> str | None:
    """"Given Family, Credential", the way EMA labels a provider on its screens."""
    names = practitioner.name or []
    name = next((n for n in names if n.use == "official"), names[0] if names else None)
    if name is None or not name.family:
        return None
    label = " ".join([*(name.given or []), name.family])
    if name.suffix:
        label = f"{label}, {name.suffix[0]}"
    return " ".join(label.split())


def _room(location: Location) -> EmaRoom | None:
    """A Location with a room kind is a bookable room; the facility and others are skipped."""
    kind = next(
        (c.code for concept in location.type or () for c in concept.coding or () if c.system == ROOM_KIND_SYSTEM),
        None,
    )
    if kind is None or location.id is None or not location.name:
        return None
    equipment = frozenset(
        ext.valueCoding.code
        for ext in location.extension or ()
        if ext.url == EXT_ROOM_EQUIPMENT and ext.valueCoding is not None
        and ext.valueCoding.system == EQUIPMENT_SYSTEM and ext.valueCoding.code
    )
    return EmaRoom(location.id, " ".join(location.name.split()), kind, equipment)
