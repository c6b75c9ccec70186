"""Proprietary FHIR reads and searches over real HTTP, strict like ModMed's published API."""

from __future__ import annotations

import datetime as dt

import httpx

from sandbox.vocabulary import COMPLIANCE_SYSTEM, EXT_AGREEMENT_STATUS, EXT_ROOM_EQUIPMENT, VISIT_REASON_SYSTEM
from tests.sandbox.helpers import entries


def _get(http: httpx.Client, practice: dict, headers: dict, path: str, **params: object) -> httpx.Response:
    return http.get(f"{practice['fhir_base']}/{path}", params=params, headers=headers)


def _a_patient(http: httpx.Client, practice: dict, headers: dict, offset: int = 7) -> dict:
    return entries(_get(http, practice, headers, "Patient", _count=1, _offset=offset).json())[0]


def test_patient_search_parameters(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    patient = _a_patient(http, main_practice, main_headers)
    family, given = patient["name"][0]["family"], patient["name"][0]["given"][0]
    exact = _get(http, main_practice, main_headers, "Patient", family=family.upper(), birthdate=patient["birthDate"]).json()
    assert patient["id"] in [p["id"] for p in entries(exact)]
    assert exact["type"] == "searchset"
    partial_family = _get(http, main_practice, main_headers, "Patient", family=family[:-1]).json()
    assert all(p["name"][0]["family"].casefold() == family[:-1].casefold() for p in entries(partial_family))
    by_given = _get(http, main_practice, main_headers, "Patient", family=family, given=given[:2]).json()
    assert patient["id"] in [p["id"] for p in entries(by_given)]
    phone = patient["telecom"][0]["value"]
    assert phone.startswith("+1") and len(phone) == 12
    by_phone = _get(http, main_practice, main_headers, "Patient", phone=f"({phone[2:5]}) {phone[5:8]}-{phone[8:]}").json()
    assert patient["id"] in [p["id"] for p in entries(by_phone)]
    mrn = patient["identifier"][0]
    by_identifier = _get(http, main_practice, main_headers, "Patient", identifier=f"{mrn['system']}|{mrn['value']}").json()
    assert [p["id"] for p in entries(by_identifier)] == [patient["id"]]


def test_patient_search_refusals(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    for params in ({"_count": 51}, {"_count": 0}, {"_count": "ten"}, {"name": "Smith"}, {"family:contains": "Sm"},
                   {"birthdate": "1970/01/01"}, {"birthdate": "1970-02-30"}, {"phone": "12"}, {"family": ""}):
        response = _get(http, main_practice, main_headers, "Patient", **params)
        assert response.status_code == 400, params
        assert response.json()["issue"][0]["details"]["text"] == "HTTP_400_BAD_REQUEST"


def test_patient_paging_follows_next_links(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    first = _get(http, main_practice, main_headers, "Patient", _count=50).json()
    assert first["total"] == 200 and len(first["entry"]) == 50
    seen = [p["id"] for p in entries(first)]
    bundle = first
    while next_link := next((l["url"] for l in bundle["link"] if l["relation"] == "next"), None):
        bundle = http.get(next_link, headers=main_headers).json()
        seen += [p["id"] for p in entries(bundle)]
    assert len(seen) == len(set(seen)) == 200


def test_unknown_ids_types_and_operations(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    missing = _get(http, main_practice, main_headers, "Patient/pt-0000-999999")
    assert missing.status_code == 404
    assert "UnclassifiedServerFailureException" in missing.json()["issue"][0]["diagnostics"]
    assert _get(http, main_practice, main_headers, "Encounter").status_code == 404
    assert _get(http, main_practice, main_headers, "Group").status_code == 404
    patient = _a_patient(http, main_practice, main_headers)
    assert _get(http, main_practice, main_headers, f"Patient/{patient['id']}/_history").status_code == 501
    assert _get(http, main_practice, main_headers, "Patient/$export").status_code == 501


def test_conditional_read_returns_304(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    patient = _a_patient(http, main_practice, main_headers)
    read = _get(http, main_practice, main_headers, f"Patient/{patient['id']}")
    etag = read.headers["etag"]
    assert etag == f'W/"{patient["meta"]["versionId"]}"'
    again = http.get(f"{main_practice['fhir_base']}/Patient/{patient['id']}", headers={**main_headers, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""


def test_directory_resources(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    rooms = entries(_get(http, main_practice, main_headers, "Location", type="procedure-room").json())
    equipment = {r["id"]: {e["valueCoding"]["code"] for e in r.get("extension", []) if e["url"] == EXT_ROOM_EQUIPMENT} for r in rooms}
    assert any("fluoroscopy" in kit for kit in equipment.values())
    assert any("fluoroscopy" not in kit for kit in equipment.values())
    practitioners = _get(http, main_practice, main_headers, "Practitioner").json()
    coordinator = main_practice["controlled_substance_coordinator"]
    assert coordinator in [p["id"] for p in entries(practitioners)]
    schedules = entries(_get(http, main_practice, main_headers, "Schedule", actor=f"Practitioner/{entries(practitioners)[0]['id']}").json())
    assert schedules and all(s["actor"][0]["reference"] == f"Practitioner/{entries(practitioners)[0]['id']}" for s in schedules)


def test_slot_search_rules(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    missing = _get(http, main_practice, main_headers, "Slot", date="ge2020-01-01")
    assert missing.status_code == 400 and "appointment-type" in missing.json()["issue"][0]["diagnostics"]
    assert _get(http, main_practice, main_headers, "Slot", **{"appointment-type": "esi", "_count": 10}).status_code == 400
    assert _get(http, main_practice, main_headers, "Slot", **{"appointment-type": "massage"}).status_code == 400
    assert _get(http, main_practice, main_headers, "Slot", **{"appointment-type": "esi", "status": "busy"}).status_code == 400
    esi = _get(http, main_practice, main_headers, "Slot", **{"appointment-type": f"{VISIT_REASON_SYSTEM}|esi"}).json()
    slots = entries(esi)
    assert slots and all(s["status"] == "free" for s in slots)
    assert all(s["appointmentType"]["coding"][0]["code"] == "esi" for s in slots)
    assert "next" not in [l["relation"] for l in esi["link"]]
    rooms = entries(_get(http, main_practice, main_headers, "Location", type="procedure-room").json())
    fluoro = {r["id"] for r in rooms if any(e["valueCoding"]["code"] == "fluoroscopy" for e in r.get("extension", []))}
    schedule_rooms = {
        s["id"]: s["actor"][1]["reference"].split("/")[1]
        for s in entries(_get(http, main_practice, main_headers, "Schedule").json())
    }
    assert {schedule_rooms[s["schedule"]["reference"].split("/")[1]] for s in slots} <= fluoro
    for slot in slots:
        assert dt.datetime.fromisoformat(slot["end"]) - dt.datetime.fromisoformat(slot["start"]) == dt.timedelta(minutes=30)


def test_slot_date_provider_location_filters(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    all_slots = entries(_get(http, main_practice, main_headers, "Slot", **{"appointment-type": "follow-up"}).json())
    day = all_slots[len(all_slots) // 2]["start"][:10]
    one_day = entries(http.get(f"{main_practice['fhir_base']}/Slot", headers=main_headers,
                               params=[("appointment-type", "follow-up"), ("date", f"ge{day}"), ("date", f"le{day}")]).json())
    assert one_day and {s["start"][:10] for s in one_day} == {day}
    schedule = http.get(f"{main_practice['fhir_base']}/{one_day[0]['schedule']['reference']}", headers=main_headers).json()
    provider = schedule["actor"][0]["reference"].split("/")[1]
    room = schedule["actor"][1]["reference"].split("/")[1]
    mine = entries(_get(http, main_practice, main_headers, "Slot", **{"appointment-type": "follow-up", "provider": provider}).json())
    assert mine and all(s["schedule"]["reference"] in _schedules_of(http, main_practice, main_headers, provider) for s in mine)
    in_room = entries(_get(http, main_practice, main_headers, "Slot", **{"appointment-type": "follow-up", "location": f"Location/{room}"}).json())
    assert in_room and len(in_room) < len(all_slots)
    assert _get(http, main_practice, main_headers, "Slot", **{"appointment-type": "esi", "date": "ge23-11-2026"}).status_code == 400


def _schedules_of(http: httpx.Client, practice: dict, headers: dict, provider: str) -> set[str]:
    return {f"Schedule/{s['id']}" for s in entries(_get(http, practice, headers, "Schedule", actor=f"Practitioner/{provider}").json())}


def test_ema_only_templates_are_not_enumerated(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    ema_only = main_practice["capabilities"]["ema_booking_templates"]
    assert ema_only
    hidden = _get(http, main_practice, main_headers, "Slot", **{"appointment-type": ema_only[0]}).json()
    assert hidden["total"] == 0 and hidden.get("entry", []) == []


def test_preop_clearance_window(http: httpx.Client, task_practice: dict, task_headers: dict) -> None:
    scs = entries(_get(http, task_practice, task_headers, "Slot", **{"appointment-type": "scs-trial"}).json())
    assert scs
    earliest = min(dt.datetime.fromisoformat(s["start"]) for s in scs)
    today = dt.datetime.now(earliest.tzinfo).date()
    assert earliest.date() >= today + dt.timedelta(days=14)


def test_compliance_flags_shape(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    flags = entries(_get(http, main_practice, main_headers, "Flag", code=f"{COMPLIANCE_SYSTEM}|opioid-agreement", _count=50).json())
    assert flags
    statuses = set()
    for flag in flags:
        statuses.add(next(e["valueCode"] for e in flag["extension"] if e["url"] == EXT_AGREEMENT_STATUS))
        assert flag["period"]["end"] and flag["subject"]["reference"].startswith("Patient/")
    assert statuses <= {"active", "expired", "violated"} and "active" in statuses
    patient_id = flags[0]["subject"]["reference"].split("/")[1]
    chart = entries(_get(http, main_practice, main_headers, "Flag", patient=patient_id).json())
    assert {"chronic-opioid", "opioid-agreement"} <= {f["code"]["coding"][0]["code"] for f in chart}
    pdmp = entries(_get(http, main_practice, main_headers, "Observation", patient=patient_id, code="pdmp-check").json())
    assert pdmp and all(o["effectiveDateTime"] and o["note"][0]["text"].startswith("SYNTHETIC") for o in pdmp)


def test_last_updated_has_day_granularity(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    today = dt.datetime.now(dt.UTC).date()
    late_today = f"ge{today.isoformat()}T23:59:00Z"
    by_instant = _get(http, main_practice, main_headers, "Appointment", _lastUpdated=late_today).json()
    by_day = _get(http, main_practice, main_headers, "Appointment", _lastUpdated=f"ge{today.isoformat()}").json()
    assert by_instant["total"] == by_day["total"]
    earlier = _get(http, main_practice, main_headers, "Appointment", _lastUpdated=f"ge{(today - dt.timedelta(days=3)).isoformat()}").json()
    assert earlier["total"] >= by_day["total"] and earlier["total"] > 0
    assert _get(http, main_practice, main_headers, "Appointment", _lastUpdated="ne2026-01-01").status_code == 400
    assert _get(http, main_practice, main_headers, "Appointment", _lastUpdated="ge2026-01-01T10:00").status_code == 400
