"""The bundled go-live catalogue and example mirror are valid and cover what the issue lists; a malformed
scenario file fails with one line naming the file, the scenario and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from golive.catalogue import (
    CATALOGUE_DIR,
    EXAMPLE_MIRROR,
    CallerKind,
    CatalogueError,
    IntentStep,
    Phase,
    load_catalogue,
)
from guards.model import Intent, VisitReason
from sandbox.generator import build_world, generate_profile
from sandbox.mirror import apply_mirror, load_mirror

@pytest.fixture(scope="module")
def catalogue():  # type: ignore[no-untyped-def]
    return load_catalogue()


def test_the_catalogue_holds_at_least_sixty_scenarios_with_unique_ids(catalogue) -> None:  # type: ignore[no-untyped-def]
    assert len(catalogue) >= 60
    assert len({s.id for s in catalogue}) == len(catalogue)


def test_the_catalogue_covers_every_intent_visit_reason_caller_kind_and_phase(catalogue) -> None:  # type: ignore[no-untyped-def]
    intents = {step.intent for s in catalogue for step in s.steps if isinstance(step, IntentStep)}
    assert set(Intent) <= intents
    reasons = {step.visit_reason for s in catalogue for step in s.steps if isinstance(step, IntentStep)}
    reasons |= {VisitReason.AGREEMENT_REVIEW} if Intent.OPIOID_AGREEMENT_RENEWAL in intents else set()
    assert set(VisitReason) - {VisitReason.NEW_PATIENT_CONSULT} <= reasons
    assert VisitReason.NEW_PATIENT_CONSULT in reasons  # asked for by an established patient
    assert {s.caller for s in catalogue} == set(CallerKind)
    assert {s.phase for s in catalogue} == set(Phase)
    faults = {key for s in catalogue if s.faults for key in s.faults.model_dump(exclude_defaults=True)}
    assert {"error_5xx_ratio", "burst_429", "latency_ms", "error_5xx_after_write_ratio", "revoke_tokens"} <= faults
    assert any(s.needs_ema_only for s in catalogue)
    assert {s.office for s in catalogue} == {"open", "closed", "holiday"} and any(s.intake for s in catalogue)
    assert {s.expect.registered for s in catalogue} >= {"insured", "self-pay"}
    checked = {e.equipment for s in catalogue for e in s.expect.appointments}
    assert ("fluoroscopy",) in checked and ("fluoroscopy", "rf-generator") in checked
    assert any(e.min_days_ahead for s in catalogue for e in s.expect.appointments)  # pre-op windows


def test_the_example_mirror_builds_a_sandbox_with_an_ema_only_template() -> None:
    profiles = apply_mirror([generate_profile(7, 0)], load_mirror(EXAMPLE_MIRROR), 7)
    world = build_world(seed=7, patients_per_practice=20, profiles=profiles)
    profile = world.tenants["pain-1001"].profile
    assert {t.visit_reason for t in profile.templates} == {r.value for r in VisitReason}
    assert profile.capabilities.ema_booking_templates == ("kyphoplasty",)
    assert any(room.kind == "procedure-room" and "fluoroscopy" not in room.equipment for room in profile.rooms)


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


SCENARIO = """category: booking
scenarios:
  - id: book-one
    title: A booking of one
    steps:
      - identify
      - {intent: BOOK_APPOINTMENT, visit_reason: esi, reply: OFFER_SLOTS}
"""


def test_a_valid_file_loads_with_its_category_and_bare_identify(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", SCENARIO)
    [scenario] = load_catalogue(tmp_path)
    assert scenario.category == "booking" and scenario.steps[0].model_dump() == {"identify": True, "details": None,
                                                                                     "reply": ()}


@pytest.mark.parametrize(("text", "names"), [
    (SCENARIO.replace("reply: OFFER_SLOTS", "reply: OFFER_SOMETHING"), ["scenarios[0] (book-one)", "steps.1", "reply"]),
    (SCENARIO.replace("visit_reason: esi", "visit_reason: massage"), ["scenarios[0] (book-one)", "visit_reason"]),
    (SCENARIO.replace("    title: A booking of one\n", "    title: A booking of one\n    caller: ghost\n"),
     ["scenarios[0] (book-one)", "caller"]),
    (SCENARIO.replace("    steps:", "    faults: {latency_ms: -5}\n    steps:"), ["scenarios[0] (book-one)", "faults.latency_ms"]),
    (SCENARIO.replace("category: booking", "category: Booking!"), ["category"]),
    (SCENARIO + "    surprise: 1\n", ["scenarios[0] (book-one)", "surprise"]),
    ("scenarios: [", ["not valid YAML"]),
])
def test_a_malformed_file_is_refused_naming_file_scenario_and_field(tmp_path: Path, text: str, names: list[str]) -> None:
    path = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(CatalogueError) as refused:
        load_catalogue(tmp_path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for name in names:
        assert name in message


def test_an_id_used_twice_across_files_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", SCENARIO)
    _write(tmp_path, "b.yaml", SCENARIO)
    with pytest.raises(CatalogueError, match="book-one"):
        load_catalogue(tmp_path)


def test_a_caller_naming_their_own_appointment_must_have_one(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", SCENARIO.replace("visit_reason: esi", "appointment: own"))
    with pytest.raises(CatalogueError, match="with-appointment"):
        load_catalogue(tmp_path)


def test_the_bundled_directory_is_the_default() -> None:
    assert CATALOGUE_DIR.is_dir() and sorted(CATALOGUE_DIR.glob("*.yaml"))


@pytest.mark.parametrize(("mirror_text", "practice", "expected"), [
    ("practices: [{practice_id: pain-1001, templates: []}]\n", None, "templates"),
    (EXAMPLE_MIRROR.read_text(), "pain-9999", "practice pain-9999 is not in the mirror"),
])
def test_check_refuses_a_bad_mirror_or_practice_before_starting_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        mirror_text: str, practice: str | None, expected: str) -> None:
    from callstream.cli import main

    monkeypatch.setenv("CALLSTREAM_DATA_DIR", str(tmp_path / "data"))
    mirror = _write(tmp_path, "mirror.yaml", mirror_text)
    status = main(["golive", "check", "--mirror", str(mirror), *(["--practice", practice] if practice else [])])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("callstream: error: ") and expected in err and "\n" not in err
    assert not (tmp_path / "data" / "golive").exists()
