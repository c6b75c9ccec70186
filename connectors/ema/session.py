"""Signed-in EMA sessions per practice: one Chromium per process, one browser context per practice.

Logging in is the expensive and the dangerous part of screen automation: EMA locks an account after a
few failed logins, which also locks the practice's own staff out. So:

* ``EmaBrowser`` launches Debian Chromium once per process; ``EmaSessionKeeper`` keeps one logged-in
  ``BrowserContext`` per practice and lends its pages (at most ``max_pages`` at a time) to commands.
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
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urljoin, urlsplit

from playwright.async_api import Browser, BrowserContext, Locator, Page, Playwright, Route, async_playwright
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from callstream.alerts import Alert, AlertContentError, AlertDeliveryError, AlertWebhook
from callstream.errors import ConfigError, TenantDirectoryError
from callstream.settings import Settings
from callstream.tenants import Practice
from connectors.ema.errors import (
    EmaConflictError,
    EmaCredentialsError,
    EmaError,
    EmaInvalidCommand,
    EmaLockedError,
    EmaLoginFailed,
    EmaNotFoundError,
    EmaScreenError,
    EmaUnavailableError,
)
from connectors.ema.evidence import EvidenceStore
from connectors.ema.locks import EmaLock, EmaLockStore, LockReason
from connectors.ema.screens import Screen, ScreenValueError, is_inside, login_path, screen_url, with_query

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
LOCKOUT_ALERT_KIND = "EMA_LOCKOUT"
T = TypeVar("T")
SUCCESS, FAILURE = "success", "failure"


class StepObserver(Protocol):
    """What the keeper reports step latencies to; streams.metrics.Metrics fits."""

    def observe_ema_step(self, step: str, outcome: str, seconds: float) -> None: ...


class AlertSink(Protocol):
    """Where lockout alerts go; callstream.alerts.AlertWebhook fits."""

    async def send(self, alert: Alert) -> object: ...


class SessionEnded(Exception):
    """A form submission landed on the login screen: EMA did not process it and the command may run again.

    Internal to the EMA layer (EmaCommands runs the command once more after the one re-login).
    """


@dataclass
class KeeperStats:
    """Counters of one practice's keeper, for health endpoints and tests."""

    login_attempts: int = 0
    relogins: int = 0
    contexts_opened: int = 0
    pages_opened: int = 0
    pages_in_use: int = 0
    peak_pages_in_use: int = 0
    blocked_requests: int = 0


@dataclass(frozen=True, slots=True)
class SessionHealth:
    """One practice's EMA session as a health check found it."""

    practice_id: str
    healthy: bool
    locked: bool
    logged_in_now: bool
    """The check found no live session and its one login attempt succeeded."""
    checked_at: datetime


@dataclass(frozen=True, slots=True)
class SessionUpkeep:
    """What one round of the session keeper did: practices whose idle context it closed, and the checks."""

    closed: tuple[str, ...]
    health: tuple[SessionHealth, ...]


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


class EmaPage:
    """One page of a practice's signed-in context, lent to one command; every read is strict and immediate.

    Screens are server-rendered, so after a navigation every element is there or never will be: reads
    count elements instead of waiting, and a missing or duplicated element fails at once. Clicks skip
    Playwright's "stable" wait (``force=True``) for the same reason, and because it counts animation
    frames, which a page that is not the context's front tab never renders: with two pages lent at once,
    every click on the background one would otherwise stall for one to two seconds.
    """

    def __init__(self, keeper: EmaSessionKeeper, page: Page) -> None:
        self._keeper = keeper
        self._page = page
        self.status: int | None = None

    @property
    def raw(self) -> Page:
        return self._page

    @property
    def practice(self) -> Practice:
        return self._keeper.practice

    async def open(self, screen: Screen, *, patient_id: str | None = None, query: dict[str, str] | None = None) -> None:
        """Go to a screen; a login screen in the way gets the keeper's one sign-in, then the screen again."""
        practice = self._keeper.practice
        try:
            url = screen_url(practice, screen, patient_id=patient_id)
        except ValueError:
            raise EmaInvalidCommand("not a valid id for an EMA screen", practice_id=practice.practice_id) from None
        if query:
            url = with_query(url, query)
        generation = self._keeper.generation
        await self._goto(url)
        if self._on_login_screen():
            await self._keeper.sign_in(self._page, generation)
            if self._page.url != url:
                await self._goto(url)
            if self._on_login_screen():
                raise EmaScreenError(
                    "EMA asks for a login again right after signing in", practice_id=practice.practice_id
                )
        self._raise_for_error_screen()

    async def submit(self, testid: str) -> None:
        """Click a form's submit button and wait for the answer; a login screen means EMA did not process it."""
        button = await self.one(testid)
        generation, blocked = self._keeper.generation, self._keeper.stats.blocked_requests
        try:
            async with self._page.expect_navigation(wait_until="load") as navigation:
                await button.click(force=True)  # see EmaPage: no animation frames in background pages
            response = await navigation.value
        except PlaywrightTimeoutError:
            raise EmaUnavailableError(
                "EMA did not answer the form in time", practice_id=self._keeper.practice.practice_id
            ) from None
        except PlaywrightError:
            raise self._navigation_error(blocked) from None
        self.status = response.status if response is not None else None
        self._check_inside()
        if self._on_login_screen():
            await self._keeper.sign_in(self._page, generation)
            raise SessionEnded
        self._raise_for_error_screen()

    async def one(self, testid: str) -> Locator:
        """The single element with this test id; none or several is a screen error."""
        locator = self._page.get_by_test_id(testid)
        if await locator.count() != 1:
            raise EmaScreenError(
                f"screen does not show exactly one {testid}", practice_id=self._keeper.practice.practice_id
            )
        return locator

    async def has(self, testid: str) -> bool:
        return await self._page.get_by_test_id(testid).count() > 0

    async def text(self, testid: str) -> str:
        locator = await self.one(testid)
        return await locator.text_content() or ""

    async def read(self, testid: str, reader: Callable[[str, str], T]) -> T:
        """The element's text through a strict reader (connectors.ema.screens.read_*)."""
        raw = await self.text(testid)
        try:
            return reader(testid, raw)
        except ScreenValueError:
            raise EmaScreenError(
                f"screen shows an unreadable {testid}", practice_id=self._keeper.practice.practice_id
            ) from None

    async def fill(self, testid: str, value: str) -> None:
        await (await self.one(testid)).fill(value)

    async def select(self, testid: str, value: str) -> None:
        await (await self.one(testid)).select_option(value=value)

    async def check(self, testid: str) -> None:
        await (await self.one(testid)).check(force=True)

    async def elements(self, testid_prefix: str, script: str) -> list[object]:
        """Run ``script`` over every element whose test id starts with the prefix (one round trip)."""
        return await self._page.locator(f'[data-testid^="{testid_prefix}"]').evaluate_all(script)

    async def _goto(self, url: str) -> None:
        blocked = self._keeper.stats.blocked_requests
        try:
            response = await self._page.goto(url, wait_until="load")
        except PlaywrightTimeoutError:
            raise EmaUnavailableError(
                "EMA did not answer in time", practice_id=self._keeper.practice.practice_id
            ) from None
        except PlaywrightError:
            raise self._navigation_error(blocked) from None
        self.status = response.status if response is not None else None
        self._check_inside()
        if self.status is not None and self.status >= 500:
            raise EmaUnavailableError(
                "EMA answered with a server error", practice_id=self._keeper.practice.practice_id, status=self.status
            )

    def _navigation_error(self, blocked_before: int) -> EmaError:
        """A navigation that failed because EMA pointed outside its origin is a screen error, not an outage."""
        practice_id = self._keeper.practice.practice_id
        if self._keeper.stats.blocked_requests > blocked_before:
            return EmaScreenError("EMA tried to send the browser outside the practice's EMA", practice_id=practice_id)
        return EmaUnavailableError("EMA could not be reached", practice_id=practice_id)

    def _check_inside(self) -> None:
        if not is_inside(self._keeper.practice, self._page.url):
            raise EmaScreenError(
                "EMA sent the browser outside the practice's EMA", practice_id=self._keeper.practice.practice_id
            )

    def _on_login_screen(self) -> bool:
        return urlsplit(self._page.url).path == login_path(self._keeper.practice)

    def _raise_for_error_screen(self) -> None:
        """Nothing to read on an error screen: map its HTTP status onto the error tree."""
        if self.status is None or self.status < 400:
            return
        practice_id = self._keeper.practice.practice_id
        if self.status == 404:
            raise EmaNotFoundError("EMA shows no such record", practice_id=practice_id, status=404)
        if self.status == 409:
            raise EmaConflictError("EMA reports a conflict", practice_id=practice_id, status=409)
        if self.status in (400, 422):
            raise EmaInvalidCommand("EMA refused the form as invalid", practice_id=practice_id, status=self.status)
        raise EmaScreenError("EMA answered with an error screen", practice_id=practice_id, status=self.status)


class EmaSessionKeeper:
    """One practice's signed-in browser context, its bounded pages and its single-attempt login."""

    def __init__(
        self,
        practice: Practice,
        *,
        browser: EmaBrowser,
        locks: EmaLockStore,
        evidence: EvidenceStore,
        alerts: AlertSink | None,
        observer: StepObserver | None,
        max_pages: int,
        timeout_s: float,
    ) -> None:
        self.practice = practice
        self._browser = browser
        self._locks = locks
        self._evidence = evidence
        self._alerts = alerts
        self._observer = observer
        self._timeout_ms = timeout_s * 1000
        self._pages = asyncio.Semaphore(max_pages)
        self._idle: list[Page] = []
        self._context: BrowserContext | None = None
        self._context_lock = asyncio.Lock()
        self._login_lock = asyncio.Lock()
        self._generation = 0
        self._logins_succeeded = 0
        self.last_used = time.monotonic()
        self.stats = KeeperStats()

    @property
    def practice_id(self) -> str:
        return self.practice.practice_id

    @property
    def generation(self) -> int:
        """Increments with every successful login; a page that saw an older one knows to look again."""
        return self._generation

    @asynccontextmanager
    async def page(self, *, counts_as_use: bool = True) -> AsyncIterator[EmaPage]:
        """Lend a page of the signed-in context; fails fast with EmaLockedError while the path is locked.

        ``counts_as_use=False`` is for the session keeper's own health checks: they keep the session alive
        but must not keep an otherwise unused practice's context from being closed as idle.
        """
        self._locks.raise_if_locked(self.practice_id)
        if counts_as_use:  # from the first moment, so the keeper never closes a context a command waits for
            self.last_used = time.monotonic()
        async with self._pages:
            self._locks.raise_if_locked(self.practice_id)
            page = await self._checkout()
            if counts_as_use:
                self.last_used = time.monotonic()
            self.stats.pages_in_use += 1
            self.stats.peak_pages_in_use = max(self.stats.peak_pages_in_use, self.stats.pages_in_use)
            try:
                yield EmaPage(self, page)
            finally:
                self.stats.pages_in_use -= 1
                if counts_as_use:
                    self.last_used = time.monotonic()
                await self._checkin(page)

    @asynccontextmanager
    async def step(self, name: str, page: EmaPage | None = None) -> AsyncIterator[None]:
        """Time one step; on failure keep evidence, log ids only, and turn Playwright errors into EmaErrors."""
        started = time.monotonic()
        try:
            yield
        except (SessionEnded, EmaLockedError, EmaLoginFailed):
            self._observe(name, FAILURE, started)
            raise
        except EmaError as error:
            error.step = error.step or name
            await self._document(error, name, page)
            self._observe(name, FAILURE, started)
            raise
        except PlaywrightTimeoutError:
            wrapped: EmaError = EmaUnavailableError(
                "EMA did not answer in time", practice_id=self.practice_id, step=name
            )
            await self._document(wrapped, name, page)
            self._observe(name, FAILURE, started)
            raise wrapped from None
        except PlaywrightError:
            wrapped = EmaScreenError("EMA screen automation failed", practice_id=self.practice_id, step=name)
            await self._document(wrapped, name, page)
            self._observe(name, FAILURE, started)
            raise wrapped from None
        self._observe(name, SUCCESS, started)

    async def sign_in(self, page: Page, seen_generation: int) -> None:
        """The one login attempt for a session found logged out; on failure lock, alert and raise.

        Serialised per practice: a command that waited while another one signed in just looks again.
        """
        async with self._login_lock:
            self._locks.raise_if_locked(self.practice_id)
            if self._generation != seen_generation:
                return
            started = time.monotonic()
            username, password = self._credentials()
            fields = [page.get_by_test_id(testid) for testid in ("login-username", "login-password", "login-submit")]
            for locator in fields:
                if await locator.count() != 1:
                    self._observe("login", FAILURE, started)
                    raise EmaScreenError("login screen lacks its form", practice_id=self.practice_id, step="login")
            self.stats.login_attempts += 1
            reason: LockReason | None
            try:
                await fields[0].fill(username)
                await fields[1].fill(password)
                async with page.expect_navigation(wait_until="load"):
                    await fields[2].click(force=True)
            except PlaywrightError:
                reason = LockReason.LOGIN_UNCONFIRMED
            else:
                reason = await self._login_failure(page)
            if reason is None:
                if self._logins_succeeded:
                    self.stats.relogins += 1
                self._logins_succeeded += 1
                self._generation += 1
                self._observe("login", SUCCESS, started)
                return
            await self._lock_out(page, reason, started)

    async def health_check(self) -> SessionHealth:
        """Open the home screen (signing in once if needed) and confirm it shows the signed-in user.

        A check is not use: it never keeps an idle practice's context open (see `EmaSessions.close_idle`).
        """
        now = datetime.now(UTC)
        if self._locks.get(self.practice_id) is not None:
            return SessionHealth(self.practice_id, healthy=False, locked=True, logged_in_now=False, checked_at=now)
        attempts = self.stats.login_attempts
        try:
            async with self.page(counts_as_use=False) as page, self.step("health_check", page):
                await page.open(Screen.HOME)
                await page.one("signed-in-user")
        except EmaLockedError:
            return SessionHealth(self.practice_id, healthy=False, locked=True, logged_in_now=False, checked_at=now)
        except EmaError:
            locked = self._locks.get(self.practice_id) is not None
            return SessionHealth(self.practice_id, healthy=False, locked=locked, logged_in_now=False, checked_at=now)
        return SessionHealth(
            self.practice_id, healthy=True, locked=False, logged_in_now=self.stats.login_attempts > attempts,
            checked_at=now,
        )

    async def close(self) -> None:
        """Close the practice's context (and its pages); the next command starts a new one and signs in."""
        async with self._context_lock:
            self._idle.clear()
            if self._context is not None:
                try:
                    await self._context.close()
                except PlaywrightError:
                    log.warning("EMA context of practice %s did not close cleanly", self.practice_id)
                self._context = None

    async def _context_ready(self) -> BrowserContext:
        async with self._context_lock:
            context = self._context
            if context is not None and (context.browser is None or not context.browser.is_connected()):
                self._context, self._idle = None, []
                context = None
            if context is None:
                context = await self._browser.new_context()
                context.set_default_timeout(self._timeout_ms)
                context.set_default_navigation_timeout(self._timeout_ms)
                await context.route("**/*", self._only_this_ema)
                self._context = context
                self.stats.contexts_opened += 1
            return context

    async def _only_this_ema(self, route: Route) -> None:
        """The browser may talk to the practice's EMA origin and nothing else, redirects included.

        Playwright routes only the first hop of a redirect chain, so the request is fetched here without
        following redirects: a redirect out of the EMA origin is refused before the browser sees it.
        """
        try:
            if not self._same_origin(route.request.url):
                await self._block(route)
                return
            response = await route.fetch(max_redirects=0, timeout=self._timeout_ms)
            location = response.headers.get("location")
            if location is not None and not self._same_origin(urljoin(route.request.url, location)):
                await self._block(route)
                return
            await route.fulfill(response=response)
        except PlaywrightError as exc:
            # Unanswered, the browser would wait on this request forever: fail it (unless its page is gone).
            reason = "timedout" if isinstance(exc, PlaywrightTimeoutError) else "failed"
            with contextlib.suppress(PlaywrightError):
                await route.abort(reason)

    def _same_origin(self, url: str) -> bool:
        target, root = urlsplit(url), urlsplit(self.practice.ema_url)
        return (target.scheme, target.netloc) == (root.scheme, root.netloc)

    async def _block(self, route: Route) -> None:
        self.stats.blocked_requests += 1
        await route.abort("blockedbyclient")

    async def _checkout(self) -> Page:
        context = await self._context_ready()
        while self._idle:
            page = self._idle.pop()
            if not page.is_closed() and page.context is context:
                return page
        self.stats.pages_opened += 1
        return await context.new_page()

    async def _checkin(self, page: Page) -> None:
        """Blank the page (no chart stays rendered) and keep it for the next command."""
        if page.is_closed():
            return
        try:
            await page.goto("about:blank")
        except PlaywrightError:
            await _close_quietly(page)
            return
        if self._context is not None and page.context is self._context:
            self._idle.append(page)
        else:
            await _close_quietly(page)

    def _credentials(self) -> tuple[str, str]:
        try:
            credentials = self.practice.auth.resolve()
        except TenantDirectoryError:
            raise EmaCredentialsError(
                "EMA credentials unavailable", practice_id=self.practice_id, step="login"
            ) from None
        username = credentials.username.get_secret_value() if credentials.username else ""
        password = credentials.password.get_secret_value() if credentials.password else ""
        if not username or not password:
            raise EmaCredentialsError(
                "the practice's credential bundle has no EMA username and password", practice_id=self.practice_id,
                step="login",
            )
        return username, password

    async def _login_failure(self, page: Page) -> LockReason | None:
        """None when the login went through; otherwise what EMA said (closed vocabulary)."""
        if not is_inside(self.practice, page.url):
            return LockReason.LOGIN_UNCONFIRMED
        if urlsplit(page.url).path != login_path(self.practice):
            return None
        if await page.get_by_test_id("login-locked").count():
            return LockReason.ACCOUNT_LOCKED
        if await page.get_by_test_id("login-error").count():
            return LockReason.LOGIN_REFUSED
        return LockReason.LOGIN_UNCONFIRMED

    async def _lock_out(self, page: Page, reason: LockReason, started: float) -> None:
        evidence = await self._evidence.capture(
            page, practice_id=self.practice_id, step="login", error_class=EmaLoginFailed.__name__
        )
        lock = self._locks.lock(self.practice_id, reason, step="login", evidence=evidence)
        log.error(
            "EMA login for practice %s failed (%s); EMA path locked; evidence %s",
            self.practice_id, reason.value, evidence or "none",
        )
        await self._alert(lock)
        self._observe("login", FAILURE, started)
        error = EmaLoginFailed(
            f"EMA login failed ({reason.value}); the practice's EMA path stays locked until "
            f"`callstream ema unlock {self.practice_id}`",
            practice_id=self.practice_id, step="login",
        )
        error.evidence = evidence
        raise error

    async def _alert(self, lock: EmaLock) -> None:
        if self._alerts is None:
            log.error("no alert webhook configured: EMA lockout of practice %s was not alerted", self.practice_id)
            return
        alert = Alert(
            practice_id=self.practice_id,
            kind=LOCKOUT_ALERT_KIND,
            state="FIRING",
            value=1.0,
            threshold=1.0,
            window_start=lock.locked_at,
            window_end=lock.locked_at,
            figures={"failed_logins": "1", "trigger": lock.reason.value},
        )
        try:
            await self._alerts.send(alert)
        except (AlertDeliveryError, AlertContentError) as exc:
            log.error("EMA lockout alert for practice %s not delivered (%s)", self.practice_id, type(exc).__name__)

    async def _document(self, error: EmaError, step: str, page: EmaPage | None) -> None:
        if error.evidence is None and page is not None:
            error.evidence = await self._evidence.capture(
                page.raw, practice_id=self.practice_id, step=step, error_class=type(error).__name__
            )
        log.warning(
            "EMA practice %s: step %s failed (%s); evidence %s",
            self.practice_id, step, type(error).__name__, error.evidence or "none",
        )

    def _observe(self, step: str, outcome: str, started: float) -> None:
        """Report a step latency; a failing observer must not fail the command it measures."""
        if self._observer is None:
            return
        try:
            self._observer.observe_ema_step(step, outcome, time.monotonic() - started)
        except ValueError as exc:
            log.warning("EMA step metric %s not recorded (%s)", step, type(exc).__name__)


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


async def _close_quietly(page: Page) -> None:
    try:
        await page.close()
    except PlaywrightError:
        log.debug("EMA page was already gone")
