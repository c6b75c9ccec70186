"""The sinks process (sinks/process.py) and `callstream sinks run`, on the real engine and a real broker."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from callstream.backends import free_port
from callstream.errors import ConfigError, ServiceUnavailableError
from callstream.settings import load_settings
from devkit.broker import TansuBroker
from processes.sinks import main as sinks_main
from schemas.registry import SchemaRegistryClient
from schemas.topics import AUDIT
from sinks.audit_rows import AuditRowProcessor
from sinks.clickhouse_store import AuditStore
from sinks.process import Additions, run_sinks
from sinks.read_api import discover
from tests.sinks.audit_helpers import (
    SiemReceiver,
    discard_broker,
    encode,
    make_event,
    new_secret_text,
    produce_events,
    tenant_directory,
    wait_until,
)


def test_sinks_run_needs_a_tenant_directory_for_the_siem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLSTREAM_TENANTS_FILE", raising=False)
    monkeypatch.delenv("CALLSTREAM_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs a tenant directory"):
        sinks_main(["run", "--only", "siem"])
    with pytest.raises(ConfigError, match="unknown sink 'kafka'"):
        run_sinks(load_settings(), threading.Event(), only="kafka")


@pytest.mark.broker
def test_a_store_that_cannot_open_leaves_no_registry_client_open(kafka_bootstrap: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLSTREAM_CONFIG", raising=False)
    closed: list[SchemaRegistryClient] = []
    real_close = SchemaRegistryClient.close

    def recording_close(client: SchemaRegistryClient) -> None:  # a spy around the real close
        closed.append(client)
        real_close(client)

    monkeypatch.setattr(SchemaRegistryClient, "close", recording_close)
    settings = load_settings(kafka_bootstrap_servers=kafka_bootstrap, clickhouse_dsn=f"http://127.0.0.1:{free_port()}",
                             schema_registry_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ServiceUnavailableError, match="ClickHouse"):
        run_sinks(settings, threading.Event(), only="clickhouse")
    assert len(closed) == 1 and closed[0]._http.is_closed


@pytest.mark.broker
def test_run_sinks_feeds_clickhouse_and_the_siem(clickhouse_dsn: str, clickhouse_client, clickhouse_database: str,  # type: ignore[no-untyped-def]
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLSTREAM_CONFIG", raising=False)
    secret = new_secret_text(random.Random(5))
    monkeypatch.setenv("CLI_SIEM_SECRET", secret)
    broker = TansuBroker(port=free_port())  # private: run_sinks uses the fixed topic and group names
    broker.start()
    stop = threading.Event()
    failures: list[BaseException] = []
    try:
        with SiemReceiver(reject_rate=0.0) as receiver:
            receiver.add_practice("northside-pain", secret)
            tenants = tenant_directory({"northside-pain": (receiver.url("northside-pain"), "env:CLI_SIEM_SECRET",
                                                           "ocsf")})
            settings = load_settings(kafka_bootstrap_servers=broker.bootstrap, clickhouse_dsn=clickhouse_dsn)

            ports: list[int] = []

            def run() -> None:
                try:
                    run_sinks(settings, stop, tenants=tenants, database=clickhouse_database,
                              serve=("127.0.0.1", 0), on_serving=ports.append)
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    failures.append(exc)

            runner = threading.Thread(target=run)
            runner.start()
            try:
                wait_until(lambda: AuditStore(clickhouse_client, clickhouse_database).is_initialised(), 20, "migrations")
                produce_events(broker.bootstrap, AUDIT, [make_event("northside-pain", index) for index in range(6)])
                store = AuditStore(clickhouse_client, clickhouse_database)
                wait_until(lambda: store.count_events() == 6, 30, "six events in ClickHouse")
                wait_until(lambda: len(receiver.practices["northside-pain"].unique()) == 6, 30, "six events at the SIEM")
                base = f"http://127.0.0.1:{ports[0]}"
                assert httpx.get(f"{base}/healthz").status_code == 200
                assert httpx.get(f"{base}/readyz").status_code == 200
                exposition = httpx.get(f"{base}/metrics").text
                assert 'callstream_siem_deliveries_total{outcome="delivered",practice_id="northside-pain"} 6.0' \
                    in exposition
                assert "callstream_clickhouse_insert_lag_seconds " in exposition
                assert "callstream_siem_backlog_events" in exposition
            finally:
                stop.set()
                runner.join(30)
    finally:
        discard_broker(broker)
    assert not failures, failures
    assert receiver.bad_signatures == 0


class _Reviews:
    """Stands in for review.reader: the read API sees only the ReviewItems interface."""

    def items(self, practice_id: str, *, call_id: str | None = None) -> list[dict[str, Any]]:
        return [{"item_id": "item-1", "practice_id": practice_id, "call_id": call_id}]


@pytest.mark.broker
def test_the_applications_parts_come_in_as_additions(clickhouse_dsn: str, clickhouse_client,  # type: ignore[no-untyped-def]
                                                     clickhouse_database: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What processes/sinks.py hands in reaches the process: built once for the store's database, the read
    API serves its review items and digest figures (and no send endpoint it was not given), its runner runs
    beside the sinks and stops with them."""
    monkeypatch.delenv("CALLSTREAM_CONFIG", raising=False)
    asked: list[str] = []
    ran, stopped = threading.Event(), threading.Event()

    def extra(stop: threading.Event) -> None:
        ran.set()
        stop.wait()
        stopped.set()

    def add(database: str) -> Additions:
        asked.append(database)
        return Additions(reviews=_Reviews(), runners={"extra": extra},
                         digest_figures=lambda practice, day: {"practice": practice, "date": day.isoformat()})

    broker = TansuBroker(port=free_port())  # private: run_sinks uses the fixed topic and group names
    broker.start()
    settings = load_settings(kafka_bootstrap_servers=broker.bootstrap, clickhouse_dsn=clickhouse_dsn, data_dir=tmp_path)
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            run_sinks(settings, stop, database=clickhouse_database, only="clickhouse", read_api=True, additions=add)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failures.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        wait_until(lambda: discover(settings, clickhouse_database) is not None and ran.is_set(), 20, "read API and runner")
        store = AuditStore(clickhouse_client, clickhouse_database)
        store.insert([AuditRowProcessor().process(encode(make_event("northside-pain", 0, call_id="call-added")))])  # type: ignore[list-item]
        url = discover(settings, clickhouse_database)
        record = httpx.get(f"{url}/v1/calls/call-added").json()
        assert record["review_items"] == [{"item_id": "item-1", "practice_id": "northside-pain", "call_id": "call-added"}]
        assert record["review_error"] is None
        figures = httpx.get(f"{url}/v1/digests/figures", params={"practice": "northside-pain", "date": "2026-03-14"})
        assert figures.json() == {"practice": "northside-pain", "date": "2026-03-14"}
        assert httpx.post(f"{url}/v1/digests", json={"date": None, "practice": None}).status_code == 404
    finally:
        stop.set()
        runner.join(30)
        discard_broker(broker)
    assert not failures, failures
    assert asked == [clickhouse_database] and stopped.is_set()
