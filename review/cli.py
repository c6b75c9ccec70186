"""`callstream queue run|list|show|resolve`: the review-queue process and the staff commands.

`run` is the one process that owns the store (review/service.py). The staff commands talk to its HTTP
API on the loopback interface (``--api`` or ``CALLSTREAM_QUEUE_API``, default
http://127.0.0.1:19096), so they work while it runs (the embedded chDB admits one process per data
directory) and every change goes through the store's single writer.

The store's DSN is ``CALLSTREAM_QUEUE_DSN``; unset, a ClickHouse server DSN is shared with the audit
store (table ``review_items`` in the same database), and an embedded chdb:// DSN gets its own sibling
directory (``…/clickhouse-review-queue``), because the audit sink process already holds the first.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import signal
import sys
from datetime import timedelta
from typing import Any

import httpx

from callstream.cli_options import (
    add_logging_options,
    add_service_options,
    configure_logging_from,
    require_tenants_file,
    settings_from,
)
from callstream.backends import ensure_port_free, ensure_topics, wait_for_broker
from callstream.errors import ConfigError, ServiceUnavailableError
from callstream.metrics_server import serve_metrics
from callstream.retry import Backoff
from callstream.settings import Settings, redact_dsn
from callstream.tenants import load_tenant_directory
from connectors.dispatch import Dispatcher
from connectors.fhir import ModMedClient
from connectors.ledger import InMemoryLedger
from connectors.operations import ModMedConnector
from connectors.ratelimit import RateLimiterRegistry
from review.command_log import CommandLog
from review.core import ATTEMPT_LEASE, RETRY_BACKOFF, STALE_AFTER
from review.service import DEFAULT_API_PORT, QueueOptions, ReviewQueue, serve
from review.store import ReviewStore
from schemas.registry import SchemaRegistryClient
from schemas.topics import ALARMS, AUDIT, COMMANDS, topic_named
from sinks.clickhouse_schema import cluster_from_env
from streams.outputs import KafkaOutputs

API_ENV = "CALLSTREAM_QUEUE_API"
DSN_ENV = "CALLSTREAM_QUEUE_DSN"
STATES = ("open", "retrying", "delivered", "resolved")

log = logging.getLogger("callstream.queue")
LIST_STATES = {"open": "open,retrying", "delivered": "delivered", "resolved": "resolved"}
"""What ``queue list --state`` asks the API for: open work is everything not yet delivered nor resolved."""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="callstream queue", description="The review queue: parked work for staff.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="own the queue: intake, retries to ModMed, age alarm, staff API")
    add_service_options(run, kafka=True, clickhouse=True, data_dir=True, tenants=True)
    run.add_argument("--database", help="ClickHouse database (default: the DSN's, else 'callstream')")
    run.add_argument("--api-port", type=int, default=DEFAULT_API_PORT, help="staff API port on 127.0.0.1")
    run.add_argument("--stale-after", type=float, default=STALE_AFTER.total_seconds(),
                     help="seconds an open controlled-substance item may wait before REVIEW_QUEUE_STALE (900)")
    run.add_argument("--retry-base", type=float, default=RETRY_BACKOFF.base_s, help="first retry backoff, seconds")
    run.add_argument("--retry-cap", type=float, default=RETRY_BACKOFF.cap_s, help="longest retry backoff, seconds")
    run.add_argument("--attempt-lease", type=float, default=ATTEMPT_LEASE.total_seconds(),
                     help="seconds an attempt owns its item; a killed attempt's item is retried after it (90)")
    run.add_argument("--tick", type=float, default=1.0, help="seconds between intake/retry/alarm rounds")
    run.add_argument("--metrics-host", default="0.0.0.0", help="address of /metrics, /healthz, /readyz (not the API)")
    run.add_argument("--metrics-port", type=int, help="default $CALLSTREAM_METRICS_PORT, else 9464; 0 picks a free port")
    add_logging_options(run)
    listing = commands.add_parser(
        "list", help="items, oldest first",
        description="Review items, oldest first. --state open lists all work not yet delivered nor resolved, "
                    "including items being retried against ModMed right now; --exact-state filters one stored state.")
    listing.add_argument("--practice")
    states = listing.add_mutually_exclusive_group()
    states.add_argument("--state", choices=tuple(LIST_STATES),
                        help="open: not yet delivered nor resolved (states open and retrying); delivered; resolved")
    states.add_argument("--exact-state", choices=STATES,
                        help="exactly this stored state (open alone leaves out items being retried right now)")
    listing.add_argument("--json", action="store_true")
    show = commands.add_parser("show", help="one item")
    show.add_argument("item_id")
    show.add_argument("--json", action="store_true")
    resolve = commands.add_parser("resolve", help="close an item staff handled")
    resolve.add_argument("item_id")
    resolve.add_argument("--note", required=True, help="what staff did (no PHI: names, dates of birth, numbers)")
    resolve.add_argument("--by", default=None, help="who resolved it (default: the login name)")
    for sub in (listing, show, resolve):
        sub.add_argument("--api", default=os.environ.get(API_ENV, f"http://127.0.0.1:{DEFAULT_API_PORT}"),
                         help=f"the queue process's API (default ${API_ENV} or 127.0.0.1:{DEFAULT_API_PORT})")
    options = parser.parse_args(argv)
    if options.command == "run":
        return _run(options)
    if options.command == "list":
        state = LIST_STATES[options.state] if options.state else options.exact_state
        query = {key: value for key, value in (("practice", options.practice), ("state", state)) if value}
        items = _call(options.api, "GET", "/items", params=query)["items"]
        print(json.dumps(items, indent=2) if options.json else _table(items))
        return 0
    if options.command == "show":
        item = _call(options.api, "GET", f"/items/{options.item_id}")
        print(json.dumps(item, indent=2) if options.json else _details(item))
        return 0
    item = _call(options.api, "POST", f"/items/{options.item_id}/resolve",
                 json={"by": options.by or getpass.getuser(), "note": options.note})
    print(f"resolved {item['item_id']} ({item['kind']}, practice {item['practice_id']}) by {item['resolved_by']}")
    return 0


def queue_dsn(settings: Settings) -> str:
    """The store's DSN (see the module docstring)."""
    explicit = os.environ.get(DSN_ENV)
    if explicit:
        return explicit
    dsn = settings.effective_clickhouse_dsn
    if dsn.startswith("chdb://"):
        path, _, query = dsn.removeprefix("chdb://").partition("?")
        return f"chdb://{path.rstrip('/')}-review-queue" + (f"?{query}" if query else "")
    return dsn


def _run(options: argparse.Namespace) -> int:
    settings = settings_from(options)
    tenants_file = require_tenants_file(settings, "the review queue")
    if options.stale_after <= 0 or options.retry_base <= 0 or options.retry_cap < options.retry_base or options.tick <= 0 \
            or options.attempt_lease <= 0:
        raise ConfigError("--stale-after, --retry-base, --attempt-lease and --tick must be positive, "
                          "--retry-cap at least --retry-base")
    metrics_port = settings.metrics_port if options.metrics_port is None else options.metrics_port
    if not 0 <= metrics_port <= 65535:
        raise ConfigError("--metrics-port must be 0-65535")
    tenants = load_tenant_directory(tenants_file)
    if metrics_port:
        ensure_port_free(options.metrics_host, metrics_port, "metrics endpoint (--metrics-port)")
    if options.api_port:
        ensure_port_free("127.0.0.1", options.api_port, "staff API (--api-port)")
    configure_logging_from(settings)
    bootstrap = settings.bootstrap_servers
    wait_for_broker(bootstrap, settings.connect_timeout_s)
    ensure_topics(bootstrap, [(name, topic_named(name).partitions) for name in (COMMANDS, AUDIT, ALARMS)])
    store = ReviewStore.open(queue_dsn(settings), options.database, cluster_from_env())
    store.migrate()
    queue_options = QueueOptions(api_port=options.api_port, tick_s=options.tick,
                                 stale_after=timedelta(seconds=options.stale_after),
                                 backoff=Backoff(base_s=options.retry_base, cap_s=options.retry_cap),
                                 lease=timedelta(seconds=options.attempt_lease),
                                 session_timeout_ms=settings.consumer_session_timeout_ms)
    metrics_at = (options.metrics_host, metrics_port)
    registry = SchemaRegistryClient(settings.schema_registry_url) if settings.schema_registry_url else None
    try:
        asyncio.run(_serve(settings, store, tenants, queue_options, registry, metrics_at))
    finally:
        if registry is not None:
            registry.close()
    return 0


async def _serve(settings: Settings, store: ReviewStore, tenants: Any, options: QueueOptions,
                 registry: SchemaRegistryClient | None, metrics_at: tuple[str, int]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    outputs = KafkaOutputs(settings.bootstrap_servers, registry=registry)
    outputs.start(loop)
    commands = CommandLog(settings.bootstrap_servers, options.session_timeout_ms, registry)
    try:
        limiters = RateLimiterRegistry()
        limiters.set_share(settings.rate_budget_reserve)  # the workers split the rest (connectors.ratelimit)
        async with ModMedClient(limiters=limiters) as client:
            # Not write-ahead: every attempt asks ModMed for a Task with the key before it writes one.
            ledger = InMemoryLedger()
            dispatcher = Dispatcher(ModMedConnector(client, ledger), ledger)
            queue = ReviewQueue(store, tenants, dispatcher, outputs, commands, options)
            server = serve_metrics(queue.metrics.registry, *metrics_at, readiness=queue.rounds.ready,
                                   liveness=queue.rounds.live)
            log.info("callstream queue: %d practices, Kafka %s, store %s, metrics on http://%s:%d/metrics", len(tenants),
                     settings.bootstrap_servers, redact_dsn(queue_dsn(settings)), metrics_at[0], server.port)
            try:
                await serve(queue, stop)
            finally:
                server.close()
    finally:
        commands.close()
        await outputs.close()


def _call(api: str, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = httpx.request(method, api.rstrip("/") + path, timeout=10.0, trust_env=False, **kwargs)
    except httpx.HTTPError:
        raise ServiceUnavailableError(f"no review queue answers at {api} (is `callstream queue run` running?)") from None
    if response.status_code >= 400:
        try:
            message = response.json().get("error", response.reason_phrase)
        except ValueError:
            message = response.reason_phrase
        raise ConfigError(str(message))
    return response.json()


def _table(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no review items"
    lines = [f"{'item':36}  {'practice':10}  {'kind':18}  {'reason':18}  {'state':9}  cs  {'tries':>5}  created"]
    for item in items:
        lines.append(f"{item['item_id']:36}  {item['practice_id']:10}  {item['kind']:18}  {item['reason']:18}  "
                     f"{item['state']:9}  {'yes' if item['controlled_substance'] else 'no ':3} {item['attempts']:>5}  "
                     f"{item['created_at']}")
    return "\n".join(lines)


def _details(item: dict[str, Any]) -> str:
    lines = [f"{key}: {value}" for key, value in item.items() if key != "detail" and value is not None]
    lines += ["detail:", *(f"  {key}: {value}" for key, value in sorted(item["detail"].items()))]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
