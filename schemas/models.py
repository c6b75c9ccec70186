"""Pydantic models of the event contract, one per Avro record of schemas/avro.

The rest of callstream works with these models; `to_avro()` gives the record AvroSerde encodes and
`from_avro()` validates what it decodes. Validation is where hostile input stops: identifiers,
phone numbers and free text are bounded, timestamps are UTC with millisecond precision (what Avro
timestamp-millis keeps), and the errors raised at the boundary (`SchemaError`) never contain
field values. PHI fields are left out of repr() so a logged model leaks nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal, Self
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_serializer,
    model_validator,
)

from guards.model import Command, GuardAction, Intent  # one source for the domain vocabulary the Avro enums carry
from schemas.catalogue import NAMESPACE
from schemas.errors import SchemaError
from schemas.phone import E164Number

UNRESOLVED_PRACTICE_ID = "unresolved"
"""practice_id of audit records for calls whose called number matched no practice."""
FLEET_PRACTICE_ID = "fleet"
"""practice_id of alarms about the whole fleet (e.g. consumer lag)."""

_NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")]
"""Ids from other systems (call ids, FHIR ids, practice ids): safe as Kafka keys and in logs."""
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_NO_CONTROL_CHARACTERS)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=4000)]
Reference = Annotated[str, StringConstraints(min_length=1, max_length=2048, pattern=_NO_CONTROL_CHARACTERS)]
Code = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
"""Machine names: template names, guard names, visit-reason codes, call states, class names."""
DetailMap = Annotated[
    dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.]{0,63}$")],
        Annotated[str, StringConstraints(max_length=1024)],
    ],
    Field(max_length=32),
]
"""Extra context for audit records and alarms: lowercase keys, bounded values; never PHI or secrets."""


def _utc_millis(value: datetime) -> datetime:
    """Normalise to UTC and floor to milliseconds, the precision Avro timestamp-millis keeps."""
    utc = value.astimezone(UTC)
    return utc.replace(microsecond=utc.microsecond - utc.microsecond % 1000)


UtcMillis = Annotated[AwareDatetime, AfterValidator(_utc_millis)]


def _iso_calendar_date(value: object) -> object:
    """Accept only yyyy-MM-dd strings (or dates): pydantic alone would also take numbers."""
    if isinstance(value, datetime):
        raise ValueError("must be a calendar date, not a timestamp")
    if isinstance(value, date):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return value
    raise ValueError("must be a date in yyyy-MM-dd form")


CalendarDate = Annotated[date, BeforeValidator(_iso_calendar_date)]


def _finite(value: float) -> float:
    """NaN and infinities have no meaning in a rate or threshold and break comparisons downstream."""
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


FiniteFloat = Annotated[float, AfterValidator(_finite)]


class CallDisposition(StrEnum):
    """How a call ended."""

    COMPLETED = "COMPLETED"
    TRANSFERRED = "TRANSFERRED"
    ABANDONED = "ABANDONED"
    VOICEMAIL = "VOICEMAIL"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"


CommandKind = Command
"""The closed set of commands the guard may issue (guards.model.Command): there is no medication write."""


class CommandRoute(StrEnum):
    """Execution path of a command."""

    FHIR = "FHIR"
    EMA = "EMA"
    REVIEW_QUEUE = "REVIEW_QUEUE"


class AuditAction(StrEnum):
    """Kinds of audited steps."""

    CALL_STATE_TRANSITION = "CALL_STATE_TRANSITION"
    FHIR_READ = "FHIR_READ"
    FHIR_WRITE = "FHIR_WRITE"
    EMA_READ = "EMA_READ"
    EMA_WRITE = "EMA_WRITE"
    ESCALATION = "ESCALATION"
    GUARD_HIT = "GUARD_HIT"
    BYPASS_ATTEMPT = "BYPASS_ATTEMPT"
    REVIEW_QUEUED = "REVIEW_QUEUED"
    REPLY_SENT = "REPLY_SENT"
    DEAD_LETTER = "DEAD_LETTER"
    AUTH_FAILURE = "AUTH_FAILURE"
    ALARM = "ALARM"
    PATIENT_MESSAGE = "PATIENT_MESSAGE"
    """A message to the patient (booking confirmation with the intake link): channel and outcome only, never the
    number or address it went to."""
    UNKNOWN = "UNKNOWN"


class AuditOutcome(StrEnum):
    """Outcome of an audited step."""

    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    BLOCKED = "BLOCKED"
    QUEUED = "QUEUED"


DialoguePath = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z_]{0,47}(?:/[a-z0-9][a-z0-9-]{0,47})?$")]
"""A dialogue path: the intent, with the visit-reason code when one is set (``BOOK_APPOINTMENT/medication-management``)."""


class AlarmKind(StrEnum):
    """The sentinels of the production-write phase plus the SRE ones."""

    WRITE_SUCCESS_DRIFT = "WRITE_SUCCESS_DRIFT"
    CS_ESCALATION_RATE = "CS_ESCALATION_RATE"
    GUARDRAIL_BYPASS = "GUARDRAIL_BYPASS"
    CONSUMER_LAG = "CONSUMER_LAG"
    SIEM_DELIVERY = "SIEM_DELIVERY"
    REVIEW_QUEUE_STALE = "REVIEW_QUEUE_STALE"
    UNKNOWN = "UNKNOWN"


class AlarmState(StrEnum):
    """Alarm transition."""

    FIRING = "FIRING"
    CLEARED = "CLEARED"


class ChangeSource(StrEnum):
    """How an appointment change was seen."""

    POLL = "POLL"
    WEBHOOK = "WEBHOOK"


class AppointmentStatus(StrEnum):
    """FHIR R4 Appointment.status (required binding)."""

    PROPOSED = "proposed"
    PENDING = "pending"
    BOOKED = "booked"
    ARRIVED = "arrived"
    FULFILLED = "fulfilled"
    CANCELLED = "cancelled"
    NOSHOW = "noshow"
    ENTERED_IN_ERROR = "entered-in-error"
    CHECKED_IN = "checked-in"
    WAITLIST = "waitlist"


_LEAF_TYPES = frozenset({str, int, float, bool, type(None), datetime, date, UUID, bytes})
"""Exact types _plain passes through untouched (an enum member's type is its enum, never one of these)."""


def _plain(value: Any) -> Any:
    """Enums to their values, recursively: fastavro reads enums back as plain strings.

    Runs on every record the pipeline publishes: leaves are recognised by exact type without a call."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {key: item if type(item) in _LEAF_TYPES else _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [item if type(item) in _LEAF_TYPES else _plain(item) for item in value]
    return value


_MESSAGES_WITHOUT_INPUT = frozenset(
    {
        "missing",
        "extra_forbidden",
        "string_type",
        "string_pattern_mismatch",
        "string_too_short",
        "string_too_long",
        "int_type",
        "int_parsing",
        "int_from_float",
        "float_type",
        "float_parsing",
        "finite_number",
        "bool_type",
        "bool_parsing",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "enum",
        "literal_error",
        "dict_type",
        "list_type",
        "too_long",
        "too_short",
        "model_type",
        "model_attributes_type",
        "timezone_aware",
        "datetime_type",
        "date_type",
        "uuid_type",
        "bytes_type",
        "value_error",
        "union_tag_not_found",
        "json_invalid",
        "json_type",
    }
)
"""pydantic error types whose message never quotes the input; others are reported by type only."""


_MAP_FIELDS = frozenset({"params", "detail"})
"""Fields whose keys come from the producer: shown as <key> in error locations."""


def _location(loc: tuple[int | str, ...]) -> str:
    """Dotted error location with map keys masked: a key could be a value in disguise."""
    parts = [
        "<key>" if index and str(loc[index - 1]) in _MAP_FIELDS else str(part)[:64] for index, part in enumerate(loc)
    ]
    return ".".join(parts)


def _summarise(model_name: str, exc: ValidationError) -> str:
    """Where and why validation failed, without the offending values (they may be PHI)."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        location = _location(error["loc"]) or model_name
        message = error["msg"] if error["type"] in _MESSAGES_WITHOUT_INPUT else error["type"]
        problems.append(f"{location}: {message}")
    shown = "; ".join(problems[:8])
    more = f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""
    return f"invalid {model_name}: {shown}{more}"


class AvroModel(BaseModel):
    """Base of the event models: immutable, no unknown fields, inputs hidden from error texts."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    AVRO_NAME: ClassVar[str]
    """Full Avro record name, e.g. dev.callstream.v1.Reply."""

    def to_avro(self) -> dict[str, Any]:
        """The record in the form AvroSerde.encode takes."""
        record: dict[str, Any] = _plain(self.model_dump(mode="python"))
        return record

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        """Validate a record decoded by AvroSerde.

        Raises:
            SchemaError: the record breaks a rule of the model (message names fields, not values).
        """
        try:
            return cls.model_validate(record)
        except ValidationError as exc:
            raise SchemaError(_summarise(cls.__name__, exc)) from None


class CallStarted(AvroModel):
    """The call was answered."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.CallStarted"
    type: Literal["call_started"] = "call_started"
    caller_number: E164Number = Field(repr=False)
    transcript_ref: Reference | None = None


EmailAddress = Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s\x00-\x1f\x7f]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}\.)+[A-Za-z]{2,63}$")]
"""An e-mail address (PHI): one @, a dotted domain, no whitespace or control characters."""
UsState = Annotated[str, StringConstraints(pattern=r"^(A[LKZR]|C[AOT]|D[EC]|FL|G[AU]|HI|I[DLNA]|K[SY]|LA|M[EDAINSOTP]|N[EVHJMYCD]|O[HKR]|P[AR]|RI|S[CD]|T[NX]|UT|V[TAI]|W[AVIY]|AS)$")]
ZipCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{5}(-[0-9]{4})?$")]


class PostalAddress(AvroModel):
    """A US home address (PHI)."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.PostalAddress"
    line: ShortText = Field(repr=False)
    city: ShortText = Field(repr=False)
    state: UsState
    postal_code: ZipCode = Field(repr=False)


class InsuranceDetails(AvroModel):
    """A health plan card as the caller read it (becomes a Coverage, create-only at ModMed)."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.InsuranceDetails"
    payer_name: ShortText
    member_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9\- ]{1,39}$")] = Field(repr=False)
    group_number: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9\- ]{0,39}$")] | None = Field(
        default=None, repr=False)
    relationship: Literal["self", "spouse", "child", "other"] = "self"


class PharmacyDetails(AvroModel):
    """The caller's preferred pharmacy."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.PharmacyDetails"
    name: ShortText
    phone: E164Number | None = None


class NewPatientDetails(AvroModel):
    """What a caller without a chart gives to be registered (all PHI)."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.NewPatientDetails"
    gender: Literal["female", "male", "other", "unknown"] = Field(repr=False)
    address: PostalAddress = Field(repr=False)
    insurance: InsuranceDetails | None = Field(default=None, repr=False)
    preferred_pharmacy: PharmacyDetails | None = Field(default=None, repr=False)


class CallerIdentified(AvroModel):
    """The caller's identity as collected by the voice agent (all PHI), with how to reach them and, for a
    new patient, what registering them needs."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.CallerIdentified"
    type: Literal["caller_identified"] = "caller_identified"
    family_name: ShortText = Field(repr=False)
    given_name: ShortText = Field(repr=False)
    birth_date: CalendarDate = Field(repr=False)
    callback_number: E164Number | None = Field(default=None, repr=False)
    email: EmailAddress | None = Field(default=None, repr=False)
    contact_channel: Literal["sms", "email"] | None = None
    registration: NewPatientDetails | None = Field(default=None, repr=False)

    @model_validator(mode="after")
    def _email_channel_has_an_address(self) -> Self:
        if self.contact_channel == "email" and self.email is None:
            raise ValueError("contact_channel email needs an email address")
        return self

    @field_serializer("birth_date")
    def _birth_date_as_text(self, birth_date: date) -> str:
        """Avro carries the DOB as yyyy-MM-dd text, the form ModMed's Patient search takes."""
        return birth_date.isoformat()


class IntentRecognised(AvroModel):
    """What the caller wants, with the entities the voice agent extracted."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.IntentRecognised"
    type: Literal["intent_recognised"] = "intent_recognised"
    intent: Intent
    confidence: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
    visit_reason: Code | None = None
    provider_hint: ShortText | None = None
    location_hint: ShortText | None = None
    date_from: CalendarDate | None = None
    date_to: CalendarDate | None = None
    medication_mentioned: bool
    controlled_substance_mentioned: bool
    transcript_snippet: LongText | None = Field(default=None, repr=False)
    appointment_id: Identifier | None = None

    @model_validator(mode="after")
    def _dates_in_order(self) -> Self:
        """A window that ends before it starts cannot be searched."""
        if self.date_from is not None and self.date_to is not None and self.date_from > self.date_to:
            raise ValueError("date_from must not be after date_to")
        return self


class SlotChosen(AvroModel):
    """The caller picked an offered slot."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.SlotChosen"
    type: Literal["slot_chosen"] = "slot_chosen"
    slot_id: Identifier
    offer_id: Identifier | None = None


class CallEnded(AvroModel):
    """The call is over."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.CallEnded"
    type: Literal["call_ended"] = "call_ended"
    transcript_ref: Reference
    disposition: CallDisposition


CallPayload = Annotated[
    CallStarted | CallerIdentified | IntentRecognised | SlotChosen | CallEnded,
    Field(discriminator="type"),
]
_PAYLOAD_BY_AVRO_NAME: Mapping[str, type[AvroModel]] = MappingProxyType(
    {model.AVRO_NAME: model for model in (CallStarted, CallerIdentified, IntentRecognised, SlotChosen, CallEnded)}
)


class CallEvent(AvroModel):
    """One step of a call (topic callstream.call-events.v1, key call_id).

    JSON form (JSONL of `callstream replay`): the Avro fields, timestamps in ISO 8601 with a zone,
    and the payload as an object tagged by "type" (call_started, caller_identified,
    intent_recognised, slot_chosen, call_ended); see docs/events.md.
    """

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.CallEvent"
    event_id: UUID
    call_id: Identifier
    seq: Annotated[int, Field(ge=0, le=2**63 - 1)]
    occurred_at: UtcMillis
    called_number: E164Number
    payload: CallPayload

    def to_avro(self) -> dict[str, Any]:
        """The record for AvroSerde: the payload as a (record fullname, fields) union branch."""
        record: dict[str, Any] = _plain(self.model_dump(mode="python", exclude={"payload"}))
        record["payload"] = (self.payload.AVRO_NAME, _plain(self.payload.model_dump(mode="python", exclude={"type"})))
        return record

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        """Validate a decoded record whose payload is a (record fullname, fields) union branch.

        Raises:
            SchemaError: unknown payload record or a rule of the model broken.
        """
        if not isinstance(record, Mapping):
            raise SchemaError(f"invalid CallEvent: record must be a mapping, not {type(record).__name__}")
        branch = record.get("payload")
        if not (isinstance(branch, tuple) and len(branch) == 2 and isinstance(branch[1], Mapping)):
            raise SchemaError("invalid CallEvent: payload must be a (record name, fields) union branch")
        payload_model = _PAYLOAD_BY_AVRO_NAME.get(branch[0])
        if payload_model is None:
            raise SchemaError("invalid CallEvent: payload is not a known call step record")
        tagged_payload = {**branch[1], "type": payload_model.model_fields["type"].default}
        return super().from_avro({**record, "payload": tagged_payload})

    @classmethod
    def from_json_line(cls, line: str | bytes) -> Self:
        """Parse one JSONL line of a scripted call (`callstream replay`).

        Raises:
            SchemaError: invalid JSON or a rule of the model broken (message names fields, not values).
        """
        try:
            return cls.model_validate_json(line)
        except ValidationError as exc:
            raise SchemaError(_summarise(cls.__name__, exc)) from None


class OfferedSlot(AvroModel):
    """A slot offered to the caller."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.OfferedSlot"
    slot_id: Identifier
    start: UtcMillis
    end: UtcMillis
    practitioner_display: ShortText
    location_display: ShortText
    visit_reason: Code

    @model_validator(mode="after")
    def _starts_before_it_ends(self) -> Self:
        """A slot that ends before it starts would be read out as nonsense."""
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class Reply(AvroModel):
    """What the voice agent says next (topic callstream.replies.v1, key call_id)."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.Reply"
    reply_id: UUID
    call_id: Identifier
    in_reply_to: UUID
    practice_id: Identifier | None = None
    template: Code
    text: Annotated[str, StringConstraints(min_length=1, max_length=2000)] = Field(repr=False)
    offered_slots: Annotated[list[OfferedSlot], Field(max_length=20)] = Field(default_factory=list)
    escalated: bool
    created_at: UtcMillis


class CommandMessage(AvroModel):
    """A command the guard allowed (topic callstream.commands.v1, key call_id; Avro record Command)."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.Command"
    command_id: UUID
    call_id: Identifier
    practice_id: Identifier
    kind: CommandKind
    route: CommandRoute
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=_NO_CONTROL_CHARACTERS)]
    params: Annotated[dict[Code, Annotated[str, StringConstraints(max_length=1024)]], Field(max_length=32)] = Field(
        default_factory=dict, repr=False
    )
    issued_at: UtcMillis
    attempt: Annotated[int, Field(ge=1, le=2**31 - 1)] = 1


EMA_DEEP_LINK_PATTERN = (
    r"^(https://[^\s\x00-\x1f\x7f]{1,2040}"
    r"|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]{1,5})?(/[^\s\x00-\x1f\x7f]{0,2000})?)$"
)
"""An EMA chart link: https, or plain http on the loopback interface only (the sandbox), the same rule
as the tenant directory's URLs; anything else (javascript:, data:, remote http) is refused."""


class AuditEvent(AvroModel):
    """One audited step (topic callstream.audit.v1, key practice_id)."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.AuditEvent"
    event_id: UUID
    occurred_at: UtcMillis
    practice_id: Identifier
    call_id: Identifier | None = None
    caller_number: E164Number | None = Field(default=None, repr=False)
    action: AuditAction
    outcome: AuditOutcome
    state_from: Code | None = None
    state_to: Code | None = None
    resource_type: Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Za-z]{0,63}$")] | None = None
    resource_ids: Annotated[list[Identifier], Field(max_length=100)] = Field(default_factory=list)
    ema_deep_link: Annotated[str, StringConstraints(pattern=EMA_DEEP_LINK_PATTERN)] | None = None
    task_refs: Annotated[list[Reference], Field(max_length=100)] = Field(default_factory=list)
    transcript_ref: Reference | None = None
    guards_fired: Annotated[list[Code], Field(max_length=50)] = Field(default_factory=list)
    command: CommandKind | None = None
    error_class: Code | None = None
    latency_ms: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = None
    detail: DetailMap = Field(default_factory=dict)
    guard_action: GuardAction | None = None
    dialogue_path: DialoguePath | None = None
    slot_id: Identifier | None = None


class Alarm(AvroModel):
    """A sentinel alarm transition (topic callstream.alarms.v1, key practice_id)."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.Alarm"
    alarm_id: UUID
    practice_id: Identifier
    kind: AlarmKind
    state: AlarmState
    value: FiniteFloat
    threshold: FiniteFloat
    window_start: UtcMillis
    window_end: UtcMillis
    raised_at: UtcMillis
    detail: DetailMap = Field(default_factory=dict)

    @model_validator(mode="after")
    def _window_in_order(self) -> Self:
        """A window that ends before it starts means the detector's clock is broken."""
        if self.window_end < self.window_start:
            raise ValueError("window_end must not be before window_start")
        return self


class DeadLetter(AvroModel):
    """A message given up on, with its original bytes (dead-letter and siem-dead-letter topics)."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.DeadLetter"
    dead_letter_id: UUID
    source_topic: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._\-]{1,249}$")]
    source_partition: Annotated[int, Field(ge=0, le=2**31 - 1)]
    source_offset: Annotated[int, Field(ge=0, le=2**63 - 1)]
    key: bytes | None = Field(default=None, repr=False)
    value: bytes = Field(repr=False)
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=_NO_CONTROL_CHARACTERS)]
    error_class: Code
    failed_at: UtcMillis
    attempts: Annotated[int, Field(ge=0, le=2**31 - 1)]
    practice_id: Identifier | None = None
    value_size: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    value_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    value_truncated: bool = False

    @model_validator(mode="after")
    def _truncation_described(self) -> Self:
        """A truncated value is only useful with the size and digest that identify the original."""
        if self.value_truncated and (self.value_size is None or self.value_sha256 is None
                                     or len(self.value) >= self.value_size):
            raise ValueError("a truncated value needs value_size (larger than value) and value_sha256")
        return self


class AppointmentChange(AvroModel):
    """An appointment change seen in ModMed (topic callstream.appointment-changes.v1, key practice_id)."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.AppointmentChange"
    practice_id: Identifier
    appointment_id: Identifier
    status: AppointmentStatus
    version_id: Identifier | None = None
    last_updated: UtcMillis
    source: ChangeSource
    observed_at: UtcMillis


MODEL_BY_SCHEMA: Mapping[str, type[AvroModel]] = MappingProxyType(
    {
        "CallEvent": CallEvent,
        "Reply": Reply,
        "Command": CommandMessage,
        "AuditEvent": AuditEvent,
        "Alarm": Alarm,
        "DeadLetter": DeadLetter,
        "AppointmentChange": AppointmentChange,
    }
)
"""The model of each top-level Avro schema, by schema name (Topic.value_schema)."""
