"""`callstream sandbox` command line: listing practices and refusing bad options with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox.cli import main

REQUIRED_KEYS = {
    "practice_id", "name", "firm_url_prefix", "api_key", "username", "password", "client_id", "client_secret",
    "called_numbers", "capabilities", "track", "fhir_base", "token_url",
}


def test_list_practices_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list-practices", "--json", "--port", "8800", "--practices", "4"]) == 0
    practices = json.loads(capsys.readouterr().out)
    assert len(practices) == 4
    for practice in practices:
        assert REQUIRED_KEYS <= set(practice)
        assert set(practice["capabilities"]) == {"fhir_task_create", "fhir_compliance_flags", "ema_booking_templates", "track"}
    certified = [p for p in practices if p["track"] == "certified"]
    assert len(certified) == 1
    assert certified[0]["certified"]["fhir_base"] == "http://127.0.0.1:8800/certified/pain-1003/fhir/r4"
    assert certified[0]["certified"]["client_id"] and "PRIVATE KEY" in certified[0]["certified"]["private_key_pem"]
    assert practices[0]["token_url"] == f"http://127.0.0.1:8800/firm/{practices[0]['firm_url_prefix']}/ema/ws/oauth2/grant"


def test_list_practices_is_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--list-practices", "--json", "--seed", "21"])
    first = capsys.readouterr().out
    main(["--list-practices", "--json", "--seed", "21"])
    assert capsys.readouterr().out == first


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--list-practices", "--fault", "pain-1001:latency_ms=-5"], "latency_ms"),
        (["--list-practices", "--fault", "pain-9999:latency_ms=5"], "unknown practices"),
        (["--list-practices", "--fault", "latency_ms=5"], "PRACTICE_ID:key=value"),
    ],
)
def test_bad_faults_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_fault_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "faults.yaml"
    good.write_text("pain-1001: {latency_ms: 20, burst_429: 3}\n", encoding="utf-8")
    assert main(["--list-practices", "--faults", str(good)]) == 0
    bad = tmp_path / "faults.json"
    bad.write_text("{not json", encoding="utf-8")
    assert main(["--list-practices", "--faults", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--port", "0"], ["--port", "70000"], ["--practices", "0"], ["--patients-per-practice", "-1"]])
def test_bad_numbers_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
