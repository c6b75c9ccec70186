"""Procedure-aware scheduling: which slots are valid for a visit, and in which order they are offered."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from guards import (
    BlockKind,
    DateRange,
    Equipment,
    GuardInputError,
    RoomKind,
    SlotCandidate,
    SlotRejection,
    VisitReason,
    filter_and_rank,
    procedure_rule,
    slot_rejections,
)
from guards.scheduling import PROCEDURE_RULES, VISIT_REASON_PROCEDURE

CENTRAL = timezone(timedelta(hours=-6))
NOW = datetime(2025, 3, 3, 8, 0, tzinfo=CENTRAL)  # a Monday morning
FLUORO_SUITE = frozenset({Equipment.FLUOROSCOPY, Equipment.RF_GENERATOR})


def slot(
    slot_id: str = "s1",
    *,
    days: int = 2,
    hour: int = 9,
    minutes: int = 60,
    room: RoomKind = RoomKind.PROCEDURE_ROOM,
    equipment: frozenset[Equipment] = FLUORO_SUITE,
    block: BlockKind = BlockKind.PROCEDURE,
    practitioner: str = "dr-lee",
) -> SlotCandidate:
    start = datetime.combine(NOW.date() + timedelta(days=days), datetime.min.time(), CENTRAL).replace(hour=hour)
    return SlotCandidate(
        slot_id=slot_id,
        start=start,
        end=start + timedelta(minutes=minutes),
        practitioner_id=practitioner,
        location_id="room-2",
        room_kind=room,
        room_equipment=equipment,
        block_kind=block,
    )


def rejections(
    candidate: SlotCandidate,
    reason: VisitReason,
    *,
    new: bool = False,
    preop_clearance_date: date | None = None,
    requested_dates: DateRange | None = None,
) -> tuple[SlotRejection, ...]:
    return slot_rejections(
        candidate,
        reason,
        now=NOW,
        patient_is_new=new,
        preop_clearance_date=preop_clearance_date,
        requested_dates=requested_dates,
    )


def test_every_visit_reason_maps_to_a_procedure_rule() -> None:
    assert set(VISIT_REASON_PROCEDURE) == set(VisitReason)
    assert set(VISIT_REASON_PROCEDURE.values()) == set(PROCEDURE_RULES)
    assert procedure_rule(VisitReason.ESI).code == "62323"
    assert procedure_rule(VisitReason.RFA).duration_minutes == 45


@pytest.mark.parametrize(
    "reason", [VisitReason.ESI, VisitReason.FACET_INJECTION, VisitReason.RFA, VisitReason.SCS_TRIAL, VisitReason.KYPHOPLASTY]
)
def test_image_guided_procedures_need_fluoroscopy(reason: VisitReason) -> None:
    assert Equipment.FLUOROSCOPY in procedure_rule(reason).required_equipment
    assert procedure_rule(reason).block_kinds == {BlockKind.PROCEDURE}


def test_no_esi_in_a_room_without_fluoroscopy() -> None:
    no_fluoro = slot(equipment=frozenset({Equipment.ULTRASOUND}))
    assert rejections(no_fluoro, VisitReason.ESI) == (SlotRejection.MISSING_EQUIPMENT,)
    assert rejections(slot(), VisitReason.ESI) == ()


def test_rfa_also_needs_the_rf_generator() -> None:
    fluoro_only = slot(equipment=frozenset({Equipment.FLUOROSCOPY}))
    assert rejections(fluoro_only, VisitReason.RFA) == (SlotRejection.MISSING_EQUIPMENT,)
    assert rejections(fluoro_only, VisitReason.ESI) == ()


@pytest.mark.parametrize(
    ("candidate", "reason", "expected"),
    [
        (slot(days=-1), VisitReason.ESI, (SlotRejection.IN_THE_PAST,)),
        (slot(days=0, hour=8), VisitReason.ESI, (SlotRejection.IN_THE_PAST,)),
        (slot(minutes=20), VisitReason.ESI, (SlotRejection.TOO_SHORT,)),
        (slot(room=RoomKind.EXAM_ROOM), VisitReason.FACET_INJECTION, (SlotRejection.WRONG_ROOM_KIND,)),
        (slot(block=BlockKind.CLINIC), VisitReason.ESI, (SlotRejection.WRONG_BLOCK,)),
        (slot(), VisitReason.FOLLOW_UP, (SlotRejection.WRONG_ROOM_KIND, SlotRejection.WRONG_BLOCK)),
        (slot(room=RoomKind.EXAM_ROOM), VisitReason.FOLLOW_UP, (SlotRejection.WRONG_BLOCK,)),
        (slot(room=RoomKind.EXAM_ROOM, block=BlockKind.CLINIC), VisitReason.FOLLOW_UP, ()),
        (slot(room=RoomKind.EXAM_ROOM, block=BlockKind.CLINIC, equipment=frozenset()), VisitReason.TRIGGER_POINT, ()),
        (slot(), VisitReason.TRIGGER_POINT, ()),
        (slot(room=RoomKind.EXAM_ROOM, block=BlockKind.CONSULT), VisitReason.NEW_PATIENT_CONSULT,
         (SlotRejection.NOT_FOR_ESTABLISHED_PATIENTS,)),
    ],
)
def test_slot_rejections(candidate: SlotCandidate, reason: VisitReason, expected: tuple[SlotRejection, ...]) -> None:
    assert rejections(candidate, reason) == expected


def test_new_patients_only_in_consult_blocks() -> None:
    consult = slot(room=RoomKind.EXAM_ROOM, block=BlockKind.CONSULT)
    clinic = slot(room=RoomKind.EXAM_ROOM, block=BlockKind.CLINIC)
    assert rejections(consult, VisitReason.NEW_PATIENT_CONSULT, new=True) == ()
    assert rejections(clinic, VisitReason.NEW_PATIENT_CONSULT, new=True) == (SlotRejection.WRONG_BLOCK,)
    assert rejections(clinic, VisitReason.FOLLOW_UP, new=True) == (SlotRejection.NOT_FOR_NEW_PATIENTS,)
    assert rejections(slot(), VisitReason.ESI, new=True) == (SlotRejection.NOT_FOR_NEW_PATIENTS,)


def test_scs_trial_without_clearance_waits_out_the_clearance_window() -> None:
    assert rejections(slot(days=13), VisitReason.SCS_TRIAL) == (SlotRejection.INSIDE_CLEARANCE_WINDOW,)
    assert rejections(slot(days=14), VisitReason.SCS_TRIAL) == ()
    assert rejections(slot(days=6), VisitReason.KYPHOPLASTY) == (SlotRejection.INSIDE_CLEARANCE_WINDOW,)
    assert rejections(slot(days=7), VisitReason.KYPHOPLASTY) == ()


def test_a_clearance_on_file_covers_its_validity_only() -> None:
    cleared = NOW.date() + timedelta(days=1)
    assert rejections(slot(days=2), VisitReason.SCS_TRIAL, preop_clearance_date=cleared) == ()
    assert rejections(slot(days=31), VisitReason.SCS_TRIAL, preop_clearance_date=cleared) == ()
    assert rejections(slot(days=32), VisitReason.SCS_TRIAL, preop_clearance_date=cleared) == (
        SlotRejection.OUTSIDE_CLEARANCE_VALIDITY,
    )
    scheduled_later = NOW.date() + timedelta(days=5)
    assert rejections(slot(days=3), VisitReason.KYPHOPLASTY, preop_clearance_date=scheduled_later) == (
        SlotRejection.OUTSIDE_CLEARANCE_VALIDITY,
    )


def test_clearance_is_ignored_for_procedures_that_need_none() -> None:
    assert rejections(slot(days=1), VisitReason.ESI, preop_clearance_date=date(2020, 1, 1)) == ()


def test_requested_dates_bound_the_offer() -> None:
    window = DateRange(start=NOW.date() + timedelta(days=3), end=NOW.date() + timedelta(days=4))
    assert rejections(slot(days=2), VisitReason.ESI, requested_dates=window) == (SlotRejection.OUTSIDE_REQUESTED_DATES,)
    assert rejections(slot(days=4), VisitReason.ESI, requested_dates=window) == ()


def test_ranking_prefers_the_practitioner_then_the_soonest() -> None:
    slots = [
        slot("late-lee", days=5, practitioner="dr-lee"),
        slot("soon-kim", days=1, practitioner="dr-kim"),
        slot("soon-lee", days=2, practitioner="dr-lee"),
        slot("bad-room", days=1, equipment=frozenset()),
        slot("soonest-kim", days=1, hour=7, practitioner="dr-kim"),
    ]
    ranked = filter_and_rank(slots, VisitReason.ESI, now=NOW, patient_is_new=False, preferred_practitioner="dr-lee")
    assert [s.slot_id for s in ranked] == ["soon-lee", "late-lee", "soonest-kim"]
    ranked = filter_and_rank(slots, VisitReason.ESI, now=NOW, patient_is_new=False, limit=5)
    assert [s.slot_id for s in ranked] == ["soonest-kim", "soon-kim", "soon-lee", "late-lee"]


def test_a_repeated_slot_is_offered_once() -> None:
    first, copy = slot("dup", days=1), slot("dup", days=9)
    assert filter_and_rank([first, copy], VisitReason.ESI, now=NOW, patient_is_new=False) == [first]


def test_nothing_valid_means_nothing_offered() -> None:
    assert filter_and_rank([slot(days=-3)], VisitReason.ESI, now=NOW, patient_is_new=False) == []
    assert filter_and_rank([], VisitReason.ESI, now=NOW, patient_is_new=False) == []


def test_a_naive_clock_or_silly_limit_is_a_typed_error() -> None:
    with pytest.raises(GuardInputError, match="timezone"):
        filter_and_rank([slot()], VisitReason.ESI, now=datetime(2025, 3, 3, 8, 0), patient_is_new=False)
    with pytest.raises(GuardInputError, match="timezone"):
        slot_rejections(slot(), VisitReason.ESI, now=datetime(2025, 3, 3, 8, 0), patient_is_new=False)
    for limit in (0, 21):
        with pytest.raises(GuardInputError, match="limit"):
            filter_and_rank([slot()], VisitReason.ESI, now=NOW, patient_is_new=False, limit=limit)


@pytest.mark.parametrize(
    "payload",
    [
        {"end_before_start": True},
        {"room_equipment": ["fluoroscopy", "laser"]},
        {"room_kind": "closet"},
        {"block_kind": "lunch"},
        {"slot_id": "../etc/passwd"},
        {"naive": True},
        {"two_days": True},
    ],
)
def test_malformed_slots_are_validation_errors(payload: dict[str, object]) -> None:
    base = slot().model_dump()
    if payload.pop("end_before_start", False):
        base["end"] = base["start"] - timedelta(minutes=5)
    if payload.pop("naive", False):
        base["start"] = base["start"].replace(tzinfo=None)
    if payload.pop("two_days", False):
        base["end"] = base["start"] + timedelta(days=2)
    with pytest.raises(ValidationError):
        SlotCandidate.model_validate({**base, **payload})


zones = st.sampled_from([timezone.utc, CENTRAL, timezone(timedelta(hours=5, minutes=30))])


@st.composite
def candidates(draw: st.DrawFn) -> SlotCandidate:
    start = draw(st.datetimes(min_value=datetime(2025, 2, 20), max_value=datetime(2025, 5, 1), timezones=zones))
    return SlotCandidate(
        slot_id=draw(st.from_regex(r"[a-z]{1,3}[0-9]{0,2}", fullmatch=True)),
        start=start,
        end=start + timedelta(minutes=draw(st.integers(min_value=5, max_value=120))),
        practitioner_id=draw(st.sampled_from(["dr-lee", "dr-kim", "np-ray"])),
        location_id="room-1",
        room_kind=draw(st.sampled_from(RoomKind)),
        room_equipment=draw(st.frozensets(st.sampled_from(Equipment))),
        block_kind=draw(st.sampled_from(BlockKind)),
    )


@settings(max_examples=300, deadline=None)
@given(
    slots=st.lists(candidates(), max_size=25),
    reason=st.sampled_from(VisitReason),
    new=st.booleans(),
    preferred=st.sampled_from([None, "dr-lee", "np-ray"]),
    clearance=st.none() | st.dates(min_value=date(2025, 2, 1), max_value=date(2025, 4, 1)),
    limit=st.integers(min_value=1, max_value=20),
)
def test_offered_slots_are_valid_unique_and_in_rank_order(
    slots: list[SlotCandidate], reason: VisitReason, new: bool, preferred: str | None, clearance: date | None, limit: int
) -> None:
    offered = filter_and_rank(
        slots,
        reason,
        now=NOW,
        patient_is_new=new,
        preop_clearance_date=clearance,
        preferred_practitioner=preferred,
        limit=limit,
    )
    assert len(offered) <= limit
    assert len({s.slot_id for s in offered}) == len(offered)
    assert all(s in slots for s in offered)
    rule = procedure_rule(reason)
    for s in offered:
        assert slot_rejections(s, reason, now=NOW, patient_is_new=new, preop_clearance_date=clearance) == ()
        assert s.start > NOW and s.end - s.start >= timedelta(minutes=rule.duration_minutes)
        assert rule.required_equipment <= s.room_equipment
        assert s.room_kind in rule.room_kinds and s.block_kind in rule.block_kinds
        assert not new or s.block_kind is BlockKind.CONSULT
    keys = [(s.practitioner_id != preferred, s.start, s.slot_id) for s in offered]
    assert keys == sorted(keys)
