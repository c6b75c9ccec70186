"""EMA and ModMed PM web screens, server-rendered, for the Playwright automation.

They cover what the FHIR API does not: procedure-template booking (including EMA-only
templates), the opioid-agreement and PDMP attestation screens, and the PM task queue.
Everything written here lands in the same tenant store, so it is visible over FHIR
afterwards. Every element the automation needs carries a stable `data-testid` and every
input a `<label for>`; docs/sandbox.md lists them. Login locks the account after N
failures (default 3), as EMA does; only the admin endpoint unlocks it.
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from html import escape
from urllib.parse import parse_qsl, quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from sandbox import writes
from sandbox.errors import FhirError
from sandbox.faults import FaultBoard
from sandbox.gateway import Gateway
from sandbox.store import fhir_instant, parse_instant
from sandbox.vocabulary import (
    CALL_REFERENCE_SYSTEM,
    COMPLIANCE_SYSTEM,
    EXT_AGREEMENT_STATUS,
    EXT_LAST_REFILL_DATE,
    EXT_RESTRICTION,
    EXT_STATE_OF_RECORD,
    PDMP_CHECK_CODE,
    TASK_KIND_SYSTEM,
    TASK_KINDS,
    VISIT_REASONS,
)
from sandbox.world import SandboxWorld, Tenant

SESSION_COOKIE = "ema_session"
SESSION_IDLE = dt.timedelta(minutes=30)
MAX_FORM_BYTES = 32 * 1024
CALL_REFERENCE = re.compile(r"^[A-Za-z0-9._:\-]{1,100}\Z")
STATE_CODE = re.compile(r"^[A-Z]{2}\Z")
STYLE = (
    "body{font-family:sans-serif;margin:0}header{background:#1d3557;color:#fff;padding:8px 16px}"
    "header a{color:#fff;margin-right:12px}main{padding:16px}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px}.error{color:#b00020}.ok{color:#1b5e20}label{display:block;margin-top:8px}"
)


ScreenHandler = Callable[..., Awaitable[Response]]
"""(request, tenant, session, form) -> response; session is None only on public screens."""


@dataclass
class EmaSession:
    practice_id: str
    username: str
    csrf_token: str
    expires_at: dt.datetime


class EmaAccounts:
    """Login failures, lockouts and sessions of every practice's EMA users."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, str], int] = {}
        self._sessions: dict[str, EmaSession] = {}

    def locked(self, practice_id: str, username: str, threshold: int) -> bool:
        with self._lock:
            return self._failures.get((practice_id, username.casefold()), 0) >= threshold

    def fail(self, practice_id: str, username: str) -> None:
        with self._lock:
            key = (practice_id, username.casefold())
            self._failures[key] = self._failures.get(key, 0) + 1

    def unlock(self, practice_id: str) -> None:
        with self._lock:
            for key in [k for k in self._failures if k[0] == practice_id]:
                del self._failures[key]

    def open(self, practice_id: str, username: str, now: dt.datetime) -> str:
        """Start a session (clearing the failure count); returns the cookie value."""
        with self._lock:
            self._failures.pop((practice_id, username.casefold()), None)
            token = secrets.token_urlsafe(32)
            self._sessions[token] = EmaSession(practice_id, username, secrets.token_urlsafe(24), now + SESSION_IDLE)
            return token

    def session(self, token: str | None, practice_id: str, now: dt.datetime) -> EmaSession | None:
        if not token:
            return None
        with self._lock:
            session = self._sessions.get(token)
            if session is None or session.practice_id != practice_id or session.expires_at <= now:
                return None
            session.expires_at = now + SESSION_IDLE
            return session

    def close(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)


def _page(tenant: Tenant, title: str, body: str, status: int = 200, signed_in: bool = True, csrf: str = "") -> HTMLResponse:
    base = f"/ema/{tenant.profile.firm_url_prefix}"
    nav = ""
    if signed_in:
        nav = (
            f'<nav data-testid="ema-nav"><a data-testid="nav-home" href="{base}/home">Home</a>'
            f'<a data-testid="nav-patients" href="{base}/patients">Patients</a>'
            f'<a data-testid="nav-booking" href="{base}/scheduling/book">Scheduling</a>'
            f'<a data-testid="nav-task-queue" href="{base}/pm/tasks">PM task queue</a>'
            f'<form method="post" action="{base}/logout" style="display:inline">'
            f'<input type="hidden" name="csrf_token" value="{escape(csrf)}">'
            f'<button type="submit" data-testid="nav-logout">Log out</button></form></nav>'
        )
    html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>EMA - {escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>"
        f'<header data-testid="ema-header"><strong data-testid="ema-practice-name">{escape(tenant.profile.name)}</strong> '
        f"ModMed EMA (sandbox) {nav}</header>"
        f'<main data-testid="screen-{escape(_slug(title))}"><h1 data-testid="screen-title">{escape(title)}</h1>{body}</main></body></html>'
    )
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _form(body: bytes) -> dict[str, str]:
    """An HTML form post; the last value of a repeated field wins (as browsers never repeat)."""
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError as error:
        raise FhirError(400, "form body is not UTF-8") from error


def _patient_name(patient: dict) -> str:
    name = (patient.get("name") or [{}])[0]
    return f"{' '.join(name.get('given') or [])} {name.get('family', '')}".strip()


def _ext(resource: dict, url: str, kind: str) -> str | None:
    for extension in resource.get("extension") or []:
        if extension.get("url") == url:
            return extension.get(kind)
    return None


AGREEMENT_SEVERITY: dict[str, int] = {"active": 1, "expired": 2, "violated": 3}
"""A chart with several agreement flags shows the most severe status, as FHIR readers reduce them."""


def _flags(flags: list[dict], code: str) -> list[dict]:
    """The chart's active Flags of one compliance code (a chart may carry several of one code)."""
    return [
        f for f in flags
        if f.get("status") == "active" and any(
            c.get("system") == COMPLIANCE_SYSTEM and c.get("code") == code for c in (f.get("code") or {}).get("coding") or []
        )
    ]


def _latest(values: list[str | None]) -> str | None:
    """The latest of ISO dates (same-length strings order like dates); None when there is none."""
    present = [v for v in values if v]
    return max(present) if present else None


def _agreement_summary(flags: list[dict]) -> tuple[str, str | None, str | None]:
    """(status, signed, renewal due) over every active agreement flag: the most severe status, the latest
    renewal date and the signing date of the flag that shows it, the same reduction a FHIR reader makes."""
    agreements = _flags(flags, "opioid-agreement")
    if not agreements:
        return "none", None, None
    worst = max(agreements, key=lambda f: AGREEMENT_SEVERITY.get(_ext(f, EXT_AGREEMENT_STATUS, "valueCode") or "", 0))
    renewal = _latest([(f.get("period") or {}).get("end") for f in agreements])
    signed = next(((f.get("period") or {}).get("start") for f in agreements if (f.get("period") or {}).get("end") == renewal), None)
    return _ext(worst, EXT_AGREEMENT_STATUS, "valueCode") or "none", signed, renewal


def _restrictions(flags: list[dict]) -> str:
    """Every active phone restriction, comma-separated in a fixed order, or "none"."""
    codes = sorted({code for f in _flags(flags, "phone-request-restriction") if (code := _ext(f, EXT_RESTRICTION, "valueCode"))})
    return ", ".join(codes) or "none"


def _latest_pdmp(tenant: Tenant, patient_id: str) -> dict | None:
    checks = [
        o for o in tenant.store.for_patient("Observation", patient_id)
        if any(c.get("code") == PDMP_CHECK_CODE for c in (o.get("code") or {}).get("coding") or [])
    ]
    return max(checks, key=lambda o: parse_instant(o["effectiveDateTime"]), default=None)


class EmaScreens:
    def __init__(self, world: SandboxWorld, gateway: Gateway, faults: FaultBoard, accounts: EmaAccounts) -> None:
        self.world = world
        self.gateway = gateway
        self.faults = faults
        self.accounts = accounts

    def routes(self) -> list[Route]:
        p = "/ema/{prefix}"
        return [
            Route(f"{p}/login", self.login, methods=["GET", "POST"]),
            Route(f"{p}/logout", self.logout, methods=["POST"]),
            Route(f"{p}/home", self.home),
            Route(f"{p}/patients", self.patients),
            Route(f"{p}/chart/{{patient_id}}", self.chart),
            Route(f"{p}/chart/{{patient_id}}/opioid-agreement", self.agreement),
            Route(f"{p}/chart/{{patient_id}}/pdmp", self.pdmp, methods=["GET", "POST"]),
            Route(f"{p}/scheduling/book", self.booking, methods=["GET", "POST"]),
            Route(f"{p}/pm/tasks", self.tasks, methods=["GET", "POST"]),
        ]

    # --- plumbing ------------------------------------------------------------------------

    async def _screen(self, request: Request, route: str, handler: ScreenHandler, *, public: bool = False) -> Response:
        tenant = self.world.tenant_by_prefix(request.path_params["prefix"])
        if tenant is None:
            return HTMLResponse("<!doctype html><title>EMA</title><p>Unknown practice</p>", status_code=404)
        await self.gateway.delay(tenant)
        session = None
        if not public:
            session = self.accounts.session(request.cookies.get(SESSION_COOKIE), tenant.practice_id, self.world.now())
            if session is None:
                target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""), safe="")
                response: Response = RedirectResponse(f"/ema/{tenant.profile.firm_url_prefix}/login?next={target}", 303)
                self.gateway.record(tenant, f"{request.method} {route}", response.status_code, screen=True)
                return response
        try:
            form: dict[str, str] = {}
            if request.method == "POST":
                body = await request.body()
                if len(body) > MAX_FORM_BYTES:
                    raise FhirError(400, "form too large")
                form = _form(body)
                if session is not None and not hmac.compare_digest(form.get("csrf_token", ""), session.csrf_token):
                    response = _page(tenant, "Forbidden", '<p class="error" data-testid="csrf-error">Form expired; reload the page.</p>', 403, csrf=session.csrf_token)
                    self.gateway.record(tenant, f"{request.method} {route}", response.status_code, screen=True)
                    return response
            response = await handler(request, tenant, session, form)
        except FhirError as error:
            csrf = session.csrf_token if session else ""
            response = _page(tenant, "Error", f'<p class="error" data-testid="screen-error">{escape(error.diagnostics)}</p>',
                             error.status, signed_in=session is not None, csrf=csrf)
        self.gateway.record(tenant, f"{request.method} {route}", response.status_code, screen=True)
        return response

    def _patient(self, tenant: Tenant, patient_id: str) -> dict:
        patient = tenant.store.get("Patient", patient_id)
        if patient is None:
            raise FhirError(404, "No chart with this id in this practice")
        return patient

    # --- login ---------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        return await self._screen(request, "/ema/{prefix}/login", self._login, public=True)

    def _login_form(self, tenant: Tenant, next_url: str, message: str = "", testid: str = "login-error", status: int = 200) -> HTMLResponse:
        error = f'<p class="error" data-testid="{testid}" role="alert">{escape(message)}</p>' if message else ""
        body = (
            f'{error}<form method="post" data-testid="login-form" action="/ema/{tenant.profile.firm_url_prefix}/login">'
            f'<input type="hidden" name="next" value="{escape(next_url)}">'
            '<label for="username">Username</label><input id="username" name="username" autocomplete="username" data-testid="login-username">'
            '<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" data-testid="login-password">'
            '<p><button type="submit" data-testid="login-submit">Sign in</button></p></form>'
        )
        return _page(tenant, "Sign in", body, status, signed_in=False)

    def _safe_next(self, tenant: Tenant, value: str) -> str:
        base = f"/ema/{tenant.profile.firm_url_prefix}/"
        if value.startswith(base) and "//" not in value and "\\" not in value and "/login" not in value:
            return value
        return f"{base}home"

    async def _login(self, request: Request, tenant: Tenant, _: EmaSession | None, form: dict[str, str]) -> Response:
        if request.method == "GET":
            return self._login_form(tenant, self._safe_next(tenant, request.query_params.get("next", "")))
        username, password = form.get("username", "").strip(), form.get("password", "")
        next_url = self._safe_next(tenant, form.get("next", ""))
        threshold = tenant.settings.ema_lockout_threshold
        if not username:
            return self._login_form(tenant, next_url, "Enter your username and password.", status=400)
        if self.accounts.locked(tenant.practice_id, username, threshold):
            return self._login_form(tenant, next_url, "This account is locked. Contact your EMA administrator.", "login-locked", 403)
        profile = tenant.profile
        valid = hmac.compare_digest(username.casefold().encode(), profile.username.casefold().encode()) and hmac.compare_digest(
            password.encode(), profile.password.encode()
        )
        if not valid or self.faults.get(tenant.practice_id).screen_login_failure:
            self.accounts.fail(tenant.practice_id, username)
            if self.accounts.locked(tenant.practice_id, username, threshold):
                return self._login_form(tenant, next_url, "This account is locked. Contact your EMA administrator.", "login-locked", 403)
            return self._login_form(tenant, next_url, "Invalid username or password.", status=401)
        token = self.accounts.open(tenant.practice_id, profile.username, self.world.now())
        response = RedirectResponse(next_url, 303)
        response.set_cookie(
            SESSION_COOKIE, token, httponly=True, samesite="lax",
            path=f"/ema/{profile.firm_url_prefix}",
        )
        return response

    async def logout(self, request: Request) -> Response:
        async def _logout(req: Request, tenant: Tenant, _: EmaSession | None, __: dict[str, str]) -> Response:
            self.accounts.close(req.cookies.get(SESSION_COOKIE))
            response = RedirectResponse(f"/ema/{tenant.profile.firm_url_prefix}/login", 303)
            response.delete_cookie(SESSION_COOKIE, path=f"/ema/{tenant.profile.firm_url_prefix}")
            return response

        return await self._screen(request, "/ema/{prefix}/logout", _logout)

    # --- home and patients ---------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        async def _home(_: Request, tenant: Tenant, session: EmaSession, __: dict[str, str]) -> Response:
            body = f'<p data-testid="signed-in-user">Signed in as {escape(session.username)}</p>'
            return _page(tenant, "Home", body, csrf=session.csrf_token)

        return await self._screen(request, "/ema/{prefix}/home", _home)

    async def patients(self, request: Request) -> Response:
        async def _patients(req: Request, tenant: Tenant, session: EmaSession, _: dict[str, str]) -> Response:
            family = req.query_params.get("family", "").strip()
            dob = req.query_params.get("dob", "").strip()
            base = f"/ema/{tenant.profile.firm_url_prefix}"
            rows = ""
            if family or dob:
                matches = [
                    p for p in tenant.store.all_of("Patient")
                    if (not family or any(n.get("family", "").casefold() == family.casefold() for n in p.get("name") or []))
                    and (not dob or p.get("birthDate") == dob)
                ][:50]
                rows = "".join(
                    f'<tr data-testid="patient-row-{escape(p["id"])}"><td><a data-testid="patient-link-{escape(p["id"])}" '
                    f'href="{base}/chart/{escape(p["id"])}">{escape(_patient_name(p))}</a></td><td>{escape(p.get("birthDate", ""))}</td></tr>'
                    for p in matches
                )
                rows = f'<table data-testid="patient-results"><tr><th>Name</th><th>DOB</th></tr>{rows}</table>'
                if not matches:
                    rows = '<p data-testid="patient-no-results">No matching patients.</p>'
            body = (
                f'<form method="get" data-testid="patient-search-form" action="{base}/patients">'
                f'<label for="family">Last name</label><input id="family" name="family" value="{escape(family)}" data-testid="patient-search-family">'
                f'<label for="dob">Date of birth (yyyy-mm-dd)</label><input id="dob" name="dob" value="{escape(dob)}" data-testid="patient-search-dob">'
                '<p><button type="submit" data-testid="patient-search-submit">Search</button></p></form>' + rows
            )
            return _page(tenant, "Patients", body, csrf=session.csrf_token)

        return await self._screen(request, "/ema/{prefix}/patients", _patients)

    # --- chart, opioid agreement, PDMP ---------------------------------------------------

    async def chart(self, request: Request) -> Response:
        async def _chart(req: Request, tenant: Tenant, session: EmaSession, _: dict[str, str]) -> Response:
            patient = self._patient(tenant, req.path_params["patient_id"])
            pid = patient["id"]
            flags = tenant.store.for_patient("Flag", pid)
            chronic = _flags(flags, "chronic-opioid")
            last_refill = _latest([_ext(f, EXT_LAST_REFILL_DATE, "valueDate") for f in chronic])
            agreement_status, _, _ = _agreement_summary(flags)
            base = f"/ema/{tenant.profile.firm_url_prefix}/chart/{escape(pid)}"
            appointments = sorted(tenant.store.for_patient("Appointment", pid), key=lambda a: a.get("start", ""))
            rows = "".join(
                f'<tr data-testid="chart-appointment-{escape(a["id"])}"><td>{escape(a.get("start", ""))}</td>'
                f'<td>{escape(VISIT_REASONS.get(a["appointmentType"]["coding"][0]["code"], ""))}</td><td>{escape(a["status"])}</td></tr>'
                for a in appointments
            )
            body = (
                f'<section data-testid="patient-banner"><p data-testid="patient-name">{escape(_patient_name(patient))}</p>'
                f'<p data-testid="patient-dob">{escape(patient.get("birthDate", ""))}</p>'
                f'<p data-testid="patient-id">{escape(pid)}</p></section>'
                '<section data-testid="compliance-panel"><h2>Controlled-substance status</h2>'
                f'<p>Chronic opioid therapy: <span data-testid="chart-chronic-opioid">{"yes" if chronic else "no"}</span></p>'
                f'<p>Last refill: <span data-testid="chart-last-refill">{escape(last_refill or "-")}</span></p>'
                f'<p>Opioid agreement: <span data-testid="chart-agreement-status">{escape(agreement_status)}</span></p>'
                f'<p>Phone restrictions: <span data-testid="chart-phone-restriction">{escape(_restrictions(flags))}</span></p>'
                f'<p>Aberrant UDS flag: <span data-testid="chart-aberrant-uds">{"yes" if _flags(flags, "aberrant-uds") else "no"}</span></p>'
                f'<p>UDS due: <span data-testid="chart-uds-due">{"yes" if _flags(flags, "uds-due") else "no"}</span></p>'
                f'<p><a data-testid="chart-link-opioid-agreement" href="{base}/opioid-agreement">Opioid agreement</a> '
                f'<a data-testid="chart-link-pdmp" href="{base}/pdmp">PDMP</a> '
                f'<a data-testid="chart-link-book" href="/ema/{tenant.profile.firm_url_prefix}/scheduling/book?patient_id={escape(pid)}">Book</a></p></section>'
                f'<h2>Appointments</h2><table data-testid="chart-appointments"><tr><th>Start</th><th>Visit</th><th>Status</th></tr>{rows}</table>'
            )
            return _page(tenant, "Chart", body, csrf=session.csrf_token)

        return await self._screen(request, "/ema/{prefix}/chart/{patient_id}", _chart)

    async def agreement(self, request: Request) -> Response:
        async def _agreement(req: Request, tenant: Tenant, session: EmaSession, _: dict[str, str]) -> Response:
            patient = self._patient(tenant, req.path_params["patient_id"])
            status, signed, renewal = _agreement_summary(tenant.store.for_patient("Flag", patient["id"]))
            documents = [
                d for d in tenant.store.for_patient("DocumentReference", patient["id"])
                if any(c.get("text") == "agreement" for c in d.get("category") or [])
            ]
            docs = "".join(
                f'<li data-testid="agreement-document-{escape(d["id"])}">{escape(d["content"][0]["attachment"].get("title", "document"))}</li>'
                for d in documents
            )
            body = (
                f'<p data-testid="patient-name">{escape(_patient_name(patient))}</p>'
                f'<p>Status: <span data-testid="agreement-status">{escape(status)}</span></p>'
                f'<p>Signed: <span data-testid="agreement-signed-date">{escape(signed or "-")}</span></p>'
                f'<p>Renewal due: <span data-testid="agreement-renewal-date">{escape(renewal or "-")}</span></p>'
                f'<ul data-testid="agreement-documents">{docs}</ul>'
            )
            return _page(tenant, "Opioid agreement", body, csrf=session.csrf_token)

        return await self._screen(request, "/ema/{prefix}/chart/{patient_id}/opioid-agreement", _agreement)

    async def pdmp(self, request: Request) -> Response:
        async def _pdmp(req: Request, tenant: Tenant, session: EmaSession, form: dict[str, str]) -> Response:
            patient = self._patient(tenant, req.path_params["patient_id"])
            notice = ""
            if req.method == "POST":
                state = form.get("state", "").strip().upper()
                if form.get("attest") != "yes" or not STATE_CODE.match(state):
                    raise FhirError(422, "Tick the attestation and give the two-letter state of record.")
                now = self.world.now()
                observation = {
                    "resourceType": "Observation", "status": "final",
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "social-history"}]}],
                    "code": {"coding": [{"system": COMPLIANCE_SYSTEM, "code": PDMP_CHECK_CODE, "display": "PDMP check"}]},
                    "subject": {"reference": f"Patient/{patient['id']}"},
                    "effectiveDateTime": fhir_instant(now), "valueString": "PDMP reviewed",
                    "extension": [{"url": EXT_STATE_OF_RECORD, "valueString": state}],
                    "note": [{"text": "SYNTHETIC SANDBOX PDMP REPORT - attested in EMA; report content stays in EMA."}],
                    "performer": [{"display": session.username}],
                }
                with tenant.lock:
                    observation["id"] = tenant.store.next_id(tenant.id_prefix("obs"))
                    tenant.store.add(writes.validate_resource("Observation", observation), now)
                notice = f'<p class="ok" data-testid="pdmp-attest-confirmation">Attestation recorded ({escape(observation["id"])}).</p>'
            latest = _latest_pdmp(tenant, patient["id"])
            state = (latest and _ext(latest, EXT_STATE_OF_RECORD, "valueString")) or tenant.profile.state
            report = escape(((latest or {}).get("note") or [{}])[0].get("text", "No PDMP report on file."))
            body = (
                f'{notice}<p data-testid="patient-name">{escape(_patient_name(patient))}</p>'
                f'<p>Last PDMP check: <span data-testid="pdmp-last-checked">{escape((latest or {}).get("effectiveDateTime", "never"))}</span></p>'
                f'<p>State of record: <span data-testid="pdmp-state">{escape(state)}</span></p>'
                f'<section data-testid="pdmp-report">{report}</section>'
                f'<form method="post" data-testid="pdmp-attest-form">'
                f'<input type="hidden" name="csrf_token" value="{escape(session.csrf_token)}">'
                f'<label for="state">State of record</label><input id="state" name="state" maxlength="2" value="{escape(state)}" data-testid="pdmp-state-input">'
                '<label for="attest"><input id="attest" name="attest" type="checkbox" value="yes" data-testid="pdmp-attest-checkbox"> '
                "I reviewed the PDMP for this patient</label>"
                '<p><button type="submit" data-testid="pdmp-attest-submit">Record PDMP check</button></p></form>'
            )
            return _page(tenant, "PDMP", body, csrf=session.csrf_token)

        return await self._screen(request, "/ema/{prefix}/chart/{patient_id}/pdmp", _pdmp)

    # --- procedure-template booking -------------------------------------------------------

    async def booking(self, request: Request) -> Response:
        return await self._screen(request, "/ema/{prefix}/scheduling/book", self._booking)

    async def _booking(self, request: Request, tenant: Tenant, session: EmaSession, form: dict[str, str]) -> Response:
        base = f"/ema/{tenant.profile.firm_url_prefix}"
        now = self.world.now()
        if request.method == "POST":
            patient_id, slot_id = form.get("patient_id", "").strip(), form.get("slot_id", "").strip()
            if not patient_id or not slot_id:
                raise FhirError(422, "Choose a patient and a slot.")
            self._patient(tenant, patient_id)
            try:
                appointment = writes.book_through_screen(tenant, patient_id, slot_id, now)
            except FhirError as error:
                body = f'<p class="error" data-testid="booking-error">{escape(error.diagnostics)}</p>'
                return _page(tenant, "Book appointment", body, error.status, csrf=session.csrf_token)
            body = (
                '<section data-testid="booking-confirmation"><p>Appointment booked.</p>'
                f'<p>Appointment id: <span data-testid="booking-appointment-id">{escape(appointment["id"])}</span></p>'
                f'<p>Start: <span data-testid="booking-start">{escape(appointment["start"])}</span></p>'
                f'<p><a data-testid="booking-chart-link" href="{base}/chart/{escape(patient_id)}">Open chart</a></p></section>'
            )
            return _page(tenant, "Book appointment", body, 201, csrf=session.csrf_token)
        query = request.query_params
        patient_id, chosen, day = query.get("patient_id", ""), query.get("template", ""), query.get("date", "")
        options = "".join(
            f'<option value="{t.visit_reason}" data-testid="template-option-{t.visit_reason}"'
            f'{" selected" if t.visit_reason == chosen else ""}>{escape(t.name)} ({t.duration_minutes} min)'
            f'{" - EMA only" if t.ema_only else ""}</option>'
            for t in tenant.profile.templates
        )
        search = (
            f'<form method="get" data-testid="booking-search-form" action="{base}/scheduling/book">'
            f'<label for="patient_id">Patient id</label><input id="patient_id" name="patient_id" value="{escape(patient_id)}" data-testid="booking-patient-input">'
            f'<label for="template">Procedure template</label><select id="template" name="template" data-testid="template-select">{options}</select>'
            f'<label for="date">Date (yyyy-mm-dd)</label><input id="date" name="date" value="{escape(day)}" data-testid="booking-date-input">'
            '<p><button type="submit" data-testid="booking-find-slots">Find slots</button></p></form>'
        )
        results = ""
        if chosen or day:
            template = tenant.profile.template_for(chosen)
            try:
                date = dt.date.fromisoformat(day)
            except ValueError:
                date = None
            if template is None or date is None or not patient_id:
                raise FhirError(422, "Choose a patient, a procedure template and a date (yyyy-mm-dd).")
            self._patient(tenant, patient_id)
            zone = tenant.profile.zone
            start = dt.datetime.combine(date, dt.time(), tzinfo=zone)
            slots = tenant.slots.search(chosen, start, start + dt.timedelta(days=1), None, None, now, include_ema_only=True)
            choices = "".join(
                f'<label for="slot-{s.slot_id}" data-testid="slot-option-{s.slot_id}"><input type="radio" id="slot-{s.slot_id}" '
                f'name="slot_id" value="{s.slot_id}" data-testid="slot-radio-{s.slot_id}"> {s.start:%H:%M}-{s.end:%H:%M} '
                f"{escape(self._provider_name(tenant, s.practitioner_id))}, {escape(self._room_name(tenant, s.location_id))}</label>"
                for s in slots
            )
            if not slots:
                choices = '<p data-testid="booking-no-slots">No free slots for this template on this date.</p>'
            results = (
                f'<form method="post" data-testid="booking-slot-form" action="{base}/scheduling/book">'
                f'<input type="hidden" name="csrf_token" value="{escape(session.csrf_token)}">'
                f'<input type="hidden" name="patient_id" value="{escape(patient_id)}">'
                f'<fieldset data-testid="booking-slot-list"><legend>Free slots</legend>{choices}</fieldset>'
                '<p><button type="submit" data-testid="book-submit">Book</button></p></form>'
            )
        return _page(tenant, "Book appointment", search + results, csrf=session.csrf_token)

    @staticmethod
    def _provider_name(tenant: Tenant, practitioner_id: str) -> str:
        member = tenant.profile.staff_member(practitioner_id)
        return member.display_name if member else practitioner_id

    @staticmethod
    def _room_name(tenant: Tenant, location_id: str) -> str:
        room = tenant.profile.room(location_id)
        return room.name if room else location_id

    # --- PM task queue ---------------------------------------------------------------------

    async def tasks(self, request: Request) -> Response:
        return await self._screen(request, "/ema/{prefix}/pm/tasks", self._tasks)

    async def _tasks(self, request: Request, tenant: Tenant, session: EmaSession, form: dict[str, str]) -> Response:
        base = f"/ema/{tenant.profile.firm_url_prefix}"
        if request.method == "POST":
            task_id = self._create_task(tenant, form)
            return RedirectResponse(f"{base}/pm/tasks?created={quote(task_id)}", 303)
        created = request.query_params.get("created", "")
        notice = ""
        if created and tenant.store.exists("Task", created):
            notice = f'<p class="ok" data-testid="task-created">Task created: <span data-testid="task-created-id">{escape(created)}</span></p>'
        tasks = sorted(tenant.store.all_of("Task"), key=lambda t: t.get("authoredOn", ""), reverse=True)[:200]
        rows = "".join(self._task_row(tenant, t) for t in tasks)
        kinds = "".join(f'<option value="{k}" data-testid="task-kind-option-{k}">{escape(v)}</option>' for k, v in TASK_KINDS.items())
        assignees = "".join(
            f'<option value="{m.practitioner_id}" data-testid="task-assignee-option-{m.practitioner_id}">{escape(m.display_name)} ({escape(m.role)})</option>'
            for m in tenant.profile.staff
        )
        body = (
            f"{notice}<form method=\"post\" data-testid=\"task-form\" action=\"{base}/pm/tasks\">"
            f'<input type="hidden" name="csrf_token" value="{escape(session.csrf_token)}">'
            f'<label for="kind">Task kind</label><select id="kind" name="kind" data-testid="task-kind-select">{kinds}</select>'
            f'<label for="assignee">Assign to</label><select id="assignee" name="assignee" data-testid="task-assignee-select">{assignees}</select>'
            '<label for="patient_id">Patient id</label><input id="patient_id" name="patient_id" data-testid="task-patient-input">'
            '<label for="call_reference">Call reference</label><input id="call_reference" name="call_reference" data-testid="task-call-ref-input">'
            '<label for="priority">Priority</label><select id="priority" name="priority" data-testid="task-priority-select">'
            '<option value="routine">Routine</option><option value="urgent">Urgent</option></select>'
            '<label for="note">Note</label><textarea id="note" name="note" maxlength="2000" data-testid="task-note-input"></textarea>'
            '<p><button type="submit" data-testid="task-submit">Create task</button></p></form>'
            '<table data-testid="task-table"><tr><th>Id</th><th>Kind</th><th>Assignee</th><th>Patient</th><th>Call reference</th><th>Status</th><th>Note</th></tr>'
            f"{rows}</table>"
        )
        return _page(tenant, "PM task queue", body, csrf=session.csrf_token)

    def _task_row(self, tenant: Tenant, task: dict) -> str:
        kind = ((task.get("code") or {}).get("coding") or [{}])[0].get("code", "")
        owner = (task.get("owner") or {}).get("reference", "").split("/")[-1]
        patient = (task.get("for") or {}).get("reference", "").split("/")[-1]
        call = next((i.get("value", "") for i in task.get("identifier") or [] if i.get("system") == CALL_REFERENCE_SYSTEM), "")
        note = ((task.get("note") or [{}])[0]).get("text", "")
        tid = escape(task["id"])
        return (
            f'<tr data-testid="task-row-{tid}"><td>{tid}</td><td data-testid="task-kind">{escape(kind)}</td>'
            f'<td data-testid="task-assignee">{escape(owner)}</td><td data-testid="task-patient">{escape(patient)}</td>'
            f'<td data-testid="task-call-ref">{escape(call)}</td><td data-testid="task-status">{escape(task.get("status", ""))}</td>'
            f'<td data-testid="task-note" style="white-space:pre-line">{escape(note)}</td></tr>'
        )

    def _create_task(self, tenant: Tenant, form: dict[str, str]) -> str:
        kind, assignee = form.get("kind", ""), form.get("assignee", "")
        patient_id, call_reference = form.get("patient_id", "").strip(), form.get("call_reference", "").strip()
        note, priority = form.get("note", "").strip(), form.get("priority", "routine")
        problems = []
        if kind not in TASK_KINDS:
            problems.append("Choose a task kind.")
        if tenant.profile.staff_member(assignee) is None:
            problems.append("Choose an assignee.")
        if not tenant.store.exists("Patient", patient_id):
            problems.append("Enter the id of a patient of this practice.")
        if call_reference and not CALL_REFERENCE.match(call_reference):
            problems.append("The call reference may hold letters, digits and . _ : - (at most 100).")
        if len(note) > 2000:
            problems.append("The note is limited to 2,000 characters.")
        if priority not in ("routine", "urgent"):
            problems.append("Choose a priority.")
        if problems:
            raise FhirError(422, " ".join(problems))
        now = self.world.now()
        task: dict = {
            "resourceType": "Task", "status": "requested", "intent": "order", "priority": priority,
            "code": {"coding": [{"system": TASK_KIND_SYSTEM, "code": kind, "display": TASK_KINDS[kind]}]},
            "description": TASK_KINDS[kind],
            "for": {"reference": f"Patient/{patient_id}"},
            "owner": {"reference": f"Practitioner/{assignee}"},
            "authoredOn": fhir_instant(now),
        }
        if call_reference:
            task["identifier"] = [{"system": CALL_REFERENCE_SYSTEM, "value": call_reference}]
        if note:
            task["note"] = [{"text": note, "time": fhir_instant(now)}]
        with tenant.lock:
            task["id"] = tenant.store.next_id(tenant.id_prefix("task"))
            tenant.store.add(writes.validate_resource("Task", task), now)
        return task["id"]
