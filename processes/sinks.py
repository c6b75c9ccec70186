"""`callstream sinks run`: the audit sinks with what the applications add to the process.

The sinks (sinks/process.py) run the ClickHouse sink, the SIEM firehose and the audit read API; this module
composes the rest of the deployed process: the call's review items in the read API (review.reader), and,
with a tenant directory, the daily digest's figures endpoint, plus its sender thread and send endpoint when
an SMTP relay is configured (digest.service). `qa serve --with-sinks` composes the same process.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from datetime import date
from typing import Any

from callstream.backends import ensure_port_free
from callstream.cli_options import add_logging_options, add_service_options, configure_logging_from, settings_from
from callstream.errors import ConfigError
from callstream.settings import Settings
from callstream.tenants import TenantDirectory, load_tenant_directory
from digest.log import DigestLog
from digest.service import DigestService
from digest.smtp import SmtpRelay
from review.reader import review_reader
from sinks.clickhouse_schema import cluster_from_env
from sinks.clickhouse_store import AuditStore
from sinks.process import SINK_NAMES, Additions, AddToProcess, run_sinks

logger = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
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
              serve=(options.metrics_host, port), read_api=True, additions=application_additions(settings, tenants),
              on_serving=lambda bound: logger.info(
                  "callstream sinks: metrics on http://%s:%d/metrics (probes /healthz, /readyz)",
                  options.metrics_host, bound))
    return 0


def application_additions(settings: Settings, tenants: TenantDirectory | None) -> AddToProcess:
    """The review items and, with a tenant directory, the digest's parts, for the audit store's database."""
    def add(database: str) -> Additions:
        reviews = review_reader(settings, database)
        digests = _digest_service(settings, database, tenants)
        if digests is None:
            return Additions(reviews=reviews)

        def figures(practice_id: str, day: date) -> dict[str, Any]:
            return digests.figures(practice_id, day).to_json_dict()

        if digests.relay is None:
            return Additions(reviews=reviews, digest_figures=figures)

        def send(day: date | None, practice_id: str | None) -> list[dict[str, Any]]:
            return [outcome.to_json_dict() for outcome in digests.send(day, practice_id)]

        return Additions(reviews=reviews, send_digests=send, digest_figures=figures, runners={"digest": digests.run})

    return add


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
