"""One page of a practice's signed-in EMA context, lent to one command: strict reads, guarded navigation.

Everything a command does on a screen goes through `EmaPage`: it opens only screens of
``connectors.ema.screens.Screen``, refuses to follow EMA outside the practice's origin, maps error
screens onto the EMA error tree and hands a login screen in its way to its keeper's one sign-in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Locator, Page
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from callstream.tenants import Practice
from connectors.ema.errors import (
    EmaConflictError,
    EmaError,
    EmaInvalidCommand,
    EmaNotFoundError,
    EmaScreenError,
    EmaUnavailableError,
)
from connectors.ema.screens import Screen, ScreenValueError, is_inside, login_path, screen_url, with_query

if TYPE_CHECKING:
    from connectors.ema.keeper import EmaSessionKeeper

T = TypeVar("T")


class SessionEnded(Exception):
    """A form submission landed on the login screen: EMA did not process it and the command may run again.

    Internal to the EMA layer (EmaCommands runs the command once more after the one re-login).
    """



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
