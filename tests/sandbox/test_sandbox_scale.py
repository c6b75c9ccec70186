"""The sandbox at the seeds' scale: 2,400 practices serve in seconds, each practice's data made on first use."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from collections import Counter

import httpx

from callstream.backends import free_port
from sandbox.generator import build_world, generate_profile
from schemas.phone import is_e164
from tests.sandbox.helpers import proprietary_headers

ANCHOR = dt.date(2026, 3, 2)
FLEET = 2400
START_LIMIT_S = 60.0


def _data(world: object, practice_id: str) -> str:
    tenant = world.tenants[practice_id]  # type: ignore[attr-defined]
    return json.dumps({rtype: tenant.store.all_of(rtype) for rtype in sorted(tenant.store.types())}, sort_keys=True)


def test_a_practice_generated_on_first_use_is_the_one_generated_up_front() -> None:
    lazy = build_world(seed=7, practices=6, patients_per_practice=15, anchor=ANCHOR, generate_now=1)
    assert lazy.generated() == 1 and len(lazy.tenants) == 6
    assert lazy.describe("http://x")[5]["practice_id"] == "pain-1006" and lazy.generated() == 1
    assert lazy.tenant("pain-9999") is None and lazy.tenant_by_prefix("nowhere") is None
    late = _data(lazy, "pain-1005")  # before pain-1002..1004: the order of first uses changes nothing
    eager = build_world(seed=7, practices=6, patients_per_practice=15, anchor=ANCHOR)
    assert eager.generated() == 6
    assert late == _data(eager, "pain-1005") and _data(lazy, "pain-1003") == _data(eager, "pain-1003")
    assert lazy.tenant_by_prefix(lazy.profiles["pain-1004"].firm_url_prefix) is lazy.tenants["pain-1004"]


def test_the_fleets_practices_have_their_own_numbers_and_prefixes() -> None:
    profiles = [generate_profile(7, index) for index in range(FLEET)]
    numbers = Counter(number for profile in profiles for number in profile.called_numbers)
    assert all(count == 1 for count in numbers.values()) and all(is_e164(number) for number in numbers)
    assert len({profile.firm_url_prefix for profile in profiles}) == FLEET
    assert profiles[2].called_numbers == generate_profile(7, 2).called_numbers  # seeded, as before


def test_2400_practices_serve_within_a_minute_and_a_late_practice_answers() -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    server = subprocess.Popen([sys.executable, "-m", "sandbox", "--port", str(port), "--practices", str(FLEET),
                               "--patients-per-practice", "200"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
    try:
        while time.monotonic() - started < START_LIMIT_S:
            assert server.poll() is None, server.stdout.read().decode() if server.stdout else ""
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1.0, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        serving_after = time.monotonic() - started
        assert serving_after < START_LIMIT_S
        profile = generate_profile(7, 1998)  # pain-2999, proprietary: nothing of it is generated yet
        prefix = f"{base_url}/firm/{profile.firm_url_prefix}/ema"
        practice = {"token_url": f"{prefix}/ws/oauth2/grant", "username": profile.username,
                    "password": profile.password, "api_key": profile.api_key}
        with httpx.Client(timeout=30.0, trust_env=False) as http:
            headers = proprietary_headers(practice, http)
            patient = http.get(f"{prefix}/fhir/v2/Patient/pt-2999-000001", headers=headers)
        assert patient.status_code == 200 and patient.json()["id"] == "pt-2999-000001"
    finally:
        server.terminate()
        server.wait(timeout=15)
    line = server.stdout.read().decode().splitlines()[0] if server.stdout else ""
    assert line.startswith(f"callstream sandbox: {FLEET} practices on {base_url} (10 generated in ")
