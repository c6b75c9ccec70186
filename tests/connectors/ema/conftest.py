"""EMA automation fixtures: real headless Chromium against a private, in-process sandbox.

The EMA tests expire sessions (by moving the sandbox clock), inject login failures and lock accounts,
so they get their own sandbox world served from a background thread (``running_sandbox`` of
tests/fixtures/sandbox.py) instead of disturbing the shared session sandbox. Running in-process also
gives them the sandbox's own access log, which counts every login POST. One Chromium serves the
whole package; each test gets fresh lock and evidence directories. Package scope: the sandbox thread,
the browser and the access-log level are gone before other packages' tests run.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from callstream.alerts import AlertWebhook
from connectors.ema.evidence import EvidenceStore
from connectors.ema.locks import EmaLockStore
from connectors.ema.session import EmaBrowser, EmaSessions
from sandbox.generator import build_world
from sandbox.world import SandboxWorld
from tests.connectors.ema.helpers import AlertReceiver, EmaPracticeSet, MovableClock, ScreenLog
from tests.connectors.helpers import serve
from tests.fixtures.sandbox import SandboxServer, running_sandbox

EMA_SEED = 29
EMA_PATIENTS = 40


@pytest.fixture(scope="package")
def ema_clock() -> MovableClock:
    return MovableClock()


@pytest.fixture(scope="package")
def ema_world(ema_clock: MovableClock) -> SandboxWorld:
    world = build_world(seed=EMA_SEED, practices=3, patients_per_practice=EMA_PATIENTS)
    world.clock = ema_clock.now
    return world


@pytest.fixture(scope="package")
def screen_log() -> Iterator[ScreenLog]:
    access = logging.getLogger("sandbox.access")
    handler, level = ScreenLog(), access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        access.removeHandler(handler)
        access.setLevel(level)


@pytest.fixture(scope="package")
def ema_sandbox(ema_world: SandboxWorld, screen_log: ScreenLog) -> Iterator[SandboxServer]:
    with running_sandbox(ema_world) as server:
        yield server


@pytest.fixture(scope="package")
def ema_practices(ema_sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory) -> EmaPracticeSet:
    return EmaPracticeSet(ema_sandbox, tmp_path_factory.mktemp("ema-credentials"))


@pytest.fixture(scope="package")
async def ema_browser() -> AsyncIterator[EmaBrowser]:
    browser = EmaBrowser()
    try:
        yield browser
    finally:
        await browser.close()


@pytest.fixture(scope="package")
def alert_receiver() -> Iterator[AlertReceiver]:
    """A Slack-compatible incoming-webhook stand-in: a real HTTP server on 127.0.0.1 that keeps the bodies."""
    receiver = AlertReceiver()

    async def hook(request: Request) -> Response:
        body = await request.json()
        with receiver.lock:
            receiver.bodies.append(body)
        return JSONResponse({"ok": True})

    with serve(Starlette(routes=[Route("/services/T000/B000/secret-token", hook, methods=["POST"])])) as base:
        receiver.url = f"{base}/services/T000/B000/secret-token"
        yield receiver


@pytest.fixture
def ema_data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def ema_sessions(
    ema_browser: EmaBrowser, ema_data_dir: Path, alert_receiver: AlertReceiver
) -> AsyncIterator[EmaSessions]:
    """Fresh sessions (new contexts, so a first login each) with locks and evidence under a temp data dir."""
    alert_receiver.clear()
    webhook = AlertWebhook(alert_receiver.url, max_attempts=1)
    sessions = EmaSessions(
        browser=ema_browser,
        locks=EmaLockStore.under(ema_data_dir),
        evidence=EvidenceStore.under(ema_data_dir),
        alerts=webhook,
        max_pages_per_practice=2,
        step_timeout_s=5.0,
    )
    try:
        yield sessions
    finally:
        await sessions.close()
        await webhook.aclose()
