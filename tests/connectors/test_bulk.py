"""Bulk $export on the certified track over real HTTP, and `callstream export`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from callstream.errors import ConfigError
from connectors.bulk import BulkExport, _parse_manifest, _validate_line, main
from connectors.errors import CapabilityMissing, InvalidRequestError, InvalidResponseError, NotFoundError
from connectors.fhir import ModMedClient
from fhir.resources.R4B.patient import Patient
from tests.connectors.helpers import PracticeSet


async def test_group_export_downloads_validated_ndjson(client: ModMedClient, sandbox_practices: PracticeSet, tmp_path: Path) -> None:
    practice = sandbox_practices.certified()
    export = BulkExport(client, practice, poll_initial_s=0.05)
    status_url = await export.kick_off(group_id=f"grp-{practice.practice_id.split('-')[1]}-chronic-opioid",
                                       types=["Patient", "Observation"])
    progress: list[str] = []
    manifest = await export.wait_for_manifest(status_url, on_progress=progress.append)
    assert progress and "in-progress" in progress[0]
    assert manifest.requires_access_token and {f.resource_type for f in manifest.output} <= {"Patient", "Observation"}
    seen: list[tuple[int, int, int]] = []
    files = await export.download(manifest, tmp_path / "out", on_file=lambda *args: seen.append(args))
    assert [f.resources for f in files] == [f.count for f in manifest.output] and seen[-1][:2] == (len(files), len(files))
    patients = [json.loads(line) for f in files if f.resource_type == "Patient" for line in f.path.read_text().splitlines()]
    assert patients and all(Patient.model_validate(p).id for p in patients)
    assert not list((tmp_path / "out").glob("*.part"))
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
