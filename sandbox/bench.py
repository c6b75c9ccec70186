"""Benchmark of the sandbox's timing targets; prints figures, asserts nothing.

    python -m sandbox.bench [--patients 1000] [--requests 200]

Targets: generating a 1,000-patient practice < 2 s; a default 3-practice server healthy
within a few seconds; sandbox request overhead small next to a real tenant's latency.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import time

import httpx

from callstream.backends import free_port
from sandbox.generator import build_tenant, generate_profile


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"p50 {statistics.median(ordered) * 1000:6.1f} ms  p95 {p95 * 1000:6.1f} ms"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.bench")
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args(argv)

    anchor = dt.datetime.now(dt.UTC).date()
    for index in range(3):
        started = time.perf_counter()
        profile = generate_profile(7, index)
        tenant = build_tenant(profile, 7, args.patients, anchor)
        elapsed = time.perf_counter() - started
        resources = sum(tenant.store.count(t) for t in tenant.store.types())
        print(f"generate {profile.practice_id} ({profile.track:11}): {elapsed:5.2f} s  "
              f"{resources} resources, {len(tenant.slots.slots)} slots  (target < 2 s)")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "sandbox", "--port", str(port),
                               "--patients-per-practice", str(args.patients)], stdout=subprocess.DEVNULL)
    try:
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
            if server.poll() is not None:
                print("server exited during start-up")
                return 1
        print(f"server healthy after {time.perf_counter() - started:5.2f} s  (3 practices; target: a few seconds)")
        practice = httpx.get(f"{base}/_admin/practices").json()[0]
        with httpx.Client() as client:
            token = client.post(practice["token_url"], headers={"x-api-key": practice["api_key"]}, data={
                "grant_type": "password", "username": practice["username"], "password": practice["password"]}).json()
            headers = {"x-api-key": practice["api_key"], "Authorization": f"Bearer {token['access_token']}"}
            for label, path, params in (
                ("Patient search family+birthdate", "Patient", {"family": "Smith", "birthdate": "1960-01-01"}),
                ("Slot search esi (all weeks)", "Slot", {"appointment-type": "esi"}),
                ("Flag search by patient", "Flag", {"patient": "pt-1001-000010"}),
            ):
                samples = []
                for _ in range(args.requests):
                    began = time.perf_counter()
                    client.get(f"{practice['fhir_base']}/{path}", params=params, headers=headers).raise_for_status()
                    samples.append(time.perf_counter() - began)
                print(f"{label:34} {_percentiles(samples)}  over {args.requests} calls")
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
