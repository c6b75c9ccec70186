"""`callstream sandbox ...`: run the ModMed emulator or list its practices.

    callstream sandbox [--port 18080] [--seed 7] [--practices 3] [--patients-per-practice 1000]
                       [--mirror FILE] [--faults FILE] [--fault PRACTICE:key=value ...]
                       [--token-ttl SECONDS] [--anchor-date YYYY-MM-DD] [--generate-now 10]
    callstream sandbox --list-practices --json [--port 18080] [same world options]

The port defaults to CALLSTREAM_SANDBOX_PORT (18080). The server binds 127.0.0.1 only: it serves
synthetic data and sandbox credentials. The first `--generate-now` practices' data is generated before
it listens, every other practice's on its first request, so 2,400 practices start in seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import sys
import time
from pathlib import Path

from callstream.backends import ensure_port_free
from callstream.cli_options import add_logging_options, configure_logging_from, settings_from
from callstream.errors import CallstreamError, ConfigError
from sandbox.faults import FaultError, PracticeFaults, load_fault_file, merge_assignments
from sandbox.gateway import ACCESS_LOG
from sandbox.generator import build_world, generate_profile
from sandbox.mirror import MirrorError, apply_mirror, load_mirror
from sandbox.world import SandboxWorld

HOST = "127.0.0.1"
GENERATE_NOW = 10
"""Practices generated before the server listens: every practice of a small world (tests, the demo)."""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be a TCP port (1-65535)")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callstream sandbox", description="ModMed sandbox emulator (FHIR + EMA screens)")
    parser.add_argument("--port", type=_port, help="TCP port on 127.0.0.1 (default $CALLSTREAM_SANDBOX_PORT, else 18080)")
    parser.add_argument("--seed", type=int, default=7, help="generator seed (same seed, same world)")
    parser.add_argument("--practices", type=_positive, default=3, help="number of generated practices")
    parser.add_argument("--patients-per-practice", type=_non_negative, default=1000)
    parser.add_argument("--mirror", type=Path, help="sandbox mirror file (YAML or JSON)")
    parser.add_argument("--faults", type=Path, help="fault file (YAML or JSON): {practice_id: {key: value}}")
    parser.add_argument("--fault", action="append", default=[], metavar="PRACTICE:key=value", help="one fault setting")
    parser.add_argument("--token-ttl", type=_positive, default=3600, help="access token lifetime in seconds")
    parser.add_argument("--anchor-date", type=dt.date.fromisoformat, help="the world's 'today' (default: today, UTC)")
    parser.add_argument("--list-practices", action="store_true", help="print the practices and their credentials")
    parser.add_argument("--json", action="store_true", help="with --list-practices: print JSON")
    parser.add_argument("--generate-now", type=_non_negative, default=GENERATE_NOW, metavar="N",
                        help=f"practices whose data is generated before listening (default {GENERATE_NOW}); "
                             "the others' on their first request")
    add_logging_options(parser)
    return parser


def world_from_args(args: argparse.Namespace, patients: int, generate_now: int | None = None) -> SandboxWorld:
    profiles = [generate_profile(args.seed, i) for i in range(args.practices)]
    if args.mirror is not None:
        profiles = apply_mirror(profiles, load_mirror(args.mirror), args.seed)
    return build_world(
        seed=args.seed, patients_per_practice=patients, anchor=args.anchor_date, profiles=profiles,
        access_token_ttl_seconds=args.token_ttl, generate_now=generate_now,
    )


def _faults(args: argparse.Namespace, world: SandboxWorld) -> dict[str, PracticeFaults]:
    faults = load_fault_file(args.faults) if args.faults is not None else {}
    faults = merge_assignments(faults, args.fault)
    unknown = sorted(set(faults) - set(world.profiles))
    if unknown:
        raise FaultError(f"faults name unknown practices: {', '.join(unknown)}")
    return faults


def _print_practices(world: SandboxWorld, base_url: str, as_json: bool) -> None:
    practices = world.describe(base_url)
    if as_json:
        print(json.dumps(practices, indent=2))
        return
    for p in practices:
        print(f"{p['practice_id']}  {p['name']}  track={p['track']}  prefix={p['firm_url_prefix']}  numbers={','.join(p['called_numbers'])}")
        print(f"    fhir_base={p['fhir_base']}  capabilities={json.dumps(p['capabilities'])}")


def main(argv: list[str]) -> int:
    """`callstream sandbox` (also `python -m sandbox`): a bad option, file or taken port is one line, status 2."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except CallstreamError as error:
        print(f"callstream: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    settings = settings_from(args)
    port = args.port or settings.sandbox_port
    base_url = f"http://{HOST}:{port}"
    if not args.list_practices:
        ensure_port_free(HOST, port, "sandbox (--port or CALLSTREAM_SANDBOX_PORT)")
    try:
        world = world_from_args(args, 0 if args.list_practices else args.patients_per_practice,
                                None if args.list_practices else args.generate_now)
        faults = _faults(args, world)
    except (MirrorError, FaultError, ValueError) as error:
        raise ConfigError(str(error)) from None
    if args.list_practices:
        _print_practices(world, base_url, args.json)
        return 0
    import uvicorn

    from sandbox.app import create_app

    configure_logging_from(settings)
    if settings.log_level != "DEBUG":  # one line per request: the access log is for debugging
        logging.getLogger(ACCESS_LOG).setLevel(logging.WARNING)
    app = create_app(world, faults)
    # The generated data (thousands of resources per practice) lives as long as the server: keep the cyclic
    # GC from rescanning it, or each full collection pauses every request in flight for tens of milliseconds.
    gc.freeze()
    world.on_generated = gc.freeze
    print(f"callstream sandbox: {len(world.profiles)} practices on {base_url} ({world.generated()} generated in "
          f"{time.monotonic() - started:.1f} s, the others on their first request)", flush=True)
    config = uvicorn.Config(app, host=HOST, port=port, access_log=False, log_level="warning", lifespan="off")
    uvicorn.Server(config).run()
    return 0
