"""Every expected failure of every command is one `callstream: error:` line and exit status 2, at once.

Each case runs `callstream ...` as a person would, in its own process: a taken port, an unreachable Kafka
broker or ClickHouse, a bad file and an unknown practice. The cases run concurrently from one module
fixture (each is a short-lived process that fails early), and each test reads its own outcome. A case
that also sets a service's variable to a wrong place shows the flag given wins over it: its error names
the flag's place. The shared connection flags (callstream/cli_options.py) are listed, with their variable,
in the --help of every command that talks to Kafka, ClickHouse or the sandbox.
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

from callstream.cli import main as callstream_main

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
    env: tuple[tuple[str, str], ...] = ()
    """Variables set for this case only (a flag of the case overrides them)."""
    stdin: str = ""


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
        **_later_commands(at),
    }


def _later_commands(at: Places) -> dict[str, Case]:
    """qa, digest, golive, intake, audit pdf and demo; each `…-flag-over-variable` case sets the variables to
    wrong places (port 1, an absent file) and gives the flags: the error names the flag's place."""
    good, port, closed = str(at.good_tenants), str(at.taken_port), at.closed_port
    flagged_dsn, flagged_address = f"http://127.0.0.1:{closed}/audit", f"127.0.0.1:{closed}"
    wrong = (("CLICKHOUSE_DSN", "http://127.0.0.1:1/audit"), ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1"),
             ("CALLSTREAM_TENANTS_FILE", str(at.work / "absent.yaml")))
    users_dir, golive = at.work / "qa-data", str(at.work / "golive")
    return {
        "qa-serve-taken-port": Case(("qa", "serve", "--tenants", good, "--port", port), "already in use"),
        "qa-serve-flag-over-variable": Case(("qa", "serve", "--tenants", good, "--port", "0", "--clickhouse-dsn",
                                             flagged_dsn, "--data-dir", str(at.work / "qa")), flagged_address, wrong),
        "qa-adduser-unreadable-users-file": Case(
            ("qa", "adduser", "ana", "--practice", "pain-1001", "--password-stdin", "--data-dir", str(users_dir)),
            f"{users_dir / 'qa-users.json'}: Is a directory", stdin="a long enough password\n"),
        "digest-no-smtp-relay": Case(("digest", "send", "--tenants", good), "no SMTP relay configured"),
        "digest-flag-over-variable": Case(("digest", "send", "--tenants", good, "--clickhouse-dsn", flagged_dsn,
                                           "--data-dir", str(at.work / "digest")), flagged_address,
                                          (*wrong, ("CALLSTREAM_SMTP_HOST", "127.0.0.1"))),
        "golive-check-unknown-practice": Case(("golive", "check", "--practice", "nope", "--data-dir", golive),
                                              "practice nope is not in the mirror"),
        "golive-promote-unknown-practice": Case(("golive", "promote", "nope", "--to", "read_only", "--tenants", good,
                                                 "--data-dir", golive), "no practice nope"),
        "golive-promote-flag-over-variable": Case(("golive", "promote", "pain-1001", "--to", "write", "--tenants", good,
                                                   "--clickhouse-dsn", flagged_dsn, "--data-dir", golive),
                                                  flagged_address, wrong),
        "intake-unknown-practice": Case(("intake", "sync", "--practice", "nope", "--tenants", good),
                                        "no such practice 'nope'"),
        "intake-flag-over-variable": Case(("intake", "sync", "--tenants", good, "-b", flagged_address),
                                          f"Kafka broker at {flagged_address} is unreachable", wrong),
        "audit-pdf-no-tenants": Case(("audit", "pdf", "call-1", "--out", str(at.work / "call.pdf")),
                                     "the PDF names the practice"),
        "audit-calls-flag-over-variable": Case(("audit", "calls", "--practice", "pain-1001", "--clickhouse-dsn",
                                                flagged_dsn, "--data-dir", str(at.work / "audit")),
                                               flagged_address, wrong),
        "demo-flag-over-variable": Case(("demo", "-b", flagged_address, "--data-dir", str(at.work / "demo")),
                                        f"Kafka broker at {flagged_address} is unreachable", wrong),
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
    (work / "qa-data" / "qa-users.json").mkdir(parents=True)  # a directory where the users file should be
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
        done = subprocess.run([sys.executable, "-m", "callstream.cli", *case.argv], env={**env, **dict(case.env)},
                              cwd=REPO, capture_output=True, text=True, timeout=CASE_TIMEOUT_S, input=case.stdin)
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


SHARED_FLAGS = {  # flag → the variable its help names as the default
    "--bootstrap-servers": "$KAFKA_BOOTSTRAP_SERVERS", "--clickhouse-dsn": "$CLICKHOUSE_DSN",
    "--data-dir": "$CALLSTREAM_DATA_DIR", "--tenants": "$CALLSTREAM_TENANTS_FILE",
    "--log-level": "$CALLSTREAM_LOG_LEVEL", "--log-format": "$CALLSTREAM_LOG_FORMAT",
}
SERVICES = ("--bootstrap-servers", "--clickhouse-dsn", "--data-dir", "--tenants")
STORE = ("--clickhouse-dsn", "--data-dir", "--tenants")


@pytest.mark.parametrize(("command", "flags"), [
    (("qa", "serve"), (*SERVICES, "--log-level", "--log-format")),
    (("qa", "adduser"), ("--data-dir",)),
    (("digest", "send"), STORE),
    (("golive", "check"), ("--data-dir",)),
    (("golive", "promote"), SERVICES),
    (("intake", "sync"), ("--bootstrap-servers", "--tenants", "--log-level", "--log-format")),
    (("audit", "call"), STORE),
    (("audit", "calls"), STORE),
    (("audit", "pdf"), STORE),
    (("demo",), ("--bootstrap-servers", "--clickhouse-dsn", "--data-dir")),
], ids=" ".join)
def test_help_lists_the_shared_flags_with_their_variables(command: tuple[str, ...], flags: tuple[str, ...],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        callstream_main([*command, "--help"])
    shown = capsys.readouterr().out
    assert exited.value.code == 0
    for flag in flags:
        assert flag in shown and SHARED_FLAGS[flag] in shown, f"{' '.join(command)} --help lacks {flag}:\n{shown}"
    if "--bootstrap-servers" in flags:
        assert "-b SERVERS, --bootstrap-servers SERVERS" in shown
