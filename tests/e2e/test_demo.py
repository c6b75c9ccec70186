"""`callstream demo --json` (what `make demo` runs), as a subprocess: chDB allows one data directory per
process and this test session already has one open."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
