"""The seeds' "sandbox mirror": a practice's procedure templates, visit reasons and provider
schedule, loaded from YAML or JSON into a sandbox tenant before go-live.

A mirror entry whose `practice_id` matches a generated practice replaces that practice's
templates, visit reasons and schedule (and providers/rooms when given); a new
`practice_id` adds a practice. Patients are still generated. Provider and room keys are
namespaced per practice (`prac-{firm}-{key}`, `loc-{firm}-{key}`), so two mirrored
practices may both call a room 'proc-1' without their ids meeting.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sandbox.generator import generate_profile, luhn_npi
from sandbox.profile import BlockKind, PracticeProfile, ProcedureTemplate, Room, ScheduleBlock, StaffMember, Weekday
from sandbox.vocabulary import VISIT_REASONS


class MirrorError(ValueError):
    """The mirror file cannot be read or does not describe a consistent practice."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MirrorProvider(_Strict):
    key: str = Field(pattern=r"^[A-Za-z0-9\-]{1,40}$")
    given: str = Field(min_length=1, max_length=60)
    family: str = Field(min_length=1, max_length=60)
    credential: str = Field(default="", max_length=20)
    role: Literal["interventionalist", "advanced-practice-provider"] = "interventionalist"
    performs: list[str] = Field(min_length=1)


class MirrorRoom(_Strict):
    key: str = Field(pattern=r"^[A-Za-z0-9\-]{1,40}$")
    name: str = Field(min_length=1, max_length=80)
    kind: str
    equipment: list[str] = []


class MirrorBlock(_Strict):
    provider: str
    room: str
    weekdays: list[Weekday] = Field(min_length=1)
    start: dt.time
    end: dt.time
    kind: BlockKind


class MirrorSchedule(_Strict):
    weeks_back: int = Field(default=2, ge=0, le=12)
    weeks_ahead: int = Field(default=6, ge=1, le=26)
    blocks: list[MirrorBlock] = Field(min_length=1)


class MirrorPractice(_Strict):
    practice_id: str = Field(pattern=r"^[A-Za-z0-9\-.]{1,64}$")
    name: str | None = None
    firm_url_prefix: str | None = None
    timezone: str | None = None
    track: Literal["proprietary", "certified"] | None = None
    fhir_task_create: bool | None = None
    fhir_compliance_flags: bool | None = None
    visit_reasons: list[str] | None = None
    templates: list[ProcedureTemplate] = Field(min_length=1)
    providers: list[MirrorProvider] | None = None
    rooms: list[MirrorRoom] | None = None
    schedule: MirrorSchedule | None = None

    @field_validator("visit_reasons")
    @classmethod
    def _contract_codes(cls, value: list[str] | None) -> list[str] | None:
        unknown = [code for code in value or [] if code not in VISIT_REASONS]
        if unknown:
            raise ValueError(f"unknown visit reasons {unknown}; the contract codes are {sorted(VISIT_REASONS)}")
        return value


class MirrorFile(_Strict):
    practices: list[MirrorPractice] = Field(min_length=1)


def _readable(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in error.errors(include_input=False))


def load_mirror(path: Path) -> MirrorFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise MirrorError(f"cannot read mirror file {path}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise MirrorError(f"mirror file {path} is not UTF-8") from error
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise MirrorError(f"mirror file {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}") from error
    try:
        return MirrorFile.model_validate(data)
    except ValidationError as error:
        raise MirrorError(f"mirror file {path}: {_readable(error)}") from error


def _mirrored(base: PracticeProfile, entry: MirrorPractice, seed: int) -> PracticeProfile:
    firm = base.firm_number
    data = base.model_dump()
    rng = random.Random(f"{seed}:{entry.practice_id}:mirror")
    for field in ("name", "firm_url_prefix", "timezone", "fhir_task_create", "fhir_compliance_flags"):
        if getattr(entry, field) is not None:
            data[field] = getattr(entry, field)
    if entry.visit_reasons is not None:
        stray = [t.visit_reason for t in entry.templates if t.visit_reason not in entry.visit_reasons]
        if stray:
            raise MirrorError(f"{entry.practice_id}: templates for visit reasons not in visit_reasons: {stray}")
    data["templates"] = [t.model_dump() for t in entry.templates]
    staff: list[dict] = [m.model_dump() for m in base.staff]
    if entry.providers is not None:
        staff = [m for m in staff if m["role"] not in ("interventionalist", "advanced-practice-provider")]
        staff = [
            StaffMember(
                practitioner_id=f"prac-{firm}-{p.key}", given=p.given, family=p.family, credential=p.credential,
                role=p.role, npi=luhn_npi(rng), performs=tuple(p.performs),
            ).model_dump()
            for p in entry.providers
        ] + staff
    data["staff"] = staff
    if entry.rooms is not None:
        data["rooms"] = [
            Room(location_id=f"loc-{firm}-{r.key}", name=r.name, kind=r.kind, equipment=tuple(r.equipment)).model_dump()
            for r in entry.rooms
        ]
    if entry.schedule is not None:
        data["weeks_back"], data["weeks_ahead"] = entry.schedule.weeks_back, entry.schedule.weeks_ahead
        data["blocks"] = [
            ScheduleBlock(
                practitioner_id=f"prac-{firm}-{b.provider}", location_id=f"loc-{firm}-{b.room}",
                weekdays=tuple(b.weekdays), start=b.start, end=b.end, kind=b.kind,
            ).model_dump()
            for b in entry.schedule.blocks
        ]
    elif entry.providers is not None or entry.rooms is not None:
        raise MirrorError(f"{entry.practice_id}: mirroring providers or rooms needs a schedule for them")
    try:
        return PracticeProfile.model_validate(data)
    except ValidationError as error:
        raise MirrorError(f"{entry.practice_id}: {_readable(error)}") from error


def apply_mirror(profiles: list[PracticeProfile], mirror: MirrorFile, seed: int) -> list[PracticeProfile]:
    """The generated profiles with mirror entries applied (replacing or appending practices)."""
    result = list(profiles)
    for entry in mirror.practices:
        position = next((i for i, p in enumerate(result) if p.practice_id == entry.practice_id), None)
        if position is not None:
            result[position] = _mirrored(result[position], entry, seed)
            continue
        index = len(result)
        base = generate_profile(seed, index, track=entry.track)
        base_data = base.model_dump()
        base_data["practice_id"] = entry.practice_id
        base_data["firm_url_prefix"] = entry.firm_url_prefix or f"{base.firm_url_prefix}{base.firm_number}"
        result.append(_mirrored(PracticeProfile.model_validate(base_data), entry, seed))
    prefixes = [p.firm_url_prefix for p in result]
    if len(set(prefixes)) != len(prefixes):
        raise MirrorError("two practices share a firm_url_prefix")
    return result
