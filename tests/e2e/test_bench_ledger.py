"""`callstream bench ledger` with a few hundred entries, as a subprocess with its own broker and workers: the
benchmark behind the ledger figures of docs/benchmarks.md must keep running and keep its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.pipeline import REPO

pytestmark = pytest.mark.broker
BENCH_TIMEOUT_S = 240


def test_the_ledger_benchmark_prints_its_figures_as_json(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP_SERVERS"}
    env["CALLSTREAM_DATA_DIR"] = str(tmp_path / "var")
    done = subprocess.run([sys.executable, "-m", "callstream.cli", "bench", "ledger", "--entries", "300", "--pairs", "1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert (figures["entries"], figures["live_entries"], figures["tombstones"]) == (300, 30, 270)
    assert figures["after_log_records"] == 570, "Tansu keeps every entry and tombstone (no compaction)"
    assert {run["arm"] for run in figures["runs"]} == {"before", "after", "steady", "compacted", "empty"}
    for arm in ("before", "after", "steady", "compacted", "empty"):
        assert figures[f"{arm}_ready_s"] > 0 and figures[f"{arm}_rss_mb"] > 0, arm
    assert "sweep: 270 tombstones" in done.stderr
