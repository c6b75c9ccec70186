"""A task carrying several reasons (one task per kind per call, its reasons merged) says all of them: in the
note the connector writes, in the review queue's params, and again when the queue delivers it later."""

from __future__ import annotations

import uuid
from datetime import date

from guards import AgreementStatus, ChartFlags, TaskAudience, TaskKind
from guards.model import TaskReason, TaskSpec
from review import core
from schemas.models import CommandKind, CommandMessage, CommandRoute
from streams.callflow import CreateTask, task_note
from tests.streams.callflow.helpers import NOW, Answers, Call, Driver, practice, reviews, works

UDS_DUE = ChartFlags(chronic_opioid=True, last_refill_date=date(2026, 2, 10), agreement_status=AgreementStatus.ACTIVE,
                     agreement_renewal_due=date(2026, 9, 1), uds_due=True)


def coordinator_task(*merged: TaskReason) -> TaskSpec:
    return TaskSpec(kind=TaskKind.CS_COORDINATOR_UDS, audience=TaskAudience.CS_COORDINATOR,
                    reason=TaskReason.UDS_QUESTION, call_id="call-1", practice_id="pain-1001", patient_id="pt-1",
                    merged_reasons=merged)


def test_the_note_lists_every_reason_first_one_first() -> None:
    note = task_note(coordinator_task(TaskReason.UDS_DUE))
    assert note.startswith("Phone request routed by callstream: uds question; uds due.")
    assert "Phone request routed by callstream: uds question." in task_note(coordinator_task())


def test_a_merged_task_written_now_carries_both_reasons_in_its_note() -> None:
    driver, call = Driver(answers=Answers(flags=UDS_DUE)), Call()
    driver.send(call.started())
    driver.send(call.identified())
    driver.send(call.intent("UDS_QUESTION"))
    [work] = [w for w in works(driver.answers, CreateTask) if w.task.kind is TaskKind.CS_COORDINATOR_UDS]
    assert work.task.reasons == (TaskReason.UDS_QUESTION, TaskReason.UDS_DUE)
    assert "uds question; uds due" in work.note


def test_a_queued_merged_task_passes_its_further_reasons_to_the_review_queue_and_back() -> None:
    driver, call = Driver(practice=practice("read_only"), answers=Answers(flags=UDS_DUE)), Call()
    driver.send(call.started())
    driver.send(call.identified())
    outputs = driver.send(call.intent("UDS_QUESTION"))
    [queued] = [r for r in reviews(outputs) if r.params.get("task_kind") == TaskKind.CS_COORDINATOR_UDS.value]
    assert queued.kind is CommandKind.CREATE_TASK
    assert queued.params["task_reason"] == "UDS_QUESTION" and queued.params["merged_reasons"] == "UDS_DUE"

    command = CommandMessage(command_id=uuid.uuid4(), call_id=call.call_id, practice_id="pain-1001",
                             kind="CREATE_TASK", route=CommandRoute.REVIEW_QUEUE, idempotency_key="k",
                             params={**queued.params, "reason": "RetryableError"}, issued_at=NOW)
    item = core.item_from_command(command, 0, 1, NOW, retries=True)
    assert item.detail["merged_reasons"] == "UDS_DUE"
    assert core.merged_reasons(item.detail) == (TaskReason.UDS_DUE,)


def test_a_single_reason_task_adds_no_key_and_older_items_read_as_no_further_reasons() -> None:
    driver, call = Driver(practice=practice("read_only")), Call()
    driver.send(call.started())
    driver.send(call.identified())
    outputs = driver.send(call.intent("REFILL_REQUEST", medication_mentioned=True))
    [queued] = [r for r in reviews(outputs) if r.kind is CommandKind.CREATE_TASK]
    assert "merged_reasons" not in queued.params
    assert core.merged_reasons({"task_reason": "REFILL_REQUESTED"}) == ()


def test_every_reason_together_survives_the_item_and_unknown_codes_are_skipped() -> None:
    every = ",".join(reason.value for reason in TaskReason)
    command = CommandMessage(command_id=uuid.uuid4(), call_id="call-1", practice_id="pain-1001", kind="CREATE_TASK",
                             route=CommandRoute.REVIEW_QUEUE, idempotency_key="k",
                             params={"reason": "RetryableError", "task_kind": "CS_COORDINATOR_UDS",
                                     "audience": "cs_coordinator", "task_reason": "UDS_QUESTION",
                                     "merged_reasons": every}, issued_at=NOW)
    item = core.item_from_command(command, 0, 1, NOW, retries=True)
    assert item.detail["merged_reasons"] == every
    assert TaskReason.UDS_QUESTION not in core.merged_reasons(item.detail), "the first reason is not repeated"
    assert len(core.merged_reasons(item.detail)) == len(TaskReason) - 1
    assert core.merged_reasons({"merged_reasons": "UDS_DUE,SOMETHING_NEWER"}) == (TaskReason.UDS_DUE,)


async def test_the_review_queue_delivers_a_queued_task_with_every_reason_in_its_note() -> None:
    from types import SimpleNamespace

    from review.service import ReviewQueue

    from connectors.compliance import ComplianceFlags
    from connectors.dispatch import Routed
    from guards import Intent, IntentRequest
    from streams.callflow import GUARD_REQUEST_PARAM

    written: list[tuple[TaskSpec, str]] = []

    async def create_task(practice: object, *, call_id: str, task: TaskSpec, note: str) -> str:
        written.append((task, note))
        return "written"

    async def read_flags(practice: object, patient_id: str) -> Routed[ComplianceFlags]:
        return Routed(ComplianceFlags(patient_id=patient_id, **UDS_DUE.model_dump()), CommandRoute.FHIR)

    command = CommandMessage(
        command_id=uuid.uuid4(), call_id="call-1", practice_id="pain-1001", kind="CREATE_TASK",
        route=CommandRoute.REVIEW_QUEUE, idempotency_key="k",
        params={"reason": "RetryableError", "task_kind": "CS_COORDINATOR_UDS", "audience": "cs_coordinator",
                "task_reason": "UDS_QUESTION", "merged_reasons": "UDS_DUE", "patient_id": "pt-1",
                GUARD_REQUEST_PARAM: IntentRequest(intent=Intent.UDS_QUESTION).model_dump_json()},
        issued_at=NOW)
    item = core.item_from_command(command, 0, 1, NOW, retries=True)
    # The record a retry reads back (the decided request) and the chart's flags, as the queue process gets them.
    service = SimpleNamespace(dispatcher=SimpleNamespace(create_task=create_task, read_flags=read_flags),
                              commands=SimpleNamespace(read=lambda partition, offset: command), clock=lambda: NOW)
    assert await ReviewQueue._deliver(service, practice(), item) == "written"  # type: ignore[arg-type]
    [(task, note)] = written
    assert task.reasons == (TaskReason.UDS_QUESTION, TaskReason.UDS_DUE) and "uds question; uds due" in note


def test_after_hours_a_booking_kept_beside_a_refill_says_the_office_is_closed_with_or_without_openings() -> None:
    from guards import ReplyTemplate

    from tests.streams.callflow.helpers import replies

    for slots, spoken in ((None, ReplyTemplate.OFFER_SLOTS_MEDICATION_FORWARDED_AFTER_HOURS),
                          ((), ReplyTemplate.NO_SLOTS_MEDICATION_FORWARDED_AFTER_HOURS)):
        answers = Answers() if slots is None else Answers(slots=slots)
        driver, call = Driver(answers=answers, now=NOW.replace(hour=2)), Call()
        driver.send(call.started())
        driver.send(call.identified())
        outputs = driver.send(call.intent("BOOK_APPOINTMENT", visit_reason="esi",
                                          transcript_snippet="book my follow up and I need a refill of my oxycodone"))
        [reply] = replies(outputs)
        assert reply.template is spoken and "dial 911" in reply.text and "closed" in reply.text
        assert [w for w in works(driver.answers, CreateTask) if w.task.audience is TaskAudience.PROVIDER]
