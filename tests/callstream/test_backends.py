"""The embedded stack for real: Tansu broker, chDB ClickHouse, and the one-line failures."""

from __future__ import annotations

import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from callstream.backends import ensure_topics, free_port, open_clickhouse, wait_for_broker
from callstream.errors import ConfigError, PortInUseError, ServiceUnavailableError
from callstream.settings import load_settings
from tests.fixtures.cli import run_cli


def assert_one_error_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("callstream: error: ") and expected in lines[0], lines[0]


def test_broker_round_trip_with_consumer_group(kafka_bootstrap: str, topic_name: str) -> None:
    ensure_topics(kafka_bootstrap, [(topic_name, 3)])
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for index in range(30):
        producer.produce(topic_name, key=f"call-{index % 5}".encode(), value=str(index).encode())
    assert producer.flush(10) == 0
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000, "enable.auto.commit": False})
    consumer.subscribe([topic_name])
    seen: dict[str, list[int]] = {}
    try:
        for _ in range(200):
            message = consumer.poll(0.5)
            if message is None or message.error():
                if sum(map(len, seen.values())) == 30:
                    break
                continue
            seen.setdefault(message.key().decode(), []).append(int(message.value()))
    finally:
        consumer.close()
    assert sum(map(len, seen.values())) == 30
    for values in seen.values():  # keyed records stay in order per call
        assert values == sorted(values)


def test_embedded_clickhouse_round_trip(clickhouse_client, clickhouse_database: str) -> None:  # type: ignore[no-untyped-def]
    clickhouse_client.command(f"CREATE TABLE {clickhouse_database}.t (id UInt32, v String) ENGINE = MergeTree ORDER BY id")
    clickhouse_client.insert(f"{clickhouse_database}.t", [[1, "a"], [2, "b"]], column_names=["id", "v"])
    assert clickhouse_client.query(f"SELECT count() FROM {clickhouse_database}.t").result_rows == [(2,)]


def test_bad_dsn_and_unreachable_clickhouse_are_clear() -> None:
    with pytest.raises(ConfigError, match="must start with chdb://"):
        open_clickhouse("mysql://u:pw@host/db")
    port = free_port()
    with pytest.raises(ServiceUnavailableError) as caught:
        open_clickhouse(f"http://user:topsecret@127.0.0.1:{port}/default")
    assert "topsecret" not in str(caught.value) and f"127.0.0.1:{port}" in str(caught.value)


def test_unreachable_broker_is_one_clear_error() -> None:
    with pytest.raises(ServiceUnavailableError, match="is unreachable"):
        wait_for_broker(f"127.0.0.1:{free_port()}", timeout_s=1.5)


def test_settings_prefer_external_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-0:9092")
    monkeypatch.setenv("CLICKHOUSE_DSN", "https://u:p@ch.example:8443/callstream")
    settings = load_settings()
    assert not settings.uses_embedded_broker
    assert settings.bootstrap_servers == "kafka-0:9092"
    assert settings.effective_clickhouse_dsn == "https://u:p@ch.example:8443/callstream"


def test_cli_bad_dsn_is_one_line(tmp_path: Path) -> None:
    result = run_cli("dev", "status", "--data-dir", str(tmp_path), env={"CLICKHOUSE_DSN": "clickhouse-server:9000"})
    assert_one_error_line(result, "clickhouse_dsn")


def test_cli_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli("dev", "up", "--data-dir", str(tmp_path), "--broker-port", str(port))
    assert_one_error_line(result, f"127.0.0.1:{port} is already in use")


def test_cli_unreachable_external_broker_is_one_line(tmp_path: Path) -> None:
    result = run_cli("dev", "status", "--data-dir", str(tmp_path),
                     env={"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"})
    assert_one_error_line(result, "is unreachable")


def test_port_check_names_the_port() -> None:
    from callstream.backends import ensure_port_free

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"127.0.0.1:{port}"):
            ensure_port_free("127.0.0.1", port, "test")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("broker_port: [1\n", "not valid YAML at line"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("broker_port: 0\n", "broker_port: Input should be greater than or equal to 1"),
        ("surprise: 1\n", "surprise: Extra inputs are not permitted"),
    ],
)
def test_cli_bad_config_file_is_one_line(tmp_path: Path, content: str, expected: str) -> None:
    config = tmp_path / "callstream.yaml"
    config.write_text(content)
    result = run_cli("dev", "status", "--data-dir", str(tmp_path), env={"CALLSTREAM_CONFIG": str(config)})
    assert_one_error_line(result, expected)


def test_settings_repr_and_dsn_redaction_hide_secrets() -> None:
    from callstream.settings import Settings, redact_dsn

    settings = Settings(clickhouse_dsn="https://u:pw-123@ch.example:8443/db", alert_webhook_url="https://hooks.example/T0/B0/tok-456")
    assert "pw-123" not in repr(settings) and "tok-456" not in repr(settings)
    assert redact_dsn("https://u:pw-123@ch.example:8443/db?password=pw-789") == "https://u:***@ch.example:8443/db"
    assert redact_dsn("chdb:///var/lib/ch?x=1") == "chdb:///var/lib/ch"
    assert redact_dsn("http://host:notaport/db") == "http://host:notaport/db"
