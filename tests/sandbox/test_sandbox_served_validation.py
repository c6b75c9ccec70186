"""Everything the running sandbox serves validates against the fhir.resources R4B models:
searchsets of every resource type on both tracks, reads, errors and capability statements."""

from __future__ import annotations

import httpx
from fhir.resources.R4B import get_fhir_model_class

from sandbox.search import CERTIFIED_SEARCH, PROPRIETARY_SEARCH
from tests.sandbox.helpers import certified_headers, entries

Bundle = get_fhir_model_class("Bundle")


def test_proprietary_searchsets_and_reads_validate(http: httpx.Client, main_practice: dict, task_practice: dict,
                                                   main_headers: dict, task_headers: dict) -> None:
    for practice, headers in ((main_practice, main_headers), (task_practice, task_headers)):
        base = practice["fhir_base"]
        for resource_type in [*PROPRIETARY_SEARCH, "Slot"]:
            params = {"appointment-type": "esi"} if resource_type == "Slot" else {"_count": 50}
            response = http.get(f"{base}/{resource_type}", params=params, headers=headers)
            assert response.status_code == 200, resource_type
            assert response.headers["content-type"].startswith("application/fhir+json")
            Bundle.model_validate(response.json())
            for resource in entries(response.json())[:3]:
                read = http.get(f"{base}/{resource_type}/{resource['id']}", headers=headers)
                get_fhir_model_class(resource_type).model_validate(read.json())
        metadata = http.get(f"{base}/metadata", headers=headers).json()
        get_fhir_model_class("CapabilityStatement").model_validate(metadata)
        task = next(r for r in metadata["rest"][0]["resource"] if r["type"] == "Task")
        assert ("create" in [i["code"] for i in task["interaction"]]) is practice["capabilities"]["fhir_task_create"]


def test_certified_searchsets_validate(http: httpx.Client, certified_practice: dict) -> None:
    base = certified_practice["certified"]["fhir_base"]
    headers = certified_headers(http, certified_practice)
    for resource_type in CERTIFIED_SEARCH:
        response = http.get(f"{base}/{resource_type}", params={"_count": 50}, headers=headers)
        assert response.status_code == 200, resource_type
        Bundle.model_validate(response.json())
    group = http.get(f"{base}/Group/grp-1003-all-patients", headers=headers).json()
    get_fhir_model_class("Group").model_validate(group)
    get_fhir_model_class("CapabilityStatement").model_validate(http.get(f"{base}/metadata").json())


def test_errors_are_valid_operation_outcomes(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    outcome = get_fhir_model_class("OperationOutcome")
    base = main_practice["fhir_base"]
    for response in (
        http.get(f"{base}/Patient/none", headers=main_headers),
        http.get(f"{base}/Patient", params={"_count": 99}, headers=main_headers),
        http.post(f"{base}/MedicationRequest", json={}, headers=main_headers),
        http.get(f"{base}/Patient"),
        http.get(f"{main_practice['fhir_base'].rsplit('/firm/', 1)[0]}/no/such/path"),
    ):
        assert response.status_code >= 400
        outcome.model_validate(response.json())
