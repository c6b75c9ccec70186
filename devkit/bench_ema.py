"""`python -m devkit.bench_ema`: EMA screen-automation latencies against a sandbox practice.

Prints one line per command kind and, last, a JSON object: p50/p95 milliseconds of the first command
(new browser context + the one login), compliance reads (three screens each), all of them again at
once (``concurrent_reads``: one sample, the whole batch through the page bound), one-day template slot
searches, template bookings and PM task creations, plus the login attempts the whole run needed
(target: 1) and the peak pages in use (bounded by --pages). EMA steps are slower than FHIR calls; the voice agent covers
them with speech, so these figures say how much cover an EMA-routed turn needs.

Without ``--base-url`` a sandbox world is started in-process on a free 127.0.0.1 port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from fhir.resources.R4B.patient import Patient

from callstream.errors import ConfigError
from callstream.tenants import Practice
from devkit.bench_fhir import _in_process_sandbox, sandbox_practice
from connectors.ema.commands import EmaCommands
from connectors.ema.directory import FhirEmaDirectory
from connectors.ema.evidence import EvidenceStore
from connectors.ema.locks import EmaLockStore
from connectors.ema.session import EmaBrowser, EmaSessions
from connectors.fhir import ModMedClient
from guards.model import TaskAudience, TaskKind, TaskReason, TaskSpec, VisitReason


def _figures(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 1), "p95_ms": round(p95 * 1000, 1)}


async def _timed(samples: list[float], action: Callable[[], Awaitable[Any]]) -> Any:
    started = time.monotonic()
    result = await action()
    samples.append(time.monotonic() - started)
    return result


async def run_bench(
    practice: Practice, data_dir: Path, rounds: int, pages: int, reason: VisitReason
) -> dict[str, Any]:
    browser = EmaBrowser()
    sessions = EmaSessions(
        browser=browser, locks=EmaLockStore.under(data_dir), evidence=EvidenceStore.under(data_dir),
        max_pages_per_practice=pages,
    )
    kinds = ("first_command", "read_compliance", "concurrent_reads", "search_1_day", "book", "task")
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        async with ModMedClient() as client:
            commands = EmaCommands(sessions, FhirEmaDirectory(client))
            patients = [p.id for p in (await client.search(practice, Patient, {"_count": "50"}, max_pages=1)).matches if p.id]
            if len(patients) < rounds:
                raise ConfigError(f"practice {practice.practice_id} has fewer than {rounds} patients")
            await _timed(samples["first_command"], lambda: commands.read_compliance(practice, patients[0]))
            for patient in patients[:rounds]:
                await _timed(samples["read_compliance"], lambda pid=patient: commands.read_compliance(practice, pid))
            await _timed(samples["concurrent_reads"], lambda: asyncio.gather(*(
                commands.read_compliance(practice, pid) for pid in patients[:rounds]
            )))
            today = dt.datetime.now(ZoneInfo(practice.timezone)).date()
            for offset, patient in enumerate(patients[:rounds]):
                day = today + dt.timedelta(days=20 + offset % 14)
                offers = await _timed(samples["search_1_day"], lambda day=day, patient=patient: (
                    commands.search_template_slots(practice, visit_reason=reason, date_from=day, date_to=day,
                                                   patient_id=patient)))
                if offers:
                    await _timed(samples["book"], lambda patient=patient, slot=offers[0].slot_id: commands.book_template(
                        practice, call_id=f"bench-book-{patient}", patient_id=patient, slot_id=slot))
                spec = TaskSpec(kind=TaskKind.FRONT_DESK_MESSAGE, audience=TaskAudience.FRONT_DESK,
                                reason=TaskReason.GENERAL_MESSAGE, call_id=f"bench-task-{patient}",
                                practice_id=practice.practice_id, patient_id=patient)
                await _timed(samples["task"], lambda spec=spec: commands.create_staff_task(
                    practice, call_id=spec.call_id, task=spec, note="Benchmark callback task."))
        keeper = sessions.keeper(practice)
        return {
            **{name: _figures(values) for name, values in samples.items() if values},
            "login_attempts": keeper.stats.login_attempts,
            "peak_pages_in_use": keeper.stats.peak_pages_in_use,
            "pages_bound": pages,
            "practice_id": practice.practice_id,
        }
    finally:
        await sessions.close()
        await browser.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.bench_ema", description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="a running sandbox (default: start one in-process)")
    parser.add_argument("--practice", help="proprietary sandbox practice id (default: the first one)")
    parser.add_argument("--rounds", type=int, default=20, help="commands of each kind (1-50)")
    parser.add_argument("--pages", type=int, default=2, help="page bound per practice (1-16)")
    parser.add_argument("--visit-reason", type=VisitReason, default=VisitReason.KYPHOPLASTY,
                        choices=list(VisitReason), help="procedure template to search and book")
    options = parser.parse_args(argv)
    if not 1 <= options.rounds <= 50 or not 1 <= options.pages <= 16:
        raise ConfigError("--rounds must be 1..50 and --pages 1..16")
    with contextlib.ExitStack() as stack:
        base_url = (options.base_url or stack.enter_context(_in_process_sandbox(100))).rstrip("/")
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ema-bench-")))
        os.chmod(work_dir, 0o700)
        secrets = work_dir / "secrets"
        secrets.mkdir(mode=0o700)
        practice = sandbox_practice(base_url, options.practice, secrets)
        listing = httpx.get(f"{base_url}/_admin/practices", timeout=10).json()
        zone = next(p["timezone"] for p in listing if p["practice_id"] == practice.practice_id)
        practice = practice.model_copy(update={"timezone": zone})  # slot times on screens are practice-local
        result = asyncio.run(run_bench(practice, work_dir / "data", options.rounds, options.pages, options.visit_reason))
    for name, figures in result.items():
        if isinstance(figures, dict):
            print(f"{name:>16}: n={figures['n']:3d}  p50 {figures['p50_ms']:7.1f} ms  p95 {figures['p95_ms']:7.1f} ms",
                  file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
