"""Who sees what in the QA view: staff of one practice never reach another's calls, by id, list, export or
PDF; forms need their CSRF token; sessions are signed, HttpOnly and SameSite; sign-in is throttled; no PHI
reaches a URL or a log line."""

from __future__ import annotations

import logging

import httpx
import pytest

from qa.app import SESSION_COOKIE
from qa.server import QaServer
from qa.users import LoginThrottle, add_user
from tests.qa.conftest import PASSWORDS, PRACTICE_A, PRACTICE_B, QaWorld, qa_config
from tests.qa.helpers import csrf_of, sign_in



def test_a_session_of_practice_a_cannot_read_practice_b_calls(client: httpx.Client, qa_world: QaWorld) -> None:
    a_call, b_call = qa_world.calls["a_refill"], qa_world.calls["b_refill"]
    assert sign_in(client, "ana", PASSWORDS["ana"]) == 303
    own = client.get(f"/calls/{a_call}")
    assert own.status_code == 200 and a_call in own.text, "the positive control: A reads its own call"
    assert client.get(f"/calls/{a_call}/record.pdf").content.startswith(b"%PDF")
    for path in (f"/calls/{b_call}", f"/calls/{b_call}/record.json", f"/calls/{b_call}/record.pdf"):
        refused = client.get(path)
        assert refused.status_code == 404, path
        assert b_call not in refused.text.replace(f"No call {b_call} at", "") and b"%PDF" not in refused.content
    listing = client.get("/calls", params={"date_from": "2000-01-01"})
    assert listing.status_code == 200 and a_call in listing.text and b_call not in listing.text
    exported = client.get("/calls/export.csv")
    assert exported.status_code == 200 and a_call in exported.text and b_call not in exported.text
    escalations = client.get("/escalations")
    assert a_call in escalations.text and b_call not in escalations.text
    with httpx.Client(base_url=str(client.base_url)) as other:
        assert sign_in(other, "ben", PASSWORDS["ben"]) == 303
        assert other.get(f"/calls/{b_call}").status_code == 200
        assert other.get(f"/calls/{a_call}").status_code == 404
        assert a_call not in other.get("/calls/export.csv").text


def test_without_a_session_every_page_sends_to_sign_in(client: httpx.Client, qa_world: QaWorld) -> None:
    call = qa_world.calls["a_refill"]
    for path in ("/calls", "/calls/export.csv", f"/calls/{call}", f"/calls/{call}/record.json",
                 f"/calls/{call}/record.pdf", "/escalations", "/"):
        response = client.get(path, follow_redirects=False)
        assert (response.status_code, response.headers["location"]) == (303, "/login"), path
    client.cookies.set(SESSION_COOKIE, "eyJrIjoic2Vzc2lvbiJ9.forged.sig")
    assert client.get(f"/calls/{call}", follow_redirects=False).status_code == 303


def test_the_session_cookie_is_signed_httponly_samesite_and_forms_need_their_token(client: httpx.Client) -> None:
    page = client.get("/login")
    assert "httponly" in page.headers["set-cookie"].lower() and "samesite=strict" in page.headers["set-cookie"].lower()
    assert client.post("/login", data={"csrf": "made-up", "username": "ana", "password": PASSWORDS["ana"]},
                       follow_redirects=False).status_code == 403
    assert client.post("/login", data={"username": "ana", "password": PASSWORDS["ana"]},
                       follow_redirects=False).status_code == 403
    token = csrf_of(client.get("/login").text)
    cross_site = client.post("/login", data={"csrf": token, "username": "ana", "password": PASSWORDS["ana"]},
                             headers={"origin": "https://evil.example"}, follow_redirects=False)
    assert cross_site.status_code == 403
    token = csrf_of(client.get("/login").text)
    signed_in = client.post("/login", data={"csrf": token, "username": "ana", "password": PASSWORDS["ana"]},
                            follow_redirects=False)
    cookie = signed_in.headers["set-cookie"].lower()
    assert signed_in.status_code == 303 and cookie.startswith(SESSION_COOKIE)
    assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=28800" in cookie
    assert PASSWORDS["ana"].lower() not in cookie
    page = client.get("/calls")
    assert page.headers["cache-control"] == "no-store" and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert client.post("/logout", data={"csrf": "wrong"}, follow_redirects=False).status_code == 403
    assert client.get("/calls", follow_redirects=False).status_code == 200, "a refused sign-out keeps the session"
    assert client.post("/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False).status_code == 303
    assert client.get("/calls", follow_redirects=False).status_code == 303


def test_sign_in_is_throttled_per_user_and_per_address(qa_world: QaWorld) -> None:
    config = qa_config(qa_world)
    config.throttle = LoginThrottle(per_user=3, per_address=5)
    with QaServer(config) as server, httpx.Client(base_url=server.url) as client:
        assert [sign_in(client, "ana", "wrong-password-x") for _ in range(3)] == [401, 401, 401]
        assert sign_in(client, "ana", PASSWORDS["ana"]) == 429, "locked even with the right password"
        assert sign_in(client, "ben", "wrong-password-y") == 401
        assert sign_in(client, "nobody", "wrong-password-z") == 401
        assert sign_in(client, "ben", PASSWORDS["ben"]) == 429, "the address's limit (5 failures) is reached"


def test_a_password_change_ends_the_users_sessions(client: httpx.Client, qa_world: QaWorld) -> None:
    add_user(qa_world.users_ref, "cleo", PRACTICE_A, "cleo-first-password")
    assert sign_in(client, "cleo", "cleo-first-password") == 303
    assert client.get("/calls", follow_redirects=False).status_code == 200
    add_user(qa_world.users_ref, "cleo", PRACTICE_A, "cleo-second-password")
    assert client.get("/calls", follow_redirects=False).status_code == 303


def test_no_phi_in_urls_or_logs(client: httpx.Client, qa_world: QaWorld, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert sign_in(client, "ben", "not-bens-password") == 401
    assert sign_in(client, "ben", PASSWORDS["ben"]) == 303
    call = qa_world.calls["b_refill"]
    page = client.get(f"/calls/{call}")
    detail = qa_world.records.call(PRACTICE_B, call)
    assert detail is not None and detail.record.caller_number and detail.record.caller_number in page.text
    hrefs = [part.split('"', 1)[0] for part in page.text.split('href="')[1:]]
    listing = client.get("/calls")
    hrefs += [part.split('"', 1)[0] for part in listing.text.split('href="')[1:]]
    number_digits = detail.record.caller_number.lstrip("+")
    assert hrefs and not any(number_digits in href or number_digits[-7:] in href for href in hrefs)
    assert number_digits not in caplog.text and PASSWORDS["ben"] not in caplog.text
    own = " ".join(record.getMessage() for record in caplog.records if record.name.startswith("qa"))
    assert "sign-in failed" in own and "ben" not in own, "sign-ins are logged without the name typed"
