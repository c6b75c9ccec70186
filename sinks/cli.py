"""`callstream audit call CALL_ID` and `callstream sinks run`.

`audit_main` prints the per-call audit record a practice reconciles against the chart (human
readable or ``--json``). `sinks_main` runs the ClickHouse sink and the SIEM firehose until SIGINT or
SIGTERM; `run_sinks` is the same without argument parsing, for a caller that brings its own
metrics (streams.metrics.Metrics satisfies `SiemMetrics`).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from callstream.devstack import ensure_topics, wait_for_broker
from callstream.errors import CallstreamError, ConfigError
from callstream.metrics_server import serve_metrics
from callstream.settings import Settings, load_settings
from callstream.tenants import TenantDirectory, load_tenant_directory
from schemas.registry import SchemaRegistryClient
from schemas.topics import ALARMS, AUDIT, DEAD_LETTER, SIEM_DEAD_LETTER, topic_named
from sinks.clickhouse_store import AuditRowProcessor, AuditStore, cluster_from_env
from sinks.consumer import ClickHouseAuditSink
from sinks.kafka_io import AuditDecoder
from schemas.models import AlarmKind
from sinks.metrics import SinkMetrics
from sinks.siem import DeliveryTally, SiemFirehose, SiemMetrics

logger = logging.getLogger(__name__)

CALL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}\Z")
SINK_NAMES = ("clickhouse", "siem")
SUMMARY_INTERVAL_S = 60.0


def audit_main(argv: list[str]) -> int:
    """`callstream audit call CALL_ID [--practice ID] [--json] [--database NAME]`."""
    parser = argparse.ArgumentParser(prog="callstream audit", description="Read the audit trail in ClickHouse.")
    commands = parser.add_subparsers(dest="command", required=True)
    call = commands.add_parser("call", help="the per-call audit record: transitions, resources, chart link, tasks, guards")
    call.add_argument("call_id", help="the call id (as in the call events)")
    call.add_argument("--practice", help="practice id, when a call id is known to more than one practice")
    call.add_argument("--json", action="store_true", help="print the record as JSON")
    call.add_argument("--database", help="ClickHouse database (default: the DSN's, else 'callstream')")
    options = parser.parse_args(argv)
    if not CALL_ID.match(options.call_id):
        raise ConfigError("call id must be 1-128 letters, digits or . _ : - characters")
    settings = load_settings()
    store = AuditStore.open(settings.effective_clickhouse_dsn, options.database)
    if not store.is_initialised():
        raise ConfigError(f"no audit store in ClickHouse database {store.database} (has `callstream sinks run` run?)")
    record = store.call_record(options.call_id, options.practice)
    if record is None:
        print(f"callstream: no audit events for call {options.call_id}", file=sys.stderr)
        return 1
    print(json.dumps(record.to_json_dict(), indent=2) if options.json else record.render_text())
    return 0


def sinks_main(argv: list[str]) -> int:
    """`callstream sinks run [--only clickhouse|siem] [--tenants FILE] [--database NAME]`."""
    parser = argparse.ArgumentParser(prog="callstream sinks", description="Run the audit consumers.")
    parser.add_argument("action", choices=["run"])
    parser.add_argument("--only", choices=SINK_NAMES, help="run one sink instead of both")
    parser.add_argument("--tenants", type=Path, help="tenant directory (default CALLSTREAM_TENANTS_FILE)")
    parser.add_argument("--database", help="ClickHouse database (default: the DSN's, else 'callstream')")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address of /metrics, /healthz, /readyz")
    parser.add_argument("--metrics-port", type=int, help="default CALLSTREAM_METRICS_PORT; 0 picks a free port")
    options = parser.parse_args(argv)
    settings = load_settings()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry endpoint URLs, which may hold tokens
    wanted = (options.only,) if options.only else SINK_NAMES
    tenants_file = options.tenants or settings.tenants_file
    tenants = None
    if "siem" in wanted:
        if tenants_file is None:
            raise ConfigError("the SIEM firehose needs a tenant directory: --tenants FILE or CALLSTREAM_TENANTS_FILE")
        tenants = load_tenant_directory(tenants_file)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    port = settings.metrics_port if options.metrics_port is None else options.metrics_port
    if not 0 <= port <= 65535:
        raise ConfigError("--metrics-port must be 0-65535")
    run_sinks(settings, stop, tenants=tenants, database=options.database, only=options.only,
              serve=(options.metrics_host, port))
    return 0


def run_sinks(
    settings: Settings,
    stop: threading.Event,
    *,
    tenants: TenantDirectory | None = None,
    database: str | None = None,
    only: str | None = None,
    metrics: SiemMetrics | None = None,
    serve: tuple[str, int] | None = None,
    on_serving: Callable[[int], None] | None = None,
) -> None:
    """Run the sinks in threads until `stop` is set; a sink that dies stops the others and re-raises.

    With `serve` (host, port) the process serves /metrics (`SinkMetrics`), /healthz (every sink thread
    alive) and /readyz (every sink thread running); `on_serving` is told the bound port.

    Raises:
        ConfigError: SIEM wanted without a tenant directory, or an unknown sink name.
        ServiceUnavailableError: the broker or ClickHouse is unreachable at start-up.
    """
    wanted = (only,) if only else SINK_NAMES
    if any(name not in SINK_NAMES for name in wanted):
        raise ConfigError(f"unknown sink {only!r}; choose from {', '.join(SINK_NAMES)}")
    if "siem" in wanted and tenants is None:
        raise ConfigError("the SIEM firehose needs a tenant directory")
    bootstrap = settings.bootstrap_servers
    wait_for_broker(bootstrap)
    ensure_topics(bootstrap, [(name, topic_named(name).partitions)
                              for name in (AUDIT, DEAD_LETTER, SIEM_DEAD_LETTER, ALARMS)])
    registry = SchemaRegistryClient(settings.schema_registry_url) if settings.schema_registry_url else None
    try:
        _run_until_stopped(settings, stop, wanted, tenants, database, metrics, registry, serve, on_serving)
    finally:
        if registry is not None:  # also when the store cannot open or migrate: no leaked pool
            registry.close()


def _run_until_stopped(
    settings: Settings,
    stop: threading.Event,
    wanted: tuple[str, ...],
    tenants: TenantDirectory | None,
    database: str | None,
    metrics: SiemMetrics | None,
    registry: SchemaRegistryClient | None,
    serve: tuple[str, int] | None,
    on_serving: Callable[[int], None] | None,
) -> None:
    """Build the wanted sinks, run each in its own thread and re-raise the first failure."""
    bootstrap = settings.bootstrap_servers
    runners: dict[str, Callable[[threading.Event], None]] = {}
    tally = DeliveryTally()
    exported = SinkMetrics() if serve is not None else None
    siem_metrics: SiemMetrics = metrics or exported or tally
    if "clickhouse" in wanted:
        store = AuditStore.open(settings.effective_clickhouse_dsn, database, cluster_from_env())
        applied = store.migrate()
        logger.info("audit store %s ready (migrations applied now: %s)", store.database, applied or "none")
        sink = ClickHouseAuditSink(store, bootstrap=bootstrap, processor=AuditRowProcessor(AuditDecoder(registry)),
                                   session_timeout_ms=settings.consumer_session_timeout_ms,
                                   on_insert=exported.observe_insert if exported is not None else None)
        runners["clickhouse"] = sink.run
    if "siem" in wanted:
        assert tenants is not None
        on_alarm = None
        if exported is not None:
            def on_alarm(practice_id: str, firing: bool, gauge: SinkMetrics = exported) -> None:
                gauge.set_alarm_state(practice_id, AlarmKind.SIEM_DELIVERY.value, firing)
        firehose = SiemFirehose(tenants, bootstrap=bootstrap, metrics=siem_metrics, decoder=AuditDecoder(registry),
                                session_timeout_ms=settings.consumer_session_timeout_ms, on_alarm=on_alarm)
        if exported is not None:
            exported.watch_backlogs(firehose.backlog_figures)
        runners["siem"] = firehose.run
    failures: list[BaseException] = []

    def guarded(name: str, runner: Callable[[threading.Event], None]) -> None:
        try:
            runner(stop)
        except BaseException as exc:  # noqa: BLE001 - reported once by the main thread
            failures.append(exc)
            logger.error("%s sink stopped on %s", name, type(exc).__name__)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(name, runner), name=f"sink-{name}") for name, runner in runners.items()]
    for thread in threads:
        thread.start()
    server = None
    if serve is not None and exported is not None:
        def running() -> bool:
            return not failures and all(thread.is_alive() for thread in threads)

        server = serve_metrics(exported.registry, serve[0], serve[1], readiness=running, liveness=running)
        if on_serving is not None:
            on_serving(server.port)
    try:
        _wait(stop, threads, failures, runners, siem_metrics, tally)
    finally:
        if server is not None:
            server.close()


def _wait(stop: threading.Event, threads: list[threading.Thread], failures: list[BaseException],
          runners: dict[str, Callable[[threading.Event], None]], metrics: SiemMetrics | None,
          tally: DeliveryTally) -> None:
    """Log a delivery summary now and then until `stop`; join the sinks and re-raise the first failure."""
    while not stop.wait(SUMMARY_INTERVAL_S):
        if "siem" in runners and metrics is tally:
            logger.info("SIEM deliveries so far: %s", tally.summary())
    for thread in threads:
        thread.join()
    if failures:
        failure = failures[0]
        if isinstance(failure, CallstreamError):
            raise failure
        raise CallstreamError(f"a sink stopped unexpectedly ({type(failure).__name__})") from failure
