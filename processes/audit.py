"""`callstream audit call|calls|pdf`: the audit trail as a practice reconciles it against the chart.

`audit call` prints the per-call audit record (human readable or ``--json``) with the call's review items,
`audit calls` a practice's calls of a day, `audit pdf` the record as a PDF (qa/pdf.py). Each reads through the
read API of a running sinks process (it owns the embedded store), else opens the store here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from callstream.cli_options import add_service_options, settings_from
from callstream.errors import ConfigError, ServiceUnavailableError
from callstream.settings import Settings
from callstream.tenants import load_tenant_directory
from review.reader import review_reader
from sinks.call_record import render_call_text
from sinks.clickhouse_schema import database_for_dsn
from sinks.clickhouse_store import AuditStore
from sinks.read_api import (
    MAX_PAGE,
    CallReads,
    NotFoundError,
    ReadApiClient,
    api_token,
    check_call_id,
    check_practice_id,
    discover,
    parse_day,
)


def main(argv: list[str]) -> int:
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
