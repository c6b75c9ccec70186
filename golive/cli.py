"""`callstream golive check` and `callstream golive promote` (wired in callstream/cli.py)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from callstream.cli_options import add_service_options, require_tenants_file, settings_from
from callstream.errors import ConfigError
from callstream.tenants import GoLivePhase


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="callstream golive", description="Go-live: scenario catalogue and phase gate.")
    actions = parser.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="run the scenario catalogue against a sandbox started from a mirror")
    check.add_argument("--mirror", type=Path, help="sandbox mirror file (default: the bundled example mirror)")
    check.add_argument("--practice", help="check only this practice of the mirror")
    check.add_argument("--json", action="store_true", help="print only the final JSON line")
    check.add_argument("--junit", type=Path, help="also write a JUnit XML report here")
    check.add_argument("--catalogue", type=Path, help="scenario directory (default: the bundled catalogue)")
    check.add_argument("--concurrency", type=int, default=4, help="calls in progress at once (default 4)")
    check.add_argument("--turn-budget-ms", type=int, default=15_000,
                       help="the check worker's turn budget (default 15000: outcomes, not timing, are checked)")
    add_service_options(check, data_dir=True)  # its broker, sandbox and worker are its own, started here

    promote = actions.add_parser("promote", help="move a practice to its next go-live phase if the gate allows it")
    promote.add_argument("practice")
    promote.add_argument("--to", required=True, choices=[GoLivePhase.READ_ONLY.value, GoLivePhase.WRITE.value])
    promote.add_argument("--mirror", type=Path, help="the practice's current mirror (default: the bundled example)")
    promote.add_argument("--by", help="who promotes (default: the login name)")
    promote.add_argument("--min-read-only-hours", type=float, default=168.0,
                         help="read-only traffic needed before write, in hours (default 168)")
    promote.add_argument("--rules", type=Path, help="the deployment's alert rules (default: the chart's rules.yaml)")
    promote.add_argument("--values", type=Path, help="the deployment's Helm values (default: the chart's values.yaml)")
    # Kafka and ClickHouse: the read-only history and fired guard alarms a promotion to write needs
    add_service_options(promote, kafka=True, clickhouse=True, data_dir=True, tenants=True)
    options = parser.parse_args(argv)
    return _check(options) if options.action == "check" else _promote(options)


def _check(options: argparse.Namespace) -> int:
    from golive.catalogue import CATALOGUE_DIR
    from golive.check import run_check

    if not 1 <= options.concurrency <= 200 or not 1000 <= options.turn_budget_ms <= 60_000:
        raise ConfigError("--concurrency must be 1-200 and --turn-budget-ms 1000-60000")
    outcome = run_check(settings_from(options), mirror=options.mirror, practice=options.practice, out=sys.stdout,
                        catalogue_dir=options.catalogue or CATALOGUE_DIR, json_output=options.json,
                        junit=options.junit, concurrency=options.concurrency, turn_budget_ms=options.turn_budget_ms)
    return 0 if outcome.run.green else 1


def _promote(options: argparse.Namespace) -> int:
    from golive import gate
    from golive.catalogue import EXAMPLE_MIRROR
    from golive.runs import RunStore, code_version, sha256_file

    settings = settings_from(options)
    tenants_file = require_tenants_file(settings, "promote")
    if options.min_read_only_hours < 0:
        raise ConfigError("--min-read-only-hours must not be negative")
    mirror = options.mirror or EXAMPLE_MIRROR
    try:
        mirror_sha = sha256_file(mirror)
    except OSError as exc:
        raise ConfigError(f"cannot read the mirror {mirror}: {exc.strerror}") from None
    target = GoLivePhase(options.to)
    history = None
    unwired: tuple[str, ...] = ()
    if target is GoLivePhase.WRITE:
        from sinks.clickhouse_store import AuditStore

        history = gate.read_only_history(AuditStore.open(settings.effective_clickhouse_dsn), options.practice)
        if history.since is not None:
            history = history.with_alarms(gate.fired_guard_alarms(settings.bootstrap_servers, options.practice,
                                                                  history.since))
        unwired = gate.unwired_alarms(options.rules or gate.DEFAULT_RULES, options.values or gate.DEFAULT_VALUES)
    request = gate.PromotionRequest(
        practice_id=options.practice, target=target, tenants_file=tenants_file, mirror_sha256=mirror_sha,
        code_version=code_version(), promoted_by=options.by or _login(), now=datetime.now(UTC),
        min_read_only=timedelta(hours=options.min_read_only_hours))
    try:
        promotion = gate.promote(request, RunStore(settings.data_dir), history=history, unwired=unwired)
    except gate.PromotionRefused as refused:
        print(f"callstream: refused: {refused}", file=sys.stderr)
        return 1
    print(f"{promotion.practice_id}: {promotion.phase_from} -> {promotion.phase_to} by {promotion.promoted_by} "
          f"at {promotion.promoted_at:%Y-%m-%d %H:%M:%S} UTC (check {promotion.run_id}); restart the workers to apply")
    return 0


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")
