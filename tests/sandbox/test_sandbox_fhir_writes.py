"""Proprietary FHIR writes over real HTTP: every refusal ModMed (and callstream's guards) make."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.sandbox.helpers import appointment_for, ema_slot_ids, entries

JSON = {"content-type": "application/fhir+json"}


def _free_slot(http: httpx.Client, practice: dict, headers: dict, reason: str, index: int) -> tuple[dict, dict]:
    slots = entries(http.get(f"{practice['fhir_base']}/Slot", params={"appointment-type": reason}, headers=headers).json())
    slot = slots[index]
    schedule = http.get(f"{practice['fhir_base']}/{slot['schedule']['reference']}", headers=headers).json()
    return slot, schedule


def _patient_id(http: httpx.Client, practice: dict, headers: dict, offset: int) -> str:
    bundle = http.get(f"{practice['fhir_base']}/Patient", params={"_count": 1, "_offset": offset}, headers=headers).json()
    return entries(bundle)[0]["id"]


def test_booking_lifecycle(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    base = main_practice["fhir_base"]
    slot, schedule = _free_slot(http, main_practice, main_headers, "facet-injection", 3)
    patient_id = _patient_id(http, main_practice, main_headers, 11)
    created = http.post(f"{base}/Appointment", json=appointment_for(slot, schedule, patient_id), headers=main_headers)
    assert created.status_code == 201
    appointment = created.json()
    assert created.headers["location"].endswith(f"/Appointment/{appointment['id']}/_history/1")
    assert http.get(f"{base}/Slot/{slot['id']}", headers=main_headers).json()["status"] == "busy"
    taken = http.post(f"{base}/Appointment", json=appointment_for(slot, schedule, _patient_id(http, main_practice, main_headers, 12)), headers=main_headers)
    assert taken.status_code == 409 and taken.json()["issue"][0]["code"] == "conflict"
    overlapping = [
        s for s in entries(http.get(f"{base}/Slot", params={"appointment-type": "esi", "date": f"eq{slot['start'][:10]}"}, headers=main_headers).json())
        if s["schedule"] == slot["schedule"] and s["start"] < slot["end"] and slot["start"] < s["end"]
    ]
    assert overlapping == []
    found = entries(http.get(f"{base}/Appointment", params={"patient": patient_id, "status": "booked"}, headers=main_headers).json())
    assert appointment["id"] in [a["id"] for a in found]

    stale = {**appointment, "status": "cancelled"}
    assert http.put(f"{base}/Appointment/{appointment['id']}", json=stale, headers={**main_headers, "If-Match": 'W/"9"'}).status_code == 412
    cancelled = http.put(f"{base}/Appointment/{appointment['id']}", json=stale, headers={**main_headers, "If-Match": 'W/"1"'})
    assert cancelled.status_code == 200 and cancelled.json()["meta"]["versionId"] == "2"
    assert http.get(f"{base}/Slot/{slot['id']}", headers=main_headers).json()["status"] == "free"

    new_slot, new_schedule = _free_slot(http, main_practice, main_headers, "facet-injection", 9)
    moved = {**appointment_for(new_slot, new_schedule, patient_id), "id": appointment["id"]}
    rescheduled = http.put(f"{base}/Appointment/{appointment['id']}", json=moved, headers=main_headers)
    assert rescheduled.status_code == 200 and rescheduled.json()["slot"][0]["reference"] == f"Slot/{new_slot['id']}"
    assert http.get(f"{base}/Slot/{new_slot['id']}", headers=main_headers).json()["status"] == "busy"
    other_patient = {**moved, "participant": [{"actor": {"reference": f"Patient/{_patient_id(http, main_practice, main_headers, 13)}"}, "status": "accepted"}, *moved["participant"][1:]]}
    assert http.put(f"{base}/Appointment/{appointment['id']}", json=other_patient, headers=main_headers).status_code == 422


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda b: b.update(status="proposed"), 422),
        (lambda b: b.update(start="not-a-date"), 422),
        (lambda b: b.update(unknownField=1), 422),
        (lambda b: b.update(participant=b["participant"][:2]), 422),
        (lambda b: b.update(participant=[{"actor": {"reference": "Patient/pt-9999-000001"}, "status": "accepted"}, *b["participant"][1:]]), 422),
        (lambda b: b.update(slot=[{"reference": "Slot/slot-does-not-exist"}]), 422),
        (lambda b: b.update(appointmentType={"coding": [{"system": "https://callstream.dev/fhir/CodeSystem/visit-reason", "code": "rfa"}]}), 422),
        (lambda b: b.update(end=b["start"]), 422),
        (lambda b: b.update(minutesDuration=5), 422),
        (lambda b: b.update(resourceType="Patient"), 400),
    ],
)
def test_invalid_appointments_are_refused(http: httpx.Client, main_practice: dict, main_headers: dict, mutate: Callable[[dict], None], expected: int) -> None:
    slot, schedule = _free_slot(http, main_practice, main_headers, "follow-up", 5)
    body = appointment_for(slot, schedule, _patient_id(http, main_practice, main_headers, 20))
    mutate(body)
    response = http.post(f"{main_practice['fhir_base']}/Appointment", json=body, headers=main_headers)
    assert response.status_code == expected
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["severity"] == "error"


def test_validation_errors_name_the_element(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    slot, schedule = _free_slot(http, main_practice, main_headers, "follow-up", 6)
    body = appointment_for(slot, schedule, _patient_id(http, main_practice, main_headers, 21))
    body["participant"][0]["actor"] = "Patient/x"
    outcome = http.post(f"{main_practice['fhir_base']}/Appointment", json=body, headers=main_headers).json()
    assert any(issue["expression"][0].startswith("Appointment.participant[0].actor") for issue in outcome["issue"][1:])
    body = appointment_for(slot, schedule, _patient_id(http, main_practice, main_headers, 21))
    body["participant"][0]["status"] = "maybe"
    refused = http.post(f"{main_practice['fhir_base']}/Appointment", json=body, headers=main_headers)
    assert refused.status_code == 422 and "participant.status" in refused.json()["issue"][0]["diagnostics"]


def test_ema_only_template_cannot_be_booked_over_fhir(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    reason = main_practice["capabilities"]["ema_booking_templates"][0]
    patient_id = _patient_id(http, main_practice, main_headers, 2)
    slot_id = ema_slot_ids(main_practice, reason, patient_id)[0]
    assert http.get(f"{main_practice['fhir_base']}/Slot/{slot_id}", headers=main_headers).status_code == 404
    body = {
        "resourceType": "Appointment", "status": "booked", "slot": [{"reference": f"Slot/{slot_id}"}],
        "appointmentType": {"coding": [{"system": "https://callstream.dev/fhir/CodeSystem/visit-reason", "code": reason}]},
        "participant": [{"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"},
                        {"actor": {"reference": "Practitioner/prac-1001-01"}, "status": "accepted"},
                        {"actor": {"reference": "Location/loc-1001-proca"}, "status": "accepted"}],
    }
    response = http.post(f"{main_practice['fhir_base']}/Appointment", json=body, headers=main_headers)
    assert response.status_code == 422 and "only through EMA" in response.json()["issue"][0]["diagnostics"]


def test_medication_writes_are_always_refused(http: httpx.Client, main_practice: dict, task_practice: dict,
                                              main_headers: dict, task_headers: dict) -> None:
    for practice, headers in ((main_practice, main_headers), (task_practice, task_headers)):
        for resource_type in ("MedicationRequest", "MedicationStatement"):
            url = f"{practice['fhir_base']}/{resource_type}"
            body = {"resourceType": resource_type, "status": "active", "intent": "order", "subject": {"reference": "Patient/x"}}
            for method, target in (("POST", url), ("PUT", f"{url}/any"), ("PATCH", f"{url}/any"), ("DELETE", f"{url}/any")):
                response = http.request(method, target, json=body, headers=headers)
                assert response.status_code == 405, (resource_type, method)
                assert response.json()["issue"][0]["details"]["text"] == "HTTP_405_METHOD_NOT_ALLOWED"
            assert http.get(url, params={"patient": "pt-1001-000001"}, headers=headers).status_code == 200


def test_create_only_and_read_only_types(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    base = main_practice["fhir_base"]
    patient_id = _patient_id(http, main_practice, main_headers, 30)
    coverage = {"resourceType": "Coverage", "status": "active", "beneficiary": {"reference": f"Patient/{patient_id}"}, "payor": [{"display": "Aetna"}],
                "subscriberId": "W000111222"}
    created = http.post(f"{base}/Coverage", json=coverage, headers=main_headers)
    assert created.status_code == 201
    assert http.put(f"{base}/Coverage/{created.json()['id']}", json=created.json(), headers=main_headers).status_code == 405
    charge = {"resourceType": "ChargeItem", "status": "billable", "code": {"text": "99213"}, "subject": {"reference": f"Patient/{patient_id}"},
              "identifier": [{"system": "urn:callstream:transaction", "value": "txn-abc-1"}]}
    first = http.post(f"{base}/ChargeItem", json=charge, headers=main_headers)
    replay = http.post(f"{base}/ChargeItem", json=charge, headers=main_headers)
    assert (first.status_code, replay.status_code) == (201, 200) and first.json()["id"] == replay.json()["id"]
    assert http.put(f"{base}/ChargeItem/{first.json()['id']}", json=first.json(), headers=main_headers).status_code == 405
    document = {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": f"Patient/{patient_id}"},
                "content": [{"attachment": {"contentType": "application/pdf", "url": "https://intake.example.com/forms/1.pdf"}}]}
    doc = http.post(f"{base}/DocumentReference", json=document, headers=main_headers)
    assert doc.status_code == 201
    assert doc.json()["id"] in [d["id"] for d in entries(http.get(f"{base}/DocumentReference", params={"patient": patient_id}, headers=main_headers).json())]
    assert http.put(f"{base}/DocumentReference/{doc.json()['id']}", json=doc.json(), headers=main_headers).status_code == 405
    no_url = {**document, "content": [{"attachment": {"contentType": "application/pdf"}}]}
    assert http.post(f"{base}/DocumentReference", json=no_url, headers=main_headers).status_code == 422
    for resource_type in ("Practitioner", "Location", "Schedule", "Slot", "Flag", "Observation", "Organization"):
        response = http.post(f"{base}/{resource_type}", json={"resourceType": resource_type}, headers=main_headers)
        assert response.status_code == 405, resource_type
    assert http.delete(f"{base}/Patient/{patient_id}", headers=main_headers).status_code == 405


def test_task_create_follows_the_capability(http: httpx.Client, main_practice: dict, task_practice: dict,
                                            main_headers: dict, task_headers: dict) -> None:
    def task(patient_id: str) -> dict:
        return {"resourceType": "Task", "status": "requested", "intent": "order", "for": {"reference": f"Patient/{patient_id}"},
                "code": {"coding": [{"system": "https://callstream.dev/fhir/CodeSystem/task-kind", "code": "refill-request"}]}}

    refused = http.post(f"{main_practice['fhir_base']}/Task", json=task(_patient_id(http, main_practice, main_headers, 3)), headers=main_headers)
    assert refused.status_code == 405 and refused.headers["allow"] == "GET"
    patient_id = _patient_id(http, task_practice, task_headers, 3)
    created = http.post(f"{task_practice['fhir_base']}/Task", json=task(patient_id), headers=task_headers)
    assert created.status_code == 201
    listed = entries(http.get(f"{task_practice['fhir_base']}/Task", params={"patient": patient_id}, headers=task_headers).json())
    assert created.json()["id"] in [t["id"] for t in listed]
    foreign = http.post(f"{task_practice['fhir_base']}/Task", json=task("pt-1001-000003"), headers=task_headers)
    assert foreign.status_code == 422


def test_a_created_task_is_found_by_its_identifier(http: httpx.Client, task_practice: dict, task_headers: dict) -> None:
    """The connector's "did my write land?" check: system|value, a bare value, never another system's value."""
    base = task_practice["fhir_base"]
    body = {"resourceType": "Task", "status": "requested", "intent": "order",
            "for": {"reference": f"Patient/{_patient_id(http, task_practice, task_headers, 4)}"},
            "code": {"coding": [{"system": "https://callstream.dev/fhir/CodeSystem/task-kind", "code": "general-message"}]},
            "identifier": [{"system": "urn:callstream:idempotency-key", "value": "key-found-by-identifier"}]}
    response = http.post(f"{base}/Task", json=body, headers=task_headers)
    assert response.status_code == 201, response.text
    created = response.json()

    def found(identifier: str) -> list[str]:
        bundle = http.get(f"{base}/Task", params={"identifier": identifier}, headers=task_headers).json()
        return [t["id"] for t in entries(bundle)]

    assert found("urn:callstream:idempotency-key|key-found-by-identifier") == [created["id"]]
    assert found("key-found-by-identifier") == [created["id"]]
    assert found("urn:other-system|key-found-by-identifier") == []
    assert found("urn:callstream:idempotency-key|key-never-written") == []
    assert created["id"] in found("urn:callstream:idempotency-key|key-found-by-identifier,key-never-written")


def test_patient_create_update_and_duplicates(http: httpx.Client, task_practice: dict, task_headers: dict) -> None:
    base = task_practice["fhir_base"]
    body = {"resourceType": "Patient", "name": [{"family": "Quillfeather", "given": ["Ottilie"]}], "birthDate": "1961-04-09",
            "telecom": [{"system": "phone", "value": "+15125550199"}], "gender": "female"}
    created = http.post(f"{base}/Patient", json=body, headers=task_headers)
    assert created.status_code == 201
    patient = created.json()
    assert any(i["system"].endswith("/mrn") for i in patient["identifier"])
    assert http.post(f"{base}/Patient", json=body, headers=task_headers).status_code == 409
    assert http.post(f"{base}/Patient", json={"resourceType": "Patient", "name": [{"family": "X"}]}, headers=task_headers).status_code == 422
    updated = http.put(f"{base}/Patient/{patient['id']}", json={**patient, "telecom": [{"system": "phone", "value": "+15125550198"}]}, headers=task_headers)
    assert updated.status_code == 200 and updated.json()["meta"]["versionId"] == "2"
    assert http.put(f"{base}/Patient/{patient['id']}", json={**patient, "id": "other"}, headers=task_headers).status_code == 400
    assert http.put(f"{base}/Patient/pt-1002-999999", json={**patient, "id": "pt-1002-999999"}, headers=task_headers).status_code == 404


def test_malformed_bodies(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    url = f"{main_practice['fhir_base']}/Patient"
    assert http.post(url, content=b"{not json", headers={**main_headers, **JSON}).status_code == 400
    assert http.post(url, content=b"[]", headers={**main_headers, **JSON}).status_code == 400
    assert http.post(url, content=b"{}", headers={**main_headers, "content-type": "text/plain"}).status_code == 400
    huge = http.post(url, content=b"{" + b" " * (1024 * 1024 + 10) + b"}", headers={**main_headers, **JSON})
    assert huge.status_code == 412 and huge.json()["issue"][0]["details"]["text"] == "HTTP_412_PAYLOAD_TOO_LARGE"
