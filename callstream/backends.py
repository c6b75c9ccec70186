"""Reaching the stack's services from any process: the Kafka broker, its topics, ClickHouse, local ports.

The same code serves the embedded default stack (a Tansu broker, chDB) and real services named by
``KAFKA_BOOTSTRAP_SERVERS`` and ``CLICKHOUSE_DSN``; it checks what is there and turns every failure into
one clear line (a taken port, an unreachable broker, a bad DSN). Starting the embedded broker itself, and
`callstream dev up|down|status`, is dev tooling: devkit.broker.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from callstream.errors import ConfigError, PortInUseError, ServiceUnavailableError
from callstream.settings import DSN_SCHEMES, redact_dsn

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
