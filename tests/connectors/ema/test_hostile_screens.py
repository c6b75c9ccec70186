"""A hostile or broken EMA: unreadable values, duplicated elements, the wrong chart, off-site redirects,
a login that never confirms, a form bounced to the login screen, slowness and 5xx.

The fake EMA is a real HTTP server on 127.0.0.1 whose screens each test chooses; the automation must
turn every one of them into a typed error (with evidence), never read PDMP content into evidence,
and never follow EMA anywhere else.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from callstream.tenants import Practice
from callstream.work_scope import BACKGROUND, WorkScope
from connectors.ema.commands import EmaCommands
from connectors.ema.directory import EmaRoom
from connectors.ema.errors import (
    EmaInvalidCommand,
    EmaLockedError,
    EmaLoginFailed,
    EmaScreenError,
    EmaUnavailableError,
)
from connectors.ema.evidence import EvidenceStore
from connectors.ema.locks import EmaLockStore, LockReason
from connectors.ema.session import EmaBrowser, EmaSessions
from guards.model import TaskAudience, TaskKind, TaskReason, TaskSpec, VisitReason
from tests.connectors.helpers import serve

ROOT = "/ema/fake"
PATIENT = "pt-1"
PDMP_REPORT = "SYNTHETIC HOSTILE PDMP REPORT 4 prescribers"
CHART_VALUES = {
    "patient-id": PATIENT,
    "chart-chronic-opioid": "yes",
    "chart-last-refill": "2026-10-01",
    "chart-phone-restriction": "none",
    "chart-aberrant-uds": "no",
    "chart-uds-due": "no",
}


@dataclass
class FakeEma:
    """The fake EMA's behaviour; tests change it, the fixture resets it."""

    chart: dict[str, str] = field(default_factory=lambda: dict(CHART_VALUES))
    duplicate: str | None = None
    pdmp_checked: str = "2026-10-02T08:00:00Z"
    redirect_chart_to: str | None = None
    login_confirms: bool = True
    task_bounces: int = 0
    slow_seconds: float = 0.0
    fail_with: int | None = None
    templates: tuple[str, ...] = ("esi",)
    login_posts: int = 0
    task_posts: int = 0
    foreign_hits: int = 0

    def reset(self) -> None:
        """A fresh behaviour per test on the same server."""
        self.__dict__.update(FakeEma().__dict__)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html><body><h1 data-testid="screen-title">{title}</h1>{body}</body></html>', status
    )


def fake_ema_app(state: FakeEma) -> Starlette:
    def signed_in(request: Request) -> bool:
        return request.cookies.get("fake_session") == "ok"

    def to_login(request: Request) -> Response:
        target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""), safe="")
        return RedirectResponse(f"{ROOT}/login?next={target}", 303)

    async def screen(request: Request) -> Response:
        if request.headers.get("host", "").startswith("localhost"):
            state.foreign_hits += 1
            return _page("Elsewhere", "<p>not EMA</p>")
        if state.slow_seconds:
            await asyncio.sleep(state.slow_seconds)
        if state.fail_with:
            return _page("Error", '<p data-testid="screen-error">down</p>', state.fail_with)
        path = request.url.path.removeprefix(ROOT + "/")
        if path == "login":
            return await login(request)
        if not signed_in(request):
            return to_login(request)
        if path == "home":
            return _page("Home", '<p data-testid="signed-in-user">Signed in as fake</p>')
        if path == f"chart/{PATIENT}":
            if state.redirect_chart_to:
                return RedirectResponse(state.redirect_chart_to, 303)
            cells = "".join(f'<span data-testid="{k}">{v}</span>' for k, v in state.chart.items())
            if state.duplicate:
                cells += f'<span data-testid="{state.duplicate}">{state.chart[state.duplicate]}</span>'
            return _page("Chart", cells)
        if path == f"chart/{PATIENT}/opioid-agreement":
            return _page("Opioid agreement", '<span data-testid="agreement-status">active</span>'
                         '<span data-testid="agreement-renewal-date">2027-01-01</span>')
        if path == f"chart/{PATIENT}/pdmp":
            return _page("PDMP", f'<span data-testid="pdmp-last-checked">{state.pdmp_checked}</span>'
                         f'<section data-testid="pdmp-report">{PDMP_REPORT}</section>')
        if path == "scheduling/book":
            options = "".join(f'<option value="{t}" data-testid="template-option-{t}">{t}</option>' for t in state.templates)
            return _page("Book", f'<select data-testid="template-select">{options}</select>')
        if path == "pm/tasks":
            return await tasks(request)
        return _page("Error", '<p data-testid="screen-error">no such screen</p>', 404)

    async def login(request: Request) -> Response:
        form = '<form method="post"><input name="next" type="hidden" value="{next}">' \
               '<input name="username" data-testid="login-username"><input name="password" data-testid="login-password">' \
               '<button data-testid="login-submit">Sign in</button></form>'
        if request.method == "GET":
            return _page("Sign in", form.format(next=request.query_params.get("next", f"{ROOT}/home")))
        state.login_posts += 1
        fields = parse_qs((await request.body()).decode())
        if not state.login_confirms:
            return _page("Sign in", form.format(next=fields.get("next", [""])[0]))
        response = RedirectResponse(fields.get("next", [f"{ROOT}/home"])[0], 303)
        response.set_cookie("fake_session", "ok", path=ROOT)
        return response

    async def tasks(request: Request) -> Response:
        if request.method == "POST":
            state.task_posts += 1
            if state.task_bounces:
                state.task_bounces -= 1
                response = to_login(request)
                response.delete_cookie("fake_session", path=ROOT)
                return response
            return RedirectResponse(f"{ROOT}/pm/tasks?created=task-9", 303)
        created = request.query_params.get("created")
        notice = f'<p data-testid="task-created-id">{created}</p>' if created else ""
        row = (f'<table><tr data-testid="task-row-{created}"><td data-testid="task-kind">general</td>'
               f'<td data-testid="task-patient">{PATIENT}</td></tr></table>') if created else ""
        form = (
            '<form method="post"><select name="kind" data-testid="task-kind-select">'
            '<option value="general" data-testid="task-kind-option-general">General</option></select>'
            '<select name="assignee" data-testid="task-assignee-select">'
            '<option value="prac-8" data-testid="task-assignee-option-prac-8">Austin Williams (scheduler)</option></select>'
            '<input name="patient_id" data-testid="task-patient-input"><input name="call_reference" data-testid="task-call-ref-input">'
            '<select name="priority" data-testid="task-priority-select"><option value="routine">Routine</option></select>'
            '<textarea name="note" data-testid="task-note-input"></textarea>'
            '<button data-testid="task-submit">Create</button></form>'
        )
        return _page("PM task queue", notice + form + row)

    return Starlette(routes=[Route(ROOT + "/{path:path}", screen, methods=["GET", "POST"])])


class FixedDirectory:
    """An EmaDirectory that knows nobody: the hostile booking tests never get as far as reading slots."""

    async def providers(self, practice: Practice, *, scope: WorkScope = BACKGROUND) -> dict[str, str | None]:
        return {}

    async def rooms(self, practice: Practice, *, scope: WorkScope = BACKGROUND) -> dict[str, EmaRoom | None]:
        return {}


@pytest.fixture(scope="module")
def fake_ema() -> Iterator[tuple[FakeEma, str]]:
    state = FakeEma()
    with serve(fake_ema_app(state)) as base:
        yield state, base


@pytest.fixture
def fake(fake_ema: tuple[FakeEma, str]) -> FakeEma:
    state, _ = fake_ema
    state.reset()
    return state


@pytest.fixture
def fake_practice(fake_ema: tuple[FakeEma, str], tmp_path: Path) -> Practice:
    _, base = fake_ema
    secret = tmp_path / "fake-credentials.json"
    secret.touch(mode=0o600)
    secret.write_text(json.dumps({"username": "callstream.fake", "password": "fake-password-123"}))
    return Practice.model_validate({
        "practice_id": "fake-ema", "name": "Fake EMA", "called_numbers": ["+15555550100"], "base_url": base,
        "firm_url_prefix": "fake", "auth": {"method": "password", "credentials_ref": f"file:{secret}"},
        "capabilities": {"ema_url": f"{base}{ROOT}"},
    })


@pytest.fixture
async def hostile_sessions(ema_browser: EmaBrowser, tmp_path: Path) -> AsyncIterator[EmaSessions]:
    sessions = EmaSessions(
        browser=ema_browser, locks=EmaLockStore.under(tmp_path), evidence=EvidenceStore.under(tmp_path),
        step_timeout_s=1.0,
    )
    try:
        yield sessions
    finally:
        await sessions.close()


@pytest.fixture
def commands(hostile_sessions: EmaSessions) -> EmaCommands:
    return EmaCommands(hostile_sessions, FixedDirectory())


def evidence_record(tmp_path: Path, name: str | None) -> dict[str, object]:
    assert name is not None
    return json.loads((tmp_path / "ema-evidence" / "fake-ema" / f"{name}.json").read_text())


async def test_the_fake_ema_reads_cleanly_when_it_behaves(
    commands: EmaCommands, fake: FakeEma, fake_practice: Practice
) -> None:
    flags = await commands.read_compliance(fake_practice, PATIENT)
    assert flags.chronic_opioid and str(flags.agreement_renewal_due) == "2027-01-01"
    assert flags.pdmp_last_checked is not None and fake.login_posts == 1


@pytest.mark.parametrize(
    ("testid", "value"),
    [
        ("chart-chronic-opioid", "maybe"),
        ("chart-last-refill", "10/01/2026"),
        ("chart-phone-restriction", "no-opioids-ever"),
        ("chart-uds-due", "y" * 300),
        ("patient-id", "pt-2"),
    ],
)
async def test_unreadable_chart_values_are_screen_errors_with_evidence(
    commands: EmaCommands, fake: FakeEma, fake_practice: Practice, tmp_path: Path, testid: str, value: str
) -> None:
    fake.chart[testid] = value
    with pytest.raises(EmaScreenError) as failure:
        await commands.read_compliance(fake_practice, PATIENT)
    assert failure.value.step == "read_chart" and value not in str(failure.value)
    assert evidence_record(tmp_path, failure.value.evidence)["step"] == "read_chart"


async def test_a_duplicated_element_is_not_guessed_between(
    commands: EmaCommands, fake: FakeEma, fake_practice: Practice
) -> None:
    fake.duplicate = "chart-aberrant-uds"
    with pytest.raises(EmaScreenError, match="exactly one chart-aberrant-uds"):
        await commands.read_compliance(fake_practice, PATIENT)


async def test_pdmp_report_is_removed_before_the_evidence_screenshot(
    commands: EmaCommands, fake: FakeEma, fake_practice: Practice, tmp_path: Path
) -> None:
    fake.pdmp_checked = "2026-10-02T08:00:00"  # no zone
    with pytest.raises(EmaScreenError, match="pdmp-last-checked") as failure:
        await commands.read_compliance(fake_practice, PATIENT)
    record = evidence_record(tmp_path, failure.value.evidence)
    assert record["step"] == "read_pdmp" and record["redacted_elements"] == 1
    assert PDMP_REPORT not in json.dumps(record)


async def test_an_off_site_redirect_is_blocked_and_never_followed(
    commands: EmaCommands, fake: FakeEma, fake_ema: tuple[FakeEma, str], fake_practice: Practice,
    hostile_sessions: EmaSessions,
) -> None:
    _, base = fake_ema
    await commands.read_compliance(fake_practice, PATIENT)  # signed in first
    fake.redirect_chart_to = base.replace("127.0.0.1", "localhost") + f"{ROOT}/home"
    with pytest.raises(EmaScreenError, match="outside the practice's EMA"):
        await commands.read_compliance(fake_practice, PATIENT)
    assert fake.foreign_hits == 0
    assert hostile_sessions.keeper(fake_practice).stats.blocked_requests == 1


async def test_a_login_that_never_confirms_locks_after_one_attempt(
    commands: EmaCommands, fake: FakeEma, fake_practice: Practice, hostile_sessions: EmaSessions
) -> None:
    fake.login_confirms = False
    with pytest.raises(EmaLoginFailed, match="LOGIN_UNCONFIRMED"):
        await commands.read_compliance(fake_practice, PATIENT)
    with pytest.raises(EmaLockedError):
        await commands.read_compliance(fake_practice, PATIENT)
    assert fake.login_posts == 1
    lock = hostile_sessions.locks.get("fake-ema")
    assert lock is not None and lock.reason is LockReason.LOGIN_UNCONFIRMED


async def test_a_form_bounced_to_the_login_screen_runs_once_more_after_the_relogin(
    commands: EmaCommands, fake: FakeEma, fake_practice: Practice
) -> None:
    fake.task_bounces = 1
    spec = TaskSpec(kind=TaskKind.FRONT_DESK_MESSAGE, audience=TaskAudience.FRONT_DESK, reason=TaskReason.GENERAL_MESSAGE,
                    call_id="call-bounce", practice_id="fake-ema", patient_id=PATIENT)
    result = await commands.create_staff_task(fake_practice, call_id="call-bounce", task=spec, note="Please call back.")
    assert (result.resource_type, result.resource_id) == ("Task", "task-9")
    assert (fake.task_posts, fake.login_posts) == (2, 2)


async def test_a_form_bounced_twice_is_a_screen_error(
    commands: EmaCommands, fake: FakeEma, fake_practice: Practice
) -> None:
    fake.task_bounces = 2
    spec = TaskSpec(kind=TaskKind.FRONT_DESK_MESSAGE, audience=TaskAudience.FRONT_DESK, reason=TaskReason.GENERAL_MESSAGE,
                    call_id="call-bounce-2", practice_id="fake-ema", patient_id=PATIENT)
    with pytest.raises(EmaScreenError, match="ended the session twice"):
        await commands.create_staff_task(fake_practice, call_id="call-bounce-2", task=spec, note="Please call back.")
    assert fake.task_posts == 2


async def test_a_template_the_practice_lacks_is_refused(
    commands: EmaCommands, fake: FakeEma, fake_practice: Practice
) -> None:
    with pytest.raises(EmaInvalidCommand, match="no kyphoplasty procedure template"):
        await commands.search_template_slots(
            fake_practice, visit_reason=VisitReason.KYPHOPLASTY, date_from=dt.date(2026, 12, 1),
            date_to=dt.date(2026, 12, 1), patient_id=PATIENT,
        )


@pytest.mark.parametrize("behaviour", ["slow", "server-error"])
async def test_a_slow_or_failing_ema_is_unavailable_not_a_hang(
    commands: EmaCommands, fake: FakeEma, fake_practice: Practice, behaviour: str
) -> None:
    await commands.read_compliance(fake_practice, PATIENT)  # signed in first
    if behaviour == "slow":
        fake.slow_seconds = 1.5
    else:
        fake.fail_with = 503
    with pytest.raises(EmaUnavailableError):
        await commands.read_compliance(fake_practice, PATIENT)


async def test_evidence_keeps_the_newest_sets_and_refuses_free_text_steps(
    ema_browser: EmaBrowser, fake_ema: tuple[FakeEma, str], tmp_path: Path
) -> None:
    _, base = fake_ema
    store = EvidenceStore(tmp_path / "evidence", keep_per_practice=2)
    context = await ema_browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{base}{ROOT}/login")
        names = [await store.capture(page, practice_id="fake-ema", step="probe", error_class="EmaScreenError")
                 for _ in range(3)]
        assert await store.capture(page, practice_id="fake-ema", step="Jane Doe", error_class="EmaScreenError") is None
    finally:
        await context.close()
    assert store.names("fake-ema") == names[1:]
    assert len(list((tmp_path / "evidence" / "fake-ema").iterdir())) == 4
