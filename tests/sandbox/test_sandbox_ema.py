"""EMA screens over plain HTTP form posts: login and lockout, EMA-only booking, agreement and
PDMP screens, the PM task queue, and that what a screen writes is visible over FHIR."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.fixtures.sandbox import SandboxServer
from tests.sandbox.helpers import entries


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "screen has no CSRF token"
    return match.group(1)


def _testid(html: str, testid: str) -> str:
    match = re.search(rf'data-testid="{re.escape(testid)}"[^>]*>([^<]*)<', html)
    assert match, f"no element {testid}"
    return match.group(1)


def _login(client: httpx.Client, practice: dict) -> httpx.Response:
    return client.post(f"{practice['ema_base_url']}/login",
                       data={"username": practice["username"], "password": practice["password"]})


@pytest.fixture
def ema(main_practice: dict) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=15.0, follow_redirects=True) as client:
        assert _login(client, main_practice).status_code == 200
        yield client


def test_screens_need_a_session(sandbox: SandboxServer, main_practice: dict, task_practice: dict) -> None:
    with httpx.Client(follow_redirects=False) as client:
        response = client.get(f"{main_practice['ema_base_url']}/chart/pt-1001-000001")
        assert response.status_code == 303
        assert response.headers["location"].startswith(f"/ema/{main_practice['firm_url_prefix']}/login?next=")
        login = client.post(f"{main_practice['ema_base_url']}/login",
                            data={"username": main_practice["username"], "password": main_practice["password"],
                                  "next": f"/ema/{main_practice['firm_url_prefix']}/chart/pt-1001-000001"})
        assert login.status_code == 303 and login.headers["location"].endswith("/chart/pt-1001-000001")
        assert client.get(f"{main_practice['ema_base_url']}/chart/pt-1001-000001").status_code == 200
        assert client.get(f"{task_practice['ema_base_url']}/home").status_code == 303
        open_redirect = client.post(f"{main_practice['ema_base_url']}/login",
                                    data={"username": main_practice["username"], "password": main_practice["password"],
                                          "next": "https://evil.example/"})
        assert open_redirect.headers["location"] == f"/ema/{main_practice['firm_url_prefix']}/home"


def test_login_lockout_after_three_failures(sandbox: SandboxServer, task_practice: dict) -> None:
    try:
        with httpx.Client() as client:
            url = f"{task_practice['ema_base_url']}/login"
            for _ in range(2):
                failed = client.post(url, data={"username": task_practice["username"], "password": "wrong"})
                assert failed.status_code == 401 and 'data-testid="login-error"' in failed.text
            locked = client.post(url, data={"username": task_practice["username"], "password": "wrong"})
            assert locked.status_code == 403 and 'data-testid="login-locked"' in locked.text
            correct = client.post(url, data={"username": task_practice["username"], "password": task_practice["password"]})
            assert correct.status_code == 403
            sandbox.unlock_ema(task_practice["practice_id"])
            assert _login(client, task_practice).status_code == 303
    finally:
        sandbox.unlock_ema(task_practice["practice_id"])


def test_screen_login_failure_fault(sandbox: SandboxServer, task_practice: dict) -> None:
    try:
        sandbox.set_faults(task_practice["practice_id"], screen_login_failure=True)
        with httpx.Client() as client:
            assert _login(client, task_practice).status_code == 401
    finally:
        sandbox.clear_faults(task_practice["practice_id"])
        sandbox.unlock_ema(task_practice["practice_id"])


def test_ema_only_booking_is_visible_over_fhir(ema: httpx.Client, main_practice: dict, main_headers: dict, http: httpx.Client) -> None:
    base = main_practice["ema_base_url"]
    reason = main_practice["capabilities"]["ema_booking_templates"][0]
    screen = ema.get(f"{base}/scheduling/book").text
    assert f'data-testid="template-option-{reason}"' in screen and "EMA only" in screen
    patient_id = "pt-1001-000042"
    day_with_slots = None
    for week in range(2, 6):
        for weekday in range(7):
            day = (dt.date.today() + dt.timedelta(days=7 * week + weekday)).isoformat()
            page = ema.get(f"{base}/scheduling/book", params={"patient_id": patient_id, "template": reason, "date": day}).text
            if 'data-testid="slot-radio-' in page:
                day_with_slots = page
                break
        if day_with_slots:
            break
    assert day_with_slots, "no EMA-only slots in the schedule"
    slot_id = re.search(r'data-testid="slot-radio-([^"]+)"', day_with_slots).group(1)
    booked = ema.post(f"{base}/scheduling/book", data={"csrf_token": _csrf(day_with_slots), "patient_id": patient_id, "slot_id": slot_id})
    assert booked.status_code == 201
    appointment_id = _testid(booked.text, "booking-appointment-id")
    over_fhir = entries(http.get(f"{main_practice['fhir_base']}/Appointment", params={"patient": patient_id}, headers=main_headers).json())
    found = next(a for a in over_fhir if a["id"] == appointment_id)
    assert found["appointmentType"]["coding"][0]["code"] == reason and found["status"] == "booked"
    again = ema.post(f"{base}/scheduling/book", data={"csrf_token": _csrf(day_with_slots), "patient_id": "pt-1001-000043", "slot_id": slot_id})
    assert again.status_code == 409 and 'data-testid="booking-error"' in again.text


def test_task_queue_writes_fhir_tasks(ema: httpx.Client, main_practice: dict, main_headers: dict, http: httpx.Client) -> None:
    base = main_practice["ema_base_url"]
    queue = ema.get(f"{base}/pm/tasks").text
    coordinator = main_practice["controlled_substance_coordinator"]
    assert f'data-testid="task-assignee-option-{coordinator}"' in queue
    assert 'data-testid="task-kind-option-provider-review"' in queue  # its own kind, apart from clinical-review
    created = ema.post(f"{base}/pm/tasks", data={
        "csrf_token": _csrf(queue), "kind": "uds-scheduling", "assignee": coordinator, "patient_id": "pt-1001-000050",
        "call_reference": "call-7f3a9", "note": "Caller asked about UDS; routed to coordinator.", "priority": "routine"})
    assert created.status_code == 200
    task_id = _testid(created.text, "task-created-id")
    row = re.search(rf'data-testid="task-row-{task_id}".*?data-testid="task-note"[^>]*>([^<]*)<', created.text)
    assert row and row.group(1) == "Caller asked about UDS; routed to coordinator."  # the queue shows the note
    tasks = entries(http.get(f"{main_practice['fhir_base']}/Task", params={"patient": "pt-1001-000050"}, headers=main_headers).json())
    task = next(t for t in tasks if t["id"] == task_id)
    assert task["code"]["coding"][0]["code"] == "uds-scheduling"
    assert task["owner"]["reference"] == f"Practitioner/{coordinator}"
    assert task["identifier"][0]["value"] == "call-7f3a9"
    invalid = ema.post(f"{base}/pm/tasks", data={"csrf_token": _csrf(queue), "kind": "launch-rocket", "assignee": "nobody",
                                                   "patient_id": "pt-9999-000001", "call_reference": "bad ref!"})
    assert invalid.status_code == 422 and 'data-testid="screen-error"' in invalid.text
    forged = ema.post(f"{base}/pm/tasks", data={"csrf_token": "forged", "kind": "general", "assignee": coordinator, "patient_id": "pt-1001-000050"})
    assert forged.status_code == 403


def test_agreement_and_pdmp_screens(ema: httpx.Client, main_practice: dict, main_headers: dict, http: httpx.Client) -> None:
    flags = entries(http.get(f"{main_practice['fhir_base']}/Flag", params={"code": "opioid-agreement", "_count": 1}, headers=main_headers).json())
    patient_id = flags[0]["subject"]["reference"].split("/")[1]
    base = main_practice["ema_base_url"]
    chart = ema.get(f"{base}/chart/{patient_id}").text
    assert _testid(chart, "chart-chronic-opioid") == "yes"
    agreement = ema.get(f"{base}/chart/{patient_id}/opioid-agreement").text
    assert _testid(agreement, "agreement-renewal-date") == flags[0]["period"]["end"]
    assert _testid(agreement, "agreement-status") == flags[0]["extension"][0]["valueCode"]
    pdmp = ema.get(f"{base}/chart/{patient_id}/pdmp").text
    before = _testid(pdmp, "pdmp-last-checked")
    refused = ema.post(f"{base}/chart/{patient_id}/pdmp", data={"csrf_token": _csrf(pdmp), "state": "Oregon"})
    assert refused.status_code == 422
    attested = ema.post(f"{base}/chart/{patient_id}/pdmp", data={"csrf_token": _csrf(pdmp), "state": "OR", "attest": "yes"})
    assert attested.status_code == 200 and 'data-testid="pdmp-attest-confirmation"' in attested.text
    after = _testid(attested.text, "pdmp-last-checked")
    assert after > before
    checks = entries(http.get(f"{main_practice['fhir_base']}/Observation", params={"patient": patient_id, "code": "pdmp-check"}, headers=main_headers).json())
    assert after in [c["effectiveDateTime"] for c in checks]
    assert ema.get(f"{base}/chart/pt-9999-000001").status_code == 404


def test_certified_practice_shows_compliance_only_on_screens(sandbox: SandboxServer, certified_practice: dict) -> None:
    with httpx.Client(follow_redirects=True) as client:
        assert _login(client, certified_practice).status_code == 200
        found = None
        for number in range(1, 60):
            page = client.get(f"{certified_practice['ema_base_url']}/chart/pt-1003-{number:06d}").text
            if _testid(page, "chart-chronic-opioid") == "yes":
                found = number
                break
        assert found is not None
        pdmp = client.get(f"{certified_practice['ema_base_url']}/chart/pt-1003-{found:06d}/pdmp").text
        assert _testid(pdmp, "pdmp-last-checked") != "never"
        logout = client.post(f"{certified_practice['ema_base_url']}/logout", data={"csrf_token": _csrf(pdmp)})
        assert 'data-testid="login-form"' in logout.text


def test_patient_search_screen(ema: httpx.Client, main_practice: dict, main_headers: dict, http: httpx.Client) -> None:
    patient = http.get(f"{main_practice['fhir_base']}/Patient/pt-1001-000010", headers=main_headers).json()
    page = ema.get(f"{main_practice['ema_base_url']}/patients",
                   params={"family": patient["name"][0]["family"], "dob": patient["birthDate"]}).text
    assert 'data-testid="patient-row-pt-1001-000010"' in page
