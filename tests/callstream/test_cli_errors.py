"""Every expected failure of every command is one `callstream: error:` line and exit status 2, at once.

Each case runs `callstream ...` as a person would, in its own process: a taken port, an unreachable Kafka
broker or ClickHouse, a bad file and an unknown practice. The cases run concurrently from one module
fixture (each is a short-lived process that fails early), and each test reads its own outcome.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CASE_TIMEOUT_S = 60.0
"""A case is a hang, not a slow failure, past this (under a loaded machine each still ends in seconds)."""
CONNECT_TIMEOUT_S = "1"
"""CALLSTREAM_CONNECT_TIMEOUT_S for the cases: an unreachable broker is reported after a second."""


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    expect: str
    """A fragment the one error line must hold."""


@dataclass(frozen=True)
class Outcome:
    status: int
    stdout: str
    stderr: str
    seconds: float


@dataclass(frozen=True)
class Places:
    good_tenants: Path
    misspelt_tenants: Path
    bad_number_tenants: Path
    bad_faults: Path
    taken_port: int
    closed_port: int
    work: Path


def _practice(**changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "practice_id": "pain-1001", "name": "Desert Spine", "called_numbers": ["+15125550100"],
        "base_url": "http://127.0.0.1:18080", "firm_url_prefix": "desertspine",
        "auth": {"method": "password", "credentials_ref": "env:CLI_ERRORS_CREDENTIALS"},
        "siem": {"url": "https://siem.example/hook", "secret_ref": "env:CLI_ERRORS_SIEM_SECRET"},
    }
    entry.update(changes)
    return {key: value for key, value in entry.items() if value is not None}


def _cases(at: Places) -> dict[str, Case]:
    broker = f"127.0.0.1:{at.closed_port}"
    good, port, closed = str(at.good_tenants), str(at.taken_port), str(at.closed_port)
    metrics = ("--metrics-host", "127.0.0.1", "--metrics-port")
    return {
        "worker-taken-metrics-port": Case(("worker", "--tenants", good, *metrics, port), "already in use"),
        "worker-unreachable-broker": Case(("worker", "--tenants", good, "-b", broker, *metrics, "0"), "unreachable"),
        "worker-missing-tenants": Case(("worker", "--tenants", str(at.work / "absent.yaml")), "cannot read"),
        "worker-misspelt-tenant-key": Case(("worker", "--tenants", str(at.misspelt_tenants)),
                                           "unknown key caled_numbers — did you mean called_numbers?"),
        "sinks-unreachable-broker": Case(("sinks", "run", "--only", "clickhouse", "-b", broker, *metrics, "0"),
                                         "unreachable"),
        "sinks-taken-metrics-port": Case(("sinks", "run", "--only", "clickhouse", *metrics, port), "already in use"),
        "sinks-bad-dsn": Case(("sinks", "run", "--clickhouse-dsn", "ftp://127.0.0.1/audit"), "chdb://"),
        "queue-unreachable-broker": Case(("queue", "run", "--tenants", good, "-b", broker, *metrics, "0",
                                          "--api-port", "0"), "unreachable"),
        "queue-taken-api-port": Case(("queue", "run", "--tenants", good, *metrics, "0", "--api-port", port),
                                     "already in use"),
        "queue-list-no-queue": Case(("queue", "list", "--api", f"http://127.0.0.1:{closed}"), "no review queue"),
        "audit-unreachable-clickhouse": Case(("audit", "call", "call-1", "--clickhouse-dsn",
                                              f"http://127.0.0.1:{closed}/audit"), "127.0.0.1"),
        "siem-unknown-practice": Case(("siem", "redeliver", "--practice", "nope", "--tenants", good),
                                      "no such practice 'nope'"),
        "export-unknown-practice": Case(("export", "nope", "--out", str(at.work / "out"), "--tenants", good),
                                        "no such practice 'nope'"),
        "ema-unlock-unknown-practice": Case(("ema", "--data-dir", str(at.work), "--tenants", good, "unlock", "nope"),
                                            "no such practice 'nope'"),
        "tenants-misspelt-key": Case(("tenants", "check", str(at.misspelt_tenants)), "did you mean called_numbers?"),
        "tenants-short-number": Case(("tenants", "check", str(at.bad_number_tenants)), "7-15 digits"),
        "sandbox-taken-port": Case(("sandbox", "--port", port), "already in use"),
        "sandbox-bad-fault-file": Case(("sandbox", "--list-practices", "--faults", str(at.bad_faults)),
                                       "not valid JSON"),
        "dev-status-unreachable-broker": Case(("dev", "status", "-b", broker), "unreachable"),
        "dev-up-taken-broker-port": Case(("dev", "up", "--data-dir", str(at.work / "dev"), "--broker-port", port),
                                         "already in use"),
        "replay-missing-file": Case(("replay", str(at.work / "gone.jsonl")), "gone.jsonl"),
        "bench-scale-too-small": Case(("bench", "pipeline", "--practices", "5"), "--practices"),
    }


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Places]:
    work = tmp_path_factory.mktemp("cli-errors")
    good, misspelt, bad_number = work / "tenants.yaml", work / "misspelt.yaml", work / "bad-number.yaml"
    good.write_text(yaml.safe_dump({"practices": [_practice()]}))
    misspelt_entry = _practice(called_numbers=None)
    misspelt_entry["caled_numbers"] = ["+15125550100"]
    misspelt.write_text(yaml.safe_dump({"practices": [misspelt_entry]}))
    bad_number.write_text(yaml.safe_dump({"practices": [_practice(called_numbers=["+155501"])]}))
    faults = work / "faults.json"
    faults.write_text("{not json")
    with socket.socket() as taken, socket.socket() as probe:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        probe.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
        yield Places(good, misspelt, bad_number, faults, taken.getsockname()[1], probe.getsockname()[1], work)


@pytest.fixture(scope="module")
def outcomes(places: Places) -> dict[str, Outcome]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("KAFKA_", "CLICKHOUSE_", "CALLSTREAM_"))}
    env.update(CALLSTREAM_CONNECT_TIMEOUT_S=CONNECT_TIMEOUT_S, CALLSTREAM_DATA_DIR=str(places.work / "var"))

    def run(case: Case) -> Outcome:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "callstream.cli", *case.argv], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=CASE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        return Outcome(done.returncode, done.stdout, done.stderr, time.monotonic() - started)

    cases = _cases(places)
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(cases, pool.map(run, cases.values()), strict=True))


CASE_NAMES = sorted(_cases(Places(Path("t"), Path("m"), Path("n"), Path("f"), 1, 2, Path("w"))))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_an_expected_failure_is_one_error_line_and_status_2(name: str, places: Places,
                                                           outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[name]
    expect = _cases(places)[name].expect
    lines = outcome.stderr.strip().splitlines()
    assert outcome.status == 2, f"{name}: status {outcome.status}, stderr:\n{outcome.stderr[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("callstream: error: "), f"{name}:\n{outcome.stderr[-2000:]}"
    assert expect in lines[0], f"{name}: {lines[0]!r} lacks {expect!r}"
    assert "Traceback" not in outcome.stdout
