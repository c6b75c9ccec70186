"""The pipeline benchmark's load (devkit.bench_pipeline): how calls arrive, and its percentile."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from devkit import bench_pipeline
from devkit.cast import Script


def test_the_latency_load_keeps_each_callers_steps_in_order_and_apart() -> None:
    scripts = [Script("+15125550100", now=datetime(2026, 3, 3, 15, tzinfo=UTC)).started().intent("UNKNOWN").ended()
               for _ in range(60)]
    plan = bench_pipeline._interleaved(scripts, rate=200)
    assert sorted(id(e) for e in plan) == sorted(id(e) for s in scripts for e in s.events)
    for script in scripts:
        positions = [plan.index(event) for event in script.events]
        assert positions == sorted(positions), "a call's events keep their order"
    first_steps = [plan.index(script.events[0]) for script in scripts]
    assert max(first_steps) - min(first_steps) > len(plan) // 2, "calls start across the whole load"
    assert bench_pipeline._interleaved(scripts, rate=200) == plan, "the arrival pattern is fixed, so runs compare"
    assert bench_pipeline._percentile([float(n) for n in range(1, 101)], 99) == pytest.approx(99.01)
