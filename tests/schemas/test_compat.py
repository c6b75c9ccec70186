"""The compatibility gate: current schemas against released ones, and the checker against fastavro."""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import parse_schema
from fastavro.utils import generate_many

from schemas.catalogue import default_catalogue
from schemas.compat import check_backward, check_compatibility, check_forward
from schemas.topics import TOPICS, Compatibility

Mutation = Callable[[dict[str, Any]], None]


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(field for field in schema["fields"] if field["name"] == name)


def _payload_branch(schema: dict[str, Any], record_name: str) -> dict[str, Any]:
    return next(branch for branch in _field(schema, "payload")["type"] if branch["name"] == record_name)


def _strictest_mode(schema_name: str) -> Compatibility:
    modes = {topic.compatibility for topic in TOPICS if topic.value_schema == schema_name}
    return Compatibility.FULL if Compatibility.FULL in modes else Compatibility.BACKWARD


@contextmanager
def _seeded_random(seed: int) -> Iterator[None]:
    """fastavro.utils.generate_many draws from the global random module: make it reproducible."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _read_old_data_with_new_schema(old: dict[str, Any], new: dict[str, Any], records: int = 300) -> list[str]:
    """Write generated records with `old` and read each with `new`; the fastavro errors seen."""
    writer, reader = parse_schema(old), parse_schema(new)
    errors = []
    with _seeded_random(20260302):
        for record in generate_many(writer, records):
            buffer = io.BytesIO()
            schemaless_writer(buffer, writer, record)
            buffer.seek(0)
            try:
                schemaless_reader(buffer, writer, reader)
            except Exception as exc:  # noqa: BLE001 - fastavro signals resolution failures with several types
                errors.append(type(exc).__name__)
    return errors


@pytest.mark.parametrize("schema_name", default_catalogue().names)
def test_current_schema_is_compatible_with_every_released_version(schema_name: str) -> None:
    catalogue = default_catalogue()
    current = catalogue.current(schema_name)
    released = [schemas[schema_name] for schemas in catalogue.released.values() if schema_name in schemas]
    assert released, f"{schema_name} has no released snapshot in schemas/released"
    for old in released:
        assert check_compatibility(old.definition, current.definition, _strictest_mode(schema_name)) == []
        assert _read_old_data_with_new_schema(old.definition, current.definition, records=50) == []


def test_no_released_schema_has_been_dropped() -> None:
    catalogue = default_catalogue()
    for version, schemas in catalogue.released.items():
        assert set(schemas) <= set(catalogue.names), f"released {version} schemas missing from schemas/avro"


def _add_required_field(schema: dict[str, Any]) -> None:
    schema["fields"].append({"name": "site_code", "type": "string", "doc": "x"})


def _add_optional_field(schema: dict[str, Any]) -> None:
    schema["fields"].append({"name": "site_code", "type": ["null", "string"], "default": None, "doc": "x"})


def _double_to_string(schema: dict[str, Any]) -> None:
    _field(schema, "value")["type"] = "string"


def _remove_enum_symbol_without_default(schema: dict[str, Any]) -> None:
    _field(schema, "source")["type"]["symbols"].remove("WEBHOOK")


def _remove_enum_symbol_with_default(schema: dict[str, Any]) -> None:
    _field(schema, "kind")["type"]["symbols"].remove("SIEM_DELIVERY")


def _promote_int_to_long(schema: dict[str, Any]) -> None:
    _field(schema, "source_partition")["type"] = "long"


def _narrow_long_to_int(schema: dict[str, Any]) -> None:
    _field(schema, "source_offset")["type"] = "int"


def _remove_union_branch(schema: dict[str, Any]) -> None:
    payload = _field(schema, "payload")
    payload["type"] = [branch for branch in payload["type"] if branch["name"] != "CallEnded"]


def _remove_nullable_branch(schema: dict[str, Any]) -> None:
    field = _field(schema, "practice_id")
    field["type"] = "string"
    del field["default"]


def _rename_field_with_alias(schema: dict[str, Any]) -> None:
    field = _field(schema, "status")
    field["name"], field["aliases"] = "appointment_status", ["status"]


def _remove_field(schema: dict[str, Any]) -> None:
    schema["fields"] = [field for field in schema["fields"] if field["name"] != "version_id"]


def _rename_record(schema: dict[str, Any]) -> None:
    schema["name"] = "AppointmentUpdate"


def _add_payload_field_without_default(schema: dict[str, Any]) -> None:
    _payload_branch(schema, "SlotChosen")["fields"].append({"name": "room", "type": "string"})


MUTATIONS: list[tuple[str, str, Mutation, bool]] = [
    ("AuditEvent", "added field without default", _add_required_field, False),
    ("AuditEvent", "added nullable field with default", _add_optional_field, True),
    ("Alarm", "double changed to string", _double_to_string, False),
    ("AppointmentChange", "enum symbol removed, enum without default", _remove_enum_symbol_without_default, False),
    ("Alarm", "enum symbol removed, enum with default", _remove_enum_symbol_with_default, True),
    ("DeadLetter", "int promoted to long", _promote_int_to_long, True),
    ("DeadLetter", "long narrowed to int", _narrow_long_to_int, False),
    ("CallEvent", "union branch removed", _remove_union_branch, False),
    ("CallEvent", "payload record gained a field without default", _add_payload_field_without_default, False),
    ("DeadLetter", "nullable made required", _remove_nullable_branch, False),
    ("AppointmentChange", "field renamed with an alias", _rename_field_with_alias, True),
    ("AppointmentChange", "field removed", _remove_field, True),
    ("AppointmentChange", "record renamed", _rename_record, False),
]


@pytest.mark.parametrize(("schema_name", "change", "mutate", "compatible"), MUTATIONS, ids=[m[1] for m in MUTATIONS])
def test_checker_verdict_agrees_with_fastavro_reading_old_data(
    schema_name: str, change: str, mutate: Mutation, compatible: bool
) -> None:
    old = default_catalogue().current(schema_name).definition
    new = default_catalogue().current(schema_name).definition
    mutate(new)
    problems = check_backward(old, new)
    fastavro_errors = _read_old_data_with_new_schema(old, new)
    if compatible:
        assert problems == [] and fastavro_errors == [], change
    else:
        assert problems, f"checker missed: {change}"
        assert fastavro_errors, f"fastavro read old data despite: {change}"


def test_problems_name_the_path_and_the_break() -> None:
    old = default_catalogue().current("CallEvent").definition
    new = default_catalogue().current("CallEvent").definition
    intent = _field(_payload_branch(new, "IntentRecognised"), "intent")["type"]
    intent["symbols"].remove("INTAKE")
    del intent["default"]
    _add_payload_field_without_default(new)
    _field(new, "seq")["type"] = "int"
    assert sorted(check_backward(old, new)) == [
        "CallEvent.payload<IntentRecognised>.intent: enum Intent lacks writer symbols INTAKE and has no default",
        "CallEvent.payload<SlotChosen>.room: reader field missing from the writer schema and has no default",
        "CallEvent.seq: type changed from long to int",
    ]


def test_forward_check_catches_what_breaks_readers_still_on_the_old_schema() -> None:
    old = default_catalogue().current("AppointmentChange").definition
    dropped_required = default_catalogue().current("AppointmentChange").definition
    dropped_required["fields"] = [field for field in dropped_required["fields"] if field["name"] != "observed_at"]
    assert check_backward(old, dropped_required) == []
    assert check_forward(old, dropped_required) == [
        "AppointmentChange.observed_at: reader field missing from the writer schema and has no default"
    ]
    assert check_compatibility(old, dropped_required, Compatibility.BACKWARD) == []
    assert check_compatibility(old, dropped_required, Compatibility.FULL) == [
        "forward: AppointmentChange.observed_at: reader field missing from the writer schema and has no default"
    ]


def test_new_intent_symbol_is_fully_compatible_thanks_to_the_enum_default() -> None:
    old = default_catalogue().current("CallEvent").definition
    new = default_catalogue().current("CallEvent").definition
    _field(_payload_branch(new, "IntentRecognised"), "intent")["type"]["symbols"].insert(0, "WAITLIST_REQUEST")
    assert check_compatibility(old, new, Compatibility.FULL) == []


def test_logical_type_change_is_flagged_although_the_bytes_still_read() -> None:
    old = default_catalogue().current("AppointmentChange").definition
    new = default_catalogue().current("AppointmentChange").definition
    _field(new, "observed_at")["type"]["logicalType"] = "timestamp-micros"
    assert check_backward(old, new) == [
        "AppointmentChange.observed_at: logical type changed from timestamp-millis to timestamp-micros"
    ]


def test_union_default_must_fit_the_first_branch_as_java_readers_require() -> None:
    old = default_catalogue().current("AuditEvent").definition
    new = default_catalogue().current("AuditEvent").definition
    new["fields"].append({"name": "site_code", "type": ["null", "string"], "default": "main"})
    new["fields"].append({"name": "tags", "type": {"type": "array", "items": "int"}, "default": ["a"]})
    assert check_backward(old, new) == [
        "AuditEvent.site_code: default does not fit the field's type",
        "AuditEvent.tags: default does not fit the field's type",
    ]


def test_an_invalid_schema_is_reported_not_raised() -> None:
    old = default_catalogue().current("Alarm").definition
    assert check_backward(old, {"type": "record", "name": "Alarm", "fields": [{"name": "x", "type": "nope"}]}) == [
        "new schema is not valid Avro (UnknownType: nope)"
    ]
