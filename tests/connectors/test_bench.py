"""`callstream bench fhir-rate`: the measurement and a short real run (the 65 s run is a benchmark, not a test)."""

from __future__ import annotations

import json

import pytest

from callstream.errors import ConfigError
from devkit.bench_fhir import main, window_counts
from tests.fixtures.sandbox import SandboxServer


def test_window_counts_final_window_and_worst_rolling_window() -> None:
    sends = [62.0, 0.0, 1.0, 2.0, 3.0, 50.0, 61.0]
    final, worst = window_counts(sends, end=100.0)
    assert final == 3  # 50, 61 and 62 fall in the final window [40, 100)
    assert worst == 5  # [0, 60) holds 0, 1, 2, 3 and 50
    assert window_counts([], end=10.0) == (0, 0)


def test_short_run_prints_the_json_result_last(private_sandbox: SandboxServer, capsys: pytest.CaptureFixture[str]) -> None:
    practice = private_sandbox.practice(track="proprietary", fhir_task_create=True)
    assert main(["fhir-rate", "--base-url", private_sandbox.base_url, "--practice", practice["practice_id"],
                 "--seconds", "1.5", "--concurrency", "8"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["limit"] == practice["rate_limit_per_minute"] and result["http_429"] == 0
    assert result["server_status_429"] == 0 and result["total_calls"] >= 10
    assert result["max_calls_in_any_60s"] <= result["limit"]
    assert "shorter than the 60s window" in captured.err and "sbx_" not in captured.out + captured.err
    with pytest.raises(ConfigError):
        main(["fhir-rate", "--base-url", private_sandbox.base_url, "--practice", "pain-9999", "--seconds", "1"])
