"""`callstream qa serve` and `callstream qa adduser`.

Where the QA view runs: in a process that has the audit store open. On a ClickHouse server that is any
number of `callstream qa serve` processes beside the sinks. On the embedded chDB one process owns the
data directory, so `qa serve` either runs where nothing else holds it (e.g. after `make demo`) or, with
``--with-sinks``, is itself the audit sink process: it runs the ClickHouse sink (and the SIEM firehose
with a tenant directory that has SIEM endpoints) and the audit read API in threads, exactly as
`callstream sinks run` does, and serves the pages from the same engine.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from callstream.cli_options import (
    add_logging_options,
    add_service_options,
    configure_logging_from,
    require_tenants_file,
    settings_from,
)
from callstream.backends import ensure_port_free
from callstream.errors import ConfigError, ServiceUnavailableError
from callstream.secrets import read_secret
from callstream.settings import Settings
from callstream.tenants import TenantDirectory, load_tenant_directory
from qa.app import QaConfig
from qa.pdf import record_sha256, write_call_pdf
from qa.records import QaRecords
from qa.server import QaServer
from qa.users import UserDirectory, add_user, default_users_ref
from review.reader import review_reader
from sinks.clickhouse_store import AuditStore
from sinks.read_api import NotFoundError

log = logging.getLogger(__name__)

DEFAULT_PORT = 19098
SECRET_REF_ENV = "CALLSTREAM_QA_SECRET_REF"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="callstream qa", description="The QA web view for practice staff.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the QA view (calls, call detail, escalations, PDF)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--users", help="users reference, file:/path or env:VAR (default CALLSTREAM_QA_USERS, "
                                       "else file:<data dir>/qa-users.json)")
    serve.add_argument("--database", help="ClickHouse database (default: the DSN's, else 'callstream')")
    serve.add_argument("--secret-ref", help="env:VAR or file:/path holding the cookie-signing key (default "
                                            f"{SECRET_REF_ENV}; unset: a new key per start, signing everyone out)")
    serve.add_argument("--secure-cookies", action="store_true", help="mark cookies Secure (behind a TLS proxy)")
    serve.add_argument("--no-review-queue", action="store_true", help="do not read review-queue items")
    serve.add_argument("--with-sinks", action="store_true",
                       help="also run the audit sinks in this process (the embedded chDB's one owner; Kafka from -b)")
    add_service_options(serve, kafka=True, clickhouse=True, data_dir=True, tenants=True)
    add_logging_options(serve)
    adduser = commands.add_parser("adduser", help="add a user (or set a user's password) in the users file")
    adduser.add_argument("username")
    adduser.add_argument("--practice", required=True, help="the practice id the user sees")
    adduser.add_argument("--users", help="file:/path (default CALLSTREAM_QA_USERS, else file:<data dir>/qa-users.json)")
    adduser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add_service_options(adduser, data_dir=True)
    options = parser.parse_args(argv)
    settings = settings_from(options)
    if options.command == "adduser":
        return _adduser(options, settings)
    return _serve(options, settings)


def _adduser(options: argparse.Namespace, settings: Settings) -> int:
    ref = options.users or default_users_ref(settings.data_dir)
    if options.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {options.username}: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the passwords differ")
    new = add_user(ref, options.username, options.practice, password)
    print(f"{'added' if new else 'updated'} {options.username} (practice {options.practice}) in {ref}")
    return 0


def qa_config(settings: Settings, tenants: TenantDirectory, store: AuditStore, *, users_ref: str | None = None,
              secret_ref: str | None = None, secure_cookies: bool = False, review_queue: bool = True,
              database: str | None = None) -> QaConfig:
    """The app's configuration from settings and options (see the module docstring)."""
    users = UserDirectory(users_ref or default_users_ref(settings.data_dir))
    unknown = sorted({user.practice_id for user in users.all()} - set(tenants))
    if unknown:
        log.warning("QA users of practices not in the tenant directory cannot sign in: %s", ", ".join(unknown))
    secret_ref = secret_ref or os.environ.get(SECRET_REF_ENV)
    if secret_ref:
        secret = read_secret(secret_ref, "QA cookie key")
    else:
        secret = secrets.token_urlsafe(32)
        log.warning("QA view: no cookie key reference (%s): sessions end when this process stops", SECRET_REF_ENV)
    reviews = review_reader(settings, database) if review_queue else None
    return QaConfig(QaRecords(store, reviews, tenants), users, tenants, secret, secure_cookies)


def _serve(options: argparse.Namespace, settings: Settings) -> int:
    tenants = load_tenant_directory(require_tenants_file(settings, "the QA view (practice names and time zones)"))
    if not 0 <= options.port <= 65535:
        raise ConfigError("--port must be 0-65535")
    if options.port:  # before the store opens and the sinks start: a taken port leaves nothing running
        ensure_port_free(options.host, options.port, "QA view (--port)")
    configure_logging_from(settings)  # once the arguments are good: a caller's own logging stays as it was
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    dsn = settings.effective_clickhouse_dsn
    try:
        store = AuditStore.open(dsn, options.database)
    except ServiceUnavailableError as exc:
        if not dsn.startswith("chdb://"):
            raise
        raise ServiceUnavailableError(f"{exc} (if `callstream sinks run` holds this embedded data directory, stop it "
                                      "and run `callstream qa serve --with-sinks` in its place)") from None
    failures: list[BaseException] = []
    sinks = None
    if options.with_sinks:
        store.migrate()  # before the sink threads start: they find the schema current
        sinks = _start_sinks(settings, tenants, options.database, stop, failures)
    elif not store.is_initialised():
        raise ConfigError(f"no audit store in ClickHouse database {store.database} (has `callstream sinks run` run?)")
    config = qa_config(settings, tenants, store, users_ref=options.users, secret_ref=options.secret_ref,
                       secure_cookies=options.secure_cookies, review_queue=not options.no_review_queue,
                       database=options.database)
    with QaServer(config, options.host, options.port) as server:
        print(f"QA view on {server.url} ({len(config.users)} users)", flush=True)
        while not stop.wait(1.0):
            if sinks is not None and not sinks.is_alive():
                break
    if sinks is not None:
        stop.set()
        sinks.join(30)
        if failures:
            raise failures[0]
    return 0


def _start_sinks(settings: Settings, tenants: TenantDirectory, database: str | None, stop: threading.Event,
                 failures: list[BaseException]) -> threading.Thread:
    """`callstream sinks run` in a thread of this process (SIEM too when a practice has an endpoint), with the
    audit read API (with the review items and the digest, as processes/sinks.py composes them), so `callstream
    audit call|pdf` keep working; a failure lands in ``failures`` and stops the process."""
    from processes.sinks import application_additions
    from sinks.process import run_sinks

    only = None if any(practice.siem for practice in tenants.values()) else "clickhouse"

    def run() -> None:
        try:
            run_sinks(settings, stop, tenants=tenants, database=database, only=only, read_api=True,
                      additions=application_additions(settings, tenants))
        except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread
            failures.append(exc)

    thread = threading.Thread(target=run, name="qa-audit-sinks", daemon=True)
    thread.start()
    return thread


def audit_pdf(call_id: str, out: Path, read: Callable[[Callable[[Any], dict[str, Any]]], dict[str, Any]], *,
              tenants_file: Path | None, practice_id: str | None = None) -> int:
    """`callstream audit pdf CALL_ID --out FILE`: the call's record as a PDF; ``read`` runs a read on the sinks
    process's read API when it runs, else on the store opened here (processes/audit.py), as `audit call` does."""
    if tenants_file is None:
        raise ConfigError("the PDF names the practice: --tenants FILE or CALLSTREAM_TENANTS_FILE")
    tenants = load_tenant_directory(tenants_file)
    try:
        record = read(lambda reads: reads.call(call_id, practice_id))
    except NotFoundError as exc:
        print(f"callstream: {exc}", file=sys.stderr)
        return 1
    practice = tenants.get(record["practice_id"])
    if practice is None:
        raise ConfigError(f"practice {record['practice_id']} is not in the tenant directory {tenants_file}")
    size = write_call_pdf(record, practice.name, out)
    print(f"wrote {out} ({size} bytes; record SHA-256 {record_sha256(record)})")
    return 0
