"""Typed description of one sandbox practice: credentials, capabilities, people, rooms,
procedure templates and schedule blocks.

The generator and the mirror file both produce a `PracticeProfile`; everything the server
serves is derived from it, so a malformed mirror fails here with a clear error instead of
producing a tenant that half works.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from sandbox.keys import key_pems
from sandbox.vocabulary import (
    EQUIPMENT,
    PROCEDURE_VISIT_REASONS,
    ROOM_KINDS,
    STAFF_ROLES,
    VISIT_REASONS,
)

Track = Literal["proprietary", "certified"]
BlockKind = Literal["clinic", "procedure"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAY_INDEX: dict[str, int] = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}\Z")
FIRM_PREFIX = re.compile(r"^[a-z0-9][a-z0-9\-]{1,62}\Z")
E164 = re.compile(r"^\+[1-9][0-9]{7,14}\Z")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _fhir_id(value: str) -> str:
    if not FHIR_ID.match(value):
        raise ValueError(f"{value!r} is not a valid FHIR id ([A-Za-z0-9-.], at most 64 characters)")
    return value


FhirId = Annotated[str, AfterValidator(_fhir_id)]


class ProcedureTemplate(_Frozen):
    """A PM schedule template: which visit reason it books, where, with what, for how long."""

    visit_reason: str
    name: str = Field(min_length=1, max_length=120)
    duration_minutes: int = Field(ge=5, le=480)
    block: BlockKind
    room_kinds: tuple[str, ...] = Field(min_length=1)
    equipment: tuple[str, ...] = ()
    preop_clearance_days: int = Field(default=0, ge=0, le=365)
    max_per_block: int | None = Field(default=None, ge=1, le=100)
    ema_only: bool = False

    @field_validator("visit_reason")
    @classmethod
    def _known_reason(cls, value: str) -> str:
        if value not in VISIT_REASONS:
            raise ValueError(f"unknown visit reason {value!r}; expected one of {sorted(VISIT_REASONS)}")
        return value

    @field_validator("room_kinds")
    @classmethod
    def _known_room_kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [kind for kind in value if kind not in ROOM_KINDS]
        if unknown:
            raise ValueError(f"unknown room kinds {unknown}; expected from {sorted(ROOM_KINDS)}")
        return value

    @field_validator("equipment")
    @classmethod
    def _known_equipment(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [item for item in value if item not in EQUIPMENT]
        if unknown:
            raise ValueError(f"unknown equipment {unknown}; expected from {sorted(EQUIPMENT)}")
        return value

    @model_validator(mode="after")
    def _procedures_in_procedure_blocks(self) -> ProcedureTemplate:
        if self.visit_reason in PROCEDURE_VISIT_REASONS and self.block != "procedure":
            raise ValueError(f"template for {self.visit_reason!r} must use procedure blocks")
        return self


class Room(_Frozen):
    """A bookable room (FHIR Location, physicalType 'ro') and its equipment."""

    location_id: FhirId
    name: str = Field(min_length=1, max_length=80)
    kind: str
    equipment: tuple[str, ...] = ()


    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in ROOM_KINDS:
            raise ValueError(f"unknown room kind {value!r}; expected one of {sorted(ROOM_KINDS)}")
        return value

    @field_validator("equipment")
    @classmethod
    def _known_equipment(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [item for item in value if item not in EQUIPMENT]
        if unknown:
            raise ValueError(f"unknown equipment {unknown}; expected from {sorted(EQUIPMENT)}")
        return value

    def can_host(self, template: ProcedureTemplate) -> bool:
        """A template fits a room when the room kind is allowed and every required device is there."""
        return self.kind in template.room_kinds and set(template.equipment) <= set(self.equipment)


class StaffMember(_Frozen):
    """A Practitioner: a provider who has schedule blocks, or staff who receive tasks."""

    practitioner_id: FhirId
    given: str = Field(min_length=1, max_length=60)
    family: str = Field(min_length=1, max_length=60)
    credential: str = Field(default="", max_length=20)
    role: str
    npi: str = Field(pattern=r"^[0-9]{10}$")
    performs: tuple[str, ...] = ()


    @field_validator("role")
    @classmethod
    def _known_role(cls, value: str) -> str:
        if value not in STAFF_ROLES:
            raise ValueError(f"unknown staff role {value!r}; expected one of {sorted(STAFF_ROLES)}")
        return value

    @field_validator("performs")
    @classmethod
    def _known_reasons(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [code for code in value if code not in VISIT_REASONS]
        if unknown:
            raise ValueError(f"unknown visit reasons {unknown}")
        return value

    @property
    def display_name(self) -> str:
        suffix = f", {self.credential}" if self.credential else ""
        return f"{self.given} {self.family}{suffix}"


class ScheduleBlock(_Frozen):
    """A recurring weekly block of one provider in one room: clinic or procedure time."""

    practitioner_id: FhirId
    location_id: FhirId
    weekdays: tuple[Weekday, ...] = Field(min_length=1)
    start: dt.time
    end: dt.time
    kind: BlockKind

    @model_validator(mode="after")
    def _ordered(self) -> ScheduleBlock:
        if self.end <= self.start:
            raise ValueError(f"block end {self.end} must be after start {self.start}")
        return self


class Capabilities(_Frozen):
    """What this tenant's FHIR API offers; the connector routes around what is missing."""

    fhir_task_create: bool
    fhir_compliance_flags: bool
    ema_booking_templates: tuple[str, ...]
    track: Track


class CertifiedAccess(_Frozen):
    """SMART backend-services registration of callstream at a certified-track practice."""

    client_id: str
    key_id: str
    key_label: str = Field(description="what the deterministic RSA key is derived from (sandbox.keys)")

    @property
    def private_key_pem(self) -> str:
        return key_pems(self.key_label)[0]

    @property
    def public_key_pem(self) -> str:
        return key_pems(self.key_label)[1]


class PracticeProfile(_Frozen):
    """Everything that defines one tenant, before patients and bookings are generated."""

    practice_id: FhirId
    firm_number: int = Field(ge=1000, le=99999)
    name: str = Field(min_length=1, max_length=120)
    firm_url_prefix: str
    track: Track
    timezone: str
    city: str
    state: str = Field(pattern=r"^[A-Z]{2}$")
    postal_code: str = Field(pattern=r"^[0-9]{5}$")
    street: str
    api_key: str | None
    username: str
    password: str
    client_id: str | None
    client_secret: str | None
    called_numbers: tuple[str, ...] = Field(min_length=1)
    fhir_task_create: bool
    fhir_compliance_flags: bool
    rate_limit_per_minute: int = Field(default=1000, ge=1, le=1_000_000)
    ema_lockout_threshold: int = Field(default=3, ge=1, le=20)
    staff: tuple[StaffMember, ...] = Field(min_length=1)
    rooms: tuple[Room, ...] = Field(min_length=1)
    templates: tuple[ProcedureTemplate, ...] = Field(min_length=1)
    blocks: tuple[ScheduleBlock, ...]
    weeks_back: int = Field(default=2, ge=0, le=12)
    weeks_ahead: int = Field(default=6, ge=1, le=26)
    certified: CertifiedAccess | None = None


    @field_validator("firm_url_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if not FIRM_PREFIX.match(value):
            raise ValueError(f"firm_url_prefix {value!r} must be lowercase letters, digits and dashes")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"unknown IANA time zone {value!r}") from error
        return value

    @field_validator("called_numbers")
    @classmethod
    def _e164(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [number for number in value if not E164.match(number)]
        if bad:
            raise ValueError(f"called numbers must be E.164: {bad}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PracticeProfile:
        staff_ids = {member.practitioner_id for member in self.staff}
        room_ids = {room.location_id for room in self.rooms}
        if len(staff_ids) != len(self.staff) or len(room_ids) != len(self.rooms):
            raise ValueError("practitioner and room ids must be unique")
        reasons = [template.visit_reason for template in self.templates]
        if len(set(reasons)) != len(reasons):
            raise ValueError("one template per visit reason")
        for block in self.blocks:
            if block.practitioner_id not in staff_ids:
                raise ValueError(f"schedule block names unknown provider {block.practitioner_id!r}")
            if block.location_id not in room_ids:
                raise ValueError(f"schedule block names unknown room {block.location_id!r}")
        if self.track == "proprietary" and (self.api_key is None or self.client_id is None):
            raise ValueError("a proprietary-track practice needs an api_key and client credentials")
        if self.track == "certified" and self.certified is None:
            raise ValueError("a certified-track practice needs its SMART registration")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            fhir_task_create=self.fhir_task_create,
            fhir_compliance_flags=self.fhir_compliance_flags,
            ema_booking_templates=tuple(t.visit_reason for t in self.templates if t.ema_only),
            track=self.track,
        )

    @property
    def facility_id(self) -> str:
        return f"loc-{self.firm_number}-facility"

    @property
    def organization_id(self) -> str:
        return f"org-{self.firm_number}"

    def template_for(self, visit_reason: str) -> ProcedureTemplate | None:
        return next((t for t in self.templates if t.visit_reason == visit_reason), None)

    def staff_member(self, practitioner_id: str) -> StaffMember | None:
        return next((m for m in self.staff if m.practitioner_id == practitioner_id), None)

    def room(self, location_id: str) -> Room | None:
        return next((r for r in self.rooms if r.location_id == location_id), None)

    def coordinator(self) -> StaffMember | None:
        """The controlled-substance coordinator who receives UDS tasks."""
        return next((m for m in self.staff if m.role == "controlled-substance-coordinator"), None)
