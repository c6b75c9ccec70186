"""The review queue's pure core: kinds, honest reasons, the state machine, the retry schedule, staleness."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from callstream.retry import Backoff
from guards import AgreementStatus, ChartFlags, GoLivePhase, Intent, IntentRequest, PhoneRestriction, VisitReason
from review import core
from review.core import ItemBusy, ItemClosed, ItemKind, ItemState, Reason
from schemas.models import AlarmState, CommandMessage, CommandRoute

NOW = datetime(2026, 3, 3, 15, 0, tzinfo=UTC)
IDENTITY = {"family_name": "Testpatient", "given_name": "Dana", "birth_date": "1968-11-23",
            "callback_number": "+15125550142"}


def command(kind: str = "CREATE_TASK", **params: str) -> CommandMessage:
    return CommandMessage(command_id=uuid.uuid4(), call_id="call-1", practice_id="pain-1002", kind=kind,
                          route=CommandRoute.REVIEW_QUEUE, idempotency_key=f"call-1:{kind}:x",
                          params=params, issued_at=NOW)


def refill_item(**params: str) -> core.ReviewItem:
    base = {"reason": "RetryableError", "task_kind": "PROVIDER_REFILL_REVIEW", "audience": "provider",
            "task_reason": "REFILL_REQUESTED", **IDENTITY}
    return core.item_from_command(command(**{**base, **params}), 3, 41, NOW, retries=True)


@pytest.mark.parametrize(("raw", "reason"), [
    ("RetryableError", Reason.EHR_UNAVAILABLE), ("CircuitOpenError", Reason.EHR_UNAVAILABLE),
    ("RateLimitedError", Reason.RATE_LIMITED), ("AuthError", Reason.AUTH_FAILED), ("TimeoutError", Reason.TIMEOUT),
    ("read_only_phase", Reason.READ_ONLY_PHASE), ("caller_not_matched", Reason.CALLER_NOT_MATCHED),
    ("ambiguous_patient_match", Reason.CALLER_NOT_MATCHED), ("intake_link_by_staff", Reason.NEEDS_STAFF),
    ("GuardInputError", Reason.NEEDS_STAFF),
])
def test_each_raw_reason_maps_to_one_distinct_reason(raw: str, reason: Reason) -> None:
    assert core.reason_for(raw) is reason


def test_a_refill_task_item_keeps_ids_and_codes_never_the_identity_and_is_due_at_once() -> None:
    item = refill_item()
    assert item.kind is ItemKind.PROVIDER_TASK and item.reason is Reason.EHR_UNAVAILABLE
    assert item.controlled_substance and item.state is ItemState.OPEN and item.last_error_class == "RetryableError"
    assert not set(IDENTITY) & set(item.detail) and "Testpatient" not in repr(item.to_json_dict())
    assert (item.source_partition, item.source_offset) == (3, 41)
    assert core.due(item, NOW)


def test_kinds_of_writes_to_confirm_and_hand_offs_wait_for_staff() -> None:
    booking = core.item_from_command(command("BOOK_APPOINTMENT", reason="read_only_phase", slot_id="slot-1",
                                             start="2026-03-09T15:00:00+00:00", visit_reason="esi"), 0, 1, NOW,
                                     retries=False)
    assert booking.kind is ItemKind.BOOKING_TO_CONFIRM and booking.detail["slot_id"] == "slot-1"
    assert booking.next_attempt_at is None
    handoff = core.item_from_command(command("SEARCH_PATIENT", reason="RetryableError", intent="BOOK_APPOINTMENT"),
                                     0, 2, NOW, retries=True)
    assert handoff.kind is ItemKind.CALLBACK and not core.retryable(handoff) and not handoff.controlled_substance
    cs_handoff = core.item_from_command(command("SEARCH_SLOTS", reason="TimeoutError", controlled_substance="true"),
                                        0, 3, NOW, retries=True)
    assert cs_handoff.controlled_substance and cs_handoff.reason is Reason.TIMEOUT
    cancel = core.item_from_command(command("CANCEL_APPOINTMENT", reason="RetryableError"), 0, 4, NOW, retries=True)
    assert cancel.kind is ItemKind.CHANGE_TO_CONFIRM and cancel.next_attempt_at is None
    not_matched = refill_item(reason="caller_not_matched")
    assert not_matched.next_attempt_at is None, "a person must find the chart"


def test_a_failed_attempt_backs_off_and_a_final_one_leaves_the_item_to_staff() -> None:
    rng = random.Random(1)
    backoff = Backoff(base_s=10, cap_s=40)
    item = core.start_attempt(refill_item(), NOW)
    assert item.state is ItemState.RETRYING and item.attempts == 1
    assert item.next_attempt_at == NOW + core.ATTEMPT_LEASE
    first = core.attempt_failed(item, "RateLimitedError", NOW, rng, backoff=backoff)
    assert first.state is ItemState.OPEN and first.last_error_class == "RateLimitedError"
    assert first.next_attempt_at is not None and NOW + timedelta(seconds=5) <= first.next_attempt_at <= NOW + timedelta(seconds=10)
    third = core.start_attempt(core.start_attempt(first, NOW), NOW)  # a lapsed lease is taken over
    later = core.attempt_failed(third, "RetryableError", NOW, rng, backoff=backoff)
    assert later.next_attempt_at is not None and later.next_attempt_at <= NOW + timedelta(seconds=40)
    final = core.attempt_failed(core.start_attempt(later, NOW), "ConflictError", NOW, rng, final=True)
    assert final.next_attempt_at is None and final.is_open
    assert final.revision > later.revision > first.revision


def test_delivery_closes_the_item_and_staff_resolve_only_what_is_not_being_delivered() -> None:
    attempt = core.start_attempt(refill_item(), NOW)
    with pytest.raises(ItemBusy):
        core.resolve(attempt, "front-desk-1", "called back", NOW)
    done = core.delivered(attempt, "Task", "task-9", NOW)
    assert done.state is ItemState.DELIVERED and done.resource_id == "task-9" and not core.due(done, NOW)
    with pytest.raises(ItemClosed):
        core.resolve(done, "front-desk-1", "called back", NOW)
    resolved = core.resolve(refill_item(), " front-desk-1 ", "called back, sent to Dr. Rivera", NOW)
    assert (resolved.state, resolved.resolved_by, resolved.resolved_at) == (ItemState.RESOLVED, "front-desk-1", NOW)
    with pytest.raises(core.ReviewQueueError):
        core.resolve(refill_item(), "front-desk-1", "  ", NOW)
    lapsed = core.resolve(attempt, "front-desk-1", "handled", NOW + core.ATTEMPT_LEASE + timedelta(seconds=1))
    assert lapsed.state is ItemState.RESOLVED, "a killed attempt's item can still be resolved once its lease ran out"


def test_the_stale_alarm_fires_per_practice_for_old_open_controlled_substance_items_and_clears() -> None:
    old = refill_item()
    other = core.item_from_command(command("CREATE_TASK", reason="RetryableError", task_kind="FRONT_DESK_MESSAGE",
                                           audience="front_desk", task_reason="GENERAL_MESSAGE"), 0, 5, NOW,
                                   retries=True)
    alarms = core.StaleAlarms(timedelta(minutes=15))
    early = core.stale_by_practice([old, other], NOW + timedelta(minutes=14), alarms.limit)
    assert alarms.update(early) == []
    late = core.stale_by_practice([old, other], NOW + timedelta(minutes=16), alarms.limit)
    assert late["pain-1002"].count == 1, "only the controlled-substance item counts"
    [fired] = alarms.update(late)
    assert fired.state is AlarmState.FIRING and fired.value == pytest.approx(960)
    assert alarms.update(late) == [], "one transition per change"
    done = core.delivered(core.start_attempt(old, NOW), "Task", "t-1", NOW)
    [cleared] = alarms.update(core.stale_by_practice([done, other], NOW + timedelta(minutes=17), alarms.limit))
    assert cleared.state is AlarmState.CLEARED and cleared.practice_id == "pain-1002"


# ------------------------------------------------------------------------- retries decided again (issue 16)

ACTIVE = ChartFlags(chronic_opioid=True, agreement_status=AgreementStatus.ACTIVE)
EXPIRED = ChartFlags(chronic_opioid=True, agreement_status=AgreementStatus.EXPIRED)


def booking_item(reason: str = "RetryableError", *, retries: bool = True, **params: str) -> core.ReviewItem:
    base = {"reason": reason, "slot_id": "slot-7", "visit_reason": "medication-management",
            "start": "2026-03-09T15:00:00+00:00", "practitioner_id": "pr-1", "patient_id": "p-1", **params}
    return core.item_from_command(command("BOOK_APPOINTMENT", **base), 2, 9, NOW, retries=retries)


def test_a_write_phase_booking_that_failed_for_a_passing_reason_is_retried_and_a_read_only_one_waits() -> None:
    assert core.retryable(booking_item()) and core.due(booking_item(), NOW)
    read_only = booking_item("read_only_phase", retries=False)
    assert read_only.kind is ItemKind.BOOKING_TO_CONFIRM and read_only.next_attempt_at is None
    assert read_only.detail["slot_id"] == "slot-7", "staff see the slot offered"
    assert not core.retryable(booking_item("new_patient_registration")), "no chart: staff register the caller"
    unmatched = core.item_from_command(command("BOOK_APPOINTMENT", reason="RetryableError", slot_id="s",
                                               visit_reason="esi", start="2026-03-09T15:00:00+00:00"), 0, 1, NOW,
                                       retries=True)
    assert not core.retryable(unmatched), "a booking without a chart is never retried"


def test_a_retry_is_decided_again_by_the_guards_on_the_chart_as_it_is_now() -> None:
    booking = IntentRequest(intent=Intent.BOOK_APPOINTMENT, visit_reason=VisitReason.MEDICATION_MANAGEMENT)
    item = booking_item()
    assert core.recheck(item, booking, 0, "p-1", ACTIVE, GoLivePhase.WRITE, False, NOW) is None
    refused = core.recheck(item, booking, 0, "p-1", EXPIRED, GoLivePhase.WRITE, False, NOW)
    assert refused is not None and "AGREEMENT_BLOCKS_CONTROLLED_VISIT" in refused, "an agreement expired meanwhile"
    restricted = ChartFlags(phone_restrictions=frozenset({PhoneRestriction.NO_SCHEDULING}))
    assert core.recheck(booking_item(visit_reason="esi"), IntentRequest(intent=Intent.BOOK_APPOINTMENT,
                        visit_reason=VisitReason.ESI), 0, "p-1", restricted, GoLivePhase.WRITE, False, NOW)
    refill = IntentRequest(intent=Intent.REFILL_REQUEST, medication_mentioned=True)
    task = refill_item(patient_id="p-1")
    for chart in (ACTIVE, EXPIRED, restricted):  # a refill is a provider task whatever the chart says
        assert core.recheck(task, refill, 0, "p-1", chart, GoLivePhase.WRITE, True, NOW) is None
    front_desk = refill_item(task_kind="FRONT_DESK_MESSAGE", audience="front_desk", task_reason="GENERAL_MESSAGE")
    assert core.recheck(front_desk, refill, 0, "p-1", ACTIVE, GoLivePhase.WRITE, False, NOW), \
        "only a task the new decision makes is written"
    assert core.recheck(item, booking, 0, "p-1", ACTIVE, GoLivePhase.READ_ONLY, False, NOW), \
        "read-only now: the booking is queued, not dispatched"


def test_an_attempt_that_needs_a_person_leaves_the_item_open_for_staff_with_the_reason() -> None:
    attempt = core.start_attempt(booking_item(), NOW)
    taken = core.to_staff(attempt, Reason.SLOT_UNAVAILABLE, "ConflictError", NOW)
    assert (taken.state, taken.reason, taken.last_error_class) == (ItemState.OPEN, Reason.SLOT_UNAVAILABLE,
                                                                   "ConflictError")
    assert taken.is_open and not core.due(taken, NOW + timedelta(days=1))


def test_an_escalation_is_counted_once_per_request_on_its_item() -> None:
    item = refill_item()
    first = core.confirm_escalation(item, "event-1", NOW)
    assert first is not None and core.confirmed_requests(first) == ("event-1",)
    assert core.confirm_escalation(first, "event-1", NOW) is None, "a redelivered command counts nothing"
    second = core.confirm_escalation(first, "event-2", NOW)
    assert second is not None and core.confirmed_requests(second) == ("event-1", "event-2")
    done = core.delivered(core.start_attempt(second, NOW), "Task", "t-1", NOW)
    assert core.confirm_escalation(done, "event-3", NOW) is not None, "a delivered item reached ModMed"


def test_a_practice_stored_as_firing_is_cleared_after_a_restart_and_does_not_fire_again() -> None:
    restarted = core.StaleAlarms(timedelta(minutes=15), firing=["pain-1002"])
    still = core.stale_by_practice([refill_item()], NOW + timedelta(minutes=20), restarted.limit)
    assert restarted.update(still) == [], "fired before the restart: not again"
    [cleared] = restarted.update({})
    assert (cleared.practice_id, cleared.state) == ("pain-1002", AlarmState.CLEARED)
