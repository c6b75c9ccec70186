"""The QA web view: server-rendered pages (Starlette + Jinja2, no front-end build) over `QaRecords`.

Access is by practice: a user signs in with a name and password from the users file (qa/users.py) and
the session is that user's practice, which every read is scoped to. The request never names a practice,
so a call id, list filter, export or PDF of another practice answers "no such call" (404), exactly as an
unknown id does (no hint that it exists elsewhere).

- Sessions: a cookie signed with itsdangerous (user, practice, a password stamp, a CSRF token), HttpOnly,
  SameSite=Strict, Secure over https or with ``secure_cookies``, 8 hours. A removed user or changed
  password ends the session at its next request.
- CSRF: every state-changing request is a POST form carrying a token (the session's, or before sign-in a
  signed cookie's) compared in constant time; a cross-origin Origin header is refused too. GET pages
  (the filters) change nothing.
- Login throttling per user name and per client address (LoginThrottle); a wrong name costs as long as a
  wrong password.
- No PHI in URLs or logs: filters are dates and codes, pages are addressed by call id; the access log is
  off and sign-in events are logged without the name typed. Pages are ``Cache-Control: no-store``, with a
  restrictive CSP; the Referer goes to this site only (``same-origin``: with ``no-referrer`` browsers send
  ``Origin: null`` on form posts), and the EMA chart link opens in a new tab without one (noreferrer).
"""

from __future__ import annotations

import csv
import hmac
import io
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from itsdangerous import BadSignature, URLSafeTimedSerializer
from jinja2 import Environment, FileSystemLoader
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from callstream.errors import CallstreamError
from callstream.tenants import Practice, TenantDirectory
from qa.pdf import call_pdf, canonical_json, record_sha256
from qa.records import OUTCOMES, REVIEW_STATES, CallDetail, CallFilter, FilterError, QaRecords
from qa.users import LoginThrottle, QaUser, UserDirectory

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "qa_session"
LOGIN_COOKIE = "qa_login"
SESSION_MAX_AGE_S = 8 * 3600
LOGIN_MAX_AGE_S = 3600
CALL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}\Z")
EXPORT_LIMIT = 5000
_SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; style-src 'self'; img-src 'self'; script-src 'none'; "
                                 b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


@dataclass
class QaConfig:
    """What the app serves from and how it signs its cookies."""

    records: QaRecords
    users: UserDirectory
    tenants: TenantDirectory
    secret_key: str
    secure_cookies: bool = False
    throttle: LoginThrottle = field(default_factory=LoginThrottle)


@dataclass(frozen=True, slots=True)
class Session:
    user: QaUser
    practice: Practice
    csrf: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.practice.timezone)


class _SecurityHeaders:
    """Adds the security headers of the module docstring to every response."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def build_app(config: QaConfig) -> Starlette:
    """The QA web app (mount it where the audit store is open; qa/server.py serves it)."""
    signer = URLSafeTimedSerializer(config.secret_key, salt="callstream-qa")
    environment = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    templates = Jinja2Templates(env=environment)

    def session_of(request: Request) -> Session | None:
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            data = signer.loads(raw, max_age=SESSION_MAX_AGE_S)
        except BadSignature:
            return None
        if not isinstance(data, dict) or data.get("k") != "session":
            return None
        user = config.users.get(str(data.get("u", "")))
        if user is None or user.practice_id != data.get("p") or user.session_stamp != data.get("s"):
            return None
        practice = config.tenants.get(user.practice_id)
        return Session(user, practice, str(data.get("c", ""))) if practice is not None else None

    def secure(request: Request) -> bool:
        return config.secure_cookies or request.url.scheme == "https"

    def page(request: Request, name: str, session: Session | None, status_code: int = 200, **context: Any) -> Response:
        zone = session.zone if session else None

        def when(moment: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S %Z") -> str:
            if moment is None:
                return "-"
            return moment.astimezone(zone).strftime(fmt) if zone else moment.isoformat()

        return templates.TemplateResponse(request, name, {"session": session, "when": when, **context},
                                          status_code=status_code)

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"

    def to_login() -> Response:
        return RedirectResponse("/login", status_code=303)

    def signed_in(handler: Callable[[Request, Session], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """The handler with the request's session; no valid session: off to sign in."""
        async def guarded(request: Request) -> Response:
            session = session_of(request)
            return to_login() if session is None else await handler(request, session)

        return guarded

    def not_found(request: Request, session: Session, what: str) -> Response:
        return page(request, "error.html", session, 404, title="Not found", message=what)

    # ------------------------------------------------------------------------------------ sign-in

    async def login_form(request: Request) -> Response:
        if session_of(request) is not None:
            return RedirectResponse("/calls", status_code=303)
        return _login_page(request)

    def _login_page(request: Request, status_code: int = 200, error: str | None = None) -> Response:
        token = secrets.token_urlsafe(24)
        response = page(request, "login.html", None, status_code, csrf=token, error=error)
        response.set_cookie(LOGIN_COOKIE, signer.dumps({"k": "login", "c": token}), max_age=LOGIN_MAX_AGE_S,
                            httponly=True, samesite="strict", secure=secure(request), path="/")
        return response

    async def login(request: Request) -> Response:
        form = await request.form()
        try:
            issued = signer.loads(request.cookies.get(LOGIN_COOKIE, ""), max_age=LOGIN_MAX_AGE_S)
        except BadSignature:
            issued = None
        sent = str(form.get("csrf", ""))
        if (not same_origin(request) or not isinstance(issued, dict) or issued.get("k") != "login"
                or not hmac.compare_digest(str(issued.get("c", "")), sent)):
            log.warning("QA sign-in refused: missing or wrong CSRF token (client %s)", _client(request))
            return _login_page(request, 403, "Your sign-in form expired. Please try again.")
        username = str(form.get("username", "")).strip()[:64]
        password = str(form.get("password", ""))
        address = _client(request)
        wait = config.throttle.retry_after(username, address)
        if wait > 0:
            log.warning("QA sign-in throttled (client %s)", address)
            return _login_page(request, 429, f"Too many failed sign-ins. Try again in {int(wait // 60) + 1} minutes.")
        user = await run_in_threadpool(config.users.authenticate, username, password)
        if user is None or user.practice_id not in config.tenants:
            config.throttle.failed(username, address)
            log.warning("QA sign-in failed (client %s)", address)
            return _login_page(request, 401, "Wrong user name or password.")
        config.throttle.succeeded(username)
        log.info("QA sign-in for practice %s (client %s)", user.practice_id, address)
        response = RedirectResponse("/calls", status_code=303)
        session = {"k": "session", "u": user.username, "p": user.practice_id, "s": user.session_stamp,
                   "c": secrets.token_urlsafe(24)}
        response.set_cookie(SESSION_COOKIE, signer.dumps(session), max_age=SESSION_MAX_AGE_S, httponly=True,
                            samesite="strict", secure=secure(request), path="/")
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    async def logout(request: Request) -> Response:
        session = session_of(request)
        form = await request.form()
        if session is None:
            return to_login()
        if not same_origin(request) or not hmac.compare_digest(session.csrf, str(form.get("csrf", ""))):
            return page(request, "error.html", session, 403, title="Refused", message="The form's token did not match.")
        response = to_login()
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # ------------------------------------------------------------------------------------ pages

    async def calls(request: Request, session: Session) -> Response:
        guards = await run_in_threadpool(config.records.guard_names, session.practice.practice_id)
        context: dict[str, Any] = {"outcomes": OUTCOMES, "review_states": REVIEW_STATES, "guards": guards,
                                   "query": dict(request.query_params), "listing": None, "error": None,
                                   "reviews_connected": config.records.reviews is not None}
        try:
            wanted = CallFilter.from_query(request.query_params)
            number = _page_number(request.query_params.get("page", "1"))
            listing = await run_in_threadpool(config.records.calls, session.practice.practice_id, wanted,
                                              session.zone, number)
        except FilterError as exc:
            return page(request, "calls.html", session, 400, **{**context, "error": str(exc)})
        filters = wanted.to_query()
        return page(request, "calls.html", session, **{**context, "listing": listing, "filters": filters})

    async def export_calls(request: Request, session: Session) -> Response:
        try:
            wanted = CallFilter.from_query(request.query_params)
        except FilterError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        listing = await run_in_threadpool(config.records.calls, session.practice.practice_id, wanted, session.zone, 1,
                                          EXPORT_LIMIT)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["call_id", "started", "last_event", "events", "escalations", "blocked", "guards", "outcomes",
                         "review_states", "caller"])
        for call in listing.calls:
            writer.writerow([call.call_id, _iso(call.started_at), _iso(call.last_event_at), call.events,
                             call.escalations, call.blocked, " ".join(call.guards), " ".join(call.outcomes),
                             " ".join(call.review_states), call.caller_tail])
        name = f"calls-{session.practice.practice_id}-{date.today().isoformat()}.csv"
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="{name}"'})

    async def call_detail(request: Request, session: Session) -> Response:
        call_id = request.path_params["call_id"]
        detail = await _detail(session, call_id)
        if detail is None:
            shown = call_id if CALL_ID.match(call_id) else "with that id"
            return not_found(request, session, f"No call {shown} at {session.practice.name}.")
        return page(request, "call.html", session, detail=detail, record=detail.record,
                    chart_links=chart_links(session.practice, detail))

    async def call_json(request: Request, session: Session) -> Response:
        body = await _body(session, request.path_params["call_id"])
        if body is None:
            return JSONResponse({"error": "no such call at your practice"}, status_code=404)
        return Response(canonical_json(body), media_type="application/json", headers={
            "x-record-sha256": record_sha256(body),
            "content-disposition": f'attachment; filename="call-{body["call_id"]}.json"'})

    async def call_pdf_download(request: Request, session: Session) -> Response:
        body = await _body(session, request.path_params["call_id"])
        if body is None:
            return not_found(request, session, "No such call at your practice.")
        data = await run_in_threadpool(call_pdf, body, session.practice.name)
        return Response(data, media_type="application/pdf", headers={
            "content-disposition": f'attachment; filename="call-{body["call_id"]}.pdf"'})

    async def _body(session: Session, call_id: str) -> dict[str, Any] | None:
        if not CALL_ID.match(call_id):
            return None
        return await run_in_threadpool(config.records.call_body, session.practice.practice_id, call_id)

    async def _detail(session: Session, call_id: str) -> CallDetail | None:
        if not CALL_ID.match(call_id):
            return None
        return await run_in_threadpool(config.records.call, session.practice.practice_id, call_id)

    async def escalations(request: Request, session: Session) -> Response:
        today = datetime.now(session.zone).date()
        try:
            day = date.fromisoformat(request.query_params.get("day") or today.isoformat())
        except ValueError:
            return page(request, "error.html", session, 400, title="Bad date", message="day must be YYYY-MM-DD.")
        found = await run_in_threadpool(config.records.escalations, session.practice.practice_id, day, session.zone)
        return page(request, "escalations.html", session, day=day, today=today, escalations=found)

    async def home(request: Request) -> Response:
        return RedirectResponse("/calls" if session_of(request) else "/login", status_code=303)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def service_error(request: Request, exc: Exception) -> Response:
        log.error("QA view: %s", type(exc).__name__)
        return page(request, "error.html", session_of(request), 503, title="Unavailable",
                    message=f"The audit store did not answer ({exc}). Try again shortly.")

    app = Starlette(
        routes=[
            Route("/", home),
            Route("/healthz", healthz),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/calls", signed_in(calls)),
            Route("/calls/export.csv", signed_in(export_calls)),
            Route("/calls/{call_id}", signed_in(call_detail)),
            Route("/calls/{call_id}/record.json", signed_in(call_json)),
            Route("/calls/{call_id}/record.pdf", signed_in(call_pdf_download)),
            Route("/escalations", signed_in(escalations)),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        exception_handlers={CallstreamError: service_error},
    )
    app.add_middleware(_SecurityHeaders)  # type: ignore[arg-type]
    return app


def chart_links(practice: Practice, detail: CallDetail) -> list[str]:
    """The EMA chart of each patient the call read, built from the practice's EMA address and the Patient id.

    The audit record's own ``ema_deep_links`` went through the reference scrubber, which turns a path segment
    that looks like a phone number or a date into ``redacted`` (a patient id such as ``pt-1002-000001`` does),
    so they are shown as stored but not used for the one-click link."""
    return [practice.chart_deep_link(patient_id) for patient_id in detail.record.fhir_resources.get("Patient", ())]


def _page_number(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 10_000:
        raise FilterError("page must be a number from 1")
    return int(value)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

