"""The QA view in Chromium (Playwright): sign in, filter, open a call, follow its EMA chart link, download
its PDF; another practice's call is not found; a wrong password is refused. One browser for the module,
a fresh context (cookie jar) per test."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pypdf
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from connectors.ema.session import CHROMIUM_ARGS, CHROMIUM_EXECUTABLE
from qa.server import QaServer
from tests.qa.conftest import PASSWORDS, PRACTICE_A, QaWorld

pytestmark = pytest.mark.chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM_EXECUTABLE, args=list(CHROMIUM_ARGS))
        try:
            yield launched
        finally:
            launched.close()


def signed_in(browser: Browser, server: QaServer, username: str, password: str,
              viewport: dict[str, int] | None = None) -> Page:
    context = browser.new_context(accept_downloads=True, viewport=viewport or {"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto(f"{server.url}/login")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    return page


def test_sign_in_filter_open_a_call_follow_the_ema_link_and_download_the_pdf(
        browser: Browser, qa_server: QaServer, qa_world: QaWorld) -> None:
    calls = qa_world.calls
    page = signed_in(browser, qa_server, "ana", PASSWORDS["ana"], viewport={"width": 1024, "height": 768})  # iPad
    expect(page.get_by_role("heading", name=f"Calls at {qa_world.tenants[PRACTICE_A].name}")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "no sideways scrolling"
    page.get_by_label("Escalated").select_option("yes")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("link", name=calls["a_refill"])).to_be_visible()
    expect(page.get_by_role("link", name=calls["a_booking"])).to_have_count(0)
    assert "escalated=yes" in page.url
    page.get_by_role("link", name=calls["a_refill"]).click()
    expect(page.get_by_role("heading", name=f"Call {calls['a_refill']}")).to_be_visible()
    expect(page.get_by_role("heading", name="What the caller heard")).to_be_visible()
    expect(page.locator("blockquote").filter(has_text="provider")).not_to_have_count(0)
    record = qa_world.records.call(PRACTICE_A, calls["a_refill"])
    assert record is not None
    [patient_id] = record.record.fhir_resources["Patient"]
    chart_link = qa_world.tenants[PRACTICE_A].chart_deep_link(patient_id)
    with page.context.expect_page() as opened:
        page.locator("#ema-chart").click()
    chart = opened.value
    chart.wait_for_load_state()
    patient_path = chart_link.split("/ema/", 1)[1]
    assert patient_path.endswith(f"/chart/{patient_id}")
    assert patient_path in chart.url.replace("%2F", "/"), "the EMA tab opens that patient's chart (or its sign-in)"
    assert chart.evaluate("document.referrer") == "", "no Referer reaches EMA"
    with page.expect_download() as downloading:
        page.locator("#pdf-download").click()
    download = downloading.value
    assert download.suggested_filename == f"call-{calls['a_refill']}.pdf"
    text = "\n".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(open(download.path(), "rb").read())).pages)
    assert f"Call record {calls['a_refill']}" in text and qa_world.tenants[PRACTICE_A].name in text
    page.context.close()


def test_another_practices_call_is_not_found_in_the_browser(browser: Browser, qa_server: QaServer,
                                                            qa_world: QaWorld) -> None:
    page = signed_in(browser, qa_server, "ben", PASSWORDS["ben"])
    expect(page.get_by_role("link", name=qa_world.calls["b_refill"])).to_be_visible()
    response = page.goto(f"{qa_server.url}/calls/{qa_world.calls['a_refill']}")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    response = page.goto(f"{qa_server.url}/calls/{qa_world.calls['a_refill']}/record.pdf")
    assert response is not None and response.status == 404
    page.context.close()


def test_a_wrong_password_is_refused(browser: Browser, qa_server: QaServer) -> None:
    page = signed_in(browser, qa_server, "ana", "not-the-password")
    expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
    assert page.url.endswith("/login")
    response = page.goto(f"{qa_server.url}/calls")
    assert response is not None and page.url.endswith("/login"), "still signed out"
    page.context.close()
