"""Signing in to the QA app the way a browser does: fetch the form, send it back with its token."""

from __future__ import annotations

import re

import httpx

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match is not None, "the form carries a CSRF token"
    return match.group(1)


def sign_in(client: httpx.Client, username: str, password: str) -> int:
    """POST the sign-in form; returns the status (303 on success, with the session cookie set)."""
    token = csrf_of(client.get("/login").text)
    response = client.post("/login", data={"csrf": token, "username": username, "password": password},
                           follow_redirects=False)
    return response.status_code
