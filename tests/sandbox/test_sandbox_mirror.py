"""The sandbox mirror: a practice's templates, visit reasons and schedule imported from a file."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from sandbox.generator import build_world, generate_profile
from sandbox.mirror import MirrorError, apply_mirror, load_mirror

MIRROR = """
practices:
  - practice_id: pain-1001
    name: Riverbend Pain & Spine
    visit_reasons: [esi, follow-up, rfa]
    providers:
      - {key: okafor, given: Adaeze, family: Okafor, credential: MD, performs: [esi, follow-up, rfa]}
    rooms:
      - {key: fluoro-1, name: Fluoro Suite 1, kind: procedure-room, equipment: [fluoroscopy]}
      - {key: exam-1, name: Exam 1, kind: exam-room}
    templates:
      - {visit_reason: esi, name: Cervical ESI, duration_minutes: 40, block: procedure, room_kinds: [procedure-room], equipment: [fluoroscopy]}
      - {visit_reason: rfa, name: Lumbar RFA, duration_minutes: 60, block: procedure, room_kinds: [procedure-room], equipment: [fluoroscopy, rf-generator]}
      - {visit_reason: follow-up, name: Post-procedure follow-up, duration_minutes: 15, block: clinic, room_kinds: [exam-room], ema_only: true}
    schedule:
      weeks_back: 0
      weeks_ahead: 2
      blocks:
        - {provider: okafor, room: fluoro-1, weekdays: [tue, thu], start: "07:30", end: "11:30", kind: procedure}
        - {provider: okafor, room: exam-1, weekdays: [mon], start: "13:00", end: "16:00", kind: clinic}
  - practice_id: pain-2001
    track: certified
    templates:
      - {visit_reason: kyphoplasty, name: Kyphoplasty, duration_minutes: 75, block: procedure, room_kinds: [procedure-room], equipment: [fluoroscopy], preop_clearance_days: 5}
"""


def _mirror_file(tmp_path: Path, text: str, suffix: str = ".yaml") -> Path:
    path = tmp_path / f"mirror{suffix}"
    path.write_text(text, encoding="utf-8")
    return path


def test_mirror_replaces_templates_and_schedule(tmp_path: Path) -> None:
    profiles = apply_mirror([generate_profile(7, i) for i in range(3)], load_mirror(_mirror_file(tmp_path, MIRROR)), 7)
    assert [p.practice_id for p in profiles] == ["pain-1001", "pain-1002", "pain-1003", "pain-2001"]
    world = build_world(seed=7, patients_per_practice=20, anchor=dt.date(2026, 3, 2), profiles=profiles)
    mirrored = world.tenant("pain-1001")
    assert mirrored.profile.name == "Riverbend Pain & Spine"
    assert {s.visit_reason for s in mirrored.slots.slots.values()} == {"esi", "follow-up"}
    esi = [s for s in mirrored.slots.slots.values() if s.visit_reason == "esi"]
    assert {s.location_id for s in esi} == {"loc-1001-fluoro-1"}
    assert all(s.end - s.start == dt.timedelta(minutes=40) and s.start.weekday() in (1, 3) for s in esi)
    assert mirrored.profile.capabilities.ema_booking_templates == ("follow-up",)
    added = world.tenant("pain-2001")
    assert added.profile.track == "certified" and added.profile.certified is not None
    assert added.store.count("Patient") == 20


def test_mirror_json_and_cli_listing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sandbox.cli import main

    import yaml

    path = _mirror_file(tmp_path, json.dumps(yaml.safe_load(MIRROR)), ".json")
    assert main(["--list-practices", "--json", "--mirror", str(path), "--port", "9999"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [p["practice_id"] for p in listed][-1] == "pain-2001"
    assert listed[0]["capabilities"]["ema_booking_templates"] == ["follow-up"]
    assert listed[-1]["token_url"] == "http://127.0.0.1:9999/certified/pain-2001/oauth2/token"


@pytest.mark.parametrize(
    "text, message",
    [
        ("practices: [{practice_id: pain-1001, templates: [{visit_reason: massage, name: x, duration_minutes: 30, block: clinic, room_kinds: [exam-room]}]}]", "unknown visit reason"),
        ("practices: [{practice_id: pain-1001, templates: [{visit_reason: esi, name: x, duration_minutes: 30, block: clinic, room_kinds: [exam-room]}]}]", "procedure blocks"),
        ("practices: [{practice_id: pain-1001, visit_reasons: [esi], templates: [{visit_reason: follow-up, name: x, duration_minutes: 15, block: clinic, room_kinds: [exam-room]}]}]", "not in visit_reasons"),
        ("practices: [{practice_id: pain-1001, rooms: [{key: r, name: R, kind: exam-room}], templates: [{visit_reason: follow-up, name: x, duration_minutes: 15, block: clinic, room_kinds: [exam-room]}]}]", "needs a schedule"),
        ("practices: [{practice_id: pain-1001, templates: [{visit_reason: follow-up, name: x, duration_minutes: 15, block: clinic, room_kinds: [exam-room]}], schedule: {blocks: [{provider: ghost, room: exam1, weekdays: [mon], start: '08:00', end: '09:00', kind: clinic}]}}]", "unknown provider"),
        ("practices: [{practice_id: pain-1001, templates: []}]", "templates"),
        ("practices: [{practice_id: pain-1001, surprise: 1, templates: []}]", "surprise"),
        ("practices: {", "not valid YAML"),
        ("- just a list", "file"),
    ],
)
def test_malformed_mirrors_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(MirrorError, match=message):
        apply_mirror([generate_profile(7, 0)], load_mirror(_mirror_file(tmp_path, text)), 7)


def test_missing_mirror_file(tmp_path: Path) -> None:
    with pytest.raises(MirrorError, match="cannot read"):
        load_mirror(tmp_path / "absent.yaml")
