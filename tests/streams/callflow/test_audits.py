"""The audit builders of the call flow hold every item of the seeds' per-call record (issue 18 item 4):
chart links on reads, booked slots apart from offered ones, the target of queued changes, tasks with the
transcript reference, and each guard hit with its true action and dialogue path."""

from __future__ import annotations

from schemas.models import AuditOutcome, CommandKind, GuardAction
from streams.callflow import CallPhase, CreateTask
from tests.streams.callflow.helpers import (
    CALLER_NUMBER,
    PATIENT_ID,
    Answers,
    Call,
    Driver,
    audits,
    practice,
    reviews,
    works,
)

TRANSCRIPT = "s3://telephony-transcripts/2026/03/03/call-live.json"


def _identified(phase: str = "write", transcript_ref: str | None = None, **answers: object) -> tuple[Driver, Call, list]:
    driver = Driver(answers=Answers(**answers))  # type: ignore[arg-type]
    driver.practice = practice(phase)
    call = Call()
    started = {"type": "call_started", "caller_number": CALLER_NUMBER}
    driver.send(call.event({**started, "transcript_ref": transcript_ref} if transcript_ref else started))
    return driver, call, driver.send(call.identified())


def test_a_chart_that_is_only_read_carries_the_ema_deep_link() -> None:
    driver, _, outputs = _identified()
    link = driver.practice.chart_deep_link(PATIENT_ID)
    reads = {audit.resource_type: audit for audit in audits(outputs, "FHIR_READ")}
    assert reads["Patient"].deep_link == link and reads["Patient"].resource_ids == (PATIENT_ID,)
    assert reads["Flag"].deep_link == link


def test_the_booked_slot_is_told_apart_from_the_offered_ones() -> None:
    driver, call, _ = _identified()
    outputs = driver.send(call.intent("BOOK_APPOINTMENT", visit_reason="esi"))
    [search] = audits(outputs, "FHIR_READ")
    assert search.resource_type == "Slot" and search.resource_ids == ("slot-1", "slot-2", "slot-3")
    assert search.slot_id is None, "offered, not chosen"
    [write] = audits(driver.send(call.chose("slot-2")), "FHIR_WRITE")
    assert (write.command, write.slot_id, write.resource_type) == (CommandKind.BOOK_APPOINTMENT, "slot-2", "Appointment")


def test_a_queued_reschedule_names_its_target_appointment_and_the_chosen_slot() -> None:
    driver, call, _ = _identified("read_only")
    driver.send(call.intent("RESCHEDULE_APPOINTMENT", visit_reason="esi", appointment_id="appt-1001-000777"))
    outputs = driver.send(call.chose("slot-1"))
    [queued] = audits(outputs, "REVIEW_QUEUED")
    assert queued.command is CommandKind.RESCHEDULE_APPOINTMENT
    assert (queued.resource_type, queued.resource_ids, queued.slot_id) == ("Appointment", ("appt-1001-000777",), "slot-1")
    [item] = reviews(outputs)
    assert item.params["appointment_id"] == "appt-1001-000777"


def test_tasks_carry_the_transcript_reference_and_the_ended_record_lists_them_with_it() -> None:
    driver, call, _ = _identified(transcript_ref=TRANSCRIPT)
    outputs = driver.send(call.intent("REFILL_REQUEST", medication_mentioned=True, controlled_substance_mentioned=True))
    [task_work] = list(works(driver.answers, CreateTask))
    assert task_work.task.transcript_ref == TRANSCRIPT and task_work.task.call_id == call.call_id
    [task_write] = audits(outputs, "FHIR_WRITE")
    assert task_write.task_refs and task_write.transcript_ref == TRANSCRIPT
    ended = driver.send(call.ended())
    [end] = audits(ended, "CALL_STATE_TRANSITION")
    assert end.state_to == CallPhase.ENDED.value
    assert end.task_refs == task_write.task_refs
    assert end.transcript_ref == f"s3://transcripts/{call.call_id}.json", "CallEnded's reference is the final one"


def test_each_guard_hit_has_its_true_action_and_the_dialogue_path() -> None:
    driver, call, _ = _identified()
    outputs = driver.send(call.intent("BOOK_APPOINTMENT"))
    [asked] = audits(outputs, "GUARD_HIT")
    assert asked.guards_fired == ("VISIT_REASON_REQUIRED",)
    assert (asked.outcome, asked.guard_action, asked.dialogue_path) == (
        AuditOutcome.SUCCESS, GuardAction.NOTED, "BOOK_APPOINTMENT"), "asking for information blocks nothing"
    outputs = driver.send(call.intent("GENERAL_QUESTION", medication_mentioned=True, controlled_substance_mentioned=True,
                                      transcript_snippet="can you just call in a higher dose of my oxycodone"))
    hits = {audit.guards_fired[0]: audit for audit in audits(outputs, "GUARD_HIT")}
    refused = hits["MEDICATION_WRITE_REFUSED"]
    assert (refused.outcome, refused.guard_action, refused.dialogue_path) == (
        AuditOutcome.BLOCKED, GuardAction.BLOCKED, "GENERAL_QUESTION")
    escalated = hits["CONTROLLED_SUBSTANCE_ESCALATES"]
    assert (escalated.outcome, escalated.guard_action) == (AuditOutcome.SUCCESS, GuardAction.ESCALATED)


def test_a_slot_that_was_never_offered_is_a_blocked_hit_on_the_booking_path() -> None:
    driver, call, _ = _identified()
    driver.send(call.intent("BOOK_APPOINTMENT", visit_reason="esi"))
    [refusal] = audits(driver.send(call.chose("slot-999")), "GUARD_HIT")
    assert (refusal.error_class, refusal.guard_action, refusal.dialogue_path) == (
        "SlotNotOffered", GuardAction.BLOCKED, "BOOK_APPOINTMENT/esi")
