"""The sandbox's resource store keeps its indexes in step with every version of a resource."""

from __future__ import annotations

import datetime as dt

from sandbox.store import ResourceStore

NOW = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)


def _task(identifier: str, patient_id: str = "pt-1-1") -> dict:
    return {"resourceType": "Task", "id": "task-1", "for": {"reference": f"Patient/{patient_id}"},
            "identifier": [{"system": "urn:test", "value": identifier}]}


def test_identifier_and_patient_indexes_follow_updates() -> None:
    store = ResourceStore()
    store.add(_task("first"), NOW)
    assert [t["id"] for t in store.with_identifier("Task", "first")] == ["task-1"]
    assert store.with_identifier("Appointment", "first") == []

    store.replace(_task("second", patient_id="pt-1-2"), NOW)
    assert store.with_identifier("Task", "first") == []
    assert [t["meta"]["versionId"] for t in store.with_identifier("Task", "second")] == ["2"]
    assert store.for_patient("Task", "pt-1-1") == []
    assert [t["id"] for t in store.for_patient("Task", "pt-1-2")] == ["task-1"]


def test_identifiers_without_a_value_are_not_indexed() -> None:
    store = ResourceStore()
    store.add({"resourceType": "Task", "id": "task-2", "identifier": [{"system": "urn:test"}, "not-an-object"]}, NOW)
    assert store.with_identifier("Task", "") == []
    assert [t["id"] for t in store.all_of("Task")] == ["task-2"]
