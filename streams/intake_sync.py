"""`callstream intake sync`: the process that files completed intake forms and produces their audit events.

The filing itself is connectors.intake (pure of Kafka); this composition root adds the tenant directory,
the ModMed client and the worker's Kafka outputs, which is why it sits in streams/ and not in connectors/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime

import httpx

from callstream.cli_options import (
    add_logging_options,
    add_service_options,
    configure_logging_from,
    require_tenants_file,
    settings_from,
)
from callstream.backends import wait_for_broker
from callstream.errors import ConfigError
from callstream.tenants import Practice, load_tenant_directory
from connectors.fhir import ModMedClient
from connectors.intake import sync_practice
from connectors.ledger import InMemoryLedger
from connectors.operations import ModMedConnector
from streams.intake_run import add_run_parser, run
from streams.outputs import KafkaOutputs

DESCRIPTION = "Completed intake forms onto the chart: each becomes one DocumentReference, through the FHIR allow-list."


def main(argv: list[str]) -> int:
    """`callstream intake sync [--practice P] [--after N]`: file completed intake forms as DocumentReferences."""
    parser = argparse.ArgumentParser(prog="callstream intake", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="action", required=True)
    sync = sub.add_parser("sync", help="file each completed intake form on its chart and audit it")
    sync.add_argument("--practice", help="only this practice (default: every practice with a completions_url)")
    sync.add_argument("--after", type=int, default=0, help="the listing cursor: completions with a higher seq")
    add_service_options(sync, kafka=True, tenants=True)
    add_logging_options(sync)
    add_run_parser(sub)
    options = parser.parse_args(argv)
    if options.action == "run":
        return run(options)
    settings = settings_from(options)
    directory = load_tenant_directory(require_tenants_file(settings, "intake sync"))
    practices = [p for p in directory.values() if p.intake is not None and p.intake.completions_url
                 and options.practice in (None, p.practice_id)]
    if options.practice is not None and options.practice not in directory:
        raise ConfigError(f"no such practice {options.practice!r} in the tenant directory")
    if options.practice is not None and not practices:
        raise ConfigError(f"practice {options.practice!r} has no intake completions_url in the tenant directory")
    wait_for_broker(settings.bootstrap_servers, settings.connect_timeout_s)  # one line, not a producer's retries
    configure_logging_from(settings)
    return asyncio.run(_sync(practices, options.after, settings.bootstrap_servers))


async def _sync(practices: list[Practice], after: int, bootstrap: str) -> int:
    outputs = KafkaOutputs(bootstrap)
    outputs.start(asyncio.get_running_loop())
    failed = 0
    try:
        async with ModMedClient() as client, httpx.AsyncClient(timeout=10.0) as http:
            # An in-memory ledger is enough: without a write-ahead entry the connector asks ModMed (by the master
            # identifier) before each DocumentReference, so a rerun never files a form twice.
            connector = ModMedConnector(client, InMemoryLedger())
            for practice in practices:
                report = await sync_practice(connector, http, practice, after, datetime.now(UTC))
                await asyncio.gather(*(outputs.audit(event) for event in report.audits))
                failed += report.failed
                print(json.dumps(report.summary()), flush=True)
    finally:
        await outputs.close()
    return 1 if failed else 0
