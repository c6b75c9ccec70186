"""Proprietary-track auth over real HTTP: grants, expiry, refresh rotation, revocation and
cross-practice isolation (one practice's key or token never opens another's data)."""

from __future__ import annotations

import base64

import httpx

from sandbox.generator import build_world
from tests.fixtures.sandbox import MovableTime, SandboxServer, running_sandbox
from tests.sandbox.helpers import proprietary_headers


def _grant(http: httpx.Client, practice: dict, api_key: str | None = None, **form: str) -> httpx.Response:
    headers = {"x-api-key": api_key if api_key is not None else practice["api_key"]}
    return http.post(practice["token_url"], data=form, headers=headers)


def test_password_grant_returns_expiring_bearer_and_refresh(http: httpx.Client, main_practice: dict) -> None:
    response = _grant(http, main_practice, grant_type="password", username=main_practice["username"], password=main_practice["password"])
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["access_token"] and body["refresh_token"]
    assert response.headers["cache-control"] == "no-store"


def test_refresh_token_rotates(http: httpx.Client, main_practice: dict) -> None:
    first = _grant(http, main_practice, grant_type="password", username=main_practice["username"], password=main_practice["password"]).json()
    second = _grant(http, main_practice, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert second.status_code == 200
    assert second.json()["access_token"] != first["access_token"]
    replay = _grant(http, main_practice, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"  # RFC 6749 §5.2


def test_client_credentials_in_form_and_basic(http: httpx.Client, main_practice: dict) -> None:
    form = _grant(http, main_practice, grant_type="client_credentials",
                  client_id=main_practice["client_id"], client_secret=main_practice["client_secret"])
    assert form.status_code == 200 and form.json()["access_token"]
    basic = base64.b64encode(f"{main_practice['client_id']}:{main_practice['client_secret']}".encode()).decode()
    response = http.post(main_practice["token_url"], data={"grant_type": "client_credentials"},
                         headers={"x-api-key": main_practice["api_key"], "Authorization": f"Basic {basic}"})
    assert response.status_code == 200


def test_bad_credentials_and_malformed_requests(http: httpx.Client, main_practice: dict) -> None:
    wrong = _grant(http, main_practice, grant_type="password", username=main_practice["username"], password="nope")
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
    secret = _grant(http, main_practice, grant_type="client_credentials", client_id=main_practice["client_id"], client_secret="x")
    assert (secret.status_code, secret.json()["error"]) == (401, "invalid_client")
    unsupported = _grant(http, main_practice, grant_type="implicit")
    assert (unsupported.status_code, unsupported.json()["error"]) == (400, "unsupported_grant_type")
    missing = _grant(http, main_practice, grant_type="password", username=main_practice["username"])
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_request")
    as_json = http.post(main_practice["token_url"], json={"grant_type": "password"}, headers={"x-api-key": main_practice["api_key"]})
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"
    repeated = http.post(main_practice["token_url"], content=b"grant_type=password&grant_type=password",
                         headers={"x-api-key": main_practice["api_key"], "content-type": "application/x-www-form-urlencoded"})
    assert repeated.status_code == 400
    wrong_method = http.get(main_practice["token_url"], headers={"x-api-key": main_practice["api_key"]})
    assert wrong_method.status_code == 405 and wrong_method.json()["resourceType"] == "OperationOutcome"


def test_api_key_is_required_everywhere(http: httpx.Client, main_practice: dict, main_headers: dict) -> None:
    no_key = _grant(http, main_practice, api_key="", grant_type="password",
                    username=main_practice["username"], password=main_practice["password"])
    assert no_key.status_code == 401
    unknown = _grant(http, main_practice, api_key="sbx_unknown", grant_type="password",
                     username=main_practice["username"], password=main_practice["password"])
    assert unknown.status_code == 401
    bearer_only = {"Authorization": main_headers["Authorization"]}
    assert http.get(f"{main_practice['fhir_base']}/Patient", headers=bearer_only).status_code == 401
    key_only = {"x-api-key": main_practice["api_key"]}
    response = http.get(f"{main_practice['fhir_base']}/Patient", headers=key_only)
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    garbage = {**key_only, "Authorization": "Bearer not-a-token"}
    assert http.get(f"{main_practice['fhir_base']}/Patient", headers=garbage).status_code == 401


def test_practices_are_isolated(http: httpx.Client, main_practice: dict, task_practice: dict,
                                main_headers: dict, task_headers: dict) -> None:
    own = http.get(f"{main_practice['fhir_base']}/Patient", params={"_count": 1}, headers=main_headers)
    patient_id = own.json()["entry"][0]["resource"]["id"]
    other_key = http.get(f"{main_practice['fhir_base']}/Patient/{patient_id}",
                         headers={**main_headers, "x-api-key": task_practice["api_key"]})
    assert other_key.status_code == 403
    other_token = http.get(f"{main_practice['fhir_base']}/Patient/{patient_id}",
                           headers={**main_headers, "Authorization": task_headers["Authorization"]})
    assert other_token.status_code == 403
    other_grant = _grant(http, main_practice, api_key=task_practice["api_key"], grant_type="password",
                         username=main_practice["username"], password=main_practice["password"])
    assert other_grant.status_code == 403
    foreign_credentials = _grant(http, main_practice, grant_type="password",
                                 username=task_practice["username"], password=task_practice["password"])
    assert (foreign_credentials.status_code, foreign_credentials.json()["error"]) == (400, "invalid_grant")
    foreign_id = http.get(f"{task_practice['fhir_base']}/Patient/{patient_id}", headers=task_headers)
    assert foreign_id.status_code == 404
    assert foreign_id.json()["issue"][0]["details"]["text"] == "UnclassifiedServerFailureException"


def test_certified_practice_has_no_proprietary_api(http: httpx.Client, certified_practice: dict, main_headers: dict) -> None:
    base = f"{certified_practice['ema_base_url'].replace('/ema/', '/firm/')}/ema/fhir/v2/Patient"
    assert http.get(base, headers=main_headers).status_code == 404


def test_token_revocation_fault(sandbox: SandboxServer, http: httpx.Client, task_practice: dict) -> None:
    granted = _grant(http, task_practice, grant_type="password", username=task_practice["username"],
                     password=task_practice["password"]).json()
    headers = {"x-api-key": task_practice["api_key"], "Authorization": f"Bearer {granted['access_token']}"}
    url = f"{task_practice['fhir_base']}/Practitioner"
    assert http.get(url, headers=headers).status_code == 200
    try:
        sandbox.set_faults(task_practice["practice_id"], revoke_tokens=True)
        assert http.get(url, headers=headers).status_code == 401
        refresh = _grant(http, task_practice, grant_type="refresh_token", refresh_token=granted["refresh_token"])
        assert (refresh.status_code, refresh.json()["error"]) == (400, "invalid_grant")  # RFC 6749 §5.2
        fresh = proprietary_headers(task_practice, http)
        assert http.get(url, headers=fresh).status_code == 200
    finally:
        sandbox.clear_faults(task_practice["practice_id"])


def test_access_tokens_expire() -> None:
    world = build_world(seed=3, practices=1, patients_per_practice=5, access_token_ttl_seconds=1)
    clock = MovableTime()
    world.clock = clock.now
    with running_sandbox(world) as server, httpx.Client() as http:
        practice = server.practices[0]
        headers = proprietary_headers(practice, http)
        url = f"{practice['fhir_base']}/Organization"
        assert http.get(url, headers=headers).status_code == 200
        clock.advance(1.0)  # the token's whole lifetime: expiry is exclusive
        expired = http.get(url, headers=headers)
        assert expired.status_code == 401
        assert 'error="invalid_token"' in expired.headers["www-authenticate"]
