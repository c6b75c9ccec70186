"""Messages given up on, with their original bytes (schemas/avro/DeadLetter.avsc)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Self
from uuid import UUID

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from schemas.catalogue import NAMESPACE
from schemas.models.base import NO_CONTROL_CHARACTERS, AvroModel, Code, Identifier, UtcMillis

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
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=NO_CONTROL_CHARACTERS)]
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
