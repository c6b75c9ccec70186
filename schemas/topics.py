"""The topic catalogue: every Kafka topic of callstream's event contract.

docs/asyncapi.yaml and docs/events.md describe the same topics for the telephony producer and
the practices' SIEM teams; tests/schemas check that the three stay identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Literal

CALL_EVENTS = "callstream.call-events.v1"
REPLIES = "callstream.replies.v1"
COMMANDS = "callstream.commands.v1"
AUDIT = "callstream.audit.v1"
ALARMS = "callstream.alarms.v1"
DEAD_LETTER = "callstream.dead-letter.v1"
SIEM_DEAD_LETTER = "callstream.siem-dead-letter.v1"
APPOINTMENT_CHANGES = "callstream.appointment-changes.v1"

FAUST_CHANGELOG_PATTERN = "callstream-worker-{table}-changelog"
"""Faust table changelogs: internal, Faust's own JSON, no Avro schema (see docs/events.md)."""

_DAY_MS = 24 * 60 * 60 * 1000


class Compatibility(StrEnum):
    """Which schema changes a topic tolerates, in Schema Registry terms.

    BACKWARD: the new schema reads data written with the released one (we consume old data).
    FULL: also forward, so readers still on the released schema read new data; required where
    another organisation reads or writes the topic with its own copy of the schema.
    """

    BACKWARD = "BACKWARD"
    FULL = "FULL"


@dataclass(frozen=True, slots=True)
class Topic:
    """One Kafka topic: its name, key, partitioning, value schema and who writes and reads it."""

    name: str
    key_description: str
    key_field: str
    """Field of the value record whose value is the message key (UTF-8 for strings, raw bytes)."""
    value_schema: str
    """Name of the Avro record in schemas/avro (without namespace), e.g. "CallEvent"."""
    partitions: int
    cleanup_policy: Literal["delete", "compact"]
    retention_ms: int
    producer: str
    consumers: tuple[str, ...]
    description: str
    compatibility: Compatibility

    @property
    def registry_subject(self) -> str:
        """Schema Registry subject of the value schema (TopicNameStrategy)."""
        return f"{self.name}-value"

    def key_of(self, record: Mapping[str, object]) -> bytes | None:
        """The message key for an Avro value record of this topic.

        Raises:
            ValueError: the key field is missing or not a string/bytes/None.
        """
        if self.key_field not in record:
            raise ValueError(f"{self.value_schema} record for {self.name} lacks key field {self.key_field!r}")
        key = record[self.key_field]
        if key is None or isinstance(key, bytes):
            return key
        if isinstance(key, str):
            return key.encode("utf-8")
        raise ValueError(
            f"key field {self.key_field!r} of {self.value_schema} must be a string or bytes, not {type(key).__name__}"
        )


TOPICS: tuple[Topic, ...] = (
    Topic(
        name=CALL_EVENTS,
        key_description="call_id (UTF-8): all events of one call on one partition, in order",
        key_field="call_id",
        value_schema="CallEvent",
        partitions=12,
        cleanup_policy="delete",
        retention_ms=7 * _DAY_MS,
        producer="telephony / voice-AI side",
        consumers=("streams ingest agent",),
        description=(
            "Inbound call steps: call started, caller identified, intent recognised (with its "
            "entities), slot chosen, call ended (with a transcript reference)."
        ),
        compatibility=Compatibility.FULL,
    ),
    Topic(
        name=REPLIES,
        key_description="call_id (UTF-8): replies of one call in order",
        key_field="call_id",
        value_schema="Reply",
        partitions=12,
        cleanup_policy="delete",
        retention_ms=1 * _DAY_MS,
        producer="streams pipeline",
        consumers=("telephony / voice-AI side",),
        description=(
            "What the voice agent says next while the caller waits: offered slots, confirmations, "
            "'your request was sent to your provider'. Text comes from the guard's closed templates."
        ),
        compatibility=Compatibility.FULL,
    ),
    Topic(
        name=COMMANDS,
        key_description="call_id (UTF-8): commands of one call run in order",
        key_field="call_id",
        value_schema="Command",
        partitions=12,
        cleanup_policy="delete",
        retention_ms=7 * _DAY_MS,
        producer="streams pipeline (guard decisions)",
        consumers=("EMA automation workers", "review queue"),
        description=(
            "Internal: commands the guard allowed, routed to FHIR, EMA web automation or the human "
            "review queue (read-only go-live phase)."
        ),
        compatibility=Compatibility.BACKWARD,
    ),
    Topic(
        name=AUDIT,
        key_description="practice_id (UTF-8): per-practice order for SIEM delivery",
        key_field="practice_id",
        value_schema="AuditEvent",
        partitions=12,
        cleanup_policy="delete",
        retention_ms=30 * _DAY_MS,
        producer="streams pipeline, connectors, sinks",
        consumers=("ClickHouse audit sink", "SIEM webhook sink"),
        description=(
            "Audit firehose: every state transition, read, write, escalation and guard hit; "
            "stored in ClickHouse and delivered to each practice's SIEM."
        ),
        compatibility=Compatibility.FULL,
    ),
    Topic(
        name=ALARMS,
        key_description="practice_id (UTF-8), 'fleet' for fleet-wide alarms",
        key_field="practice_id",
        value_schema="Alarm",
        partitions=3,
        cleanup_policy="delete",
        retention_ms=30 * _DAY_MS,
        producer="streams drift detector",
        consumers=("alert router (SRE)", "ClickHouse audit sink"),
        description=(
            "Sentinel alarms: write-success-rate drift, controlled-substance escalation rate, "
            "guardrail-bypass attempts, consumer lag, SIEM delivery."
        ),
        compatibility=Compatibility.BACKWARD,
    ),
    Topic(
        name=DEAD_LETTER,
        key_description="the original message's key bytes (null when it had none)",
        key_field="key",
        value_schema="DeadLetter",
        partitions=3,
        cleanup_policy="delete",
        retention_ms=30 * _DAY_MS,
        producer="streams pipeline (any agent that gives up on a message)",
        consumers=("SRE inspection and replay",),
        description=(
            "Messages that could not be processed (malformed, unknown called number, retries "
            "exhausted), with the original bytes untouched."
        ),
        compatibility=Compatibility.BACKWARD,
    ),
    Topic(
        name=SIEM_DEAD_LETTER,
        key_description="practice_id (UTF-8)",
        key_field="practice_id",
        value_schema="DeadLetter",
        partitions=3,
        cleanup_policy="delete",
        retention_ms=30 * _DAY_MS,
        producer="SIEM webhook sink",
        consumers=("SRE inspection and redelivery",),
        description="Audit deliveries to a practice's SIEM that exhausted their retry budget.",
        compatibility=Compatibility.BACKWARD,
    ),
    Topic(
        name=APPOINTMENT_CHANGES,
        key_description="practice_id (UTF-8): one practice's changes in order",
        key_field="practice_id",
        value_schema="AppointmentChange",
        partitions=6,
        cleanup_policy="delete",
        retention_ms=7 * _DAY_MS,
        producer="none (retired with its _lastUpdated poller, which had no reader)",
        consumers=("none (retired)",),
        description=(
            "Retired: appointment changes seen in ModMed by polling _lastUpdated. Nothing read them, so the "
            "poller was removed; the topic and its schema stay because a released schema is never dropped."
        ),
        compatibility=Compatibility.BACKWARD,
    ),
)

TOPICS_BY_NAME: Mapping[str, Topic] = MappingProxyType({topic.name: topic for topic in TOPICS})


def topic_named(name: str) -> Topic:
    """The catalogue entry for a topic name.

    Raises:
        KeyError: the name is not a callstream topic (the message lists the known ones).
    """
    try:
        return TOPICS_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown topic {name!r}; known topics: {', '.join(TOPICS_BY_NAME)}") from None
