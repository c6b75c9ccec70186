"""The data generator: deterministic by seed, realistic spreads, schedule rules, R4B-valid output."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter

import pytest
from fhir.resources.R4B import get_fhir_model_class

from sandbox.generator import build_world
from sandbox.vocabulary import EXT_AGREEMENT_STATUS, EXT_RESTRICTION
from sandbox.world import SandboxWorld

ANCHOR = dt.date(2026, 3, 2)


def _snapshot(world: SandboxWorld) -> str:
    dump = {
        pid: {rtype: tenant.store.all_of(rtype) for rtype in sorted(tenant.store.types())}
        for pid, tenant in world.tenants.items()
    }
    return json.dumps([dump, world.describe("http://x")], sort_keys=True)


@pytest.fixture(scope="module")
def full_world() -> SandboxWorld:
    """Default sizes: 3 practices of 1,000 patients."""
    return build_world(seed=7, practices=3, patients_per_practice=1000, anchor=ANCHOR)


def test_same_seed_same_world_and_other_seed_other_world() -> None:
    first = _snapshot(build_world(seed=11, practices=3, patients_per_practice=60, anchor=ANCHOR))
    second = _snapshot(build_world(seed=11, practices=3, patients_per_practice=60, anchor=ANCHOR))
    assert first == second
    assert first != _snapshot(build_world(seed=12, practices=3, patients_per_practice=60, anchor=ANCHOR))


def test_practice_variants_and_credentials(full_world: SandboxWorld) -> None:
    described = full_world.describe("http://127.0.0.1:1")
    assert [p["track"] for p in described] == ["proprietary", "proprietary", "certified"]
    assert [p["capabilities"]["fhir_task_create"] for p in described] == [False, True, False]
    assert [p["capabilities"]["fhir_compliance_flags"] for p in described] == [True, True, False]
    assert len({p["firm_url_prefix"] for p in described}) == 3
    assert described[2]["certified"]["private_key_pem"].startswith("-----BEGIN PRIVATE KEY-----")
    for practice in described:
        assert all(re.fullmatch(r"\+1\d{3}55501\d{2}", n) for n in practice["called_numbers"])


def test_realistic_compliance_spread(full_world: SandboxWorld) -> None:
    for tenant in full_world.tenants.values():
        codes: Counter[str] = Counter()
        agreements: Counter[str] = Counter()
        restrictions: Counter[str] = Counter()
        for flag in tenant.store.all_of("Flag"):
            code = flag["code"]["coding"][0]["code"]
            codes[code] += 1
            for extension in flag.get("extension", []):
                if extension["url"] == EXT_AGREEMENT_STATUS:
                    agreements[extension["valueCode"]] += 1
                if extension["url"] == EXT_RESTRICTION:
                    restrictions[extension["valueCode"]] += 1
        assert 240 <= codes["chronic-opioid"] <= 360
        assert codes["opioid-agreement"] == codes["chronic-opioid"]
        assert agreements["expired"] >= 20 and agreements["violated"] >= 10 and agreements["active"] > agreements["expired"]
        assert codes["aberrant-uds"] >= 10 and codes["uds-due"] >= 30
        assert set(restrictions) == {"no-refill-requests", "no-phone-requests", "no-scheduling"}


def test_patients_look_real(full_world: SandboxWorld) -> None:
    patients = full_world.tenant("pain-1001").store.all_of("Patient")
    assert len(patients) == 1000
    ages = [(ANCHOR - dt.date.fromisoformat(p["birthDate"])).days // 365 for p in patients]
    assert min(ages) >= 18 and max(ages) <= 100 and 45 <= sum(ages) / len(ages) <= 70
    phones = [t["value"] for p in patients for t in p["telecom"] if t["system"] == "phone"]
    assert all(re.fullmatch(r"\+1\d{10}", phone) for phone in phones)
    assert len(set(phones)) > 950
    assert len({p["name"][0]["family"] for p in patients}) > 150


def test_slots_honour_procedure_templates(full_world: SandboxWorld) -> None:
    for tenant in full_world.tenants.values():
        profile = tenant.profile
        for slot in tenant.slots.slots.values():
            template = profile.template_for(slot.visit_reason)
            room = profile.room(slot.location_id)
            provider = profile.staff_member(slot.practitioner_id)
            assert template and room and provider
            assert room.can_host(template), (slot.slot_id, room.name)
            assert slot.visit_reason in provider.performs
            assert slot.end - slot.start == dt.timedelta(minutes=template.duration_minutes)
            assert slot.api_visible is not template.ema_only
        esi_rooms = {profile.room(s.location_id).name for s in tenant.slots.slots.values() if s.visit_reason == "esi"}
        assert esi_rooms and all("fluoro" in name for name in esi_rooms)
        occupied: dict[tuple[str, str, int], str] = {}
        for block in profile.blocks:
            for day in block.weekdays:
                for hour in range(block.start.hour, block.end.hour):
                    key = (block.location_id, day, hour)
                    assert occupied.setdefault(key, block.practitioner_id) == block.practitioner_id, key


def test_generated_bookings_respect_the_schedule(full_world: SandboxWorld) -> None:
    tenant = full_world.tenant("pain-1002")
    for appointment in tenant.store.all_of("Appointment"):
        slot = tenant.slots.slots[appointment["slot"][0]["reference"].split("/")[1]]
        assert appointment["start"] == slot.start.isoformat()
        if appointment["status"] == "booked":
            assert tenant.slots.holder_of(appointment["id"]) is not None


def test_everything_generated_validates_against_r4b() -> None:
    world = build_world(seed=9, practices=3, patients_per_practice=40, anchor=ANCHOR)
    now = dt.datetime.combine(ANCHOR, dt.time(5), tzinfo=dt.UTC)
    validated: Counter[str] = Counter()
    for tenant in world.tenants.values():
        for resource_type in tenant.store.types():
            model = get_fhir_model_class(resource_type)
            for resource in tenant.store.all_of(resource_type):
                model.model_validate(resource)
                validated[resource_type] += 1
        slot_model = get_fhir_model_class("Slot")
        for slot in list(tenant.slots.slots.values())[::7]:
            slot_model.model_validate(tenant.slots.slot_resource(slot, now))
            validated["Slot"] += 1
    assert set(validated) >= {
        "Patient", "Practitioner", "Location", "Organization", "Schedule", "Slot", "Appointment", "Flag",
        "Observation", "MedicationRequest", "DocumentReference", "Coverage", "Task", "Group",
    }


def test_world_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        build_world(practices=0)
    with pytest.raises(ValueError):
        build_world(patients_per_practice=-1)
