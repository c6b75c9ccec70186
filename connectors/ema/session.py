"""Signed-in EMA sessions per practice: one Chromium per process, one browser context per practice.

Logging in is the expensive and the dangerous part of screen automation: EMA locks an account after a
few failed logins, which also locks the practice's own staff out. So:

* ``EmaBrowser`` launches Debian Chromium once per process; ``EmaSessions`` gives each practice one
  ``EmaSessionKeeper`` (connectors.ema.keeper), which keeps one logged-in ``BrowserContext`` and lends
  its pages (at most ``max_pages`` at a time, as ``connectors.ema.page.EmaPage``) to commands.
* A session found logged out (any screen redirects to the login screen) gets exactly **one** login
  attempt, serialised per practice. If it fails, the practice's EMA path is locked in ``EmaLockStore``,
  one ``EMA_LOCKOUT`` alert goes to the Slack-compatible webhook and the command fails with
  ``EmaLoginFailed``; every later command fails fast with ``EmaLockedError`` without opening a page,
  until an operator runs ``callstream ema unlock PRACTICE``.
* Every step is timed for the optional metrics observer; a failed step leaves evidence (screenshot,
  URL, step, time) in the restricted evidence directory, and its log line names only the practice,
  the step, the error class and the evidence file.
* ``EmaSessions.keep`` is the worker's session keeper: every ``every_s`` (the worker: a minute) it closes
  the contexts no command used for ``idle_for_s`` (15 minutes; Chromium's memory stays bounded) and
  health-checks the rest, so a session EMA logged out is signed in again (once) before a caller needs it.
* The browser can only reach the practice's EMA origin (other requests are aborted), only screens of
  ``connectors.ema.screens.Screen`` are opened, and each page is blanked before it is lent again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from playwright.async_api import Browser, BrowserContext, Playwright, async_playwright
from playwright.async_api import Error as PlaywrightError

from callstream.alerts import AlertWebhook
from callstream.errors import ConfigError
from callstream.settings import Settings
from callstream.tenants import Practice
from connectors.ema.errors import EmaUnavailableError
from connectors.ema.evidence import EvidenceStore
from connectors.ema.keeper import AlertSink, EmaSessionKeeper, SessionHealth, StepObserver
from connectors.ema.locks import EmaLockStore

log = logging.getLogger(__name__)

CHROMIUM_EXECUTABLE = "/usr/bin/chromium"
CHROMIUM_ARGS: tuple[str, ...] = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)


class EmaBrowser:
    """The process's one headless Chromium; practices get their own contexts (cookies) inside it."""

    def __init__(self, *, executable_path: str = CHROMIUM_EXECUTABLE, headless: bool = True) -> None:
        self._executable_path = executable_path
        self._headless = headless
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self._lock = asyncio.Lock()

    async def new_context(self) -> BrowserContext:
        """A fresh, isolated context; (re)launches Chromium when it is not running."""
        async with self._lock:
            if self._browser is None or not self._browser.is_connected():
                await self._launch()
            assert self._browser is not None
            return await self._browser.new_context(
                accept_downloads=False, service_workers="block", locale="en-US", viewport={"width": 1280, "height": 900}
            )

    @property
    def context_count(self) -> int:
        return len(self._browser.contexts) if self._browser is not None and self._browser.is_connected() else 0

    async def close(self) -> None:
        async with self._lock:
            if self._browser is not None:
                try:
                    await self._browser.close()
                except PlaywrightError:
                    log.warning("EMA browser did not close cleanly")
                self._browser = None
            if self._playwright is not None:
                await self._playwright.stop()
                self._playwright = None

    async def _launch(self) -> None:
        if self._playwright is None:
            self._playwright = await async_playwright().start()
        try:
            self._browser = await self._playwright.chromium.launch(
                executable_path=self._executable_path, headless=self._headless, args=list(CHROMIUM_ARGS)
            )
        except PlaywrightError as exc:
            raise EmaUnavailableError(
                f"cannot start Chromium ({type(exc).__name__})", practice_id="all", step="launch"
            ) from None


@dataclass(frozen=True, slots=True)
class SessionUpkeep:
    """What one round of the session keeper did: practices whose idle context it closed, and the checks."""

    closed: tuple[str, ...]
    health: tuple[SessionHealth, ...]


class EmaSessions:
    """The keepers of every practice this process serves, sharing one browser, lock store and alert sink."""

    def __init__(
        self,
        *,
        browser: EmaBrowser,
        locks: EmaLockStore,
        evidence: EvidenceStore,
        alerts: AlertSink | None = None,
        observer: StepObserver | None = None,
        max_pages_per_practice: int = 2,
        step_timeout_s: float = 10.0,
    ) -> None:
        if isinstance(max_pages_per_practice, bool) or not 1 <= max_pages_per_practice <= 16:
            raise ConfigError("EMA max_pages_per_practice must be 1..16")
        if not 0 < step_timeout_s <= 120:
            raise ConfigError("EMA step_timeout_s must be in (0, 120] seconds")
        self.browser = browser
        self.locks = locks
        self.evidence = evidence
        self._alerts = alerts
        self._observer = observer
        self._max_pages = max_pages_per_practice
        self._timeout_s = step_timeout_s
        self._keepers: dict[str, EmaSessionKeeper] = {}
        self._owned_webhook: AlertWebhook | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        browser: EmaBrowser,
        observer: StepObserver | None = None,
        max_pages_per_practice: int = 2,
        step_timeout_s: float = 10.0,
    ) -> EmaSessions:
        """Locks and evidence under ``settings.data_dir``; alerts to ``settings.alert_webhook_url`` if set."""
        data_dir = Path(settings.data_dir)
        webhook = AlertWebhook(settings.alert_webhook_url) if settings.alert_webhook_url else None
        sessions = cls(
            browser=browser, locks=EmaLockStore.under(data_dir), evidence=EvidenceStore.under(data_dir),
            alerts=webhook, observer=observer, max_pages_per_practice=max_pages_per_practice,
            step_timeout_s=step_timeout_s,
        )
        sessions._owned_webhook = webhook
        return sessions

    def keeper(self, practice: Practice) -> EmaSessionKeeper:
        """The practice's keeper; a changed directory entry (rotated credentials) is picked up in place."""
        keeper = self._keepers.get(practice.practice_id)
        if keeper is None:
            keeper = self._keepers[practice.practice_id] = EmaSessionKeeper(
                practice, browser=self.browser, locks=self.locks, evidence=self.evidence, alerts=self._alerts,
                observer=self._observer, max_pages=self._max_pages, timeout_s=self._timeout_s,
            )
        else:
            keeper.practice = practice
        return keeper

    async def health_check(self) -> list[SessionHealth]:
        """Check every practice this process has a session for (which also keeps EMA's idle timer alive)."""
        return [await keeper.health_check() for keeper in list(self._keepers.values())]

    async def close_idle(self, idle_for_s: float) -> list[str]:
        """Close the contexts of practices unused for ``idle_for_s`` seconds; returns their practice ids.

        A worker serving many practices keeps Chromium's memory bounded this way; the next command of
        such a practice opens a new context and signs in (once) again.
        """
        now, closed = time.monotonic(), []
        for practice_id, keeper in list(self._keepers.items()):
            if keeper.stats.pages_in_use == 0 and now - keeper.last_used >= idle_for_s:
                # Forgotten before the await: a command arriving meanwhile gets a new keeper, not this closing one.
                del self._keepers[practice_id]
                await keeper.close()
                closed.append(practice_id)
        return closed

    async def upkeep(self, idle_for_s: float) -> SessionUpkeep:
        """One round of the session keeper: close what no command used for ``idle_for_s``, check the rest.

        The check signs a logged-out session in (once, as a command would) and replaces a context whose
        browser went away, so the next caller's command finds a live session instead of paying for it.
        """
        closed = await self.close_idle(idle_for_s)
        health = await self.health_check()
        if closed:
            log.info("EMA contexts closed after %g s idle: %s", idle_for_s, ", ".join(closed))
        for check in health:
            if not check.healthy and not check.locked:  # a locked path was alerted when it locked
                log.warning("EMA session of practice %s failed its health check", check.practice_id)
        return SessionUpkeep(tuple(closed), tuple(health))

    async def keep(self, *, every_s: float, idle_for_s: float) -> None:
        """Run `upkeep` every ``every_s`` seconds until cancelled (the worker's EMA session keeper)."""
        if not 0 < every_s <= idle_for_s:
            raise ConfigError("the EMA keeper's interval must be positive and at most the idle time")
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.upkeep(idle_for_s)
            except Exception as exc:  # noqa: BLE001 - a keeper that died would stop closing contexts silently
                log.error("EMA session upkeep failed (%s); retried in %g s", type(exc).__name__, every_s)

    async def close(self) -> None:
        """Close every practice's context (the browser itself belongs to the caller)."""
        for keeper in list(self._keepers.values()):
            await keeper.close()
        self._keepers.clear()
        if self._owned_webhook is not None:
            await self._owned_webhook.aclose()
