"""Sentinel and SRE alarm transitions (schemas/avro/Alarm.avsc)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Self
from uuid import UUID

from pydantic import Field, model_validator

from schemas.catalogue import NAMESPACE
from schemas.models.base import AvroModel, DetailMap, FiniteFloat, Identifier, UtcMillis

FLEET_PRACTICE_ID = "fleet"
"""practice_id of alarms about the whole fleet (e.g. consumer lag)."""


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
