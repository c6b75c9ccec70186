"""The commands the guard allowed (schemas/avro/Command.avsc), which the connectors execute."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar
from uuid import UUID

from pydantic import Field, StringConstraints

from guards.model import Command  # one source for the domain vocabulary the Avro enums carry
from schemas.catalogue import NAMESPACE
from schemas.models.base import NO_CONTROL_CHARACTERS, AvroModel, Code, Identifier, UtcMillis

CommandKind = Command
"""The closed set of commands the guard may issue (guards.model.Command): there is no medication write."""


class CommandRoute(StrEnum):
    """Execution path of a command."""

    FHIR = "FHIR"
    EMA = "EMA"
    REVIEW_QUEUE = "REVIEW_QUEUE"


PARAM_CHARS = 1024
"""What a command param holds at most (ids, codes, a short note); the producer cuts longer values."""
LONG_PARAM_CHARS = 32_768
"""The one exception's bound: the decided request (JSON of an intent whose transcript snippet runs to 4,000
characters, each escaped to at most six) goes to the review queue whole, because its retry decides on it again
and a cut would not parse."""


class CommandMessage(AvroModel):
    """A command the guard allowed (topic callstream.commands.v1, key call_id; Avro record Command)."""

    AVRO_NAME: ClassVar[str] = f"{NAMESPACE}.Command"
    command_id: UUID
    call_id: Identifier
    practice_id: Identifier
    kind: CommandKind
    route: CommandRoute
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=NO_CONTROL_CHARACTERS)]
    params: Annotated[dict[Code, Annotated[str, StringConstraints(max_length=LONG_PARAM_CHARS)]], Field(max_length=32)] = (
        Field(default_factory=dict, repr=False)
    )
    issued_at: UtcMillis
    attempt: Annotated[int, Field(ge=1, le=2**31 - 1)] = 1
