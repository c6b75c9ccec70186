"""An unknown key in the tenant directory is named, with the key it most likely meant; phone numbers follow
the call events' rule (schemas/phone.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from callstream.errors import TenantDirectoryError
from callstream.tenants import load_tenant_directory, parse_tenant_directory
from schemas.models import CallStarted, CallEvent
from schemas.phone import is_e164
from tests.callstream.test_tenants import practice


def _problem(document: object) -> str:
    with pytest.raises(TenantDirectoryError) as caught:
        parse_tenant_directory(document, "tenants.yaml")
    return str(caught.value)


def test_a_misspelt_key_is_named_before_the_field_it_leaves_missing() -> None:
    entry = practice()
    entry["caled_numbers"] = entry.pop("called_numbers")
    assert _problem({"practices": [entry]}) == (
        "tenants.yaml: practice desert-spine: unknown key caled_numbers — did you mean called_numbers? (+1 more)")


@pytest.mark.parametrize(("changes", "line"), [
    ({"auth": {"method": "password", "credentials_ref": "env:C", "tokn_url": "https://x.example/t"}},
     "unknown key auth.tokn_url — did you mean token_url?"),
    ({"capabilities": {"fhir_task_creat": True}}, "unknown key capabilities.fhir_task_creat — did you mean fhir_task_create?"),
    ({"surprise": 1}, "unknown key surprise (allowed: practice_id, name, called_numbers,"),
])
def test_unknown_keys_are_refused_at_any_depth(changes: dict[str, object], line: str) -> None:
    assert f"tenants.yaml: practice desert-spine: {line}" in _problem({"practices": [practice(**changes)]})


def test_an_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump({"practices": [practice()], "practises": []}))
    with pytest.raises(TenantDirectoryError, match=r"tenants.yaml: unknown key practises — did you mean practices\?$"):
        load_tenant_directory(path)


@pytest.mark.parametrize(("number", "valid"), [
    ("+2904567", True),  # Saint Helena: 7 digits, the shortest in service
    ("+290456", False),
    ("+123456789012345", True),  # 15 digits, E.164's longest
    ("+1234567890123456", False),
    ("+0123456789", False),
    ("+1٥١٢5550100", False),  # Arabic-Indic digits: Python's \d would take them
    ("+15125550100\n", False),
])
def test_events_and_the_directory_take_the_same_numbers(number: str, valid: bool) -> None:
    assert is_e164(number) is valid
    directory_takes = True
    try:
        parse_tenant_directory({"practices": [practice(called_numbers=[number])]}, "tenants.yaml")
    except TenantDirectoryError as error:
        assert "E.164" in str(error)
        directory_takes = False
    event_takes = True
    try:
        CallEvent.model_validate({"event_id": "0d9f8a52-3c1e-4b6f-9a57-1f0e6b2c7d01", "call_id": "call-1", "seq": 0,
                                  "occurred_at": "2026-03-02T14:05:00.000Z", "called_number": number,
                                  "payload": CallStarted(caller_number="+15125550142").model_dump()})
    except ValueError:
        event_takes = False
    assert directory_takes is valid and event_takes is valid
