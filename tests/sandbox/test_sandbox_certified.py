"""Certified track over real HTTP: SMART discovery, private_key_jwt, read/search only, Bulk $export."""

from __future__ import annotations

import json
import time

import httpx
import jwt

from tests.sandbox.helpers import certified_headers, certified_token_request, client_assertion, entries


def test_smart_configuration(http: httpx.Client, certified_practice: dict) -> None:
    config = http.get(certified_practice["certified"]["smart_configuration_url"]).json()
    assert config["token_endpoint"] == certified_practice["certified"]["token_url"]
    assert "client_credentials" in config["grant_types_supported"]
    assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert "RS384" in config["token_endpoint_auth_signing_alg_values_supported"]
    assert http.get(certified_practice["certified"]["smart_configuration_url"] + ".json").status_code == 200


def test_private_key_jwt_checks(http: httpx.Client, certified_practice: dict) -> None:
    good = client_assertion(certified_practice)
    issued = certified_token_request(http, certified_practice, good)
    assert issued.status_code == 200 and issued.json()["expires_in"] == 300
    assert certified_token_request(http, certified_practice, good).status_code == 401  # jti replay
    bad = {
        "aud": client_assertion(certified_practice, aud="https://elsewhere.example/token"),
        "iss": client_assertion(certified_practice, iss="someone-else"),
        "expired": client_assertion(certified_practice, exp=int(time.time()) - 120),
        "too-long": client_assertion(certified_practice, exp=int(time.time()) + 3600),
        "hs256": jwt.encode({"iss": "x", "sub": "x", "aud": "x", "exp": int(time.time()) + 60, "jti": "1"}, "k" * 32, algorithm="HS256"),
        "garbage": "not.a.jwt",
    }
    for label, assertion in bad.items():
        response = certified_token_request(http, certified_practice, assertion)
        assert (response.status_code, response.json()["error"]) == (401, "invalid_client"), label
    assert certified_token_request(http, certified_practice, client_assertion(certified_practice), scope="patient/*.read").status_code == 400
    assert certified_token_request(http, certified_practice, client_assertion(certified_practice), scope="system/Appointment.rs").status_code == 400
    wrong_type = http.post(certified_practice["certified"]["token_url"], data={"grant_type": "password", "username": "a", "password": "b"})
    assert wrong_type.status_code == 400 and wrong_type.json()["error"] == "unsupported_grant_type"


def test_read_and_search_only(http: httpx.Client, certified_practice: dict, main_headers: dict) -> None:
    base = certified_practice["certified"]["fhir_base"]
    headers = certified_headers(http, certified_practice)
    bundle = http.get(f"{base}/Patient", params={"_count": 5}, headers=headers).json()
    patient = entries(bundle)[0]
    prefix = patient["name"][0]["family"][:3]
    partial = entries(http.get(f"{base}/Patient", params={"family": prefix}, headers=headers).json())
    assert patient["id"] in [p["id"] for p in partial]
    assert http.get(f"{base}/Patient/{patient['id']}", headers=headers).status_code == 200
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        target = f"{base}/Patient" if method == "POST" else f"{base}/Patient/{patient['id']}"
        assert http.request(method, target, json=patient, headers=headers).status_code == 405, method
    assert http.get(f"{base}/Flag", headers=headers).status_code == 404
    hidden = entries(http.get(f"{base}/Observation", params={"code": "pdmp-check"}, headers=headers).json())
    assert hidden == []
    assert http.get(f"{base}/Patient", headers={"Authorization": main_headers["Authorization"]}).status_code == 403
    assert http.get(f"{base}/Patient").status_code == 401
    metadata = http.get(f"{base}/metadata").json()
    assert metadata["resourceType"] == "CapabilityStatement"


def test_scopes_limit_access(http: httpx.Client, certified_practice: dict) -> None:
    base = certified_practice["certified"]["fhir_base"]
    headers = certified_headers(http, certified_practice, scope="system/Patient.rs")
    assert http.get(f"{base}/Patient", params={"_count": 1}, headers=headers).status_code == 200
    assert http.get(f"{base}/Observation", headers=headers).status_code == 403


def _export(http: httpx.Client, url: str, headers: dict, **params: str) -> httpx.Response:
    return http.get(url, params=params, headers={**headers, "Prefer": "respond-async", "Accept": "application/fhir+json"})


def test_bulk_export_flow(http: httpx.Client, certified_practice: dict) -> None:
    base = certified_practice["certified"]["fhir_base"]
    headers = certified_headers(http, certified_practice)
    kickoff = _export(http, f"{base}/Patient/$export", headers, _type="Patient,Observation")
    assert kickoff.status_code == 202
    status_url = kickoff.headers["content-location"]
    first = http.get(status_url, headers=headers)
    assert first.status_code == 202 and first.headers["x-progress"]
    manifest = http.get(status_url, headers=headers)
    assert manifest.status_code == 200
    body = manifest.json()
    assert body["requiresAccessToken"] is True and body["error"] == []
    counts: dict[str, int] = {}
    for output in body["output"]:
        assert output["count"] <= 1000
        lines = http.get(output["url"], headers=headers).text.splitlines()
        assert len(lines) == output["count"]
        assert all(json.loads(line)["resourceType"] == output["type"] for line in lines)
        counts[output["type"]] = counts.get(output["type"], 0) + output["count"]
    assert counts["Patient"] == 200
    assert counts["Observation"] > 1000 and len([o for o in body["output"] if o["type"] == "Observation"]) >= 2
    assert http.get(body["output"][0]["url"]).status_code == 401
    assert http.delete(status_url, headers=headers).status_code == 202
    assert http.get(status_url, headers=headers).status_code == 404
    assert http.get(body["output"][0]["url"], headers=headers).status_code == 404


def test_group_and_system_export(http: httpx.Client, certified_practice: dict) -> None:
    base = certified_practice["certified"]["fhir_base"]
    headers = certified_headers(http, certified_practice)
    group_id = f"grp-{certified_practice['practice_id'].split('-')[1]}-chronic-opioid"
    group = http.get(f"{base}/Group/{group_id}", headers=headers).json()
    members = {m["entity"]["reference"].split("/")[1] for m in group["member"]}
    kickoff = _export(http, f"{base}/Group/{group_id}/$export", headers, _type="Patient", _outputFormat="application/fhir+ndjson")
    status_url = kickoff.headers["content-location"]
    http.get(status_url, headers=headers)
    manifest = http.get(status_url, headers=headers).json()
    exported = {json.loads(line)["id"] for o in manifest["output"] for line in http.get(o["url"], headers=headers).text.splitlines()}
    assert exported == members
    system = _export(http, f"{base}/$export", headers, _type="Practitioner", _since="2000-01-01T00:00:00Z")
    assert system.status_code == 202


def test_bulk_export_refusals(http: httpx.Client, certified_practice: dict) -> None:
    base = certified_practice["certified"]["fhir_base"]
    headers = certified_headers(http, certified_practice)
    csv = _export(http, f"{base}/$export", headers, _outputFormat="csv", _since="2022-10-01T00:00:00")
    assert csv.status_code == 400 and "Invalid Tenant" in csv.json()["issue"][0]["diagnostics"]
    no_prefer = http.get(f"{base}/Patient/$export", headers=headers)
    assert no_prefer.status_code == 400
    assert _export(http, f"{base}/Patient/$export", headers, _type="Appointment").status_code == 400
    assert _export(http, f"{base}/Patient/$export", headers, _since="yesterday").status_code == 400
    assert _export(http, f"{base}/Patient/$export", headers, patient="Patient/1").status_code == 400
    assert _export(http, f"{base}/Group/no-such-group/$export", headers).status_code == 404
    assert http.get(f"{base}/$export-status/{'0' * 32}", headers=headers).status_code == 404
