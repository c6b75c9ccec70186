"""Which fields of the event models are PHI, and a record with them redacted, for tools that show records.

The one definition is the models' own: a PHI field is declared ``Field(repr=False)`` in schemas.models
(caller and callback numbers, names, date of birth, transcript snippets, reply text, command params,
dead-letter bytes), so a logged model leaks nothing. ``phi_redacted`` applies the same rule to the
JSON form a person reads (`callstream dlq show`), nested records included.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

REDACTED = "redacted"


def phi_fields(model: type[BaseModel]) -> frozenset[str]:
    """The model's PHI fields: those it keeps out of repr()."""
    return frozenset(name for name, info in model.model_fields.items() if not info.repr)


def phi_redacted(model: BaseModel) -> dict[str, Any]:
    """The model as JSON-ready data, each PHI field that holds a value replaced by ``"redacted"``."""
    data = model.model_dump(mode="json")
    secret = phi_fields(type(model))
    for name in type(model).model_fields:
        value = getattr(model, name)
        if name in secret:
            data[name] = None if value is None else REDACTED
        elif isinstance(value, BaseModel):
            data[name] = phi_redacted(value)
        elif isinstance(value, list) and any(isinstance(item, BaseModel) for item in value):
            data[name] = [phi_redacted(item) if isinstance(item, BaseModel) else item for item in value]
    return data
