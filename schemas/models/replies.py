"""What the pipeline says back to the voice agent (schemas/avro/Reply.avsc): the reply and the slots it offers."""

from __future__ import annotations

from typing import Annotated, ClassVar, Self
from uuid import UUID

from pydantic import Field, StringConstraints, model_validator

from schemas.catalogue import NAMESPACE
from schemas.models.base import AvroModel, Code, Identifier, ShortText, UtcMillis

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
