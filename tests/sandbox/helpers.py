"""Small helpers the sandbox tests share (plain functions, no fixtures)."""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid

import httpx
import jwt


def proprietary_headers(practice: dict, client: httpx.Client | None = None) -> dict[str, str]:
    """x-api-key + Bearer for a proprietary practice, via the password grant."""
    response = (client or httpx).post(
        practice["token_url"],
        data={"grant_type": "password", "username": practice["username"], "password": practice["password"]},
        headers={"x-api-key": practice["api_key"]},
    )
    response.raise_for_status()
    return {"x-api-key": practice["api_key"], "Authorization": f"Bearer {response.json()['access_token']}"}


def appointment_for(slot: dict, schedule: dict, patient_id: str) -> dict:
    """The Appointment body that books `slot` for `patient_id` (participants from the slot's Schedule)."""
    practitioner, location = schedule["actor"][0], schedule["actor"][1]
    return {
        "resourceType": "Appointment",
        "status": "booked",
        "appointmentType": slot["appointmentType"],
        "slot": [{"reference": f"Slot/{slot['id']}"}],
        "start": slot["start"],
        "end": slot["end"],
        "participant": [
            {"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"},
            {"actor": {"reference": practitioner["reference"]}, "status": "accepted"},
            {"actor": {"reference": location["reference"]}, "status": "accepted"},
        ],
    }


def entries(bundle: dict) -> list[dict]:
    """The resources of a searchset Bundle (failing loudly when the server sent an error instead)."""
    assert bundle.get("resourceType") == "Bundle", bundle
    return [entry["resource"] for entry in bundle.get("entry", [])]


def ema_slot_ids(practice: dict, template: str, patient_id: str) -> list[str]:
    """Slot ids the EMA booking screen offers for `template` on the first day that has any."""
    with httpx.Client(follow_redirects=True, timeout=15.0) as ema:
        login = ema.post(f"{practice['ema_base_url']}/login", data={"username": practice["username"], "password": practice["password"]})
        assert login.status_code == 200
        for offset in range(3, 42):
            day = (dt.date.today() + dt.timedelta(days=offset)).isoformat()
            page = ema.get(f"{practice['ema_base_url']}/scheduling/book",
                           params={"patient_id": patient_id, "template": template, "date": day}).text
            found = re.findall(r'data-testid="slot-radio-([^"]+)"', page)
            if found:
                return found
    return []


def client_assertion(practice: dict, **overrides: object) -> str:
    """An RS384 private_key_jwt for the certified practice; `overrides` replace claims."""
    certified = practice["certified"]
    now = int(time.time())
    claims = {"iss": certified["client_id"], "sub": certified["client_id"], "aud": certified["token_url"],
              "exp": now + 240, "jti": uuid.uuid4().hex, **overrides}
    return jwt.encode(claims, certified["private_key_pem"], algorithm="RS384", headers={"kid": certified["key_id"]})


def certified_token_request(http: httpx.Client, practice: dict, assertion: str, scope: str = "system/*.rs") -> httpx.Response:
    return http.post(practice["certified"]["token_url"], data={
        "grant_type": "client_credentials", "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "client_assertion": assertion,
    })


def certified_headers(http: httpx.Client, practice: dict, scope: str = "system/*.rs") -> dict[str, str]:
    """Authorization header with a fresh certified-track access token."""
    response = certified_token_request(http, practice, client_assertion(practice), scope)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}
