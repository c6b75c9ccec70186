"""`callstream demo --json` (what `make demo` runs), as a subprocess: chDB allows one data directory per
process and this test session already has one open."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from callstream.backends import free_port
from qa.cli import DEFAULT_PORT as QA_PORT
from tests.fixtures.pipeline import REPO

pytestmark = pytest.mark.broker
DEMO_TIMEOUT_S = 150


def test_the_demo_plays_a_morning_of_calls_and_summarises_it_as_json(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items()
           if key not in ("KAFKA_BOOTSTRAP_SERVERS", "CLICKHOUSE_DSN", "CALLSTREAM_TENANTS_FILE")}
    env["CALLSTREAM_DATA_DIR"] = str(tmp_path / "var")
    done = subprocess.run([sys.executable, "-m", "callstream.cli", "demo", "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary) >= {"calls", "appointments_booked", "tasks_created", "escalations", "blocked",
                            "dead_lettered", "audit_rows"}
    assert summary["calls"] == 13
    assert summary["appointments_booked"] >= 3, "bookings and the reschedule land in the sandbox"
    assert summary["tasks_created"] >= 3, "refills (FHIR and EMA task queue) and routed requests become tasks"
    assert summary["escalations"] >= 4 and summary["blocked"] >= 2
    assert summary["dead_lettered"] == 4, "the malformed event and the three events of the unknown number"
    assert summary["audit_rows"] > 60
    text = done.stdout
    assert "booking: epidural steroid injection" in text and "BOOKING_CONFIRMED" in text
    assert "callstream audit call call-" in text
    assert "WARNING" not in text, "every call was answered in time"
    assert summary["digest_emails"] == 3, "one digest per practice reached the demo's SMTP receiver"
    hints = [line.strip() for line in lines if "callstream audit " in line]
    assert len(hints) == 3, "audit call, audit calls, audit pdf"
    shell_env = {key: value for key, value in env.items() if key != "CALLSTREAM_DATA_DIR"}  # the hint names it
    for hint in hints:  # every hint runs as printed, from the project directory
        ran = subprocess.run(["bash", "-c", hint], cwd=REPO, env=shell_env, capture_output=True, text=True,
                             timeout=60, check=False)
        assert ran.returncode == 0 and "call-" in ran.stdout, (hint, ran.stderr[-2000:])
    assert summary["qa_url"] == f"http://127.0.0.1:{QA_PORT}/" and summary["pdf_bytes"] > 1000
    [serve] = [line.strip() for line in lines if " qa serve " in line]
    call_id = re.search(r"audit call (call-[0-9a-f]+)", text).group(1)  # type: ignore[union-attr]
    password = (tmp_path / "var" / "qa-demo-password").read_text().strip()
    assert_the_qa_view_opens_as_printed(serve, shell_env, call_id, password, tmp_path / "qa-serve.log")


def assert_the_qa_view_opens_as_printed(serve: str, env: dict[str, str], call_id: str, password: str,
                                        log: Path) -> None:
    """The printed `qa serve` runs from the project directory (on a free port rather than the default) and a
    demo user sees the example call."""
    port = free_port()
    with log.open("wb") as out:
        view = subprocess.Popen(["bash", "-c", f"{serve} --port {port}"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                assert view.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/healthz").status_code == 200:
                        break
                time.sleep(0.2)
            token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)  # type: ignore[union-attr]
            signed_in = client.post("/login", data={"csrf": token, "username": "demo-pain-1002", "password": password})
            assert signed_in.status_code == 303 and call_id in client.get(f"/calls/{call_id}").text
    finally:
        view.terminate()
        view.wait(30)
