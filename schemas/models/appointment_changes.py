"""Appointment changes seen in ModMed (schemas/avro/AppointmentChange.avsc)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from schemas.catalogue import NAMESPACE
from schemas.models.base import AvroModel, Identifier, UtcMillis

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


class AppointmentChange(AvroModel):
    """An appointment change seen in ModMed (topic callstream.appointment-changes.v1, key practice_id).

    Retired: nothing writes or reads the topic (docs/events.md); the model stays with its released schema."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.AppointmentChange"
    practice_id: Identifier
    appointment_id: Identifier
    status: AppointmentStatus
    version_id: Identifier | None = None
    last_updated: UtcMillis
    source: ChangeSource
    observed_at: UtcMillis
