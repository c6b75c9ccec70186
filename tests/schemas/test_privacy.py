"""One definition of PHI: every field the Avro schemas document as PHI is one the models keep out of repr(),
and `phi_redacted` (what `callstream dlq show` prints) replaces exactly those, nested records included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import schemas.models as models
from schemas.models import CallEvent
from schemas.privacy import REDACTED, phi_fields, phi_redacted

AVRO = Path(models.__file__).parents[1] / "avro"


def _records(schema: Any, found: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    if isinstance(schema, list):
        for branch in schema:
            _records(branch, found)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            found[schema["name"]] = schema["fields"]
            for field in schema["fields"]:
                _records(field["type"], found)
        for nested in ("items", "values"):
            if nested in schema:
                _records(schema[nested], found)
    return found


def test_every_field_the_schemas_call_phi_is_kept_out_of_repr_by_its_model() -> None:
    by_name = {cls.AVRO_NAME.rsplit(".", 1)[-1]: cls for cls in vars(models).values()
               if isinstance(cls, type) and issubclass(cls, BaseModel) and hasattr(cls, "AVRO_NAME")}
    records: dict[str, list[dict[str, Any]]] = {}
    for path in AVRO.glob("*.avsc"):
        _records(json.loads(path.read_text()), records)
    assert "CallerIdentified" in records
    for name, fields in records.items():
        documented = {field["name"] for field in fields if str(field.get("doc", "")).startswith("PHI")}
        assert documented <= phi_fields(by_name[name]), name


def test_phi_redacted_replaces_the_phi_fields_of_nested_records_and_keeps_the_rest() -> None:
    event = CallEvent.model_validate({
        "event_id": "0d9f8a52-3c1e-4b6f-9a57-1f0e6b2c7d02", "call_id": "call-1", "seq": 1,
        "occurred_at": "2026-03-02T14:05:21.412Z", "called_number": "+15125550100",
        "payload": {"type": "caller_identified", "family_name": "Testpatient", "given_name": "Dana",
                    "birth_date": "1968-11-23"}})
    shown = phi_redacted(event)
    assert shown["called_number"] == "+15125550100" and shown["call_id"] == "call-1"
    assert {shown["payload"][name] for name in ("family_name", "given_name", "birth_date")} == {REDACTED}
    assert shown["payload"]["callback_number"] is None, "an empty PHI field stays empty"
    assert "Testpatient" not in json.dumps(shown) and "1968" not in json.dumps(shown)
