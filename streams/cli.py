"""`callstream worker` (wired in callstream/cli.py; `callstream demo`, `replay` and `bench` live in devkit/)."""

from __future__ import annotations

import argparse
import logging

from callstream.cli_options import (
    add_logging_options,
    add_service_options,
    configure_logging_from,
    require_tenants_file,
    settings_from,
)
from callstream.backends import ensure_port_free, ensure_topics, wait_for_broker
from callstream.errors import ConfigError
from callstream.settings import Settings
from callstream.tenants import TenantDirectory, load_tenant_directory
from schemas.topics import TOPICS

FAUST_LOG_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error", "CRITICAL": "critical"}

log = logging.getLogger("callstream.worker")


def worker_main(argv: list[str]) -> int:
    """`callstream worker`: run the stream pipeline until SIGTERM/SIGINT. Faust is imported once the
    arguments, the tenant directory, the metrics port and Kafka are known to be good, so a failure among
    them is reported at once."""
    parser = argparse.ArgumentParser(prog="callstream worker", description="Run the call-event pipeline (Faust).")
    add_service_options(parser, kafka=True, data_dir=True, tenants=True)
    parser.add_argument("--app-id", help="consumer group and changelog prefix (default callstream-worker)")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address of /metrics, /healthz, /readyz")
    parser.add_argument("--metrics-port", type=int, help="default $CALLSTREAM_METRICS_PORT, else 9464; 0 picks a free port")
    parser.add_argument("--no-ema", action="store_true", help="never start EMA web automation (FHIR only)")
    parser.add_argument("--drift-window", type=float, default=60.0, help="drift window in seconds")
    parser.add_argument("--ttl-sweep", type=float, default=60.0, help="seconds between PHI purges of idle calls")
    parser.add_argument("--max-in-flight", type=int, default=2000, help="call events processed at once")
    parser.add_argument("--idempotent-outputs", action="store_true",
                        help="idempotent producer for replies and audit (Kafka clusters; slow on embedded Tansu)")
    add_logging_options(parser)
    options = parser.parse_args(argv)
    settings = settings_from(options)
    tenants_file = require_tenants_file(settings, "the worker")
    metrics_port = settings.metrics_port if options.metrics_port is None else options.metrics_port
    if not 0 <= metrics_port <= 65535:
        raise ConfigError("--metrics-port must be 0-65535")
    if options.drift_window < 1 or options.ttl_sweep < 1 or options.max_in_flight < 1:
        raise ConfigError("--drift-window and --ttl-sweep need at least 1 second, --max-in-flight at least 1")
    tenants = load_tenant_directory(tenants_file)
    if metrics_port:
        ensure_port_free(options.metrics_host, metrics_port, "metrics endpoint (--metrics-port)")
    wait_for_broker(settings.bootstrap_servers, settings.connect_timeout_s)
    ensure_topics(settings.bootstrap_servers, [(topic.name, topic.partitions) for topic in TOPICS])
    configure_logging_from(settings)
    from streams.app import DEFAULT_APP_ID, Pipeline, WorkerOptions

    app_id = options.app_id or DEFAULT_APP_ID
    pipeline = Pipeline(settings, tenants, WorkerOptions(
        app_id=app_id, metrics_host=options.metrics_host, metrics_port=metrics_port,
        drift_window_s=options.drift_window, ttl_sweep_s=options.ttl_sweep, max_in_flight=options.max_in_flight,
        use_ema=not options.no_ema, idempotent_outputs=options.idempotent_outputs, data_dir=str(settings.data_dir),
    ))
    log.info("callstream worker %s: %s from %s, Kafka %s", app_id, _practices(tenants), tenants_file,
             settings.bootstrap_servers)
    worker = _pipeline_worker_class(settings)(pipeline.app, loglevel=FAUST_LOG_LEVELS[settings.log_level], quiet=True,
                                              redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0  # execute_from_commandline exits the process itself


def _practices(tenants: TenantDirectory, shown: int = 5) -> str:
    """'3 practices (pain-1001, pain-1002, pain-1003)'; past `shown` ids, how many more."""
    ids = list(tenants)
    more = f", … {len(ids) - shown} more" if len(ids) > shown else ""
    return f"{len(ids)} practice{'s' if len(ids) != 1 else ''} ({', '.join(ids[:shown])}{more})"


def _pipeline_worker_class(settings: Settings) -> type:
    import faust

    class Worker(faust.Worker):  # type: ignore[misc]  # faust's stubs leave Worker untyped
        """faust.Worker whose logging is callstream's (callstream.logs): one stderr handler, text or JSON, the
        libraries' INFO chatter (Faust's table and topic listings) held back below DEBUG, and the root logger
        at the configured level: Faust leaves it at DEBUG (only its handler filters), so every library's
        debug call built a log record, a few percent of the CPU of each call event."""

        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            configure_logging_from(settings, replace_handlers=True)

    return Worker
