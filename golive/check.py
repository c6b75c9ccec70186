"""`callstream golive check`: the catalogue against a sandbox started from a practice's mirror.

Starts a private broker, the sandbox (from the mirror, the example one when none is given), and a
`callstream worker` whose tenant directory has each mirrored practice once per go-live phase; plays and checks
every applicable scenario (``planning``, ``harness``, ``scenario_checks``), prints one line per scenario as it
is checked and a report of the failures, records the run for the phase gate (``runs``) and ends with one JSON line.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import httpx
import yaml

from callstream.backends import free_port
from callstream.errors import ConfigError
from callstream.settings import Settings
from callstream.tenants import load_tenant_directory
from golive.catalogue import CATALOGUE_DIR, EXAMPLE_MIRROR, load_catalogue
from golive.audit_collector import AuditCollector
from golive.harness import DEFAULT_CONCURRENCY, merge_reports, play, set_faults
from golive.planning import ALWAYS_OPEN, NotApplicable, Planned, Planner, tenant_entries
from golive.scenario_checks import ScenarioResult, check_all
from golive.sms_receiver import SmsReceiver
from golive.runs import CheckRun, RunStore, code_version, sha256_file
from sandbox.generator import build_world, generate_profile
from sandbox.mirror import MirrorError, MirrorFile, apply_mirror, load_mirror
from devkit.sandbox_tenants import practice_entry, sandbox_listing
from devkit.cast import Script
from devkit.services import private_broker, sandbox_process, worker_process
from devkit.telephony import ReplayReport

SEED = 7
PATIENTS_PER_PRACTICE = 400
CHECK_TURN_BUDGET_MS = 15_000
"""The check's worker answers within 15 s instead of 4: the scenarios check what happens, on whatever box runs
them (EMA screens in Chromium on a loaded CI machine); the 4 s budget's hand-off to staff is a timing property
the benchmarks and end-to-end tests cover."""
CHECK_RATE_LIMIT_PER_MIN = 6000
"""The check's calls reach one practice under several tenant entries (one per phase); the sandbox and the
connector allow this much so the run measures behaviour, not the practice's 1,000-a-minute budget."""


@dataclass(frozen=True)
class CheckOutcome:
    run: CheckRun
    results: list[ScenarioResult]
    not_applicable: list[NotApplicable]

    def summary(self) -> dict[str, Any]:
        return {"scenarios": self.run.scenarios, "passed": self.run.passed, "failed": list(self.run.failed),
                "mirror_sha256": self.run.mirror_sha256, "code_version": self.run.code_version}


def run_check(settings: Settings, *, mirror: Path | None, practice: str | None, out: TextIO,
              catalogue_dir: Path = CATALOGUE_DIR, json_output: bool = False, junit: Path | None = None,
              concurrency: int = DEFAULT_CONCURRENCY, turn_budget_ms: int = CHECK_TURN_BUDGET_MS) -> CheckOutcome:
    """Run the catalogue; records the run under the data directory and returns it."""
    mirror_path = (mirror or EXAMPLE_MIRROR).resolve()
    scenarios = load_catalogue(catalogue_dir)
    try:
        mirror_file = load_mirror(mirror_path)
    except MirrorError as exc:
        raise ConfigError(str(exc)) from None
    practices = [entry.practice_id for entry in mirror_file.practices]
    if practice is not None:
        if practice not in practices:
            raise ConfigError(f"practice {practice} is not in the mirror {mirror_path} (it has {', '.join(practices)})")
        practices = [practice]
    say = _printer(out, quiet=json_output)
    started = datetime.now(UTC)
    clock = time.monotonic()
    version = code_version()
    run_dir = (settings.data_dir / "golive" / f"check-{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    anchor = started.date()
    fault_sets = sorted({s.faults.model_dump_json(exclude_defaults=True) for s in scenarios if s.faults is not None})
    sandbox_mirror = _mirror_with_twins(mirror_path, mirror_file, practices, len(fault_sets), run_dir)
    profiles = apply_mirror([generate_profile(SEED, 0)], load_mirror(sandbox_mirror), SEED)
    world = build_world(seed=SEED, patients_per_practice=PATIENTS_PER_PRACTICE, anchor=anchor, profiles=profiles)
    say(f"catalogue {len(scenarios)} scenarios from {catalogue_dir}")
    say(f"mirror    {mirror_path} ({', '.join(practices)})")
    say(f"calls     {concurrency} at a time, turn budget {turn_budget_ms} ms")
    with ExitStack() as stack:
        bootstrap = stack.enter_context(private_broker(run_dir))
        sandbox_url = stack.enter_context(sandbox_process(
            run_dir, seed=SEED, patients=PATIENTS_PER_PRACTICE, practices=1,
            extra_args=("--mirror", str(sandbox_mirror), "--anchor-date", anchor.isoformat())))
        say(f"sandbox   {sandbox_url}")
        twins = [twin_id(p, k) for p in practices for k in range(len(fault_sets))]
        sms = SmsReceiver()
        stack.callback(sms.close)
        tenants_file = _tenant_directory(sandbox_url, run_dir, practices, twins, sms)
        tenants = load_tenant_directory(tenants_file)
        audit = AuditCollector(bootstrap)
        stack.callback(audit.close)
        stack.enter_context(worker_process(bootstrap, tenants_file, run_dir, app_id=f"callstream-golive-{uuid.uuid4().hex[:8]}",
                                           port=free_port(), ready_timeout_s=90.0,
                                           extra_env={"CALLSTREAM_TURN_BUDGET_MS": str(turn_budget_ms)}))
        say(f"worker    ready ({time.monotonic() - clock:.1f} s)")
        planner = Planner(world, tenants, anchor, started)
        plans: list[Planned] = []
        skipped: list[NotApplicable] = []
        for practice_id in practices:
            for scenario in scenarios:
                on = None
                if scenario.faults is not None:
                    on = twin_id(practice_id, fault_sets.index(scenario.faults.model_dump_json(exclude_defaults=True)))
                planned = planner.plan(scenario, practice_id, on=on)
                (plans if isinstance(planned, Planned) else skipped).append(planned)  # type: ignore[arg-type]
        warm_ups = {twin: planner.warm_up(twin) for twin in twins}
        results = _play_and_check(plans, warm_ups, bootstrap, sandbox_url, audit, world, started, say, concurrency,
                                  sms.messages)
    seconds = time.monotonic() - clock
    failed = sorted(r.label for r in results if not r.passed)
    run = CheckRun(run_id=str(uuid.uuid4()), finished_at=datetime.now(UTC), practices=tuple(practices),
                   mirror_sha256=sha256_file(mirror_path), code_version=version, scenarios=len(results),
                   passed=sum(r.passed for r in results), failed=tuple(failed),
                   not_applicable=tuple(n.label for n in skipped), seconds=round(seconds, 1))
    RunStore(settings.data_dir).record_run(run)
    outcome = CheckOutcome(run, sorted(results, key=lambda r: r.label), skipped)
    _report(say, outcome, seconds)
    if junit is not None:
        write_junit(junit, outcome)
    print(json.dumps(outcome.summary()), file=out, flush=True)
    return outcome


def _play_and_check(plans: list[Planned], warm_ups: dict[str, Script], bootstrap: str, sandbox_url: str,
                    audit: AuditCollector, world: Any, started: datetime, say: Any,
                    concurrency: int, messages: list[dict[str, Any]]) -> list[ScenarioResult]:
    """Scenarios without faults, a few calls at a time; beside them, each fault set on its own twin practice:
    a warm-up call (so the worker holds a token there), the faults set, its scenarios played, the faults cleared."""
    groups: dict[str, list[Planned]] = defaultdict(list)
    for plan in plans:
        groups[plan.practice.practice_id if plan.scenario.faults is not None else ""].append(plan)
    main = groups.pop("", [])
    clock = time.monotonic()

    def play_group(twin: str, stage: list[Planned]) -> ReplayReport:
        faults = stage[0].scenario.faults
        assert faults is not None
        play(bootstrap, [warm_ups[twin]])
        set_faults(sandbox_url, twin, faults.model_dump(exclude_defaults=True))
        try:
            report = play(bootstrap, stage)
            audit.wait_ended(plan.call_id for plan in stage)
        finally:
            set_faults(sandbox_url, twin, None)
        say(f"played    {len(stage)} calls with faults {faults.model_dump_json(exclude_defaults=True)} "
            f"({time.monotonic() - clock:.1f} s)")
        return report

    say(f"playing   {len(main)} calls, and {sum(map(len, groups.values()))} with faults on "
        f"{len(groups)} twin practices beside them")
    with ThreadPoolExecutor(max_workers=max(1, len(groups)), thread_name_prefix="golive-faults") as pool:
        pending = [pool.submit(play_group, twin, stage) for twin, stage in sorted(groups.items())]
        answered = Counter[str]()

        def call_done(call_id: str) -> None:
            answered["n"] += 1
            if answered["n"] % 10 == 0 or answered["n"] == len(main):
                say(f"          {answered['n']}/{len(main)} calls ended ({time.monotonic() - clock:.1f} s)")

        reports = [play(bootstrap, main, call_done, concurrency)]
        open_calls = audit.wait_ended(plan.call_id for plan in main)
        reports += [future.result() for future in pending]
    if open_calls:
        say(f"          {len(open_calls)} calls never audited their end")
    report = merge_reports(reports)
    _write_latencies(say, [record for plan in plans for record in audit.of_call(plan.call_id)])
    total = len(plans)
    done = Counter[str]()

    def progress(result: ScenarioResult) -> None:
        done["n"] += 1
        say(f"[{done['n']:>3}/{total}] {'PASS' if result.passed else 'FAIL'} {result.label}")

    return asyncio.run(check_all(plans, report, audit, world, started, progress, messages))


def twin_id(practice_id: str, index: int) -> str:
    """The sandbox practice a mirrored practice's fault scenarios of one fault set run at."""
    return f"{practice_id}-golive-fault-{index + 1}"


def _mirror_with_twins(mirror_path: Path, mirror_file: MirrorFile, practices: list[str], fault_sets: int,
                       run_dir: Path) -> Path:
    """The mirror plus, per checked practice, one twin per fault set: the same entry under another id, with the
    track and capabilities the original resolved to (a new practice would otherwise get a generated variant's)."""
    resolved = {p.practice_id: p for p in apply_mirror([generate_profile(SEED, 0)], mirror_file, SEED)}
    entries = [entry.model_dump(mode="json", exclude_none=True) for entry in mirror_file.practices]
    for entry in list(entries):
        profile = resolved[entry["practice_id"]]
        if profile.practice_id not in practices:
            continue
        for index in range(fault_sets):
            twin = {**copy.deepcopy(entry), "practice_id": twin_id(profile.practice_id, index),
                    "name": f"{profile.name} (fault twin {index + 1})", "track": profile.track,
                    "timezone": profile.timezone, "fhir_task_create": profile.fhir_task_create,
                    "fhir_compliance_flags": profile.fhir_compliance_flags}
            twin.pop("firm_url_prefix", None)
            entries.append(twin)
    path = run_dir / "sandbox-mirror.yaml"
    path.write_text(yaml.safe_dump({"practices": entries}, sort_keys=False), encoding="utf-8")
    return path


def _write_latencies(say: Any, records: list[Any]) -> None:
    """How long ModMed writes took by route: what slowed a run down when turns ran out of budget."""
    for action in ("FHIR_WRITE", "EMA_WRITE"):
        latencies = sorted(r.latency_ms for r in records if r.action.value == action and r.latency_ms is not None)
        if latencies:
            say(f"writes    {action}: {len(latencies)}, median {latencies[len(latencies) // 2]:.0f} ms, "
                f"max {latencies[-1]:.0f} ms")


def _tenant_directory(sandbox_url: str, run_dir: Path, practices: list[str], twins: list[str],
                      sms: SmsReceiver) -> Path:
    """Each practice's tenant entries (``planning.tenant_entries``: per phase, closed, holiday, with intake) and
    each fault twin's one entry, credentials in 0600 files."""
    secrets = run_dir / "secrets"
    secrets.mkdir(mode=0o700, exist_ok=True)
    entries: list[dict[str, Any]] = []
    for index, listing in enumerate(item for item in sandbox_listing(sandbox_url)
                                    if item["practice_id"] in practices or item["practice_id"] in twins):
        response = httpx.put(f"{sandbox_url}/_admin/practices/{listing['practice_id']}/settings",
                             json={"rate_limit_per_minute": CHECK_RATE_LIMIT_PER_MIN}, timeout=10.0, trust_env=False)
        response.raise_for_status()
        entry = practice_entry(listing, secrets, rate_limit_per_min=CHECK_RATE_LIMIT_PER_MIN)
        if listing["practice_id"] in twins:
            entries.append({**entry, "office_hours": {"weekly": ALWAYS_OPEN}})  # fault scenarios: sandbox phase only
            continue
        today = datetime.now(ZoneInfo(str(listing["timezone"]))).date()
        entries.extend(tenant_entries(entry, index, today, sms.intake_config(secrets)))
    path = run_dir / "tenants.yaml"
    path.write_text(yaml.safe_dump({"practices": entries}, sort_keys=False), encoding="utf-8")
    return path


def _printer(out: TextIO, *, quiet: bool) -> Any:
    def say(line: str) -> None:
        if not quiet:
            print(line, file=out, flush=True)
    return say


def _report(say: Any, outcome: CheckOutcome, seconds: float) -> None:
    by_category: dict[str, list[ScenarioResult]] = defaultdict(list)
    for result in outcome.results:
        by_category[result.category].append(result)
    say("")
    say(f"{outcome.run.passed} of {outcome.run.scenarios} scenarios passed in {seconds:.1f} s")
    for category, results in sorted(by_category.items()):
        say(f"  {category:<14} {sum(r.passed for r in results):>3}/{len(results)}")
    for result in outcome.results:
        if not result.passed:
            say(f"FAIL {result.label} ({result.call_id}); heard {' → '.join(result.heard) or 'nothing'}")
            for problem in result.problems:
                say(f"     - {problem}")
    for skipped in outcome.not_applicable:
        say(f"n/a  {skipped.label}: {skipped.reason}")


def write_junit(path: Path, outcome: CheckOutcome) -> None:
    """A JUnit XML report (one testcase per scenario, classname the category) for CI."""
    suite = ET.Element("testsuite", name="callstream-golive", tests=str(len(outcome.results) + len(outcome.not_applicable)),
                       failures=str(len(outcome.run.failed)), skipped=str(len(outcome.not_applicable)),
                       time=f"{outcome.run.seconds:.1f}")
    for result in outcome.results:
        case = ET.SubElement(suite, "testcase", classname=f"golive.{result.category}", name=result.label)
        if not result.passed:
            failure = ET.SubElement(case, "failure", message=result.problems[0][:200])
            failure.text = "\n".join(result.problems)
    for skipped in outcome.not_applicable:
        case = ET.SubElement(suite, "testcase", classname="golive.not-applicable", name=skipped.label)
        ET.SubElement(case, "skipped", message=skipped.reason)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)

