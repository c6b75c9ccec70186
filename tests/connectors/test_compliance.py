"""Compliance flags: exactly the routing facts, never PDMP content or UDS results (private sandbox world)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sandbox.vocabulary as sandbox_vocabulary
from connectors import vocabulary
from connectors.compliance import ComplianceFlags, compliance_flags
from connectors.errors import CapabilityMissing, InvalidResponseError
from connectors.fhir import ModMedClient
from connectors.ledger import InMemoryLedger
from connectors.operations import ModMedConnector
from guards.model import AgreementStatus, ChartFlags, PhoneRestriction
from sandbox.world import SandboxWorld
from tests.connectors.helpers import PracticeSet


def test_connector_vocabulary_matches_the_sandbox() -> None:
    for name in dir(vocabulary):
        if name.isupper():
            assert getattr(vocabulary, name) == getattr(sandbox_vocabulary, name, getattr(vocabulary, name)), name
    assert vocabulary.OCCUPYING_APPOINTMENT_STATUSES == sandbox_vocabulary.OCCUPYING_APPOINTMENT_STATUSES


def chart(world: SandboxWorld, practice_id: str, patient_id: str, resource_type: str) -> list[dict]:
    return world.tenants[practice_id].store.for_patient(resource_type, patient_id)


def code_of(resource: dict) -> str:
    return resource["code"]["coding"][0]["code"]


async def test_flags_match_the_chart_and_never_carry_pdmp_or_uds_content(
    client: ModMedClient, private_world: SandboxWorld, private_practices: PracticeSet
) -> None:
    practice = private_practices.proprietary(fhir_task_create=False)
    store = private_world.tenants[practice.practice_id].store
    chronic = [f["subject"]["reference"].split("/")[1] for f in store.all_of("Flag") if code_of(f) == "chronic-opioid"]
    aberrant = {f["subject"]["reference"].split("/")[1] for f in store.all_of("Flag") if code_of(f) == "aberrant-uds"}
    patient_id = next((p for p in chronic if p in aberrant), chronic[0])
    connector = ModMedConnector(client, InMemoryLedger())
    flags = await connector.read_compliance_flags(practice, patient_id)

    patient_flags = {code_of(f): f for f in chart(private_world, practice.practice_id, patient_id, "Flag")}
    agreement = patient_flags["opioid-agreement"]
    assert flags.chronic_opioid is True
    assert flags.last_refill_date == dt.date.fromisoformat(patient_flags["chronic-opioid"]["extension"][0]["valueDate"])
    assert flags.agreement_status == AgreementStatus(agreement["extension"][0]["valueCode"])
    assert flags.agreement_renewal_due == dt.date.fromisoformat(agreement["period"]["end"])
    assert flags.aberrant_uds is (patient_id in aberrant) and flags.uds_due is ("uds-due" in patient_flags)
    observations = chart(private_world, practice.practice_id, patient_id, "Observation")
    pdmp = [o for o in observations if code_of(o) == "pdmp-check"]
    uds = [o for o in observations if code_of(o) == "uds"]
    assert pdmp and uds
    assert flags.pdmp_last_checked == max(dt.datetime.fromisoformat(o["effectiveDateTime"].replace("Z", "+00:00")) for o in pdmp)

    rendered = " ".join([repr(flags), str(flags), flags.model_dump_json(), json.dumps(flags.model_dump(mode="json"))])
    for observation in pdmp:
        assert observation["note"][0]["text"] not in rendered and observation["valueString"] not in rendered
        assert observation["extension"][0]["valueString"] not in rendered  # not even the state of record
    for result in uds:
        assert result["valueString"] not in rendered and "SYNTHETIC" not in rendered
    assert set(ComplianceFlags.model_fields) == {
        "patient_id", "agreement_status", "agreement_renewal_due", "chronic_opioid", "last_refill_date",
        "aberrant_uds", "uds_due", "pdmp_last_checked", "phone_restrictions",
    }
    assert isinstance(flags.to_chart_flags(), ChartFlags) and flags.to_chart_flags().aberrant_uds == flags.aberrant_uds


async def test_a_chart_without_flags_reads_as_no_flags(client: ModMedClient, private_world: SandboxWorld,
                                                       private_practices: PracticeSet) -> None:
    practice = private_practices.proprietary(fhir_task_create=False)
    store = private_world.tenants[practice.practice_id].store
    flagged = {f["subject"]["reference"].split("/")[1] for f in store.all_of("Flag")}
    plain = next(p["id"] for p in store.all_of("Patient") if p["id"] not in flagged)
    flags = await ModMedConnector(client, InMemoryLedger()).read_compliance_flags(practice, plain)
    assert flags == ComplianceFlags(patient_id=plain)


async def test_practice_without_fhir_flags_sends_the_dispatcher_to_ema(client: ModMedClient, private_practices: PracticeSet) -> None:
    listing = private_practices.listing(track="proprietary", fhir_task_create=False)
    practice = private_practices.entry(listing, capabilities={"fhir_compliance_flags": False})
    with pytest.raises(CapabilityMissing):
        await ModMedConnector(client, InMemoryLedger()).read_compliance_flags(practice, "pt-1")


def flag(code: str, patient: str = "p1", status: str = "active", **extra: object) -> dict:
    return {"resourceType": "Flag", "status": status, "subject": {"reference": f"Patient/{patient}"},
            "code": {"coding": [{"system": vocabulary.COMPLIANCE_SYSTEM, "code": code}]}, **extra}


def test_worst_agreement_latest_dates_and_only_this_patients_active_flags_count() -> None:
    flags = compliance_flags("pr", "p1", [
        flag("opioid-agreement", extension=[{"url": vocabulary.EXT_AGREEMENT_STATUS, "valueCode": "active"}],
             period={"end": "2027-01-01"}),
        flag("opioid-agreement", extension=[{"url": vocabulary.EXT_AGREEMENT_STATUS, "valueCode": "violated"}],
             period={"end": "2026-03-01"}),
        flag("aberrant-uds", patient="p2"),
        flag("uds-due", status="inactive"),
        flag("phone-request-restriction", extension=[{"url": vocabulary.EXT_RESTRICTION, "valueCode": "no-scheduling"}]),
        flag("some-future-code"),
    ], [
        {"status": "final", "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-02-01T10:00:00Z"},
        {"status": "entered-in-error", "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-09-01T10:00:00Z"},
    ])
    assert flags.agreement_status is AgreementStatus.VIOLATED and flags.agreement_renewal_due == dt.date(2027, 1, 1)
    assert not flags.aberrant_uds and not flags.uds_due
    assert flags.phone_restrictions == {PhoneRestriction.NO_SCHEDULING}
    assert flags.pdmp_last_checked == dt.datetime(2026, 2, 1, 10, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "bad",
    [
        flag("opioid-agreement"),
        flag("opioid-agreement", extension=[{"url": vocabulary.EXT_AGREEMENT_STATUS, "valueCode": "maybe"}]),
        flag("chronic-opioid", extension=[{"url": vocabulary.EXT_LAST_REFILL_DATE, "valueDate": "last week"}]),
        flag("phone-request-restriction", extension=[{"url": vocabulary.EXT_RESTRICTION, "valueCode": "anything-goes"}]),
    ],
)
def test_unreadable_known_flags_fail_closed(bad: dict) -> None:
    with pytest.raises(InvalidResponseError):
        compliance_flags("pr", "p1", [bad], [])


@given(st.lists(st.recursive(st.none() | st.booleans() | st.text(max_size=12) | st.integers(),
                             lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                             max_leaves=12), max_size=4))
def test_hostile_flag_lists_give_flags_or_a_typed_error(resources: list) -> None:
    try:
        compliance_flags("pr", "p1", resources, resources)
    except InvalidResponseError:
        pass
