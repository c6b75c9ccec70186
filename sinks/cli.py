"""`callstream audit call CALL_ID` and `callstream sinks run`.

`audit_main` prints the per-call audit record a practice reconciles against the chart (human
readable or ``--json``). `sinks_main` runs the ClickHouse sink and the SIEM firehose until SIGINT or
SIGTERM; `run_sinks` is the same without argument parsing, for a caller that brings its own
metrics (streams.metrics.Metrics satisfies `SiemMetrics`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from functools import partial
from datetime import date
from pathlib import Path
from typing import Any

from callstream.cli_options import add_logging_options, add_service_options, configure_logging_from, settings_from
from callstream.devstack import ensure_port_free, ensure_topics, wait_for_broker
from callstream.errors import CallstreamError, ConfigError, ServiceUnavailableError
from callstream.metrics_server import serve_metrics
from callstream.settings import Settings, redact_dsn
from callstream.tenants import TenantDirectory, load_tenant_directory
from digest.log import DigestLog
from digest.service import DigestService
from digest.smtp import SmtpRelay
from review.reader import review_reader
from schemas.registry import SchemaRegistryClient
from schemas.topics import ALARMS, AUDIT, DEAD_LETTER, SIEM_DEAD_LETTER, topic_named
from sinks.audit_rows import AuditRowProcessor
from sinks.call_record import render_call_text
from sinks.clickhouse_schema import cluster_from_env, database_for_dsn
from sinks.clickhouse_store import AuditStore
from sinks.consumer import ClickHouseAuditSink
from sinks.kafka_io import AuditDecoder
from schemas.models import AlarmKind
from sinks.metrics import SinkMetrics
from sinks.read_api import (
    MAX_PAGE,
    CallReads,
    NotFoundError,
    ReadApiClient,
    ReadApiServer,
    api_token,
    check_call_id,
    check_practice_id,
    discover,
    parse_day,
    serve_read_api,
)
from sinks.siem.firehose import SiemFirehose
from sinks.siem.outcomes import DeliveryTally, SiemMetrics

logger = logging.getLogger(__name__)

SINK_NAMES = ("clickhouse", "siem")
SUMMARY_INTERVAL_S = 60.0


def audit_main(argv: list[str]) -> int:
    """`callstream audit call CALL_ID [--practice ID]` and `callstream audit calls --practice ID [--date D]`.

    Through the sinks process's read API when it runs (it owns the embedded store), else from the store."""
    parser = argparse.ArgumentParser(prog="callstream audit", description="Read the audit trail in ClickHouse.")
    commands = parser.add_subparsers(dest="command", required=True)
    call = commands.add_parser("call", help="the per-call audit record: transitions, resources, chart link, tasks, "
                                            "guards, what the caller heard, review items")
    call.add_argument("call_id", help="the call id (as in the call events)")
    call.add_argument("--practice", help="practice id, when a call id is known to more than one practice")
    calls = commands.add_parser("calls", help="a practice's calls of one day (its time zone; default today)")
    calls.add_argument("--practice", required=True, help="practice id")
    calls.add_argument("--date", help="YYYY-MM-DD (default: today in the practice's time zone)")
    calls.add_argument("--limit", type=int, default=100, help=f"calls per page (1-{MAX_PAGE})")
    calls.add_argument("--offset", type=int, default=0, help="calls to skip (paging)")
    pdf = commands.add_parser("pdf", help="the call's record as a PDF for medical-record retention (qa/pdf.py)")
    pdf.add_argument("call_id", help="the call id (as in the call events)")
    pdf.add_argument("--out", type=Path, required=True, help="the PDF file to write")
    pdf.add_argument("--practice", help="practice id, when a call id is known to more than one practice")
    for sub in (call, calls):
        sub.add_argument("--json", action="store_true", help="print JSON")
    for sub in (call, calls, pdf):  # the tenant directory: practice time zones and, in the PDF, names
        sub.add_argument("--database", help="ClickHouse database (default: the DSN's, else 'callstream')")
        add_service_options(sub, clickhouse=True, data_dir=True, tenants=True)
    options = parser.parse_args(argv)
    settings = settings_from(options)
    database = database_for_dsn(settings.effective_clickhouse_dsn, options.database)
    if options.command == "pdf":
        from qa.cli import audit_pdf

        return audit_pdf(check_call_id(options.call_id), options.out, partial(_audit_read, settings, database),
                         tenants_file=settings.tenants_file, practice_id=options.practice)
    if options.command == "call":
        check_call_id(options.call_id)
        try:
            record = _audit_read(settings, database, lambda reads: reads.call(options.call_id, options.practice))
        except NotFoundError as exc:
            print(f"callstream: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(record, indent=2) if options.json else _call_text(record))
        return 0
    check_practice_id(options.practice)
    day = parse_day(options.date, "UTC") if options.date else None
    listing = _audit_read(settings, database,
                          lambda reads: reads.calls(options.practice, day, options.limit, options.offset))
    print(json.dumps(listing, indent=2) if options.json else _calls_text(listing))
    return 0


def _audit_read(settings: Settings, database: str, read: Callable[[CallReads | ReadApiClient], Any]) -> Any:
    """``read`` through the read API of a running sinks process, else on the store opened here."""
    api_failure = None
    url = discover(settings, database)
    if url is not None:
        try:
            return read(ReadApiClient(url, api_token(settings)))
        except ServiceUnavailableError as exc:
            api_failure = str(exc)
    try:
        with _native_stderr_silenced():  # the embedded engine prints its own lock error lines: ours says it once
            store = AuditStore.open(settings.effective_clickhouse_dsn, database)
    except ServiceUnavailableError as exc:
        api = api_failure or ("no audit read API is running (it is served by `callstream sinks run`; "
                              "or set CALLSTREAM_READ_API_URL)")
        held = " (the embedded store admits one process at a time)" if settings.effective_clickhouse_dsn.startswith(
            "chdb://") else ""
        raise ServiceUnavailableError(f"{api}, and the audit store cannot be opened here{held}: {exc}") from None
    if not store.is_initialised():
        raise ConfigError(f"no audit store in ClickHouse database {store.database} (has `callstream sinks run` run?)")
    tenants = load_tenant_directory(settings.tenants_file) if settings.tenants_file else None
    return read(CallReads(store, tenants, review_reader(settings, database)))


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the duration (chDB writes there from C++, past sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _call_text(record: dict[str, Any]) -> str:
    items = record.get("review_items") or []
    lines = [render_call_text(record), "review-queue items:"]
    lines += [f"  {item['item_id']}  {item['kind']}  {item['reason']}  {item['state']}"
              f"{'  controlled substance' if item.get('controlled_substance') else ''}  created {item['created_at']}"
              for item in items]
    if not items:
        lines.append(f"  (none: {record['review_error']})" if record.get("review_error") else "  (none)")
    return "\n".join(lines)


def _calls_text(listing: dict[str, Any]) -> str:
    calls = listing["calls"]
    shown = f"{listing['offset'] + 1}-{listing['offset'] + len(calls)} of " if calls else ""
    lines = [f"practice {listing['practice_id']}, {listing['date']} ({listing['time_zone']}): "
             f"{shown}{listing['total']} calls"]
    if calls:
        lines.append(f"  {'call':40} {'started':24} {'events':>6} {'cs':>3} {'blk':>3} {'rvw':>3} {'w ok':>4} "
                     f"{'fail':>4}  last state")
    lines += [f"  {call['call_id']:40} {call['started_at']:24} {call['event_count']:>6} "
              f"{call['controlled_substance_requests']:>3} {call['blocks']:>3} {call['review_queued']:>3} "
              f"{call['writes_succeeded']:>4} {call['writes_failed']:>4}  {call['last_state'] or '-'}" for call in calls]
    return "\n".join(lines)


def sinks_main(argv: list[str]) -> int:
    """`callstream sinks run [--only clickhouse|siem] [--tenants FILE] [--database NAME]`."""
    parser = argparse.ArgumentParser(prog="callstream sinks", description="Run the audit consumers.")
    parser.add_argument("action", choices=["run"])
    parser.add_argument("--only", choices=SINK_NAMES, help="run one sink instead of both")
    add_service_options(parser, kafka=True, clickhouse=True, data_dir=True, tenants=True)
    parser.add_argument("--database", help="ClickHouse database (default: the DSN's, else 'callstream')")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address of /metrics, /healthz, /readyz")
    parser.add_argument("--metrics-port", type=int, help="default $CALLSTREAM_METRICS_PORT, else 9464; 0 picks a free port")
    add_logging_options(parser)
    options = parser.parse_args(argv)
    settings = settings_from(options)
    wanted = (options.only,) if options.only else SINK_NAMES
    tenants_file = settings.tenants_file
    if "siem" in wanted and tenants_file is None:
        raise ConfigError("the SIEM firehose needs a tenant directory: --tenants FILE or CALLSTREAM_TENANTS_FILE")
    # The ClickHouse sink alone uses it too: practices' time zones for the read API, the digest's recipients.
    tenants = load_tenant_directory(tenants_file) if tenants_file is not None else None
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    port = settings.metrics_port if options.metrics_port is None else options.metrics_port
    if not 0 <= port <= 65535:
        raise ConfigError("--metrics-port must be 0-65535")
    if port:
        ensure_port_free(options.metrics_host, port, "metrics endpoint (--metrics-port)")
    configure_logging_from(settings)  # once the arguments are good: a caller's own logging stays as it was
    run_sinks(settings, stop, tenants=tenants, database=options.database, only=options.only,
              serve=(options.metrics_host, port), read_api=True, on_serving=lambda bound: logger.info(
                  "callstream sinks: metrics on http://%s:%d/metrics (probes /healthz, /readyz)",
                  options.metrics_host, bound))
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
    read_api: bool = False,
) -> None:
    """Run the sinks in threads until `stop` is set; a sink that dies stops the others and re-raises.

    With `serve` (host, port) the process serves /metrics (`SinkMetrics`), /healthz (every sink thread
    alive) and /readyz (every sink thread running); `on_serving` is told the bound port. With the ClickHouse
    sink, `read_api` serves the audit read API (sinks/read_api.py) on ``read_api_host:read_api_port``, and a
    configured SMTP relay (``smtp_host``) with a tenant directory runs the daily digest (digest/service.py).

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
    wait_for_broker(bootstrap, settings.connect_timeout_s)
    logger.info("callstream sinks: %s, Kafka %s, ClickHouse %s", " and ".join(wanted), bootstrap,
                redact_dsn(settings.effective_clickhouse_dsn))
    ensure_topics(bootstrap, [(name, topic_named(name).partitions)
                              for name in (AUDIT, DEAD_LETTER, SIEM_DEAD_LETTER, ALARMS)])
    registry = SchemaRegistryClient(settings.schema_registry_url) if settings.schema_registry_url else None
    try:
        _run_until_stopped(settings, stop, wanted, tenants, database, metrics, registry, serve, on_serving, read_api)
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
    read_api: bool = False,
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
        digests = _digest_service(settings, store.database, tenants)
        if digests is not None and digests.relay is not None:
            runners["digest"] = digests.run
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

    # Before the sink threads start: a taken port then fails the start-up with nothing left running.
    api = _serve_read_api(settings, store.database, tenants, digests) if read_api and "clickhouse" in runners else None
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
        if api is not None:
            api.close()


def _digest_service(settings: Settings, database: str, tenants: TenantDirectory | None) -> DigestService | None:
    """The daily digest (its figures; sent when a relay is configured), given a tenant directory; its send log
    is migrated here."""
    if tenants is None:
        return None
    relay = SmtpRelay.from_settings(settings)
    dsn = settings.effective_clickhouse_dsn
    sends = DigestLog.open(dsn, database, cluster_from_env())
    sends.migrate()
    return DigestService(AuditStore.open(dsn, database), sends, tenants, relay,
                         reviews=review_reader(settings, database), sender=settings.digest_sender,
                         call_url=settings.digest_call_url, send_at=settings.digest_send_at)


def _serve_read_api(settings: Settings, database: str, tenants: TenantDirectory | None,
                    digests: DigestService | None) -> ReadApiServer:
    """The read API on its own connection to the store, published in the data directory's run file."""
    dsn = settings.effective_clickhouse_dsn
    reads = CallReads(AuditStore.open(dsn, database), tenants, review_reader(settings, database))
    send = figures = None
    if digests is not None and digests.relay is not None:
        def send(day: date | None, practice_id: str | None, service: DigestService = digests) -> list[dict[str, Any]]:
            return [outcome.to_json_dict() for outcome in service.send(day, practice_id)]

    if digests is not None:
        def figures(practice_id: str, day: date, service: DigestService = digests) -> dict[str, Any]:
            return service.figures(practice_id, day).to_json_dict()

    return serve_read_api(reads, settings.read_api_host, settings.read_api_port, token=api_token(settings),
                          send_digests=send, digest_figures=figures,
                          publish=(settings.data_dir, redact_dsn(dsn), database))


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
