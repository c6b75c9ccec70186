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


FLAG_CODES = ("chronic-opioid", "opioid-agreement", "phone-request-restriction", "aberrant-uds", "uds-due", "future-code")
SEVERITY = {"active": 1, "expired": 2, "violated": 3}
charted_flags = st.fixed_dictionaries({
    "code": st.sampled_from(FLAG_CODES),
    "patient": st.sampled_from(["p1", "p1", "p2"]),
    "status": st.sampled_from(["active", "active", "inactive", "entered-in-error"]),
    "refill": st.sampled_from(["2026-01-05", "2025-12-31", "2026-03-01", "last week"]),
    "agreement": st.sampled_from(["active", "expired", "violated", "maybe"]),
    "end": st.sampled_from([None, "2026-06-01", "2027-01-01", "soon"]),
    "restriction": st.sampled_from([r.value for r in PhoneRestriction] + ["anything-goes"]),
})
pdmp_checks = st.fixed_dictionaries({
    "patient": st.sampled_from(["p1", "p2"]),
    "status": st.sampled_from(["final", "amended", "preliminary"]),
    "when": st.sampled_from(["2026-02-01T10:00:00Z", "2026-04-01T08:30:00-07:00", "2026-03-01T00:00:00+00:00"]),
})


def as_flag(spec: dict) -> dict:
    extension = {
        "chronic-opioid": [{"url": vocabulary.EXT_LAST_REFILL_DATE, "valueDate": spec["refill"]}],
        "opioid-agreement": [{"url": vocabulary.EXT_AGREEMENT_STATUS, "valueCode": spec["agreement"]}],
        "phone-request-restriction": [{"url": vocabulary.EXT_RESTRICTION, "valueCode": spec["restriction"]}],
    }.get(spec["code"], [])
    period = {"period": {"end": spec["end"]}} if spec["code"] == "opioid-agreement" and spec["end"] else {}
    return flag(spec["code"], spec["patient"], spec["status"], extension=extension, **period)


def expected_flags(specs: list[dict], checks: list[dict]) -> ComplianceFlags | None:
    """An independent reading of the chart (None: a flag the connector must refuse to guess about)."""
    mine = [s for s in specs if s["patient"] == "p1" and s["status"] == "active"]
    of = {code: [s for s in mine if s["code"] == code] for code in FLAG_CODES}
    if (any(s["refill"] == "last week" for s in of["chronic-opioid"])
            or any(s["agreement"] == "maybe" or s["end"] == "soon" for s in of["opioid-agreement"])
            or any(s["restriction"] == "anything-goes" for s in of["phone-request-restriction"])):
        return None
    agreements = of["opioid-agreement"]
    ends = [dt.date.fromisoformat(s["end"]) for s in agreements if s["end"]]
    refills = [dt.date.fromisoformat(s["refill"]) for s in of["chronic-opioid"]]
    times = [dt.datetime.fromisoformat(c["when"].replace("Z", "+00:00")) for c in checks
             if c["patient"] == "p1" and c["status"] in ("final", "amended")]
    return ComplianceFlags(
        patient_id="p1",
        agreement_status=AgreementStatus(max((s["agreement"] for s in agreements), key=SEVERITY.__getitem__))
        if agreements else AgreementStatus.NONE,
        agreement_renewal_due=max(ends, default=None),
        chronic_opioid=bool(of["chronic-opioid"]),
        last_refill_date=max(refills, default=None),
        aberrant_uds=bool(of["aberrant-uds"]),
        uds_due=bool(of["uds-due"]),
        pdmp_last_checked=max(times, default=None),
        phone_restrictions=frozenset(PhoneRestriction(s["restriction"]) for s in of["phone-request-restriction"]),
    )


@given(st.lists(charted_flags, max_size=8), st.lists(pdmp_checks, max_size=3),
       st.lists(st.none() | st.integers() | st.text(max_size=5), max_size=2))
def test_any_chart_maps_to_exactly_its_routing_flags_or_a_typed_error(specs: list[dict], checks: list[dict],
                                                                      junk: list) -> None:
    observations = [{"status": c["status"], "subject": {"reference": f"Patient/{c['patient']}"},
                     "effectiveDateTime": c["when"], "note": [{"text": "SYNTHETIC PDMP REPORT"}]} for c in checks]
    expected = expected_flags(specs, checks)
    resources = [as_flag(spec) for spec in specs] + junk  # non-resources in a Bundle are skipped, never guessed
    if expected is None:
        with pytest.raises(InvalidResponseError):
            compliance_flags("pr", "p1", resources, observations + junk)
    else:
        assert compliance_flags("pr", "p1", resources, observations + junk) == expected
