"""Session keeping in real headless Chromium: reuse, bounded pages, health checks, the single re-login,
and the lockout path (lock, one Slack-compatible alert, fail fast, operator unlock).

The sandbox's own access log counts login POSTs, so "exactly one attempt" is measured at the server.
Sessions are expired the way EMA expires them: the sandbox clock moves past the 30-minute idle limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from callstream.errors import ConfigError
from callstream.settings import Settings
from callstream.tenants import Practice
from connectors.ema.cli import main as ema_cli
from connectors.ema.commands import EmaCommands
from connectors.ema.directory import FhirEmaDirectory
from connectors.ema.errors import EmaCredentialsError, EmaLockedError, EmaLoginFailed
from connectors.ema.evidence import EvidenceStore
from connectors.ema.locks import EmaLockStore, LockReason
from connectors.ema.session import EmaBrowser, EmaSessions, SessionUpkeep
from connectors.fhir import ModMedClient
from sandbox.world import SandboxWorld
from streams.metrics import Metrics
from tests.connectors.ema.helpers import AlertReceiver, EmaPracticeSet, MovableClock, ScreenLog, distinct_charts
from tests.fixtures.sandbox import SandboxServer

PRACTICE = "pain-1002"


@pytest.fixture
def practice(ema_practices: EmaPracticeSet) -> Practice:
    return ema_practices.practice(PRACTICE)


@pytest.fixture
def charts(ema_world: SandboxWorld) -> list[str]:
    return distinct_charts(ema_world, PRACTICE)


@pytest.fixture
def commands(ema_sessions: EmaSessions, client: ModMedClient) -> EmaCommands:
    return EmaCommands(ema_sessions, FhirEmaDirectory(client))


@contextlib.contextmanager
def screen_login_failure(sandbox: SandboxServer) -> Iterator[None]:
    """EMA refuses every login of the practice inside the block (the sandbox fault)."""
    sandbox.set_faults(PRACTICE, screen_login_failure=True)
    try:
        yield
    finally:
        sandbox.clear_faults(PRACTICE)
        sandbox.unlock_ema(PRACTICE)


async def test_one_login_serves_many_commands_within_the_page_bound(
    ema_sessions: EmaSessions, commands: EmaCommands, practice: Practice, charts: list[str], screen_log: ScreenLog
) -> None:
    logins = screen_log.logins(PRACTICE)
    await asyncio.gather(*(commands.read_compliance(practice, patient) for patient in charts[:6]))
    await commands.read_compliance(practice, charts[0])
    keeper = ema_sessions.keeper(practice)
    assert screen_log.logins(PRACTICE) - logins == 1
    assert keeper.stats.login_attempts == 1 and keeper.stats.contexts_opened == 1
    assert ema_sessions.browser.context_count == 1
    assert keeper.stats.peak_pages_in_use == 2 and keeper.stats.pages_opened == 2
    assert keeper.stats.pages_in_use == 0


async def test_idle_practices_give_their_context_back(
    ema_sessions: EmaSessions, commands: EmaCommands, practice: Practice, charts: list[str], screen_log: ScreenLog
) -> None:
    await commands.read_compliance(practice, charts[0])
    assert await ema_sessions.close_idle(3600) == []
    assert await ema_sessions.close_idle(0) == [PRACTICE]
    assert ema_sessions.browser.context_count == 0
    logins = screen_log.logins(PRACTICE)
    await commands.read_compliance(practice, charts[1])
    assert screen_log.logins(PRACTICE) - logins == 1 and ema_sessions.browser.context_count == 1


async def test_an_expired_session_gets_exactly_one_relogin(
    ema_sessions: EmaSessions, commands: EmaCommands, practice: Practice, charts: list[str],
    screen_log: ScreenLog, ema_clock: MovableClock,
) -> None:
    await commands.read_compliance(practice, charts[0])
    logins, accepted = screen_log.logins(PRACTICE), screen_log.logins(PRACTICE, status=303)
    ema_clock.expire_ema_sessions()
    await asyncio.gather(*(commands.read_compliance(practice, patient) for patient in charts[:3]))
    keeper = ema_sessions.keeper(practice)
    assert screen_log.logins(PRACTICE) - logins == 1
    assert screen_log.logins(PRACTICE, status=303) - accepted == 1
    assert (keeper.stats.login_attempts, keeper.stats.relogins) == (2, 1)


async def test_health_check_confirms_the_signed_in_user_and_signs_in_once_when_logged_out(
    ema_sessions: EmaSessions, practice: Practice, screen_log: ScreenLog, ema_clock: MovableClock
) -> None:
    keeper = ema_sessions.keeper(practice)
    first = await keeper.health_check()
    assert (first.healthy, first.locked, first.logged_in_now) == (True, False, True)
    steady = await keeper.health_check()
    assert (steady.healthy, steady.logged_in_now) == (True, False)
    logins = screen_log.logins(PRACTICE)
    ema_clock.expire_ema_sessions()
    [after_expiry] = await ema_sessions.health_check()
    assert (after_expiry.practice_id, after_expiry.healthy, after_expiry.logged_in_now) == (PRACTICE, True, True)
    assert screen_log.logins(PRACTICE) - logins == 1


async def test_the_keeper_signs_a_logged_out_session_in_and_gives_an_idle_context_back(
    ema_sessions: EmaSessions, commands: EmaCommands, practice: Practice, charts: list[str],
    screen_log: ScreenLog, ema_clock: MovableClock,
) -> None:
    await commands.read_compliance(practice, charts[0])
    keeper = ema_sessions.keeper(practice)
    used, logins = keeper.last_used, screen_log.logins(PRACTICE)
    ema_clock.expire_ema_sessions()
    keeping = asyncio.create_task(ema_sessions.keep(every_s=0.05, idle_for_s=3600))
    try:
        async with asyncio.timeout(30):
            while keeper.stats.relogins == 0:
                await asyncio.sleep(0.02)
    finally:
        keeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeping
    assert screen_log.logins(PRACTICE) - logins == 1  # once, by the keeper, before any caller needed the session
    assert keeper.last_used == used, "a health check is not use: it must not keep an idle context open"
    assert await ema_sessions.upkeep(idle_for_s=0) == SessionUpkeep(closed=(PRACTICE,), health=())
    assert ema_sessions.browser.context_count == 0
    logins = screen_log.logins(PRACTICE)
    await commands.read_compliance(practice, charts[1])
    assert screen_log.logins(PRACTICE) - logins == 1 and ema_sessions.browser.context_count == 1
    with pytest.raises(ConfigError, match="interval"):
        await ema_sessions.keep(every_s=60, idle_for_s=30)


async def test_a_failed_relogin_locks_the_path_alerts_once_and_later_commands_fail_fast(
    ema_sessions: EmaSessions, commands: EmaCommands, practice: Practice, charts: list[str],
    screen_log: ScreenLog, ema_clock: MovableClock, alert_receiver: AlertReceiver, ema_sandbox: SandboxServer,
    ema_data_dir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    listing = ema_sandbox.practice(track="proprietary", fhir_task_create=True)
    await commands.read_compliance(practice, charts[0])  # signed in while EMA still accepts logins
    with screen_login_failure(ema_sandbox):
        ema_clock.expire_ema_sessions()
        logins, screens = screen_log.logins(PRACTICE), screen_log.screens(PRACTICE)
        refused, accepted = screen_log.logins(PRACTICE, status=401), screen_log.logins(PRACTICE, status=303)

        with pytest.raises(EmaLoginFailed, match=f"callstream ema unlock {PRACTICE}") as failure:
            await commands.read_compliance(practice, charts[1])
        assert screen_log.logins(PRACTICE) - logins == 1
        assert screen_log.logins(PRACTICE, status=401) - refused == 1
        lock = ema_sessions.locks.get(PRACTICE)
        assert lock is not None and lock.reason is LockReason.LOGIN_REFUSED and lock.step == "login"
        assert lock.evidence == failure.value.evidence is not None
        assert (ema_data_dir / "ema-evidence" / PRACTICE / f"{lock.evidence}.png").exists()

        [alert] = alert_receiver.received()
        assert f"FIRING EMA_LOCKOUT (practice {PRACTICE})" in alert["text"] and "LOGIN_REFUSED" in alert["text"]
        assert listing["username"] not in str(alert) and listing["password"] not in str(alert)
        assert listing["password"] not in caplog.text

        screens_after_lock = screen_log.screens(PRACTICE)
        assert screens_after_lock - screens == 3  # the chart (redirected), the login screen, the one login POST
        for patient in charts[2:5]:
            with pytest.raises(EmaLockedError, match="locked since"):
                await commands.read_compliance(practice, patient)
        health = await ema_sessions.keeper(practice).health_check()
        assert (health.healthy, health.locked) == (False, True)
        assert screen_log.screens(PRACTICE) == screens_after_lock  # failing fast: EMA never saw them
        assert len(alert_receiver.received()) == 1
        assert screen_log.logins(PRACTICE, status=403) == 0  # EMA's own lockout (3 failures) was never reached

    assert ema_cli(["--data-dir", str(ema_data_dir), "status"]) == 0
    assert f"{PRACTICE}: LOCKED (reason LOGIN_REFUSED" in capsys.readouterr().out
    assert ema_cli(["--data-dir", str(ema_data_dir), "unlock", PRACTICE]) == 0
    assert f"{PRACTICE}: cleared EMA lock (reason LOGIN_REFUSED" in capsys.readouterr().out
    flags = await commands.read_compliance(practice, charts[2])
    assert flags.patient_id == charts[2]
    assert screen_log.logins(PRACTICE, status=303) - accepted == 1


async def test_an_account_ema_already_locked_is_reported_as_such(
    ema_sessions: EmaSessions, commands: EmaCommands, practice: Practice, charts: list[str],
    ema_sandbox: SandboxServer, alert_receiver: AlertReceiver, ema_data_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    listing = next(p for p in ema_sandbox.practices if p["practice_id"] == PRACTICE)
    try:
        with httpx.Client() as staff:  # somebody else mistyped the password three times
            for _ in range(3):
                staff.post(f"{listing['ema_base_url']}/login", data={"username": listing["username"], "password": "typo"})
        with pytest.raises(EmaLoginFailed, match="ACCOUNT_LOCKED"):
            await commands.read_compliance(practice, charts[0])
    finally:
        ema_sandbox.unlock_ema(PRACTICE)
    assert "ACCOUNT_LOCKED" in alert_receiver.received()[0]["text"]
    assert ema_cli(["--data-dir", str(ema_data_dir), "unlock", PRACTICE]) == 0
    assert "unlock it in EMA too" in capsys.readouterr().out


async def test_missing_ema_credentials_are_refused_without_a_login_attempt(
    ema_sessions: EmaSessions, commands: EmaCommands, ema_practices: EmaPracticeSet, charts: list[str],
    screen_log: ScreenLog,
) -> None:
    listing = ema_practices.listing(PRACTICE)
    without_login = ema_practices.practice(PRACTICE, credentials={"api_key": listing["api_key"]})
    logins = screen_log.logins(PRACTICE)
    with pytest.raises(EmaCredentialsError, match="no EMA username and password"):
        await commands.read_compliance(without_login, charts[0])
    assert screen_log.logins(PRACTICE) == logins
    assert ema_sessions.locks.get(PRACTICE) is None


async def test_step_timings_reach_the_metrics_observer(
    ema_sessions: EmaSessions, client: ModMedClient, practice: Practice, charts: list[str]
) -> None:
    metrics = Metrics(CollectorRegistry())
    observed = EmaSessions(
        browser=ema_sessions.browser, locks=ema_sessions.locks, evidence=ema_sessions.evidence, observer=metrics
    )
    try:
        await EmaCommands(observed, FhirEmaDirectory(client)).read_compliance(practice, charts[0])
    finally:
        await observed.close()
    counts = {
        (sample.labels["step"], sample.labels["outcome"]): sample.value
        for family in metrics.registry.collect() if family.name == "callstream_ema_step_seconds"
        for sample in family.samples if sample.name.endswith("_count")
    }
    for step in ("login", "read_chart", "read_agreement", "read_pdmp"):
        assert counts[(step, "success")] == 1


async def test_sessions_from_settings_lock_and_alert_under_the_configured_places(
    ema_browser: EmaBrowser, client: ModMedClient, practice: Practice, charts: list[str], tmp_path: Path,
    ema_sandbox: SandboxServer, alert_receiver: AlertReceiver, caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(data_dir=tmp_path / "var", alert_webhook_url=alert_receiver.url)
    sessions = EmaSessions.from_settings(settings, browser=ema_browser, step_timeout_s=5.0)
    alert_receiver.clear()
    caplog.set_level(logging.DEBUG)
    listing = ema_sandbox.practice(track="proprietary", fhir_task_create=True)
    try:
        with screen_login_failure(ema_sandbox), pytest.raises(EmaLoginFailed) as failure:
            await EmaCommands(sessions, FhirEmaDirectory(client)).read_compliance(practice, charts[0])
    finally:
        await sessions.close()
    assert (tmp_path / "var" / "ema-locks" / f"{PRACTICE}.json").is_file()
    assert (tmp_path / "var" / "ema-evidence" / PRACTICE / f"{failure.value.evidence}.png").is_file()
    assert len(alert_receiver.received()) == 1
    assert "EMA path locked" in caplog.text
    for secret in (listing["username"], listing["password"], charts[0], "/services/T000", "secret-token"):
        assert secret not in caplog.text


@pytest.mark.parametrize(("pages", "timeout_s"), [(0, 5.0), (17, 5.0), (True, 5.0), (2, 0.0), (2, 121.0)])
def test_session_options_out_of_range_are_config_errors(
    ema_browser: EmaBrowser, tmp_path: Path, pages: int, timeout_s: float
) -> None:
    with pytest.raises(ConfigError, match="EMA"):
        EmaSessions(browser=ema_browser, locks=EmaLockStore(tmp_path), evidence=EvidenceStore(tmp_path),
                    max_pages_per_practice=pages, step_timeout_s=timeout_s)
    with pytest.raises(ConfigError, match="keep_per_practice"):
        EvidenceStore(tmp_path, keep_per_practice=0)
