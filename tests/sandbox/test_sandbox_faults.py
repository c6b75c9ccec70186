"""Fault injection and the rate limit, over real HTTP, plus the limiter's pacing guarantee."""

from __future__ import annotations

import logging

import httpx
import pytest

from sandbox.app import create_app
from sandbox.faults import FaultError, PracticeFaults, build_faults, merge_assignments, parse_fault_assignment
from sandbox.generator import build_world
from sandbox.ratelimit import SlidingWindowLimiter
from tests.fixtures.sandbox import SandboxServer, running_sandbox
from tests.sandbox.helpers import proprietary_headers


def test_injected_latency_5xx_and_bursts(sandbox: SandboxServer, http: httpx.Client, task_practice: dict) -> None:
    pid = task_practice["practice_id"]
    headers = proprietary_headers(task_practice, http)
    url = f"{task_practice['fhir_base']}/Organization"
    try:
        sandbox.set_faults(pid, latency_ms=300)
        delayed = sandbox.stats(pid)["injected_latency_ms"]
        assert http.get(url, headers=headers).status_code == 200
        assert sandbox.stats(pid)["injected_latency_ms"] - delayed == 300  # the response waited out the fault
        sandbox.set_faults(pid, error_5xx_ratio=1.0)
        failed = http.get(url, headers=headers)
        assert failed.status_code == 500 and failed.json()["issue"][0]["details"]["text"] == "HTTP_500_INTERNAL_ERROR"
        before = sandbox.stats(pid)
        sandbox.set_faults(pid, burst_429=2)
        assert [http.get(url, headers=headers).status_code for _ in range(3)] == [429, 429, 200]
        after = sandbox.stats(pid)
        assert after["status_429"] - before["status_429"] == 2
        assert after["calls"] - before["calls"] == 3 and after["status_5xx"] >= 1
    finally:
        sandbox.clear_faults(pid)


def test_write_committed_but_response_lost(sandbox: SandboxServer, http: httpx.Client, task_practice: dict) -> None:
    pid = task_practice["practice_id"]
    headers = proprietary_headers(task_practice, http)
    patient = "pt-1002-000077"
    task = {"resourceType": "Task", "status": "requested", "intent": "order", "for": {"reference": f"Patient/{patient}"},
            "code": {"coding": [{"system": "https://callstream.dev/fhir/CodeSystem/task-kind", "code": "callback"}]},
            "identifier": [{"system": "https://callstream.dev/fhir/NamingSystem/call-id", "value": "call-lost-response"}]}
    try:
        sandbox.set_faults(pid, error_5xx_after_write_ratio=1.0)
        assert http.post(f"{task_practice['fhir_base']}/Task", json=task, headers=headers).status_code == 500
    finally:
        sandbox.clear_faults(pid)
    written = http.get(f"{task_practice['fhir_base']}/Task", params={"identifier": "call-lost-response"}, headers=headers).json()
    assert written["total"] == 1


def test_admin_refuses_malformed_faults(sandbox: SandboxServer, task_practice: dict) -> None:
    url = f"{sandbox.base_url}/_admin/practices/{task_practice['practice_id']}/faults"
    assert httpx.put(url, json={"latency_ms": -1}).status_code == 422
    assert httpx.put(url, json={"explode": True}).status_code == 422
    assert httpx.put(url, content=b"{nope").status_code == 422
    assert httpx.put(f"{sandbox.base_url}/_admin/practices/nope/faults", json={}).status_code == 404
    assert httpx.get(url).json()["latency_ms"] == 0
    settings = f"{sandbox.base_url}/_admin/practices/{task_practice['practice_id']}/settings"
    assert httpx.put(settings, json={"rate_limit_per_minute": 0}).status_code == 422
    assert httpx.put(settings, json={"colour": "red"}).status_code == 422
    assert httpx.get(settings).json()["rate_limit_per_minute"] == task_practice["rate_limit_per_minute"]


def test_access_log_carries_no_phi(caplog: pytest.LogCaptureFixture) -> None:
    world = build_world(seed=5, practices=1, patients_per_practice=3)
    patient = world.tenants["pain-1001"].store.all_of("Patient")[0]
    family, birth = patient["name"][0]["family"], patient["birthDate"]
    caplog.set_level(logging.INFO, logger="sandbox.access")
    with running_sandbox(world) as server, httpx.Client() as http:
        practice = server.practices[0]
        headers = proprietary_headers(practice, http)
        found = http.get(f"{practice['fhir_base']}/Patient", params={"family": family, "birthdate": birth}, headers=headers)
        assert found.json()["total"] >= 1
        http.get(f"{practice['fhir_base']}/Patient/{patient['id']}", headers=headers)
    access = [r.getMessage() for r in caplog.records if r.name == "sandbox.access"]
    assert any("/Patient" in line for line in access)
    assert not any(family in line or birth in line or patient["id"] in line or practice["password"] in line for line in access)


def test_rate_limit_returns_429_with_retry_after() -> None:
    world = build_world(seed=5, practices=1, patients_per_practice=3)
    with running_sandbox(world) as server, httpx.Client() as http:
        practice = server.practices[0]
        server.update_settings(practice["practice_id"], rate_limit_per_minute=5)
        headers = proprietary_headers(practice, http)  # call 1
        codes = [http.get(f"{practice['fhir_base']}/Organization", headers=headers).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 200, 429]
        refused = http.get(f"{practice['fhir_base']}/Organization", headers=headers)
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
        assert server.stats(practice["practice_id"])["status_429"] == 2


def test_sliding_window_admits_a_careful_client() -> None:
    now = [0.0]
    limiter = SlidingWindowLimiter(clock=lambda: now[0])
    for call in range(3 * 950):
        now[0] = call * (60.0 / 950)
        assert limiter.try_acquire(1000) is None
    burst = SlidingWindowLimiter(clock=lambda: now[0])
    assert all(burst.try_acquire(1000) is None for _ in range(1000))
    assert burst.try_acquire(1000) == 60
    now[0] += 59.5
    assert burst.try_acquire(1000) == 1
    now[0] += 0.6
    assert burst.try_acquire(1000) is None


def test_fault_specifications_are_validated() -> None:
    assert parse_fault_assignment("pain-1001:latency_ms=250") == ("pain-1001", "latency_ms", "250")
    merged = merge_assignments({}, ["pain-1001:latency_ms=250", "pain-1001:screen_login_failure=true"])
    assert merged["pain-1001"] == PracticeFaults(latency_ms=250, screen_login_failure=True)
    for bad in ("latency_ms=5", "pain-1001:latency_ms", ":x=1"):
        with pytest.raises(FaultError):
            parse_fault_assignment(bad)
    with pytest.raises(FaultError, match="error_5xx_ratio"):
        build_faults({"pain-1001": {"error_5xx_ratio": 2}})
    with pytest.raises(FaultError):
        build_faults({"pain-1001": {"unknown": 1}})
    with pytest.raises(FaultError):
        build_faults(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_faults_given_at_start_apply_from_the_first_call() -> None:
    world = build_world(seed=5, practices=2, patients_per_practice=3)
    start_faults = {"pain-1001": PracticeFaults(burst_429=1)}
    with running_sandbox(world, faults=start_faults) as server, httpx.Client() as http:
        first, second = server.practices
        refused = http.post(first["token_url"], headers={"x-api-key": first["api_key"]},
                            data={"grant_type": "password", "username": first["username"], "password": first["password"]})
        assert refused.status_code == 429
        assert proprietary_headers(first, http)["Authorization"].startswith("Bearer ")
        assert proprietary_headers(second, http)["Authorization"].startswith("Bearer ")
    with pytest.raises(ValueError, match="unknown practice"):
        create_app(world, {"pain-4242": PracticeFaults(latency_ms=1)})
