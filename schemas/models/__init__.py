"""Pydantic models of the event contract, one per Avro record of schemas/avro: the contract's public surface.

The rest of callstream imports the models from here (``from schemas.models import AuditEvent``); each
top-level Avro schema's model lives in its own module, with the nested records and enums only it uses:
``call_events`` (CallEvent.avsc), ``replies`` (Reply.avsc), ``commands`` (Command.avsc), ``audit``
(AuditEvent.avsc), ``alarms`` (Alarm.avsc), ``dead_letters`` (DeadLetter.avsc) and
``appointment_changes`` (AppointmentChange.avsc), all on ``base`` (AvroModel and the constrained field
types). `to_avro()` gives the record AvroSerde encodes and `from_avro()` validates what it decodes.
Validation is where hostile input stops: identifiers, phone numbers and free text are bounded,
timestamps are UTC with millisecond precision (what Avro timestamp-millis keeps), and the errors raised
at the boundary (`SchemaError`) never contain field values. PHI fields are left out of repr() so a
logged model leaks nothing. The Avro enums of intents, commands and guard actions carry the domain
vocabulary of guards.model, exposed here as the contract's names for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from guards.model import GuardAction, Intent
from schemas.models.alarms import FLEET_PRACTICE_ID, Alarm, AlarmKind, AlarmState
from schemas.models.appointment_changes import AppointmentChange, AppointmentStatus, ChangeSource
from schemas.models.audit import (
    EMA_DEEP_LINK_PATTERN,
    UNRESOLVED_PRACTICE_ID,
    AuditAction,
    AuditEvent,
    AuditOutcome,
)
from schemas.models.base import AvroModel, Identifier
from schemas.models.call_events import (
    CallDisposition,
    CallEnded,
    CallerIdentified,
    CallEvent,
    CallPayload,
    CallStarted,
    InsuranceDetails,
    IntentRecognised,
    NewPatientDetails,
    PharmacyDetails,
    PostalAddress,
    SlotChosen,
)
from schemas.models.commands import CommandKind, CommandMessage, CommandRoute
from schemas.models.dead_letters import DeadLetter
from schemas.models.replies import OfferedSlot, Reply

__all__ = [
    "EMA_DEEP_LINK_PATTERN",
    "FLEET_PRACTICE_ID",
    "MODEL_BY_SCHEMA",
    "UNRESOLVED_PRACTICE_ID",
    "Alarm",
    "AlarmKind",
    "AlarmState",
    "AppointmentChange",
    "AppointmentStatus",
    "AuditAction",
    "AuditEvent",
    "AuditOutcome",
    "AvroModel",
    "CallDisposition",
    "CallEnded",
    "CallEvent",
    "CallPayload",
    "CallStarted",
    "CallerIdentified",
    "ChangeSource",
    "CommandKind",
    "CommandMessage",
    "CommandRoute",
    "DeadLetter",
    "GuardAction",
    "Identifier",
    "InsuranceDetails",
    "Intent",
    "IntentRecognised",
    "NewPatientDetails",
    "OfferedSlot",
    "PharmacyDetails",
    "PostalAddress",
    "Reply",
    "SlotChosen",
]

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
