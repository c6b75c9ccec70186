"""The call events the voice agent sends (schemas/avro/CallEvent.avsc): one record per step of a call.

A `CallEvent` carries one payload of a closed set (call started, caller identified, intent recognised,
slot chosen, call ended), tagged by ``type`` in its JSON form and a record union branch in Avro. The
caller's identity and registration details are PHI and stay out of repr().
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal, Self
from uuid import UUID

from pydantic import Field, StringConstraints, ValidationError, field_serializer, model_validator

from guards.model import Intent  # one source for the domain vocabulary the Avro enums carry
from schemas.catalogue import NAMESPACE
from schemas.errors import SchemaError
from schemas.models.base import (
    AvroModel,
    CalendarDate,
    Code,
    Identifier,
    LongText,
    Reference,
    ShortText,
    UtcMillis,
    plain,
    summarise,
)
from schemas.phone import E164Number

class CallDisposition(StrEnum):
    """How a call ended."""

    COMPLETED = "COMPLETED"
    TRANSFERRED = "TRANSFERRED"
    ABANDONED = "ABANDONED"
    VOICEMAIL = "VOICEMAIL"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"


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
        record: dict[str, Any] = plain(self.model_dump(mode="python", exclude={"payload"}))
        record["payload"] = (self.payload.AVRO_NAME, plain(self.payload.model_dump(mode="python", exclude={"type"})))
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
            raise SchemaError(summarise(cls.__name__, exc)) from None
