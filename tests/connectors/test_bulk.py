"""Bulk $export on the certified track over real HTTP, and `callstream export`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from callstream.errors import ConfigError
from connectors.bulk import PDMP_CHECK_FIELDS, BulkExport, _parse_manifest, _validate_line, exportable, main
from connectors.errors import CapabilityMissing, InvalidRequestError, InvalidResponseError, NotFoundError
from connectors.fhir import ModMedClient
from fhir.resources.R4B.patient import Patient
from connectors.vocabulary import COMPLIANCE_SYSTEM
from sandbox.generator import build_world, generate_profile
from tests.connectors.helpers import PracticeSet, practice_entry
from tests.fixtures.sandbox import running_sandbox

LAB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}


def observation(code: dict, **fields: object) -> dict:
    return {"resourceType": "Observation", "id": "obs-1", "status": "final", "code": {"coding": [code]},
            "subject": {"reference": "Patient/pt-1"}, **fields}


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_group_export_downloads_validated_ndjson(client: ModMedClient, sandbox_practices: PracticeSet, tmp_path: Path) -> None:
    practice = sandbox_practices.certified()
    (tmp_path / "out").mkdir(mode=0o755)  # an existing, world-readable directory is tightened
    export = BulkExport(client, practice, poll_initial_s=0.05)
    status_url = await export.kick_off(group_id=f"grp-{practice.practice_id.split('-')[1]}-chronic-opioid",
                                       types=["Patient", "Observation"])
    progress: list[str] = []
    manifest = await export.wait_for_manifest(status_url, on_progress=progress.append)
    assert progress and "in-progress" in progress[0]
    assert manifest.requires_access_token and {f.resource_type for f in manifest.output} <= {"Patient", "Observation"}
    seen: list[tuple[int, int, int]] = []
    files = await export.download(manifest, tmp_path / "out", on_file=lambda *args: seen.append(args))
    assert [f.resources + f.withheld for f in files] == [f.count for f in manifest.output]
    assert seen[-1] == (len(files), len(files), sum(f.resources for f in files))
    patients = [json.loads(line) for f in files if f.resource_type == "Patient" for line in f.path.read_text().splitlines()]
    assert patients and all(Patient.model_validate(p).id for p in patients)
    assert not list((tmp_path / "out").glob("*.part"))
    assert mode(tmp_path / "out") == 0o700 and {mode(f.path) for f in files} == {0o600}

    miscounted = dataclasses.replace(manifest, output=tuple(
        dataclasses.replace(f, count=(f.count or 0) + 1) for f in manifest.output))
    with pytest.raises(InvalidResponseError, match="the manifest says"):
        await export.download(miscounted, tmp_path / "bad")
    assert list((tmp_path / "bad").iterdir()) == []  # no partial file left behind


async def test_cancelled_export_is_gone(client: ModMedClient, sandbox_practices: PracticeSet) -> None:
    practice = sandbox_practices.certified()
    export = BulkExport(client, practice)
    status_url = await export.kick_off(patients=True, types=["Patient"])
    await export.cancel(status_url)
    with pytest.raises(NotFoundError):
        await export.wait_for_manifest(status_url)


async def test_export_needs_the_certified_track_and_sane_arguments(client: ModMedClient, sandbox_practices: PracticeSet) -> None:
    with pytest.raises(CapabilityMissing):
        BulkExport(client, sandbox_practices.proprietary(fhir_task_create=False))
    export = BulkExport(client, sandbox_practices.certified())
    with pytest.raises(InvalidRequestError):
        await export.kick_off(group_id="../etc")
    with pytest.raises(InvalidRequestError):
        await export.kick_off(types=["patient;drop"])


@pytest.mark.parametrize(
    "body",
    [None, {"output": "x"}, {"output": [{"type": "NoSuchType", "url": "https://x/y"}]},
     {"output": [{"type": "Patient", "url": "ftp://x/y"}]}, {"output": [{"type": "Patient", "url": "https://x", "count": -1}]},
     {"output": ["nope"]}],
)
def test_malformed_manifests_are_refused(body: object) -> None:
    with pytest.raises(InvalidResponseError):
        _parse_manifest(body, "pain-x")


async def test_pdmp_content_and_uds_results_never_reach_local_disk(tmp_path: Path) -> None:
    """A certified practice whose API serves every Observation (as ONC-certified APIs do with lab results)."""
    profile = generate_profile(43, 2).model_copy(update={"fhir_compliance_flags": True})
    world = build_world(seed=43, patients_per_practice=30, profiles=[profile])
    store = world.tenants[profile.practice_id].store
    pdmp_reports = [o["note"][0]["text"] for o in store.all_of("Observation") if o["code"]["coding"][0]["code"] == "pdmp-check"]
    uds_results = [o for o in store.all_of("Observation") if o["code"]["coding"][0]["code"] == "uds"]
    assert pdmp_reports and uds_results
    with running_sandbox(world) as server:
        practice = practice_entry(server.practices[0], tmp_path)
        async with ModMedClient() as client:
            export = BulkExport(client, practice, poll_initial_s=0.05)
            manifest = await export.wait_for_manifest(await export.kick_off(patients=True, types=["Observation"]))
            files = await export.download(manifest, tmp_path / "export")
    written = "".join(f.path.read_text() for f in files)
    observations = [json.loads(line) for line in written.splitlines()]
    assert sum(f.withheld for f in files) == len(uds_results)  # the sandbox's only laboratory Observations
    assert len(observations) == sum(f.resources for f in files) == sum(f.count or 0 for f in manifest.output) - len(uds_results)
    pdmp = [o for o in observations if o["code"]["coding"][0]["code"] == "pdmp-check"]
    assert len(pdmp) == len(pdmp_reports) and all(set(o) <= set(PDMP_CHECK_FIELDS) and o["effectiveDateTime"] for o in pdmp)
    assert all(o["code"]["coding"][0]["code"] != "uds" for o in observations)
    assert "SYNTHETIC" not in written and not any(report in written for report in pdmp_reports)
    assert any(o["code"]["coding"][0]["system"] == "http://loinc.org" for o in observations)  # vitals stay
    assert mode(tmp_path / "export") == 0o700 and {mode(f.path) for f in files} == {0o600}


def test_what_may_reach_local_disk_is_decided_resource_by_resource() -> None:
    pdmp = observation({"system": COMPLIANCE_SYSTEM, "code": "pdmp-check"}, effectiveDateTime="2026-02-01T10:00:00Z",
                       valueString="PDMP reviewed", note=[{"text": "SYNTHETIC PDMP REPORT: 3 prescribers"}],
                       extension=[{"url": "https://callstream.dev/fhir/StructureDefinition/state-of-record",
                                   "valueString": "AZ"}], performer=[{"display": "Dr A"}])
    assert exportable(pdmp) == {k: pdmp[k] for k in ("resourceType", "id", "status", "code", "subject", "effectiveDateTime")}
    assert exportable(observation({"system": COMPLIANCE_SYSTEM, "code": "uds"}, valueString="SYNTHETIC")) is None
    assert exportable(observation({"system": "http://loinc.org", "code": "19659-8"}, category=[LAB])) is None
    vitals = observation({"system": "http://loinc.org", "code": "8867-4"}, valueQuantity={"value": 72})
    assert exportable(vitals) == vitals
    patient = {"resourceType": "Patient", "id": "pt-1"}
    assert exportable(patient) == patient
    assert exportable(observation({"system": "x", "code": "y"}, category="not-a-list")) is not None


@pytest.mark.parametrize("line", ["{nope", '{"resourceType": "Observation"}', '{"resourceType": "Patient", "birthDate": "Jan 5"}', "[1]"])
def test_each_ndjson_line_must_be_a_valid_resource_of_the_declared_type(line: str) -> None:
    with pytest.raises(InvalidResponseError) as refused:
        _validate_line(line, "Patient", Patient, "pain-x", 7)
    assert "line 7" in str(refused.value) and "Jan 5" not in str(refused.value)


def test_export_command_writes_files_and_draws_a_progress_bar(
    sandbox_practices: PracticeSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    practice = sandbox_practices.certified()
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(yaml.safe_dump({"practices": [practice.model_dump(mode="json")]}))
    out = tmp_path / "export"
    assert main([practice.practice_id, "--tenants", str(tenants), "--out", str(out), "--type", "Practitioner,Location"]) == 0
    captured = capsys.readouterr()
    assert "[" + "#" * 30 + "]" in captured.err and "files" in captured.err
    assert captured.out.strip().splitlines()[-1].startswith("exported ")
    assert sorted(p.name.split("-", 1)[1] for p in out.iterdir()) == ["Location.ndjson", "Practitioner.ndjson"]
    with pytest.raises(ConfigError):
        main(["no-such-practice", "--tenants", str(tenants), "--out", str(out)])
