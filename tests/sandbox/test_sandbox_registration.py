"""New-patient writes as ModMed validates them: Patient (MRN assigned by the practice) and Coverage (create-only)."""

from __future__ import annotations

import uuid

import httpx
import pytest


def _patient(**changes: object) -> dict:
    body: dict = {
        "resourceType": "Patient", "active": True, "gender": "female", "birthDate": "1979-05-06",
        "name": [{"use": "official", "family": f"Regtest{uuid.uuid4().hex[:8]}", "given": ["Mara"]}],
        "address": [{"use": "home", "line": ["5 Oak Ave"], "city": "Austin", "state": "TX", "postalCode": "78702"}],
        "telecom": [{"system": "phone", "value": "+15125550123"}, {"system": "email", "value": "mara@example.org"}],
        "identifier": [{"system": "https://callstream.dev/fhir/NamingSystem/idempotency-key", "value": uuid.uuid4().hex}],
    }
    body.update(changes)
    return body


@pytest.mark.parametrize(("changes", "diagnostic"), [
    ({"gender": None}, "Patient.gender is required"),
    ({"birthDate": "2999-01-01"}, "in the future"),
    ({"address": [{"line": ["5 Oak Ave"], "city": "Austin", "state": "Texas", "postalCode": "78702"}]}, "US state"),
    ({"address": [{"line": ["5 Oak Ave"], "city": "Austin", "state": "TX", "postalCode": "787"}]}, "ZIP"),
    ({"telecom": [{"system": "email", "value": "not-an-address"}]}, "malformed email"),
    ({"identifier": [{"system": "https://sandbox.callstream.dev/pain-1001/mrn", "value": "E1"}]}, "MRN is assigned"),
    ({"identifier": [{"value": "no-system"}]}, "system and a value"),
])
def test_malformed_patients_are_refused_with_an_operation_outcome(
    http: httpx.Client, main_practice: dict, main_headers: dict, changes: dict, diagnostic: str
) -> None:
    body = {key: value for key, value in _patient(**changes).items() if value is not None}
    if "MRN" in diagnostic:
        body["identifier"] = [{"system": f"https://sandbox.callstream.dev/{main_practice['practice_id']}/mrn",
                               "value": "E1"}]
    refused = http.post(f"{main_practice['fhir_base']}/Patient", json=body, headers=main_headers)
    assert refused.status_code == 422
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome" and diagnostic in outcome["issue"][0]["diagnostics"]


def test_patient_then_coverage_create_only(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    base = main_practice["fhir_base"]
    body = _patient()
    created = http.post(f"{base}/Patient", json=body, headers=main_headers)
    assert created.status_code == 201
    patient = created.json()
    assert any(i["system"].endswith("/mrn") for i in patient["identifier"])  # assigned by the practice
    key = body["identifier"][0]
    found = http.get(f"{base}/Patient", params={"identifier": f"{key['system']}|{key['value']}"}, headers=main_headers)
    assert [e["resource"]["id"] for e in found.json().get("entry", [])] == [patient["id"]]
    assert http.post(f"{base}/Patient", json=body, headers=main_headers).status_code == 409  # same name and DOB

    coverage = {"resourceType": "Coverage", "status": "active", "subscriberId": "W987654321",
                "beneficiary": {"reference": f"Patient/{patient['id']}"}, "payor": [{"display": "Aetna"}],
                "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                                             "code": "self"}]}}
    for broken in ({**coverage, "subscriberId": None}, {**coverage, "status": "draft"}, {**coverage, "payor": []},
                   {**coverage, "beneficiary": {"reference": "Patient/pt-nobody"}},
                   {**coverage, "relationship": {"coding": [{"system": coverage["relationship"]["coding"][0]["system"],
                                                             "code": "cousin"}]}}):
        sent = {key: value for key, value in broken.items() if value is not None}
        refused = http.post(f"{base}/Coverage", json=sent, headers=main_headers)
        assert refused.status_code == 422 and refused.json()["resourceType"] == "OperationOutcome"
    made = http.post(f"{base}/Coverage", json=coverage, headers=main_headers)
    assert made.status_code == 201
    assert http.post(f"{base}/Coverage", json=coverage, headers=main_headers).status_code == 409
    assert http.put(f"{base}/Coverage/{made.json()['id']}", json=made.json(), headers=main_headers).status_code == 405
    listed = http.get(f"{base}/Coverage", params={"patient": patient["id"]}, headers=main_headers).json()
    assert [e["resource"]["subscriberId"] for e in listed["entry"]] == ["W987654321"]
