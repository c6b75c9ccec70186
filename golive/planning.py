"""How a go-live check binds the catalogue to a mirrored sandbox: the tenant entries and each scenario's call.

Each go-live phase a scenario needs gets its own tenant entry for the same sandbox practice (its own
called number, open around the clock so every reply's wording is known), plus closed, holiday and
intake variants. ``Planner`` gives every scenario its own patient of the chart it names and its own
call, and each booking that writes a day no other booking call of the run has.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from callstream.tenants import Practice, TenantDirectory
from golive.callers import CallerPool, Chart
from golive.catalogue import CallerKind, ChooseStep, IdentifyStep, IntentStep, Phase, Scenario
from guards.draft import BOOKING_INTENTS
from guards.hours import WEEKDAYS
from guards.model import Intent, VisitReason
from guards.scheduling import procedure_rule
from sandbox.world import SandboxWorld, Tenant
from devkit.cast import Script

UNOFFERED_SLOT = "slot-golive-never-offered"


@dataclass
class Planned:
    """A scenario bound to a practice, a patient and a call."""

    scenario: Scenario
    practice: Practice
    """The sandbox practice (credentials, FHIR base) the checks read from: the mirrored practice, or for a fault
    scenario its twin (the same mirror entry under another id, so its faults touch no other scenario)."""
    tenant: Practice
    """The tenant entry the call is made to (the practice in the scenario's phase)."""
    chart: Chart
    script: Script
    mirrored_practice: str
    """The mirror's practice the scenario checks (the report's name for it)."""
    target_appointment: str | None = None
    window: tuple[date, date] | None = None

    @property
    def call_id(self) -> str:
        return self.script.call_id

    @property
    def label(self) -> str:
        return f"{self.mirrored_practice}/{self.scenario.id}"


@dataclass
class NotApplicable:
    scenario_id: str
    practice_id: str
    reason: str

    @property
    def label(self) -> str:
        return f"{self.practice_id}/{self.scenario_id}"


ALWAYS_OPEN: dict[str, list[dict[str, str]]] = {day: [{"opens": "00:00", "closes": "24:00"}] for day in WEEKDAYS}
NEW_PATIENT_ADDRESS = {"line": "100 Synthetic Way", "city": "Austin", "state": "TX", "postal_code": "78701"}


def phase_tenant_id(practice_id: str, phase: Phase) -> str:
    """The tenant entry of a practice in one phase during the check (the sandbox phase is the practice itself)."""
    return practice_id if phase is Phase.SANDBOX else f"{practice_id}-golive-{phase.value.replace('_', '-')}"


def scenario_tenant_id(practice_id: str, scenario: Scenario) -> str:
    """The tenant entry a scenario's call goes to: its phase, or the closed, holiday or intake variant."""
    if scenario.intake:
        return f"{practice_id}-golive-intake"
    if scenario.office != "open":
        return f"{practice_id}-golive-{scenario.office}"
    return phase_tenant_id(practice_id, scenario.phase)


def tenant_entries(entry: Mapping[str, Any], index: int, today: date, intake: Mapping[str, Any] | None = None,
                   ) -> list[dict[str, Any]]:
    """The practice's tenant entry once per phase, open around the clock (so every reply's wording is known),
    plus the sandbox phase closed all week, with today a holiday, and with intake forms (when ``intake`` is
    given): the same ModMed tenant and credentials, each with its own id and called number."""
    variants: list[tuple[str, Phase, dict[str, Any], Mapping[str, Any] | None]] = [
        (phase_tenant_id(str(entry["practice_id"]), phase), phase, {"weekly": ALWAYS_OPEN}, None) for phase in Phase]
    base = str(entry["practice_id"])
    days = [(today + timedelta(days=d)).isoformat() for d in (-1, 0, 1)]
    variants += [(f"{base}-golive-closed", Phase.SANDBOX, {"weekly": {}}, None),
                 (f"{base}-golive-holiday", Phase.SANDBOX, {"weekly": ALWAYS_OPEN, "holidays": days}, None)]
    if intake is not None:
        variants.append((f"{base}-golive-intake", Phase.SANDBOX, {"weekly": ALWAYS_OPEN}, intake))
    entries = []
    for offset, (tenant_id, phase, hours, intake_config) in enumerate(variants):
        copy = {**entry, "practice_id": tenant_id, "phase": phase.value, "office_hours": hours}
        if tenant_id != base:
            copy["called_numbers"] = [f"+1555019{index:02d}{offset:02d}"]
        if intake_config is not None:
            copy["intake"] = dict(intake_config)
        entries.append(copy)
    return entries


class Planner:
    """Binds scenarios to patients of one mirrored practice and builds their calls."""

    def __init__(self, world: SandboxWorld, tenants: TenantDirectory, run_date: date, now: datetime) -> None:
        self._world = world
        self._tenants = tenants
        self._run_date = run_date
        self._now = now
        self._pools: dict[str, CallerPool] = {}
        self._booked_days: dict[str, set[date]] = defaultdict(set)

    def plan(self, scenario: Scenario, practice_id: str, *, on: str | None = None) -> Planned | NotApplicable:
        """The scenario for the mirror's ``practice_id``, played at sandbox practice ``on`` (default: itself)."""
        mirrored, practice_id = practice_id, on or practice_id
        tenant = self._world.tenants[practice_id]
        profile = tenant.profile
        if scenario.needs_template is not None:
            template = profile.template_for(scenario.needs_template.value)
            if template is None:
                return NotApplicable(scenario.id, mirrored, f"the mirror has no {scenario.needs_template} template")
            if scenario.needs_ema_only and not template.ema_only:
                return NotApplicable(scenario.id, mirrored, f"the mirror's {scenario.needs_template} is not EMA-only")
        pool = self._pools.setdefault(practice_id, CallerPool(tenant, self._now))
        chart = pool.take(scenario.caller)
        if chart is None:
            return NotApplicable(scenario.id, mirrored, f"no unused '{scenario.caller}' patient in the sandbox")
        practice = self._tenants[practice_id]
        phase_tenant = self._tenants[scenario_tenant_id(practice_id, scenario)]
        script = Script(phase_tenant.called_numbers[0], caller_number=chart.caller.phone, now=self._now,
                        call_id=f"golive-{scenario.id}-{uuid.uuid4().hex[:8]}").started()
        planned = Planned(scenario, practice, phase_tenant, chart, script, mirrored)
        for step in scenario.steps:
            if isinstance(step, IdentifyStep):
                script.add(_identification(chart, step.details))
            elif isinstance(step, ChooseStep):
                script.chooses(UNOFFERED_SLOT if step.choose == "unoffered" else f"OFFERED.{step.choose}")
            else:
                entities = self._entities(step, chart, pool, tenant, planned)
                if entities is None:
                    return NotApplicable(scenario.id, mirrored, "no other patient's appointment to name")
                script.intent(step.intent.value, snippet=step.snippet, medication_mentioned=step.medication,
                              controlled_substance_mentioned=step.controlled_substance, **entities)
        script.ended()
        return planned

    def warm_up(self, practice_id: str) -> Script:
        """A call that only looks a patient up: the worker then holds a ModMed token for the practice (a fault
        scenario revoking tokens must find one to revoke)."""
        tenant = self._world.tenants[practice_id]
        pool = self._pools.setdefault(practice_id, CallerPool(tenant, self._now))
        chart = pool.take(CallerKind.PLAIN)
        assert chart is not None, "a mirrored practice always has flag-free patients"
        return (Script(self._tenants[practice_id].called_numbers[0], caller_number=chart.caller.phone, now=self._now,
                       call_id=f"golive-warm-up-{uuid.uuid4().hex[:8]}")
                .started().identified(chart.caller).intent(Intent.UNKNOWN.value).ended())

    def _entities(self, step: IntentStep, chart: Chart, pool: CallerPool, tenant: Tenant,
                  planned: Planned) -> dict[str, Any] | None:
        entities: dict[str, Any] = {}
        visit_reason = step.visit_reason
        if visit_reason is None and step.appointment == "own" and chart.upcoming is not None:
            visit_reason = VisitReason(chart.upcoming[1])
        if step.intent is Intent.OPIOID_AGREEMENT_RENEWAL:
            visit_reason = VisitReason.AGREEMENT_REVIEW
        if visit_reason is not None and step.intent is not Intent.OPIOID_AGREEMENT_RENEWAL:
            entities["visit_reason"] = visit_reason.value
        if step.provider_hint is not None:
            entities["provider_hint"] = step.provider_hint
        window = None
        if step.dates is not None:
            window = (self._run_date + timedelta(days=step.dates.from_days),
                      self._run_date + timedelta(days=step.dates.to_days))
        elif step.intent in BOOKING_INTENTS and visit_reason is not None:
            if not chart.caller.patient_id:
                visit_reason = VisitReason.NEW_PATIENT_CONSULT  # a new patient starts with a consult (the guards' rule)
            elif visit_reason is VisitReason.NEW_PATIENT_CONSULT:
                visit_reason = VisitReason.FOLLOW_UP  # an established patient is booked a follow-up (the guards' rule)
            books = any(isinstance(s, ChooseStep) and s.choose != "unoffered" for s in planned.scenario.steps)
            window = self._booking_day(tenant, visit_reason, own_day=books and planned.scenario.phase is not Phase.READ_ONLY)
        if window is not None:
            planned.window = window
            entities["date_from"], entities["date_to"] = window[0].isoformat(), window[1].isoformat()
        appointment_prefix = tenant.id_prefix("appt")
        if step.appointment == "own":
            assert chart.upcoming is not None
            entities["appointment_id"] = planned.target_appointment = chart.upcoming[0]
        elif step.appointment == "other":
            other = pool.other_patients_appointment()
            if other is None:
                return None
            entities["appointment_id"] = planned.target_appointment = other
        elif step.appointment == "unknown":
            entities["appointment_id"] = planned.target_appointment = f"{appointment_prefix}-999999"
        return entities


    def _booking_day(self, tenant: Tenant, visit_reason: VisitReason, *, own_day: bool) -> tuple[date, date] | None:
        """A day with free slots of the visit reason past every pre-op window; a call that books gets a day no
        other booking call of the run has, so concurrent callers never race for one slot (None: no such day)."""
        template = tenant.profile.template_for(visit_reason.value)
        if template is None:
            return None
        rule = procedure_rule(visit_reason)
        lead = max(template.preop_clearance_days, rule.preop_clearance.lead_days if rule.preop_clearance else 0)
        used = self._booked_days[tenant.practice_id]
        zone = tenant.profile.zone
        for offset in range(max(1, lead + 1), 7 * tenant.profile.weeks_ahead):
            day = self._run_date + timedelta(days=offset)
            if own_day and day in used:
                continue
            start = datetime.combine(day, datetime.min.time(), zone)
            if tenant.slots.search(visit_reason.value, start, start + timedelta(days=1), None, None, self._now,
                                   include_ema_only=True):
                if own_day:
                    used.add(day)
                return day, day
        return None


def _identification(chart: Chart, details: str | None) -> dict[str, Any]:
    """The caller's name and birth date, and for a new patient the registration details (synthetic)."""
    caller = chart.caller
    payload: dict[str, Any] = {"type": "caller_identified", "family_name": caller.family, "given_name": caller.given,
                               "birth_date": caller.birth_date}
    if details is not None:
        registration: dict[str, Any] = {"gender": "female", "address": NEW_PATIENT_ADDRESS,
                                        "preferred_pharmacy": {"name": "Synthetic Pharmacy", "phone": "+15125550197"}}
        if details == "insured":
            registration["insurance"] = {"payer_name": "Synthetic Health Plan", "member_id": f"SYN{caller.phone[-6:]}",
                                         "relationship": "self"}
        payload.update(callback_number=caller.phone, contact_channel="sms", registration=registration)
    return payload
