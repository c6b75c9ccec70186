"""`callstream` command line: a thin dispatcher to each package's own sub-commands.

Each group maps to a ``main(argv) -> int`` imported only when used, so `callstream --help` stays fast
and every package owns its commands. Any CallstreamError becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from callstream import __version__
from callstream.errors import CallstreamError, ConfigError

# group → (module:function, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "dev": ("devkit.broker:main", "start, stop or check the embedded Kafka + ClickHouse stack"),
    "tenants": ("callstream.cli:tenants_main", "validate a practice (tenant) directory file"),
    "sandbox": ("sandbox.cli:main", "run the ModMed sandbox emulator (FHIR + EMA screens) on 127.0.0.1"),
    "export": ("connectors.bulk:main", "bulk-export a certified-track practice's data as ndjson"),
    "bench": ("callstream.cli:bench_main",
              "benchmarks: fhir-rate (connector rate limiter), pipeline, ledger (restore with the redelivery horizon)"),
    "worker": ("streams.cli:worker_main", "run the stream pipeline (call events → guards → ModMed → replies, audit)"),
    "replay": ("devkit.replay:main",
               "play scripted calls (JSONL) as the telephony side would: what each caller heard, what happened"),
    "audit": ("processes.audit:main", "the audit trail: `audit call CALL_ID`, `audit calls --practice P [--date D]`"),
    "sinks": ("processes.sinks:main", "run the audit sinks: ClickHouse store and per-practice SIEM firehose"),
    "digest": ("digest.cli:main", "the daily escalation digest e-mail: `digest send [--date D] [--practice P]`"),
    "dlq": ("streams.dlq:main",
            "dead letters of both dead-letter topics: `dlq list`, `dlq show ID` (PHI redacted), `dlq replay`"),
    "siem": ("sinks.redeliver:main", "SIEM firehose operations: `siem redeliver --practice P` re-sends dead letters"),
    "queue": ("review.cli:main", "the review queue: `queue run` (intake, retries, age alarm), `list`, `show`, `resolve`"),
    "ema": ("connectors.ema.cli:main", "EMA automation: lockout status and operator unlock"),
    "intake": ("streams.intake_sync:main", "completed intake forms onto the chart: `intake sync [--practice P] [--after N]`"),
    "qa": ("qa.cli:main", "the QA web view for practice staff (`qa serve`) and its users (`qa adduser`)"),
    "demo": ("devkit.demo:main", "run a morning of calls end to end on the embedded stack (what `make demo` runs)"),
    "golive": ("golive.cli:main",
               "go-live: `golive check` runs the scenario catalogue on a mirror, `golive promote P --to PHASE` gates phases"),
}

# benchmark name → module:function; each prints its figures as one JSON object on its last line
BENCHMARKS: dict[str, str] = {
    "fhir-rate": "devkit.bench_fhir:main",
    "pipeline": "devkit.bench_pipeline:main",
    "ledger": "devkit.bench_ledger:main",
}


def _load(target: str) -> Callable[[list[str]], int]:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)  # type: ignore[no-any-return]


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callstream",
        description="Integration layer between an AI phone receptionist and ModMed for pain practices.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()),
    )
    parser.add_argument("--version", action="version", version=f"callstream {__version__}")
    parser.add_argument("command", nargs="?", choices=sorted(COMMANDS), metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = _top_parser()
    parsed = parser.parse_args(arguments)
    # httpx logs every request URL at INFO; FHIR search URLs carry names and birth dates (PHI).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if parsed.command is None:
        parser.print_help()
        return 0
    try:
        return _load(COMMANDS[parsed.command][0])(parsed.args)
    except CallstreamError as exc:
        print(f"callstream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


def bench_main(argv: list[str]) -> int:
    """`callstream bench NAME ...`: hands the whole argument list to the named benchmark."""
    if not argv or argv[0] not in BENCHMARKS:
        names = ", ".join(sorted(BENCHMARKS))
        print(f"usage: callstream bench {{{names}}} [options]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return _load(BENCHMARKS[argv[0]])(argv)


def tenants_main(argv: list[str]) -> int:
    """`callstream tenants check FILE`: validate a directory before it is deployed, credential references
    included (resolved where this runs, as the worker resolves them): one line per unresolvable one."""
    from callstream.cli_options import TENANTS_HELP
    from callstream.settings import load_settings
    from callstream.tenants import load_tenant_directory, unresolvable_credentials

    parser = argparse.ArgumentParser(prog="callstream tenants", description="Practice (tenant) directory tools.")
    parser.add_argument("action", choices=["check"])
    parser.add_argument("file", type=Path, nargs="?", help=f"the directory to check; {TENANTS_HELP}")
    parser.add_argument("--json", action="store_true", help="print the practices (no secrets) as JSON")
    parser.add_argument("--skip-credentials", action="store_true",
                        help="do not resolve the credential references (where the secrets are not mounted, e.g. CI)")
    options = parser.parse_args(argv)
    options.file = options.file or load_settings().tenants_file
    if options.file is None:
        raise ConfigError("tenants check needs a file: FILE or CALLSTREAM_TENANTS_FILE")
    directory = load_tenant_directory(options.file)
    problems = [] if options.skip_credentials else unresolvable_credentials(directory)
    if problems:
        for problem in problems:
            print(f"callstream: error: {problem}", file=sys.stderr)
        return 2
    if options.json:
        print(json.dumps([directory[pid].model_dump(mode="json") for pid in directory], indent=2))
    else:
        print(f"{options.file}: {len(directory)} practices valid")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
