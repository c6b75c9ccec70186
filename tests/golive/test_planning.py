"""How the go-live harness binds the catalogue to a mirrored sandbox: each scenario its own patient of the
chart it names and its own call, each booking that writes a day of its own, each phase its own tenant
entry; and which reply wording it accepts by office hours. (The whole run: test_golive_check.py.)"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from callstream.tenants import parse_tenant_directory
from golive.callers import FITS
from golive.catalogue import EXAMPLE_MIRROR, CallerKind, ChooseStep, Phase, load_catalogue
from golive.planning import Planned, Planner, scenario_tenant_id, tenant_entries
from golive.scenario_checks import acceptable
from guards.hours import OfficeHours
from guards.replies import ReplyTemplate
from sandbox.generator import build_world, generate_profile
from sandbox.mirror import apply_mirror, load_mirror

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)  # a Monday, 09:00 in Chicago


@pytest.fixture(scope="module")
def planned() -> tuple[list[Planned], object]:
    world = build_world(seed=7, patients_per_practice=400, anchor=NOW.date(),
                        profiles=apply_mirror([generate_profile(7, 0)], load_mirror(EXAMPLE_MIRROR), 7))
    entry = {"practice_id": "pain-1001", "name": "Riverbend", "called_numbers": ["+15125550100"],
             "timezone": "America/Chicago", "base_url": "http://127.0.0.1:18080", "firm_url_prefix": "riverbend",
             "auth": {"method": "password", "credentials_ref": "env:RIVERBEND"}}
    intake = {"forms": {"new-patient-consult": "https://forms.example/np"}, "link_secret_ref": "env:LINK",
              "sms": {"provider_url": "http://127.0.0.1:9/messages", "from_number": "+15125550198", "token_ref": "env:T"}}
    tenants = parse_tenant_directory({"practices": tenant_entries(entry, 0, NOW.date(), intake)}, "test")
    planner = Planner(world, tenants, NOW.date(), NOW)
    plans = [planner.plan(scenario, "pain-1001") for scenario in load_catalogue()]
    assert all(isinstance(plan, Planned) for plan in plans), [p for p in plans if not isinstance(p, Planned)]
    return plans, world  # type: ignore[return-value]


def test_every_scenario_gets_its_own_call_and_a_patient_of_the_chart_it_names(planned) -> None:  # type: ignore[no-untyped-def]
    plans, world = planned
    assert len({plan.call_id for plan in plans}) == len(plans)
    patients = [plan.chart.caller.patient_id for plan in plans if plan.scenario.caller is not CallerKind.UNKNOWN]
    assert len(set(patients)) == len(patients)
    for plan in plans:
        if plan.scenario.caller is CallerKind.UNKNOWN:
            assert not any(p["name"][0]["family"] == plan.chart.caller.family
                           for p in world.tenants["pain-1001"].store.all_of("Patient"))
        else:
            assert FITS[plan.scenario.caller](plan.chart)


def test_each_call_goes_to_the_tenant_entry_of_its_phase(planned) -> None:  # type: ignore[no-untyped-def]
    plans, _ = planned
    for plan in plans:
        assert plan.tenant.practice_id == scenario_tenant_id("pain-1001", plan.scenario)
        assert plan.tenant.phase.value == plan.scenario.phase.value
        assert (plan.tenant.intake is not None) == plan.scenario.intake
        assert plan.script.events[0].called_number == plan.tenant.called_numbers[0]
    assert Counter(plan.scenario.phase for plan in plans).keys() == set(Phase)


def test_bookings_that_write_never_share_a_day(planned) -> None:  # type: ignore[no-untyped-def]
    plans, _ = planned
    writing = [plan for plan in plans if plan.scenario.phase is not Phase.READ_ONLY and plan.window is not None
               and any(isinstance(s, ChooseStep) and s.choose != "unoffered" for s in plan.scenario.steps)]
    assert len(writing) >= 15
    days = [plan.window for plan in writing]
    assert len(set(days)) == len(days) and all(start == end and start > NOW.date() for start, end in days)


def test_after_hours_wording_is_accepted_only_when_the_office_is_closed(planned) -> None:  # type: ignore[no-untyped-def]
    plans, _ = planned
    by_office = {plan.scenario.office: plan.tenant for plan in plans if plan.scenario.phase is Phase.SANDBOX}
    forwarded = ReplyTemplate.MEDICATION_REQUEST_FORWARDED
    saturday = datetime(2026, 12, 12, 15, 0, tzinfo=UTC)
    assert acceptable(forwarded, saturday, by_office["open"]) == {"MEDICATION_REQUEST_FORWARDED"}
    assert acceptable(forwarded, NOW, by_office["closed"]) == {"MEDICATION_REQUEST_FORWARDED_AFTER_HOURS"}
    assert acceptable(forwarded, NOW, by_office["holiday"]) == {"MEDICATION_REQUEST_FORWARDED_AFTER_HOURS"}
    assert acceptable(ReplyTemplate.OFFER_SLOTS, NOW, by_office["closed"]) == {"OFFER_SLOTS"}
    default_hours = by_office["open"].model_copy(update={"office_hours": OfficeHours()})  # Monday-Friday 08-17
    assert acceptable(forwarded, NOW, default_hours) == {"MEDICATION_REQUEST_FORWARDED"}
    closing = datetime(2026, 12, 7, 22, 59, 30, tzinfo=UTC)  # 16:59:30 in Chicago: either wording may be true
    assert acceptable(forwarded, closing, default_hours) == {"MEDICATION_REQUEST_FORWARDED",
                                                             "MEDICATION_REQUEST_FORWARDED_AFTER_HOURS"}
