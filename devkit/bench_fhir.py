"""`callstream bench fhir-rate`: drive one sandbox practice at saturation and measure the limiter.

Many coroutines read Patients as fast as the practice's API-key limiter lets them for at least a
minute. The last line printed is a JSON object: ``calls_per_min`` (requests sent during the final
60 s, the steady state), ``limit`` (the practice's calls/min), ``http_429`` (429s the client saw)
plus the worst rolling-60-s count and the sandbox's own 429 counter. Target: calls_per_min >= 95% of
limit, max_calls_in_any_60s <= limit, zero 429s.

Without ``--base-url`` the sandbox (a dev tool, not part of the connector) is started in-process on a
free 127.0.0.1 port.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from fhir.resources.R4B.patient import Patient

from callstream.backends import free_port
from callstream.errors import ConfigError, ServiceUnavailableError
from callstream.tenants import Practice
from connectors.fhir import ModMedClient

WINDOW_S = 60.0


class _Recorder:
    """RequestObserver that keeps each call's send time and status."""

    def __init__(self) -> None:
        self.sent_at: list[float] = []
        self.statuses: dict[int | None, int] = {}

    def on_request(self, practice_id: str, resource: str, method: str, status: int | None, seconds: float) -> None:
        self.sent_at.append(time.monotonic() - seconds)
        self.statuses[status] = self.statuses.get(status, 0) + 1


@contextlib.contextmanager
def _in_process_sandbox(patients: int) -> Iterator[str]:
    """A fresh sandbox world served by uvicorn in a background thread; yields its base URL."""
    import uvicorn

    from sandbox.app import create_app
    from sandbox.generator import build_world

    port = free_port()
    world = build_world(seed=7, patients_per_practice=patients)
    config = uvicorn.Config(create_app(world), host="127.0.0.1", port=port, access_log=False, log_level="warning",
                            lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="bench-sandbox", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                break
        time.sleep(0.05)
    else:
        raise ServiceUnavailableError(f"sandbox on {base_url} did not start")
    try:
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def sandbox_practice(base_url: str, practice_id: str | None, secrets_dir: Path) -> Practice:
    """A Practice for a proprietary sandbox practice, its credentials in a 0600 file (never printed)."""
    try:
        listing = httpx.get(f"{base_url}/_admin/practices", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        raise ServiceUnavailableError(f"no sandbox admin endpoint at {base_url}") from None
    candidates = [p for p in listing if p.get("track") == "proprietary" and practice_id in (None, p.get("practice_id"))]
    if not candidates:
        raise ConfigError(f"sandbox at {base_url} has no proprietary practice {practice_id or ''}".strip())
    entry = candidates[0]
    secret_file = secrets_dir / f"{entry['practice_id']}.json"
    secret_file.touch(mode=0o600)
    secret_file.chmod(0o600)  # touch's mode applies only to a new file (and through the umask)
    secret_file.write_text(json.dumps({k: entry[k] for k in ("username", "password", "api_key", "client_id", "client_secret")}))
    return Practice.model_validate(
        {
            "practice_id": entry["practice_id"],
            "name": entry["name"],
            "called_numbers": entry["called_numbers"],
            "base_url": base_url,
            "firm_url_prefix": entry["firm_url_prefix"],
            "auth": {"method": "password", "credentials_ref": f"file:{secret_file}"},
            "rate_limit_per_min": entry["rate_limit_per_minute"],
        }
    )


def window_counts(sent_at: list[float], end: float) -> tuple[int, int]:
    """(calls sent in the final window before ``end``, the largest count in any rolling window)."""
    ordered = sorted(sent_at)
    final = len(ordered) - bisect.bisect_left(ordered, end - WINDOW_S)
    worst = max((bisect.bisect_left(ordered, t + WINDOW_S) - i for i, t in enumerate(ordered)), default=0)
    return final, worst


async def run_bench(base_url: str, practice: Practice, seconds: float, concurrency: int, progress: Any) -> dict[str, Any]:
    recorder = _Recorder()
    stats_url = f"{base_url}/_admin/practices/{practice.practice_id}/stats"
    async with httpx.AsyncClient(timeout=10) as admin:
        server_before = (await admin.get(stats_url)).json()
        async with ModMedClient(observer=recorder) as client:
            ids = [p.id for p in (await client.search(practice, Patient, {"_count": "50"}, max_pages=1)).matches if p.id]
            if not ids:
                raise ConfigError(f"practice {practice.practice_id} has no patients to read")
            started = time.monotonic()
            stop_at = started + seconds

            async def worker(offset: int) -> None:
                index = offset
                while time.monotonic() < stop_at:
                    await client.read(practice, Patient, ids[index % len(ids)])
                    index += concurrency

            async def report() -> None:
                while time.monotonic() < stop_at:
                    await asyncio.sleep(10)
                    progress(f"{time.monotonic() - started:5.0f}s  {len(recorder.sent_at)} calls")

            reporter = asyncio.create_task(report())
            await asyncio.gather(*(worker(n) for n in range(concurrency)))
            reporter.cancel()
            ended = time.monotonic()
            limiter = client.limiter(practice).stats()
        server = (await admin.get(stats_url)).json()
    measured = [t for t in recorder.sent_at if t >= started]
    final, worst = window_counts(measured, ended)
    return {
        "calls_per_min": final,
        "limit": practice.rate_limit_per_min,
        "http_429": limiter.http_429,
        "ratio": round(final / practice.rate_limit_per_min, 4),
        "max_calls_in_any_60s": worst,
        "total_calls": len(measured),
        "seconds": round(ended - started, 1),
        "concurrency": concurrency,
        "server_status_429": server["status_429"] - server_before["status_429"],
        "server_calls": server["calls"] - server_before["calls"],
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callstream bench", description="Connector benchmarks.")
    parser.add_argument("benchmark", choices=["fhir-rate"])
    parser.add_argument("--base-url", help="a running sandbox (default: start one in-process)")
    parser.add_argument("--practice", help="sandbox practice id (default: the first proprietary one)")
    parser.add_argument("--seconds", type=float, default=65.0, help="run time; >= 60 for a meaningful calls_per_min")
    parser.add_argument("--concurrency", type=int, default=64, help="coroutines sharing the practice's limiter")
    parser.add_argument("--patients-per-practice", type=int, default=100, help="size of an in-process sandbox")
    return parser


def main(argv: list[str]) -> int:
    """Run the benchmark; the JSON result is the last line on stdout."""
    options = _parser().parse_args(argv)
    if options.seconds <= 0 or not 1 <= options.concurrency <= 1000:
        raise ConfigError("--seconds must be positive and --concurrency between 1 and 1000")
    if options.seconds < WINDOW_S:
        print(f"note: {options.seconds:.0f}s is shorter than the {WINDOW_S:.0f}s window; calls_per_min is partial",
              file=sys.stderr)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        base_url = options.base_url or stack.enter_context(_in_process_sandbox(options.patients_per_practice))
        secrets_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        os.chmod(secrets_dir, 0o700)
        practice = sandbox_practice(base_url.rstrip("/"), options.practice, secrets_dir)
        progress(f"bench fhir-rate: practice {practice.practice_id}, limit {practice.rate_limit_per_min}/min, "
                 f"{options.concurrency} coroutines, {options.seconds:.0f}s")
        result = asyncio.run(run_bench(base_url.rstrip("/"), practice, options.seconds, options.concurrency, progress))
    print(json.dumps(result))
    return 0
