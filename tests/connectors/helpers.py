"""Plain helpers of the connector tests: sandbox listings → Practice entries, a request recorder, a real
ASGI server on 127.0.0.1 and an event loop whose clock moves only when every task waits for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import selectors
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvicorn

from callstream.backends import free_port
from callstream.tenants import Practice
from tests.fixtures.sandbox import SandboxServer


def practice_entry(listing: dict[str, Any], secrets_dir: Path, **changes: Any) -> Practice:
    """The tenant-directory entry for one sandbox practice; credentials go to a 0600 file (file: ref)."""
    practice_id = listing["practice_id"]
    if listing["track"] == "certified":
        certified = listing["certified"]
        credentials = {k: certified[k] for k in ("client_id", "private_key_pem", "key_id")}
        location: dict[str, Any] = {"track": "certified", "fhir_base_url": certified["fhir_base"]}
        method = "private_key_jwt"
    else:
        credentials = {k: listing[k] for k in ("username", "password", "api_key", "client_id", "client_secret")}
        location = {"track": "proprietary", "firm_url_prefix": listing["firm_url_prefix"]}
        method = "password"
    secret_file = secrets_dir / f"{practice_id}-{len(list(secrets_dir.iterdir()))}.json"
    secret_file.touch(mode=0o600)
    secret_file.write_text(json.dumps(credentials))
    base_url = listing["fhir_base"].split("/firm/")[0].split("/certified/")[0]
    entry: dict[str, Any] = {
        "practice_id": practice_id,
        "name": listing["name"],
        "called_numbers": listing["called_numbers"],
        "timezone": listing["timezone"],
        "base_url": base_url,
        **location,
        "auth": {"method": method, "credentials_ref": f"file:{secret_file}"},
        "rate_limit_per_min": listing["rate_limit_per_minute"],
        "capabilities": {k: v for k, v in listing["capabilities"].items() if k != "track"},
        "phase": "sandbox",
    }
    for key, value in changes.items():
        if key in ("auth", "capabilities") and isinstance(value, dict):
            entry[key] = {**entry[key], **value}
        else:
            entry[key] = value
    return Practice.model_validate(entry)


@dataclass
class PracticeSet:
    """A sandbox's practices, addressable by track and capabilities like SandboxServer.practice()."""

    server: SandboxServer
    secrets_dir: Path

    def listing(self, *, track: str | None = None, **capabilities: object) -> dict[str, Any]:
        return self.server.practice(track=track, **capabilities)

    def proprietary(self, **capabilities: object) -> Practice:
        return practice_entry(self.listing(track="proprietary", **capabilities), self.secrets_dir)

    def certified(self) -> Practice:
        return practice_entry(self.listing(track="certified"), self.secrets_dir)

    def entry(self, listing: dict[str, Any], **changes: Any) -> Practice:
        return practice_entry(listing, self.secrets_dir, **changes)


T = TypeVar("T")


@dataclass
class Recorder:
    """RequestObserver that keeps every attempt: (practice, resource, method, status), and in ``moments`` when
    it was sent and when its outcome was reported (time.monotonic), for causal-order checks."""

    calls: list[tuple[str, str, str, int | None]] = field(default_factory=list)
    moments: list[tuple[float, float]] = field(default_factory=list)

    def on_request(self, practice_id: str, resource: str, method: str, status: int | None, seconds: float) -> None:
        assert seconds >= 0
        reported = time.monotonic()
        self.calls.append((practice_id, resource, method, status))
        self.moments.append((reported - seconds, reported))

    def count(self, *, resource: str | None = None, method: str | None = None, status: int | None = -1) -> int:
        return sum(
            1 for _, r, m, s in self.calls
            if (resource is None or r == resource) and (method is None or m == method) and (status == -1 or s == status)
        )


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free 127.0.0.1 port in a background thread; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, access_log=False, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"test-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            raise RuntimeError(f"test server thread on port {port} did not stop within 10 s")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A real asyncio loop whose clock jumps to the next timer whenever every task waits for one.

    ``asyncio.sleep(60)`` returns at once and in the right order relative to every other timer, so code that
    paces itself with sleeps (the rate limiter) is tested on exact, machine-independent times. Like a real
    clock, time moves on by at least one tick whenever the loop would wait, so a sleep too short to change
    a float timestamp cannot spin for ever.
    """

    TICK_S = 1e-6

    def __init__(self) -> None:
        super().__init__(selectors.SelectSelector())
        self._now = 0.0
        selector = self._selector  # type: ignore[attr-defined]
        wait = selector.select

        def select(timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            if timeout is None:
                raise RuntimeError("every task waits and no timer is due: the code under test is deadlocked")
            if not self._ready:  # type: ignore[attr-defined]  # nothing runnable: the loop would wait
                self._now += max(timeout, self.TICK_S)
            return wait(0)

        selector.select = select

    def time(self) -> float:
        return self._now


def run_in_virtual_time(main: Callable[[VirtualTimeLoop], Coroutine[Any, Any, T]]) -> T:
    """Run ``main(loop)`` to completion on a fresh VirtualTimeLoop (from a synchronous test)."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.close()
