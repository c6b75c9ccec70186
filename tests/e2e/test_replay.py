"""`callstream replay FILE` against the running pipeline: scripted calls paced on their replies, and a bad
script refused before anything is published."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devkit.cast import PracticeCast, Script, booking
from tests.fixtures.pipeline import REPO, WorkerProcess

pytestmark = pytest.mark.broker


def replay(script: Path, bootstrap: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CALLSTREAM_LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "callstream.cli", "replay", str(script)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=90, check=False)


def test_replay_plays_scripted_calls_as_the_telephony_side_would(
    tmp_path: Path, pipeline_broker: str, pipeline_worker: WorkerProcess, pipeline_cast: dict[str, PracticeCast],
) -> None:
    cast = pipeline_cast["pain-1002"]
    calls = [booking(cast, cast.plain[4], "trigger-point"),
             Script(cast.called_number).started().intent("GENERAL_QUESTION").ended()]
    script = tmp_path / "morning.jsonl"
    script.write_text("".join(event.model_dump_json() + "\n" for call in calls for event in call.events))
    done = replay(script, pipeline_broker)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "replayed 2 calls (8 events)" in done.stdout
    # Offer, confirmation and the message reply; a slow turn may add hold messages (marked "while waiting").
    answers = sorted(line.split()[1].rstrip(":") for line in done.stdout.splitlines()
                     if line.startswith("  heard ") and "(while waiting)" not in line)
    assert len(answers) == 3, done.stdout
    assert answers[0] == "BOOKING_CONFIRMED" and answers[1].startswith("MESSAGE_FORWARDED"), done.stdout
    assert answers[2] == "OFFER_SLOTS", done.stdout
    received = re.search(r"(\d+) replies received, 0 waits timed out", done.stdout)
    assert received is not None and int(received.group(1)) >= 3, done.stdout


def test_a_malformed_script_is_refused_with_its_line_and_nothing_is_published(
    tmp_path: Path, pipeline_broker: str, pipeline_cast: dict[str, PracticeCast],
) -> None:
    cast = pipeline_cast["pain-1002"]
    good = Script(cast.called_number).started().events[0].model_dump_json()
    bad = good.replace('"call_started"', '"call_exploded"').replace(cast.called_number, "+1555 Smith")
    script = tmp_path / "broken.jsonl"
    script.write_text(f"{good}\n{bad}\n")
    done = replay(script, pipeline_broker)
    assert done.returncode == 2
    assert f"{script}:2:" in done.stderr and "invalid CallEvent" in done.stderr
    assert "Smith" not in done.stderr, "values of the script never reach the error"
    assert "replayed" not in done.stdout


def test_the_docs_example_calls_a_number_no_practice_owns_and_the_replay_says_so_at_once(
    tmp_path: Path, pipeline_broker: str, pipeline_worker: WorkerProcess,
) -> None:
    example = re.search(r"```jsonl\n(.*?)```", (REPO / "docs" / "events.md").read_text(), re.DOTALL)
    assert example is not None
    script = tmp_path / "example.jsonl"
    script.write_text(example.group(1))
    started = time.monotonic()
    done = replay(script, pipeline_broker)
    assert time.monotonic() - started < 30, "every event was dead-lettered: nothing to wait for"
    assert done.returncode == 1, done.stderr[-2000:]
    assert ("dead-lettered: unknown practice (called number +15125550100 matches no practice in the tenant "
            "directory) (events seq 0, 1, 2, 3, 4)") in done.stdout
    assert "heard  TRANSFER_TO_STAFF (x" in done.stdout, "each dead-lettered event hands the caller to staff"
    assert "0 waits timed out; 1 with dead-lettered events" in done.stdout
