"""`callstream bench pipeline` end to end at a small load, as a subprocess with its own broker, sandbox and
worker: the benchmark the README's figures come from must keep running and keep its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.pipeline import REPO

pytestmark = pytest.mark.broker
BENCH_TIMEOUT_S = 180


def test_the_pipeline_benchmark_prints_its_figures_as_json(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP_SERVERS"}
    env["CALLSTREAM_DATA_DIR"] = str(tmp_path / "var")
    done = subprocess.run(
        [sys.executable, "-m", "callstream.cli", "bench", "pipeline", "--burst-calls", "100", "--rate", "40",
         "--seconds", "5"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["burst_events"] == 200
    for key in ("events_per_s", "p50_ms", "p99_ms", "baseline_events_per_s", "pipeline_p50_ms", "pipeline_p99_ms",
                "modmed_request_ms", "worker_cpu_ms_per_event", "worker_cpu_ms_per_event_mixed"):
        assert figures[key] > 0, key
    assert figures["ratio"] == pytest.approx(figures["events_per_s"] / figures["baseline_events_per_s"], abs=0.002)
    assert figures["p50_ms"] <= figures["p99_ms"] and figures["pipeline_p50_ms"] <= figures["pipeline_p99_ms"]
    assert 30 <= figures["latency_load_events_per_s"] <= 45
    # An identified caller's call: patient search, Flag and Observation searches, one Task POST (the
    # write-ahead ledger spares the "did it land?" search); a token request may add a fraction.
    assert 4 <= figures["modmed_requests_per_call"] < 4.5
    assert "latency with ModMed calls at" in done.stderr and "worker CPU" in done.stderr
    # The fault phase (issue 17): every turn at a faulty practice heard something within the silence limit,
    # and the healthy practice's answers are measured with and without the faults beside it.
    for key in ("first_reply_p99_ms_faults", "healthy_p99_ms_during_faults", "healthy_p99_ms_no_faults"):
        assert figures[key] > 0, key
    assert figures["silent_turns"] == 0
    assert figures["fault_turns"] == 20 * (3 + 4)
