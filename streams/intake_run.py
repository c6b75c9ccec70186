"""`callstream intake run`: the composition root of the intake poller (streams.intake_poller).

Tenant directory, ModMed client, the worker's Kafka outputs, the cursor topic and the metrics endpoint; what the
Helm chart's `intake` Deployment runs. `callstream intake sync` (streams.intake_sync) stays the one-shot pass.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

import httpx

from callstream.cli_options import (add_logging_options, add_service_options, configure_logging_from,
                                    require_tenants_file, settings_from)
from callstream.backends import ensure_port_free, ensure_topics, wait_for_broker
from callstream.errors import ConfigError
from callstream.metrics_server import serve_metrics
from callstream.retry import Backoff
from callstream.tenants import Practice, load_tenant_directory
from connectors.fhir import ModMedClient
from connectors.ledger import InMemoryLedger
from connectors.operations import ModMedConnector
from schemas.topics import AUDIT, topic_named
from streams.intake_poller import CursorStore, IntakePoller
from streams.outputs import KafkaOutputs

log = logging.getLogger(__name__)


def add_run_parser(actions: Any) -> None:
    """`intake run`'s flags, on the `callstream intake` subparsers."""
    run = actions.add_parser("run", help="the service: poll every practice's listing on an interval, "
                                         "each cursor kept on a compacted Kafka topic")
    run.add_argument("--practice", help="only this practice (default: every practice with a completions_url)")
    run.add_argument("--after", type=int,
                     help="with --practice: where to start while the practice has no stored cursor (default 0)")
    run.add_argument("--every", type=float, default=60.0, metavar="SECONDS", help="seconds between polls (60)")
    run.add_argument("--backoff-cap", type=float, default=900.0, metavar="SECONDS",
                     help="longest wait after repeated failures of one practice (900)")
    run.add_argument("--metrics-host", default="0.0.0.0", help="address of /metrics, /healthz, /readyz")
    run.add_argument("--metrics-port", type=int, help="default $CALLSTREAM_METRICS_PORT, else 9464; 0 picks a free port")
    add_service_options(run, kafka=True, tenants=True)
    add_logging_options(run)


def run(options: argparse.Namespace) -> int:
    """Check the flags and the tenant directory, then poll until SIGTERM or SIGINT."""
    settings = settings_from(options)
    directory = load_tenant_directory(require_tenants_file(settings, "intake run"))
    if options.every <= 0 or options.backoff_cap < options.every:
        raise ConfigError("--every must be positive and --backoff-cap at least --every")
    if options.after is not None and (options.practice is None or options.after < 0):
        raise ConfigError("--after needs --practice and a non-negative cursor")
    if options.practice is not None and options.practice not in directory:
        raise ConfigError(f"no such practice {options.practice!r} in the tenant directory")
    practices = [p for p in directory.values() if p.intake is not None and p.intake.completions_url
                 and options.practice in (None, p.practice_id)]
    if not practices:
        raise ConfigError("no practice to poll: none has an intake completions_url in the tenant directory")
    metrics_port = settings.metrics_port if options.metrics_port is None else options.metrics_port
    if not 0 <= metrics_port <= 65535:
        raise ConfigError("--metrics-port must be 0-65535")
    if metrics_port:
        ensure_port_free(options.metrics_host, metrics_port, "metrics endpoint (--metrics-port)")
    configure_logging_from(settings)
    wait_for_broker(settings.bootstrap_servers, settings.connect_timeout_s)
    ensure_topics(settings.bootstrap_servers, [(AUDIT, topic_named(AUDIT).partitions)])
    initial = {options.practice: options.after} if options.after is not None else {}
    asyncio.run(_serve(practices, settings.bootstrap_servers, options, initial, (options.metrics_host, metrics_port)))
    return 0


async def _serve(practices: list[Practice], bootstrap: str, options: argparse.Namespace, initial: dict[str, int],
                 metrics_at: tuple[str, int]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    outputs = KafkaOutputs(bootstrap)
    outputs.start(loop)
    cursors = CursorStore(bootstrap)
    try:
        async with ModMedClient() as client, httpx.AsyncClient(timeout=10.0) as http:
            # Not write-ahead: before each DocumentReference the connector asks ModMed for one with its master
            # identifier, so a completion listed again after a restart is found, not filed twice.
            poller = IntakePoller(practices, ModMedConnector(client, InMemoryLedger()), http, outputs, cursors,
                                  every_s=options.every, backoff=Backoff(base_s=options.every, cap_s=options.backoff_cap),
                                  initial_after=initial)
            server = serve_metrics(poller.metrics.registry, *metrics_at, readiness=poller.heartbeat.ready,
                                   liveness=poller.heartbeat.live)
            log.info("callstream intake run: %d practices every %.0f s, Kafka %s, metrics on http://%s:%d/metrics",
                     len(practices), options.every, bootstrap, metrics_at[0], server.port)
            try:
                await poller.run(stop)
            finally:
                server.close()
    finally:
        await asyncio.to_thread(cursors.close)
        await outputs.close()
