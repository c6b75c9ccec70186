"""One practice's signed-in EMA browser context: its bounded pages, its timed steps and its one login.

Logging in is the dangerous part of screen automation: EMA locks an account after a few failed
logins, which also locks the practice's own staff out. So a session found logged out gets exactly
**one** login attempt, serialised per practice; if it fails, the practice's EMA path is locked in
``EmaLockStore``, one ``EMA_LOCKOUT`` alert goes to the Slack-compatible webhook and the command
fails with ``EmaLoginFailed``. Every step is timed for the optional metrics observer, and a failed
step leaves evidence (screenshot, URL, step, time) in the restricted evidence directory while its
log line names only the practice, the step, the error class and the evidence file. The context can
reach the practice's EMA origin only, and each page is blanked before it is lent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urljoin, urlsplit

from playwright.async_api import BrowserContext, Page, Route
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from callstream.alerts import Alert, AlertContentError, AlertDeliveryError
from callstream.errors import TenantDirectoryError
from callstream.tenants import Practice
from connectors.ema.errors import (
    EmaCredentialsError,
    EmaError,
    EmaLockedError,
    EmaLoginFailed,
    EmaScreenError,
    EmaUnavailableError,
)
from connectors.ema.evidence import EvidenceStore
from connectors.ema.locks import EmaLock, EmaLockStore, LockReason
from connectors.ema.page import EmaPage, SessionEnded
from connectors.ema.screens import Screen, is_inside, login_path

if TYPE_CHECKING:
    from connectors.ema.session import EmaBrowser

log = logging.getLogger(__name__)

LOCKOUT_ALERT_KIND = "EMA_LOCKOUT"
SUCCESS, FAILURE = "success", "failure"


class StepObserver(Protocol):
    """What the keeper reports step latencies to; streams.metrics.Metrics fits."""

    def observe_ema_step(self, step: str, outcome: str, seconds: float) -> None: ...


class AlertSink(Protocol):
    """Where lockout alerts go; callstream.alerts.AlertWebhook fits."""

    async def send(self, alert: Alert) -> object: ...


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


async def _close_quietly(page: Page) -> None:
    try:
        await page.close()
    except PlaywrightError:
        log.debug("EMA page was already gone")
