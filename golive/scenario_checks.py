"""What a go-live check verifies after a call: what the practice would see, against the scenario's expectations.

The replies the caller heard, the sandbox's Appointments (visit-reason code, room kind and equipment,
start) and Tasks (kind and reason codes, PDMP check time) read over its FHIR API, and the call's audit
records (guard hits with their action, bypass signals, escalations, review-queue entries), plus
invariants every call keeps (``INVARIANTS``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from callstream.errors import ConfigError
from callstream.tenants import Practice
from connectors.dispatch import task_code
from connectors.ema.commands import TASK_KEY_LINE, task_kind_code
from connectors.allow_lists import FORBIDDEN_WRITE_TYPES
from golive.audit_collector import AuditCollector
from golive.catalogue import AppointmentExpectation, CallerKind, TaskExpectation
from golive.planning import Planned
from guards.model import TASK_AUDIENCE, TaskSpec
from guards.replies import ReplyTemplate, adapt_reply
from sandbox.vocabulary import CALL_REFERENCE_SYSTEM, EQUIPMENT_SYSTEM, ROOM_KIND_SYSTEM, VISIT_REASON_SYSTEM
from sandbox.world import SandboxWorld
from schemas.models import AuditAction, AuditEvent, AuditOutcome
from streams.callflow import is_after_hours
from devkit.telephony import ReplayReport

WRITE_ACTIONS = frozenset({AuditAction.FHIR_WRITE, AuditAction.EMA_WRITE})
PDMP_CONTENT_MARK = "SYNTHETIC"
"""Every sandbox PDMP report and UDS result starts with it: it must never reach a task."""
HOURS_BOUNDARY = timedelta(minutes=2)
INVARIANTS = (
    "the call's end is audited",
    "no MedicationRequest or MedicationStatement write (audit and sandbox)",
    "no controlled-substance request left unescalated (no ESCALATION FAILURE)",
    "no dead-lettered event",
    "no PDMP content or UDS result in any task",
)


@dataclass
class ScenarioResult:
    scenario_id: str
    category: str
    practice_id: str
    call_id: str
    problems: list[str] = field(default_factory=list)
    heard: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def label(self) -> str:
        return f"{self.practice_id}/{self.scenario_id}"


def acceptable(template: ReplyTemplate, when: datetime, practice: Practice) -> set[str]:
    """The template and, when the practice's office is closed (or within minutes of opening or closing), its
    after-hours wording: the worker decides office hours by its own clock when it answers."""
    closed = {is_after_hours(when + delta, practice) for delta in (-HOURS_BOUNDARY, timedelta(0), HOURS_BOUNDARY)}
    return {adapt_reply(template, after_hours=state, writes_queued=False).value for state in closed}


class SandboxReader:
    """Reads a practice's sandbox over its proprietary FHIR API as an outside observer would (its own token, no
    connector allow-list: the checks must see MedicationRequest, which the product can never address)."""

    def __init__(self) -> None:
        self._http = httpx.AsyncClient(timeout=30.0, trust_env=False)
        self._tokens: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _headers(self, practice: Practice) -> dict[str, str]:
        async with self._lock:
            if practice.practice_id not in self._tokens:
                secrets = practice.auth.resolve()
                if practice.firm_url_prefix is None or secrets.api_key is None or secrets.username is None \
                        or secrets.password is None:
                    raise ConfigError(f"{practice.practice_id}: the check reads proprietary-track sandboxes only")
                response = await self._http.post(
                    practice.token_url, headers={"x-api-key": secrets.api_key.get_secret_value()},
                    data={"grant_type": "password", "username": secrets.username.get_secret_value(),
                          "password": secrets.password.get_secret_value()})
                response.raise_for_status()
                self._tokens[practice.practice_id] = response.json()["access_token"]
            api_key = practice.auth.resolve().api_key
            assert api_key is not None
            return {"x-api-key": api_key.get_secret_value(),
                    "authorization": f"Bearer {self._tokens[practice.practice_id]}"}

    async def search(self, practice: Practice, resource_type: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        url: str | None = f"{practice.fhir_base}/{resource_type}"
        query: Mapping[str, str] | None = {**params, "_count": "50"} if resource_type != "Location" else params
        found: list[dict[str, Any]] = []
        while url is not None:
            response = await self._http.get(url, params=query, headers=await self._headers(practice))
            response.raise_for_status()
            bundle = response.json()
            found.extend(entry["resource"] for entry in bundle.get("entry", []))
            url = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)
            query = None
        return found


class Checker:
    """Compares one played call with its scenario's expectations (see the module docstring)."""

    def __init__(self, client: SandboxReader, world: SandboxWorld, run_started: datetime,
                 messages: Sequence[Mapping[str, Any]] = ()) -> None:
        self._messages = messages
        self._client = client
        self._world = world
        self._started = run_started
        self._rooms: dict[tuple[str, str], dict[str, Any]] = {}

    async def check(self, plan: Planned, report: ReplayReport, audit: list[AuditEvent]) -> ScenarioResult:
        scenario = plan.scenario
        result = ScenarioResult(scenario.id, scenario.category, plan.mirrored_practice, plan.call_id)
        heard = report.replies.get(plan.call_id, [])
        answers = report.answers(plan.call_id)
        result.heard = [reply.template for reply in heard]
        problems = result.problems
        self._check_replies(plan, answers, problems)
        expect = scenario.expect
        missing_interim = [t.value for t in expect.interim if t.value not in result.heard]
        if missing_interim:
            problems.append(f"the caller never heard {missing_interim}")
        if expect.escalated is not None and any(a.escalated for a in answers) != expect.escalated:
            problems.append(f"escalated: expected {expect.escalated}")
        self._check_audit(plan, audit, problems)
        if scenario.caller is not CallerKind.UNKNOWN or expect.registered is not None:
            try:
                await self._check_sandbox(plan, audit, problems)
            except Exception as exc:  # noqa: BLE001 - a failed read is this scenario's failure, named by class
                problems.append(f"reading the sandbox failed ({type(exc).__name__})")
        failures = sorted({f"{r.action.value}/{r.command.value if r.command else '-'}/{r.error_class}"
                           for r in audit if r.error_class})
        if problems and failures:
            problems.append(f"(errors audited in the call: {', '.join(failures)})")
        return result

    def _check_replies(self, plan: Planned, answers: Sequence[Any], problems: list[str]) -> None:
        expected = [step.reply for step in plan.scenario.steps if step.reply]
        got = [a.template for a in answers]
        if len(got) != len(expected):
            problems.append(f"replies: expected {[list(map(str, r)) for r in expected]}, heard {got}")
            return
        for number, (options, answer) in enumerate(zip(expected, answers, strict=True), start=1):
            allowed = set().union(*(acceptable(t, answer.created_at, plan.tenant) for t in options))
            if answer.template not in allowed:
                problems.append(f"reply {number}: expected one of {sorted(allowed)}, heard {answer.template}")

    def _check_audit(self, plan: Planned, records: list[AuditEvent], problems: list[str]) -> None:
        expect = plan.scenario.expect
        if not any(r.state_to == "ended" for r in records):
            problems.append("the call's end was never audited")
        hits = [r for r in records if r.action is AuditAction.GUARD_HIT]
        for guard in expect.guards:
            found = [r for r in hits if guard.name.value in r.guards_fired]
            if not found:
                problems.append(f"guard {guard.name} did not fire")
            elif guard.action is not None and not any(r.guard_action == guard.action for r in found):
                problems.append(f"guard {guard.name} acted {sorted({r.guard_action for r in found})}, "
                                f"expected {guard.action}")
        fired = {name for r in hits for name in r.guards_fired}
        for name in expect.absent_guards:
            if name.value in fired:
                problems.append(f"guard {name} fired but must not")
        signals = {r.detail.get("signal") for r in records if r.action is AuditAction.BYPASS_ATTEMPT}
        for signal in expect.bypass:
            if signal not in signals:
                problems.append(f"bypass signal {signal} not recorded (recorded: {sorted(filter(None, signals))})")
        for wanted in expect.audit:
            matching = [r for r in records if r.action is wanted.action
                        and (wanted.outcome is None or r.outcome is wanted.outcome)
                        and (wanted.command is None or (r.command is not None and r.command.value == wanted.command))
                        and (wanted.resource_type is None or r.resource_type == wanted.resource_type)]
            if (len(matching) != wanted.count) if wanted.exactly else (len(matching) < wanted.count):
                what = "/".join(str(v) for v in (wanted.action, wanted.outcome, wanted.command, wanted.resource_type) if v)
                problems.append(f"audit {what}: {len(matching)} records, expected "
                                f"{'exactly ' if wanted.exactly else 'at least '}{wanted.count}")
        # Invariants of every call.
        forbidden = [r for r in records if r.action in WRITE_ACTIONS and r.resource_type in FORBIDDEN_WRITE_TYPES]
        if forbidden:
            problems.append(f"forbidden write audited: {sorted({r.resource_type for r in forbidden})}")
        if any(r.action is AuditAction.ESCALATION and r.outcome is AuditOutcome.FAILURE for r in records):
            problems.append("a controlled-substance request was not escalated (ESCALATION FAILURE)")
        if any(r.action is AuditAction.DEAD_LETTER for r in records):
            problems.append("an event of the call was dead-lettered")

    async def _check_sandbox(self, plan: Planned, audit: list[AuditEvent], problems: list[str]) -> None:
        practice, patient_id = plan.practice, plan.chart.caller.patient_id
        if plan.scenario.expect.registered is not None:
            registered = await self._check_registration(plan, audit, problems)
            if registered is None:
                return
            patient_id = registered
        appointments, tasks, medications = await asyncio.gather(
            self._client.search(practice, "Appointment", {"patient": patient_id}),
            self._client.search(practice, "Task", {"patient": patient_id}),
            self._client.search(practice, "MedicationRequest", {"patient": patient_id}),
        )
        store = self._world.tenants[practice.practice_id].store
        initial_medications = {m["id"] for m in store.all_of("MedicationRequest")
                               if str(m.get("subject", {}).get("reference", "")).endswith(f"/{patient_id}")}
        if {m["id"] for m in medications} - initial_medications:
            problems.append("a MedicationRequest appeared on the chart")
        changed = [a for a in appointments if self._changed(store, a)]
        await self._check_appointments(plan, changed, problems)
        mine = [t for t in tasks if any(i.get("system") == CALL_REFERENCE_SYSTEM and i.get("value") == plan.call_id
                                        for i in t.get("identifier", []))]
        self._check_tasks(plan, mine, problems)
        self._check_intake_message(plan, changed, problems)

    async def _check_registration(self, plan: Planned, audit: list[AuditEvent], problems: list[str]) -> str | None:
        """The Patient the call registered (its name, one per call) and its Coverage: the new chart's id."""
        created = [r for r in audit if r.action is AuditAction.FHIR_WRITE and r.outcome is AuditOutcome.SUCCESS
                   and r.resource_type == "Patient"]
        if len(created) != 1 or not created[0].resource_ids:
            problems.append(f"registration: {len(created)} Patient writes audited, expected 1")
            return None
        patient_id = created[0].resource_ids[0]
        found, coverage = await asyncio.gather(
            self._client.search(plan.practice, "Patient", {"_id": patient_id}),
            self._client.search(plan.practice, "Coverage", {"patient": patient_id}))
        caller = plan.chart.caller
        same_name = [p for p in found if p.get("name", [{}])[0].get("family") == caller.family
                     and p.get("birthDate") == caller.birth_date]
        if not same_name:
            problems.append("registration: the new chart does not carry the caller's name and birth date")
        twins = await self._client.search(plan.practice, "Patient", {"family": caller.family, "birthdate": caller.birth_date})
        if len(twins) != 1:
            problems.append(f"registration: {len(twins)} charts with the caller's name and birth date, expected 1")
        insured = plan.scenario.expect.registered == "insured"
        if len(coverage) != (1 if insured else 0):
            problems.append(f"registration: {len(coverage)} Coverage resources, expected {1 if insured else 0}")
        return patient_id

    def _check_intake_message(self, plan: Planned, changed: list[dict[str, Any]], problems: list[str]) -> None:
        wanted = plan.scenario.expect.intake_message
        if wanted is None:
            return
        booked = {a["id"] for a in changed if a.get("status") == "booked"}
        sent = [m for m in self._messages if any(f"ref={appointment}." in str(m.get("body", "")) for appointment in booked)]
        if wanted and len(sent) != 1:
            problems.append(f"intake: {len(sent)} SMS messages with the booked appointment's link, expected 1")
        if not wanted and sent:
            problems.append("intake: a link was sent for a visit without an intake form")

    @staticmethod
    def _changed(store: Any, appointment: Mapping[str, Any]) -> bool:
        before = store.get("Appointment", appointment["id"])
        if before is None:
            return True
        return before.get("status") != appointment.get("status") or before.get("start") != appointment.get("start")

    async def _check_appointments(self, plan: Planned, changed: list[dict[str, Any]], problems: list[str]) -> None:
        expected = plan.scenario.expect.appointments
        if len(changed) != len(expected):
            summary = [(_visit_reason(a), a.get("status")) for a in changed]
            problems.append(f"appointments: expected {len(expected)} new or changed, found {len(changed)} {summary}")
            return
        unmatched = list(changed)
        for wanted in expected:
            reasons: list[str] = []
            for appointment in unmatched:
                why = await self._appointment_mismatch(plan, wanted, appointment)
                if why is None:
                    unmatched.remove(appointment)
                    break
                reasons.append(why)
            else:
                problems.append(f"no appointment is {wanted.visit_reason or 'the named one'}/{wanted.status}: "
                                f"{'; '.join(reasons)}")

    async def _appointment_mismatch(self, plan: Planned, wanted: AppointmentExpectation,
                                    appointment: Mapping[str, Any]) -> str | None:
        store = self._world.tenants[plan.practice.practice_id].store
        if wanted.visit_reason is not None:
            reason = wanted.visit_reason.value
        else:
            named = store.get("Appointment", plan.target_appointment) if plan.target_appointment else None
            reason = _visit_reason(named) if named else None
        if _visit_reason(appointment) != reason or appointment.get("status") != wanted.status:
            return f"{_visit_reason(appointment)}/{appointment.get('status')}"
        start = datetime.fromisoformat(str(appointment["start"]))
        if wanted.moved:
            before = store.get("Appointment", appointment["id"])
            if appointment["id"] != plan.target_appointment or before is None or before.get("start") == appointment.get("start"):
                return "not the named appointment moved to another time"
        if wanted.min_days_ahead is not None and start < self._started + timedelta(days=wanted.min_days_ahead):
            return f"starts within {wanted.min_days_ahead} days (a pre-op clearance window)"
        if wanted.within_dates and plan.window is not None:
            local = start.astimezone(ZoneInfo(plan.tenant.timezone)).date()
            if not plan.window[0] <= local <= plan.window[1]:
                return "starts outside the dates asked for"
        if wanted.room_kind is not None or wanted.equipment:
            room = await self._room(plan.practice, appointment)
            if room is None:
                return "no room on the appointment"
            kinds = {c.get("code") for t in room.get("type", []) for c in t.get("coding", [])
                     if c.get("system") == ROOM_KIND_SYSTEM}
            devices = {e.get("valueCoding", {}).get("code") for e in room.get("extension", [])
                       if e.get("valueCoding", {}).get("system") == EQUIPMENT_SYSTEM}
            if wanted.room_kind is not None and wanted.room_kind not in kinds:
                return f"room {room.get('name')!r} is {sorted(filter(None, kinds))}, not {wanted.room_kind}"
            if not set(wanted.equipment) <= devices:
                return f"room {room.get('name')!r} lacks {sorted(set(wanted.equipment) - devices)}"
        return None

    async def _room(self, practice: Practice, appointment: Mapping[str, Any]) -> dict[str, Any] | None:
        location = next((str(p["actor"]["reference"]).rsplit("/", 1)[-1] for p in appointment.get("participant", [])
                         if str(p.get("actor", {}).get("reference", "")).startswith("Location/")), None)
        if location is None:
            return None
        key = (practice.practice_id, location)
        if key not in self._rooms:
            found = await self._client.search(practice, "Location", {"_id": location})
            self._rooms[key] = found[0] if found else {}
        return self._rooms[key] or None

    def _check_tasks(self, plan: Planned, tasks: list[dict[str, Any]], problems: list[str]) -> None:
        expected = plan.scenario.expect.tasks
        codes = [_task_code(t) for t in tasks]
        exact = plan.scenario.expect.exact_tasks
        if (len(tasks) != len(expected)) if exact else (len(tasks) < len(expected)):
            problems.append(f"tasks: expected {[f'{e.kind}/{e.reason}' for e in expected]}, found {codes}")
            return
        unmatched = list(tasks)
        for wanted in expected:
            fits = [t for t in unmatched if _task_matches(plan, wanted, t)]
            if not fits:
                keys = [line.strip() for t in tasks for line in _task_text(t).splitlines() if TASK_KEY_LINE in line]
                problems.append(f"no task {wanted.kind}/{wanted.reason} (found {codes} {keys})")
                continue
            task = fits[0]
            unmatched.remove(task)
            says_pdmp = "PDMP last checked" in _task_text(task)
            if wanted.pdmp_last_checked is not None and says_pdmp != wanted.pdmp_last_checked:
                problems.append(f"task {wanted.kind}: PDMP check time {'missing' if wanted.pdmp_last_checked else 'present'}")
            says_closed = "after office hours" in _task_text(task)
            if wanted.after_hours is not None and says_closed != wanted.after_hours:
                problems.append(f"task {wanted.kind}: 'after office hours' {'missing' if wanted.after_hours else 'present'}")
        if any(PDMP_CONTENT_MARK in _task_text(t) for t in tasks):
            problems.append("PDMP content or a UDS result reached a task")


def _visit_reason(appointment: Mapping[str, Any]) -> str | None:
    return next((c.get("code") for c in appointment.get("appointmentType", {}).get("coding", [])
                 if c.get("system") == VISIT_REASON_SYSTEM), None)


def _task_code(task: Mapping[str, Any]) -> str | None:
    return next((c.get("code") for c in task.get("code", {}).get("coding", [])), None)


def _task_text(task: Mapping[str, Any]) -> str:
    notes = " ".join(str(n.get("text", "")) for n in task.get("note", []))
    return f"{task.get('description', '')} {notes}"


def _task_matches(plan: Planned, wanted: TaskExpectation, task: Mapping[str, Any]) -> bool:
    """A FHIR-created Task carries kind and reason in its code; a PM-queue Task carries the kind in its code and
    the reasons in the task key its note ends with."""
    spec = TaskSpec(kind=wanted.kind, audience=TASK_AUDIENCE[wanted.kind], reason=wanted.reason,
                    call_id=plan.call_id, practice_id=plan.practice.practice_id)
    code = _task_code(task)
    if code == task_code(spec):
        return True
    return code == task_kind_code(spec) and f":{wanted.kind.value}:" in _task_text(task) and wanted.reason.value in _task_text(task)


async def check_all(plans: Sequence[Planned], report: ReplayReport, audit: AuditCollector, world: SandboxWorld,
                    run_started: datetime, on_result: Callable[[ScenarioResult], None],
                    messages: Sequence[Mapping[str, Any]] = ()) -> list[ScenarioResult]:
    """Every planned call checked (sandbox reads a few at a time), reported as each finishes."""
    results: list[ScenarioResult] = []
    limit = asyncio.Semaphore(8)
    reader = SandboxReader()
    try:
        checker = Checker(reader, world, run_started, messages)

        async def one(plan: Planned) -> None:
            async with limit:
                result = await checker.check(plan, report, audit.of_call(plan.call_id))
            results.append(result)
            on_result(result)

        await asyncio.gather(*(one(plan) for plan in plans))
    finally:
        await reader.aclose()
    return results
