"""What a review-queue command carries for the queue's later work (issue 16): the request the guards decided on,
for the retry's new decision, and the controlled-substance request an item escalates, for the escalation count."""

from __future__ import annotations

from guards import Intent, IntentRequest
from schemas.models import AuditOutcome, CommandKind
from streams import callflow
from streams.callflow import CS_REQUEST_PARAM, GUARD_REQUEST_PARAM, WorkFailed
from tests.streams.callflow.helpers import Answers, Call, Driver, audits, practice, reviews


FAILED_AS = {callflow.CreateTask: CommandKind.CREATE_TASK, callflow.WriteAppointment: CommandKind.BOOK_APPOINTMENT}


def failing(kind: type) -> Answers:
    """ModMed answers 5xx to this kind of write."""
    answers = Answers()
    answers.overrides[kind] = lambda work: WorkFailed(FAILED_AS[kind], "RetryableError")
    return answers


def test_a_queued_refill_task_carries_the_decided_request_and_names_its_request_once() -> None:
    driver, call = Driver(answers=failing(callflow.CreateTask)), Call()
    driver.send(call.identified())
    first = driver.send(call.intent("REFILL_REQUEST", medication_mentioned=True, transcript_snippet="my usual refill"))
    [queued] = reviews(first)
    decided = IntentRequest.model_validate_json(queued.params[GUARD_REQUEST_PARAM])
    assert decided.intent is Intent.REFILL_REQUEST and decided.transcript_snippet == "my usual refill"
    [sentinel] = [a for a in audits(first, "ESCALATION") if a.detail.get("trigger") == "controlled_substance"]
    assert sentinel.outcome is AuditOutcome.QUEUED and queued.params[CS_REQUEST_PARAM]
    # Asked again: the provider task queued before stands for it, its command again names the new request.
    again = driver.send(call.intent("REFILL_REQUEST", medication_mentioned=True))
    [named] = [r for r in reviews(again) if CS_REQUEST_PARAM in r.params]
    assert named.idempotency_key == queued.idempotency_key, "the same item"
    assert named.params[CS_REQUEST_PARAM] != queued.params[CS_REQUEST_PARAM]


def test_a_written_provider_task_names_no_request_and_a_failed_booking_carries_its_decision() -> None:
    driver, call = Driver(), Call()
    driver.send(call.identified())
    assert not reviews(driver.send(call.intent("REFILL_REQUEST", medication_mentioned=True))), "the worker counts it"
    driver = Driver(practice=practice("write"), answers=failing(callflow.WriteAppointment))
    call = Call()
    driver.send(call.identified())
    driver.send(call.intent("BOOK_APPOINTMENT", visit_reason="esi"))
    [queued] = reviews(driver.send(call.chose("slot-2")))
    assert queued.kind is CommandKind.BOOK_APPOINTMENT and queued.params["reason"] == "RetryableError"
    decided = IntentRequest.model_validate_json(queued.params[GUARD_REQUEST_PARAM])
    assert (decided.intent, decided.visit_reason.value if decided.visit_reason else None) == (
        Intent.BOOK_APPOINTMENT, "esi")
    assert CS_REQUEST_PARAM not in queued.params
