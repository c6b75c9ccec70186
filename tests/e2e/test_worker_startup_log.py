"""A worker's start-up, as a person reads it at the default level: what runs, which practices, where its
metrics are; none of Faust's table listings, no library noise."""

from __future__ import annotations

from tests.fixtures.pipeline import WorkerProcess

MOST_STARTUP_LINES = 8


def test_the_worker_says_what_runs_and_nothing_else(pipeline_worker: WorkerProcess) -> None:
    text = pipeline_worker.log_text()
    startup, marker, _ = text.partition("metrics on http://")
    assert marker, f"no metrics line in the worker's log:\n{text[:3000]}"
    lines = startup.splitlines()
    assert len(lines) <= MOST_STARTUP_LINES, "\n".join(lines)
    assert any("INFO callstream.worker: callstream worker callstream-worker: 3 practices (pain-1001, pain-1002, "
               "pain-1003) from " in line for line in lines), "\n".join(lines)
    assert lines[-1].split()[2:4] == ["INFO", "callstream.worker:"]  # the metrics line itself, not a WARNING
    noise = ("[^-", "Ignoring arguments with no chdb meaning", "INFO faust.", "INFO mode.", "INFO aiokafka")
    noisy = [line for line in text.splitlines() if any(fragment in line for fragment in noise)]
    assert not noisy, "\n".join(noisy[:20])
