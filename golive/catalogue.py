"""The go-live scenario catalogue: scripted calls with the outcomes a practice must see, as YAML data.

Each file under ``scenarios/`` holds one category: ``category: NAME`` and a ``scenarios:`` list. A scenario
names the kind of caller it needs (``CallerKind``: the harness picks a sandbox patient whose chart fits, a
different one per scenario), the go-live phase it runs in, sandbox faults it needs, the call's steps with
the reply each turn must get, and what must be observable afterwards: Appointments and Tasks in the
sandbox with their codes and rooms, guard hits, bypass signals and other audit records. Every scenario
also checks the invariants no call may break (``scenario_checks.INVARIANTS``): no MedicationRequest or
MedicationStatement write, no controlled-substance request left unescalated.

Loading validates everything with pydantic; an error names the file, the scenario and the field.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from callstream.errors import ConfigError
from guards.model import GuardName, Intent, TaskKind, TaskReason, VisitReason
from guards.replies import INTERIM_TEMPLATES, ReplyTemplate
from sandbox.faults import PracticeFaults
from schemas.models import AuditAction, AuditOutcome

CATALOGUE_DIR = Path(__file__).resolve().parent / "scenarios"
EXAMPLE_MIRROR = Path(__file__).resolve().parent / "example-mirror.yaml"
ScenarioId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{2,63}$")]


class CatalogueError(ConfigError):
    """A catalogue file that cannot be read or does not validate (the message names file and field)."""


class CallerKind(StrEnum):
    """Who calls: a chart state the harness finds in the mirrored sandbox (see ``callers``)."""

    PLAIN = "plain"
    """No compliance flag at all."""
    CHRONIC_ACTIVE = "chronic-active"
    """Chronic opioid, active agreement, no restriction, no aberrant UDS, no UDS due."""
    CHRONIC_ACTIVE_PDMP = "chronic-active-pdmp"
    """As chronic-active, with a PDMP check on file (its time may reach the provider task, nothing else)."""
    CHRONIC_EXPIRED = "chronic-expired"
    CHRONIC_VIOLATED = "chronic-violated"
    ABERRANT_UDS = "aberrant-uds"
    """Chronic opioid with the aberrant-UDS flag, no restriction."""
    UDS_DUE = "uds-due"
    """Chronic opioid, active agreement, UDS due, no aberrant UDS, no restriction."""
    NO_REFILL_REQUESTS = "no-refill-requests"
    NO_SCHEDULING = "no-scheduling"
    NO_PHONE_REQUESTS = "no-phone-requests"
    """Any chart with this restriction (it is rare; other flags may add their own tasks: use exact_tasks: false)."""
    WITH_APPOINTMENT = "with-appointment"
    """No flag, and a booked appointment at least two days ahead that the sandbox can move."""
    UNKNOWN = "unknown"
    """Name and birth date that match no chart."""


class Phase(StrEnum):
    """The go-live phase the scenario's call runs in (the harness gives each its own tenant entry)."""

    SANDBOX = "sandbox"
    READ_ONLY = "read_only"
    WRITE = "write"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Replies = tuple[ReplyTemplate, ...]


def _replies(value: object) -> object:
    """One template or a list of acceptable ones."""
    return (value,) if isinstance(value, str) else value


class IdentifyStep(_Strict):
    """The caller gives name and date of birth (the harness fills in the chosen patient's); a new patient may
    also give the registration details (synthetic address, pharmacy, and insurance unless self-pay)."""

    identify: Literal[True] = True
    details: Literal["insured", "self-pay"] | None = None
    reply: Replies = ()

    _one_or_many = field_validator("reply", mode="before")(_replies)


class DateWindow(_Strict):
    """Days from the run's date; both ends inclusive."""

    from_days: int = Field(ge=-30, le=400)
    to_days: int = Field(ge=-30, le=400)

    @model_validator(mode="after")
    def _ordered(self) -> DateWindow:
        if self.to_days < self.from_days:
            raise ValueError("to_days must not be before from_days")
        return self


class IntentStep(_Strict):
    """An intent recognised by the voice agent, with its entities."""

    intent: Intent
    visit_reason: VisitReason | None = None
    medication: bool = False
    controlled_substance: bool = False
    snippet: str | None = Field(default=None, max_length=4000)
    dates: DateWindow | None = None
    provider_hint: str | None = Field(default=None, max_length=120)
    appointment: Literal["own", "other", "unknown"] | None = None
    """Which appointment the caller names: their own upcoming one, another patient's, or an id that does not exist."""
    reply: Replies = Field(min_length=1)

    _one_or_many = field_validator("reply", mode="before")(_replies)


class ChooseStep(_Strict):
    """The caller picks the n-th offered slot, or names a slot that was never offered."""

    choose: int | Literal["unoffered"]
    reply: Replies = Field(min_length=1)

    _one_or_many = field_validator("reply", mode="before")(_replies)

    @field_validator("choose")
    @classmethod
    def _position(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 5:
            raise ValueError("an offered slot is chosen by its position, 1 to 5")
        return value


def _step_kind(value: object) -> str | None:
    """Which step a YAML mapping is, by its leading key, so an error names that step's fields only."""
    if isinstance(value, dict):
        return next((key for key in ("intent", "choose", "identify") if key in value), None)
    return next((key for key in ("intent", "choose", "identify") if hasattr(value, key)), None)


Step = Annotated[
    Annotated[IdentifyStep, Tag("identify")] | Annotated[IntentStep, Tag("intent")] | Annotated[ChooseStep, Tag("choose")],
    Discriminator(_step_kind, custom_error_type="step_kind",
                  custom_error_message="a step is 'identify', or a mapping with 'intent' or 'choose'"),
]


class AppointmentExpectation(_Strict):
    """An Appointment the call must leave in the sandbox (new for the caller, or the one they named)."""

    visit_reason: VisitReason | None = None
    """None: the visit reason of the appointment the caller named (a reschedule or cancellation)."""
    status: Literal["booked", "cancelled"] = "booked"
    room_kind: Literal["exam-room", "procedure-room"] | None = None
    equipment: tuple[Literal["fluoroscopy", "rf-generator", "ultrasound"], ...] = ()
    """Devices the booked room must have."""
    min_days_ahead: int | None = Field(default=None, ge=0, le=365)
    """The start is at least this many days after the run (a pre-op clearance window)."""
    within_dates: bool = False
    """The start falls inside the window the caller asked for."""
    moved: bool = False
    """The caller's named appointment, moved to another slot (a reschedule)."""

    @model_validator(mode="after")
    def _reason_known(self) -> AppointmentExpectation:
        if self.visit_reason is None and not (self.moved or self.status == "cancelled"):
            raise ValueError("visit_reason is needed unless the named appointment is moved or cancelled")
        return self


class TaskExpectation(_Strict):
    """A Task the call must leave in the sandbox, by the guard's kind and reason (FHIR or PM-queue code)."""

    kind: TaskKind
    reason: TaskReason
    pdmp_last_checked: bool | None = None
    """True: the task carries the PDMP check time; False: it must not."""
    after_hours: bool | None = None
    """True: the task says it came in after office hours; False: it must not."""


class GuardExpectation(_Strict):
    name: GuardName
    action: Literal["BLOCKED", "ROUTED", "ESCALATED", "NOTED"] | None = None


class AuditExpectation(_Strict):
    """At least ``count`` (or exactly ``exactly``) audit records of the call with this action (and outcome, command)."""

    action: AuditAction
    outcome: AuditOutcome | None = None
    command: str | None = None
    resource_type: str | None = None
    count: int = Field(default=1, ge=0)
    exactly: bool = False


class Expectations(_Strict):
    appointments: tuple[AppointmentExpectation, ...] = ()
    """Exactly these; an empty list means the call must leave no new or changed appointment."""
    tasks: tuple[TaskExpectation, ...] = ()
    """These Tasks of the call (one per kind and reasons); empty means none."""
    exact_tasks: bool = True
    """False: the call may leave further tasks (a chart whose other flags add their own)."""
    guards: tuple[GuardExpectation, ...] = ()
    """Guard hits that must be among the call's GUARD_HIT records."""
    absent_guards: tuple[GuardName, ...] = ()
    bypass: tuple[str, ...] = ()
    """BYPASS_ATTEMPT signals the call must record."""
    audit: tuple[AuditExpectation, ...] = ()
    interim: tuple[ReplyTemplate, ...] = ()
    """Interim replies the caller must hear before an answer (a slow ModMed)."""
    escalated: bool | None = None
    """Whether some answer tells the caller the request went to a person (Reply.escalated)."""
    registered: Literal["insured", "self-pay"] | None = None
    """A new patient's chart was created by the call (with a Coverage when insured, none when self-pay); the
    appointments and tasks expected are then the new chart's."""
    intake_message: bool | None = None
    """True: the practice's SMS provider got the booking confirmation with the intake link for the booked
    appointment; False: no message for the call."""

    @field_validator("interim")
    @classmethod
    def _interim_only(cls, value: tuple[ReplyTemplate, ...]) -> tuple[ReplyTemplate, ...]:
        wrong = [t.value for t in value if t not in INTERIM_TEMPLATES]
        if wrong:
            raise ValueError(f"not interim templates: {wrong}")
        return value


class Scenario(_Strict):
    id: ScenarioId
    title: str = Field(min_length=5, max_length=200)
    caller: CallerKind = CallerKind.PLAIN
    phase: Phase = Phase.SANDBOX
    faults: PracticeFaults | None = None
    """Sandbox faults set on the practice while this scenario runs (fault scenarios run apart from the rest)."""
    needs_template: VisitReason | None = None
    """Only for mirrors whose practice has this template (EMA-only templates need one marked ema_only)."""
    needs_ema_only: bool = False
    office: Literal["open", "closed", "holiday"] = "open"
    """The office hours of the tenant entry called: open around the clock (replies in their in-hours wording),
    closed all week, or open but with today a holiday."""
    intake: bool = False
    """Call the tenant entry with intake forms configured (SMS to the check's local provider)."""
    steps: tuple[Step, ...] = Field(min_length=1)
    expect: Expectations = Expectations()
    category: str = ""

    @field_validator("steps", mode="before")
    @classmethod
    def _bare_identify(cls, value: object) -> object:
        """``- identify`` is short for ``- identify: true``."""
        if isinstance(value, list):
            return [{"identify": True} if step == "identify" else step for step in value]
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Scenario:
        if any(isinstance(s, ChooseStep) for s in self.steps) and not any(isinstance(s, IntentStep) for s in self.steps):
            raise ValueError("a slot is chosen only after an intent offered slots")
        if self.needs_ema_only and self.needs_template is None:
            raise ValueError("needs_ema_only names the template in needs_template")
        needs_appointment = any(isinstance(s, IntentStep) and s.appointment == "own" for s in self.steps)
        if needs_appointment and self.caller is not CallerKind.WITH_APPOINTMENT:
            raise ValueError("a caller naming their own appointment must be a 'with-appointment' caller")
        if self.caller is CallerKind.UNKNOWN and (self.expect.appointments or self.expect.tasks) \
                and self.expect.registered is None:
            raise ValueError("an unknown caller has no chart for appointments or tasks to land on (unless registered)")
        if (self.office != "open" or self.intake) and self.phase is not Phase.SANDBOX:
            raise ValueError("office hours and intake variants exist for the sandbox phase only")
        if self.office != "open" and self.intake:
            raise ValueError("a scenario calls either a closed office or the intake entry, not both")
        if self.expect.registered is not None and self.caller is not CallerKind.UNKNOWN:
            raise ValueError("only an 'unknown' caller registers as a new patient")
        return self

    @property
    def isolated(self) -> bool:
        """Faults are per practice: such a scenario must not share the practice with others."""
        return self.faults is not None


class CatalogueFile(_Strict):
    category: str = Field(pattern=r"^[a-z][a-z0-9-]{1,40}$")
    scenarios: tuple[Scenario, ...] = Field(min_length=1)


def _location(error: dict, data: object) -> str:
    """'scenarios[3] (book-esi).steps.1.reply' from a pydantic error location."""
    parts = list(error["loc"])
    text = ""
    if len(parts) >= 2 and parts[0] == "scenarios" and isinstance(parts[1], int):
        index = parts[1]
        scenario_id = None
        if isinstance(data, dict) and isinstance(data.get("scenarios"), list) and index < len(data["scenarios"]):
            entry = data["scenarios"][index]
            scenario_id = entry.get("id") if isinstance(entry, dict) else None
        text = f"scenarios[{index}]" + (f" ({scenario_id})" if scenario_id else "")
        parts = parts[2:]
    # A step's tag appears in the location: leave it out of what a reader sees.
    rest = ".".join(str(p) for p in parts if p not in ("identify", "intent", "choose") or p is parts[-1])
    return ".".join(filter(None, (text, rest))) or "file"


def _message(error: dict) -> str:
    """Pydantic's message, without the full list of a large enum's members."""
    if error["type"] == "enum":
        return f"not one of the known values ({str(error.get('ctx', {}).get('expected', ''))[:120]}...)"
    return str(error["msg"])


def load_catalogue_file(path: Path) -> CatalogueFile:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogueError(f"{path}: cannot read the scenario file ({type(exc).__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise CatalogueError(f"{path}: not valid YAML{f' at line {mark.line + 1}' if mark else ''}") from None
    try:
        catalogue = CatalogueFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False)[0]
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise CatalogueError(f"{path}: {_location(first, data)}: {_message(first)}{more}") from None
    scenarios = tuple(s.model_copy(update={"category": catalogue.category}) for s in catalogue.scenarios)
    return catalogue.model_copy(update={"scenarios": scenarios})


def load_catalogue(directory: Path = CATALOGUE_DIR) -> list[Scenario]:
    """Every scenario of every ``*.yaml`` file in the directory, in file then list order; ids are unique."""
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise CatalogueError(f"{directory}: no scenario files (*.yaml)")
    scenarios = [scenario for path in files for scenario in load_catalogue_file(path).scenarios]
    repeated = [sid for sid, n in Counter(s.id for s in scenarios).items() if n > 1]
    if repeated:
        raise CatalogueError(f"{directory}: scenario ids used more than once: {sorted(repeated)}")
    return scenarios
