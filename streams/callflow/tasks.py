"""The decision's tasks: the note a ModMed Task carries, queueing one for staff, and marking one settled.

A task this call already created or queued is never repeated when its intent is decided again; the
controlled-substance request a provider task escalates is named once, for the review queue to count.
"""

from __future__ import annotations

from datetime import UTC
from typing import Literal

from guards import TaskAudience, TaskSpec
from schemas.models import CommandKind
from streams.callflow.protocol import Output
from streams.callflow.review_queue import CS_REQUEST_PARAM, guard_params, identity_params, queue_for_review
from streams.callflow.state import CallState, earlier_cs_requests, remember


def task_note(task: TaskSpec) -> str:
    """What a task says: codes and the call reference only, never the caller's words or chart content. The
    context is the transcript itself: the connector adds its reference (``TaskSpec.transcript_ref``), scrubbed
    by callstream.references."""
    reasons = "; ".join(reason.value.replace("_", " ").lower() for reason in task.reasons)
    lines = [
        f"Phone request routed by callstream: {reasons}.",
        f"Call reference: {task.call_id}.",
        f"For: {task.audience.value.replace('_', ' ')}.",
    ]
    if task.after_hours:
        lines.append("Received after office hours.")
    if task.pdmp_last_checked is not None:
        lines.append(f"PDMP last checked: {task.pdmp_last_checked.astimezone(UTC).isoformat(timespec='minutes')}.")
    return " ".join(lines)


def queue_task(state: CallState, task: TaskSpec, reason: str) -> tuple[Output, ...]:
    """The task as a review-queue item (staff create it): what it is, for whom, the patient or the caller's
    identity, and the decided request for the queue's retry."""
    pending, turn = state.pending, state.turn
    # The request's escalation counts once its item is stored (the review queue counts it): named on the
    # turn's last provider task, and only while none was written (a written one is counted by the worker).
    escalates = (turn is not None and turn.counts_cs_request and task.audience is TaskAudience.PROVIDER
                 and turn.provider_escalated != "done"
                 and not any(t.audience is TaskAudience.PROVIDER and t.idempotency_key != task.idempotency_key
                             for t in turn.pending_tasks))
    params = {
        "task_kind": task.kind.value,
        "audience": task.audience.value,
        "task_reason": task.reason.value,
        **({"merged_reasons": ",".join(merged.value for merged in task.merged_reasons)} if task.merged_reasons else {}),
        **({"patient_id": task.patient_id} if task.patient_id else identity_params(state)),
        **({"pdmp_last_checked": task.pdmp_last_checked.isoformat()} if task.pdmp_last_checked else {}),
        **(guard_params(pending.request(), earlier_cs_requests(state, pending.event_id)) if pending else {}),
        **({CS_REQUEST_PARAM: turn.event_id} if escalates and turn is not None else {}),
    }
    return queue_for_review(state, CommandKind.CREATE_TASK, task.idempotency_key, params, reason)


def task_settled(state: CallState, task: TaskSpec, how: Literal["done", "queued"]) -> CallState:
    """Mark the turn's task created (``done``) or queued, so the call never repeats it and the escalation
    record knows where the provider task went."""
    turn = state.turn
    assert turn is not None
    escalated = turn.provider_escalated
    if task.audience is TaskAudience.PROVIDER and escalated != "done":
        escalated = how
    remaining = tuple(t for t in turn.pending_tasks if t.idempotency_key != task.idempotency_key)
    queued = remember(state.tasks_queued, task.idempotency_key) if how == "queued" else state.tasks_queued
    return state.model_copy(update={
        "tasks_done": remember(state.tasks_done, task.idempotency_key),
        "tasks_queued": queued,
        "turn": turn.model_copy(update={"pending_tasks": remaining, "provider_escalated": escalated}),
    })
