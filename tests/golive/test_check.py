"""`callstream golive check` end to end: the whole catalogue against a sandbox started from the bundled
example mirror, one private broker and one `callstream worker` (with Chromium for the EMA screens), every
scenario its own call and patient, played concurrently. The run must pass, print its per-scenario report
and the final JSON line, write a JUnit report, and be recorded for the phase gate, which then lets the
practice into the read-only phase."""

from __future__ import annotations

import io
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from callstream.settings import load_settings
from callstream.tenants import GoLivePhase, load_tenant_directory
from golive.catalogue import EXAMPLE_MIRROR, load_catalogue
from golive.check import CheckOutcome, run_check
from golive.gate import PromotionRequest, promote
from golive.runs import RunStore, code_version, sha256_file, source_digest

pytestmark = [pytest.mark.broker, pytest.mark.chromium]


@dataclass(frozen=True)
class GoliveRun:
    outcome: CheckOutcome
    output: str
    data_dir: Path
    junit: Path
    seconds: float


@pytest.fixture(scope="module")
def golive_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GoliveRun]:
    data_dir = tmp_path_factory.mktemp("golive-data")
    junit = data_dir / "report" / "golive.xml"
    out = io.StringIO()
    started = time.monotonic()
    outcome = run_check(load_settings(data_dir=data_dir), mirror=None, practice=None, out=out, junit=junit)
    yield GoliveRun(outcome, out.getvalue(), data_dir, junit, time.monotonic() - started)


def test_the_whole_catalogue_passes_on_the_example_mirror(golive_run: GoliveRun) -> None:
    outcome = golive_run.outcome
    failures = {r.label: (r.heard, r.problems) for r in outcome.results if not r.passed}
    assert failures == {}, f"failed scenarios (heard, problems): {json.dumps(failures, indent=1)}"
    applicable = len(load_catalogue()) - len(outcome.not_applicable)
    assert outcome.run.scenarios == applicable >= 60 and outcome.not_applicable == []
    print(f"golive check: {outcome.run.scenarios} scenarios in {golive_run.seconds:.1f} s")


def test_the_run_ends_with_one_json_line_and_shows_progress(golive_run: GoliveRun) -> None:
    lines = golive_run.output.strip().splitlines()
    summary = json.loads(lines[-1])
    assert set(summary) == {"scenarios", "passed", "failed", "mirror_sha256", "code_version"}
    assert summary["scenarios"] == golive_run.outcome.run.scenarios and summary["failed"] == []
    assert summary["mirror_sha256"] == sha256_file(EXAMPLE_MIRROR)
    assert sum(1 for line in lines if line.startswith("[") and ("PASS" in line or "FAIL" in line)) == summary["scenarios"]
    assert any(line.startswith("playing") for line in lines)


def test_the_run_is_recorded_and_reported_as_junit(golive_run: GoliveRun) -> None:
    recorded = RunStore(golive_run.data_dir).latest_run_for("pain-1001")
    assert recorded == golive_run.outcome.run and recorded.green
    suite = ET.parse(golive_run.junit).getroot()
    cases = suite.findall("testcase")
    assert len(cases) == recorded.scenarios and suite.get("failures") == "0"
    assert {case.get("classname") for case in cases} >= {"golive.booking", "golive.faults", "golive.phases"}


def test_the_green_run_lets_the_practice_into_read_only(golive_run: GoliveRun, tmp_path: Path) -> None:
    tenants = tmp_path / "tenants.yaml"
    entry = {"practice_id": "pain-1001", "name": "Riverbend Pain & Spine", "called_numbers": ["+15125550100"],
             "base_url": "https://mmi.example", "firm_url_prefix": "riverbend",
             "auth": {"method": "password", "credentials_ref": "env:RIVERBEND"}}
    tenants.write_text(yaml.safe_dump({"practices": [entry]}))
    run = golive_run.outcome.run
    # The checkout is shared with other work in progress: the gate is given the version the run recorded.
    promotion = promote(PromotionRequest(
        practice_id="pain-1001", target=GoLivePhase.READ_ONLY, tenants_file=tenants,
        mirror_sha256=sha256_file(EXAMPLE_MIRROR), code_version=run.code_version, promoted_by="ops",
        now=run.finished_at), RunStore(golive_run.data_dir))
    assert promotion.run_id == run.run_id
    assert load_tenant_directory(tenants)["pain-1001"].phase.value == "read_only"


def test_the_code_version_names_the_source_it_ran(tmp_path: Path) -> None:
    version = code_version()
    assert version and (len(version) == 40 or "+src." in version)
    for package in ("callstream", "guards"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    rule = tmp_path / "guards" / "rules.py"
    rule.write_text("RULES = ()\n")
    before = source_digest(tmp_path)
    rule.write_text("RULES = ('changed',)\n")
    assert source_digest(tmp_path) != before
    assert code_version(tmp_path).endswith(f"+src.{source_digest(tmp_path)[:16]}")  # no git there
