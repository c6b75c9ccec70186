"""Child processes of the demo and the benchmark: the sandbox and a worker, always stopped.

Each is started as `callstream` would run it in production (its own process), waited for through its
health endpoint, and stopped with SIGTERM, a bounded wait, then SIGKILL, so nothing outlives the caller.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from callstream.backends import free_port
from callstream.errors import ServiceUnavailableError

SERVICE_TIMEOUT_S = 60.0


@contextlib.contextmanager
def sandbox_process(run_dir: Path, *, seed: int, patients: int, practices: int = 3,
                    extra_args: tuple[str, ...] = ()) -> Iterator[str]:
    """`python -m sandbox` on a free 127.0.0.1 port (``extra_args`` e.g. a mirror); yields its base URL."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "sandbox", "--port", str(port), "--seed", str(seed),
               "--patients-per-practice", str(patients), "--practices", str(practices), *extra_args]
    with (run_dir / "sandbox.log").open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: answers(f"{base_url}/healthz"), f"the sandbox (log: {run_dir / 'sandbox.log'})",
                   lambda: process.poll() is not None)
        yield base_url
    finally:
        stop(process)


@contextlib.contextmanager
def worker_process(bootstrap: str, tenants_file: Path, run_dir: Path, *, app_id: str, port: int,
                   extra_args: tuple[str, ...] = (), log_level: str = "INFO",
                   ready_timeout_s: float = SERVICE_TIMEOUT_S, extra_env: dict[str, str] | None = None) -> Iterator[int]:
    """`callstream worker` against ``bootstrap``, ready once its /readyz answers (its tables restored) within
    ``ready_timeout_s``; logs to run_dir/worker.log. Yields the worker's process id."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CALLSTREAM_DATA_DIR": str(run_dir),
           "CALLSTREAM_LOG_LEVEL": log_level, **(extra_env or {})}
    command = [sys.executable, "-m", "callstream.cli", "worker", "--tenants", str(tenants_file), "--app-id", app_id,
               "--metrics-host", "127.0.0.1", "--metrics-port", str(port), *extra_args]
    log_path = run_dir / "worker.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/readyz"), f"the worker (log: {log_path})",
                   lambda: process.poll() is not None, ready_timeout_s)
        yield process.pid
    finally:
        stop(process)


def answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=1.0, trust_env=False).status_code == 200
    return False


def wait_until(ready: Callable[[], bool], what: str, died: Callable[[], bool],
               timeout_s: float = SERVICE_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if died():
            raise ServiceUnavailableError(f"{what} exited during start-up")
        if ready():
            return
        time.sleep(0.2)
    raise ServiceUnavailableError(f"{what} did not become ready within {timeout_s:.0f} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, a bounded wait, then SIGKILL."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def private_broker(run_dir: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """An embedded Tansu broker of its own on a free port of ``host``, with every catalogue topic: a worker
    reading the call-events topic from its start then sees no one else's calls, and it never clashes with
    `callstream dev up`. Yields the bootstrap address."""
    from callstream.backends import ensure_topics
    from devkit.broker import TansuBroker
    from schemas.topics import TOPICS

    broker = TansuBroker(host, free_port(host), log_path=run_dir / "tansu.log")
    broker.start()
    try:
        ensure_topics(broker.bootstrap, [(topic.name, topic.partitions) for topic in TOPICS])
        yield broker.bootstrap
    finally:
        broker.stop()
