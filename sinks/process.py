"""The sinks process: the ClickHouse sink and the SIEM firehose in threads until stopped, with /metrics.

`run_sinks` runs them until `stop` is set, for `callstream sinks run` (processes/sinks.py), `qa serve
--with-sinks` and the demo; a caller may bring its own metrics (streams.metrics.Metrics satisfies
`SiemMetrics`). With the ClickHouse sink it can serve the audit read API (sinks/read_api.py). What the
applications above add to the process (the review items and the digest endpoints of the read API, the daily
digest sender) comes in as `Additions`, built by the caller once the audit store is open: the sinks never
import those applications.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from callstream.backends import ensure_topics, wait_for_broker
from callstream.errors import CallstreamError, ConfigError
from callstream.metrics_server import serve_metrics
from callstream.settings import Settings, redact_dsn
from callstream.tenants import TenantDirectory
from schemas.models import AlarmKind
from schemas.registry import SchemaRegistryClient
from schemas.topics import ALARMS, AUDIT, DEAD_LETTER, SIEM_DEAD_LETTER, topic_named
from sinks.audit_rows import AuditRowProcessor
from sinks.clickhouse_schema import cluster_from_env
from sinks.clickhouse_store import AuditStore
from sinks.consumer import ClickHouseAuditSink
from sinks.kafka_io import AuditDecoder
from sinks.metrics import SinkMetrics
from sinks.read_api import CallReads, DigestFigures, ReadApiServer, ReviewItems, SendDigests, api_token, serve_read_api
from sinks.siem.firehose import SiemFirehose
from sinks.siem.outcomes import DeliveryTally, SiemMetrics

logger = logging.getLogger(__name__)

SINK_NAMES = ("clickhouse", "siem")
SUMMARY_INTERVAL_S = 60.0

Runner = Callable[[threading.Event], None]
"""A unit of the process: runs in its own thread until the event is set."""


@dataclass(frozen=True, slots=True)
class Additions:
    """What applications above the sinks add to the process, for the audit store's database.

    ``reviews`` and the digest callables go into the read API (each endpoint answers 404 without its part);
    ``runners`` run in threads beside the sinks, stopped and failing like them (the daily digest sender).
    """

    reviews: ReviewItems | None = None
    send_digests: SendDigests | None = None
    digest_figures: DigestFigures | None = None
    runners: Mapping[str, Runner] = field(default_factory=dict)


AddToProcess = Callable[[str], Additions]
"""Builds the additions once the audit store is open and migrated, given its database name."""


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
    additions: AddToProcess | None = None,
) -> None:
    """Run the sinks in threads until `stop` is set; a sink that dies stops the others and re-raises.

    With `serve` (host, port) the process serves /metrics (`SinkMetrics`), /healthz (every sink thread
    alive) and /readyz (every sink thread running); `on_serving` is told the bound port. With the ClickHouse
    sink, `read_api` serves the audit read API (sinks/read_api.py) on ``read_api_host:read_api_port``, and
    `additions` (called with the store's database once it is migrated) adds the applications' parts: the
    read API's review items and digest endpoints, runners such as the daily digest sender.

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
        _run_until_stopped(settings, stop, wanted, tenants, database, metrics, registry, serve, on_serving, read_api,
                           additions)
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
    additions: AddToProcess | None = None,
) -> None:
    """Build the wanted sinks, run each in its own thread and re-raise the first failure."""
    bootstrap = settings.bootstrap_servers
    runners: dict[str, Runner] = {}
    added = Additions()
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
        if additions is not None:
            added = additions(store.database)
            runners.update(added.runners)
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

    def guarded(name: str, runner: Runner) -> None:
        try:
            runner(stop)
        except BaseException as exc:  # noqa: BLE001 - reported once by the main thread
            failures.append(exc)
            logger.error("%s sink stopped on %s", name, type(exc).__name__)
            stop.set()

    # Before the sink threads start: a taken port then fails the start-up with nothing left running.
    api = _serve_read_api(settings, store.database, tenants, added) if read_api and "clickhouse" in runners else None
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


def _serve_read_api(settings: Settings, database: str, tenants: TenantDirectory | None,
                    added: Additions) -> ReadApiServer:
    """The read API on its own connection to the store, published in the data directory's run file."""
    dsn = settings.effective_clickhouse_dsn
    reads = CallReads(AuditStore.open(dsn, database), tenants, added.reviews)
    return serve_read_api(reads, settings.read_api_host, settings.read_api_port, token=api_token(settings),
                          send_digests=added.send_digests, digest_figures=added.digest_figures,
                          publish=(settings.data_dir, redact_dsn(dsn), database))


def _wait(stop: threading.Event, threads: list[threading.Thread], failures: list[BaseException],
          runners: dict[str, Runner], metrics: SiemMetrics | None,
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
