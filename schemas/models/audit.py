"""The audit trail (schemas/avro/AuditEvent.avsc): one record per audited step, what practices reconcile against."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar
from uuid import UUID

from pydantic import Field, StringConstraints

from guards.model import GuardAction  # one source for the domain vocabulary the Avro enums carry
from schemas.catalogue import NAMESPACE
from schemas.models.base import AvroModel, Code, DetailMap, Identifier, Reference, UtcMillis
from schemas.models.commands import CommandKind
from schemas.phone import E164Number

UNRESOLVED_PRACTICE_ID = "unresolved"
"""practice_id of audit records for calls whose called number matched no practice."""


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
