"""The base of every contract model and the constrained field types they share.

Validation is where hostile input stops: identifiers, phone numbers and free text are bounded,
timestamps are UTC with millisecond precision (what Avro timestamp-millis keeps), and the errors raised
at the boundary (`SchemaError`) never contain field values (`summarise`). `AvroModel.to_avro()` gives the
record AvroSerde encodes and `from_avro()` validates what it decodes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from enum import Enum
from typing import Annotated, Any, ClassVar, Self
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
)

from schemas.errors import SchemaError

NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")]
"""Ids from other systems (call ids, FHIR ids, practice ids): safe as Kafka keys and in logs."""
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_CONTROL_CHARACTERS)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=4000)]
Reference = Annotated[str, StringConstraints(min_length=1, max_length=2048, pattern=NO_CONTROL_CHARACTERS)]
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


_LEAF_TYPES = frozenset({str, int, float, bool, type(None), datetime, date, UUID, bytes})
"""Exact types plain passes through untouched (an enum member's type is its enum, never one of these)."""


def plain(value: Any) -> Any:
    """Enums to their values, recursively: fastavro reads enums back as plain strings.

    Runs on every record the pipeline publishes: leaves are recognised by exact type without a call."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {key: item if type(item) in _LEAF_TYPES else plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [item if type(item) in _LEAF_TYPES else plain(item) for item in value]
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


def summarise(model_name: str, exc: ValidationError) -> str:
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
        record: dict[str, Any] = plain(self.model_dump(mode="python"))
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
            raise SchemaError(summarise(cls.__name__, exc)) from None
