"""`callstream digest send [--date D] [--practice P]`: send the daily digest now.

Through the running sinks process (its read API's ``POST /v1/digests``) when there is one, since it owns the
embedded store; otherwise from this process. Either way a practice's digest of a day goes out at most once
(digest/log.py): a second run reports it as already sent.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from typing import Any

from callstream.cli_options import add_service_options, require_tenants_file, settings_from
from callstream.errors import ConfigError, ServiceUnavailableError
from callstream.settings import Settings
from callstream.tenants import load_tenant_directory
from digest.log import DigestLog
from digest.service import DigestService
from digest.smtp import SmtpRelay
from review.reader import review_reader
from sinks.clickhouse_schema import cluster_from_env, database_for_dsn
from sinks.clickhouse_store import AuditStore
from sinks.read_api import ReadApiClient, api_token, check_practice_id, discover, parse_day


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="callstream digest", description="The daily escalation digest e-mail.")
    commands = parser.add_subparsers(dest="command", required=True)
    send = commands.add_parser("send", help="send the digests of a day now (at most once per practice and day)")
    send.add_argument("--date", help="YYYY-MM-DD (default: each practice's previous day in its time zone)")
    send.add_argument("--practice", help="one practice id (default: every practice with digest_recipients)")
    send.add_argument("--database", help="ClickHouse database (default: the DSN's, else 'callstream')")
    send.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    add_service_options(send, clickhouse=True, data_dir=True, tenants=True)
    options = parser.parse_args(argv)
    day = parse_day(options.date, "UTC") if options.date else None
    practice = check_practice_id(options.practice) if options.practice else None
    settings = settings_from(options)
    database = database_for_dsn(settings.effective_clickhouse_dsn, options.database)
    outcomes = _send(settings, database, day, practice)
    if options.json:
        print(json.dumps(outcomes, indent=2))
    for outcome in [] if options.json else outcomes:
        detail = {"sent": f"sent to {outcome['recipients']} recipient(s)", "already_sent": "already sent",
                  "unconfirmed": "a send without a recorded outcome exists (not sent again)",
                  "no_recipients": "no digest_recipients in the tenant directory",
                  "failed": f"FAILED: {outcome['error']}"}[outcome["status"]]
        print(f"{outcome['practice_id']} {outcome['date']}: {detail}")
    return 1 if any(outcome["status"] == "failed" for outcome in outcomes) else 0


def _send(settings: Settings, database: str, day: date | None, practice: str | None) -> list[dict[str, Any]]:
    url = discover(settings, database)
    if url is not None:
        try:
            return ReadApiClient(url, api_token(settings)).send_digests(day, practice)
        except ServiceUnavailableError:
            pass  # the process went away: send from here
    relay = SmtpRelay.from_settings(settings)
    if relay is None:
        raise ConfigError("no SMTP relay configured: set CALLSTREAM_SMTP_HOST (and port, security, credentials)")
    tenants = load_tenant_directory(require_tenants_file(settings, "the digest (its recipients)"))
    dsn = settings.effective_clickhouse_dsn
    store = AuditStore.open(dsn, database)
    if not store.is_initialised():
        raise ConfigError(f"no audit store in ClickHouse database {store.database} (has `callstream sinks run` run?)")
    sends = DigestLog.open(dsn, database, cluster_from_env())
    sends.migrate()
    service = DigestService(store, sends, tenants, relay, reviews=review_reader(settings, database),
                            sender=settings.digest_sender, call_url=settings.digest_call_url,
                            send_at=settings.digest_send_at)
    return [outcome.to_json_dict() for outcome in service.send(day, practice)]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
