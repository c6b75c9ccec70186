"""The decision turn: ask the guards about the pending intent, carry out their decision command by command, and
end the turn with the reply (or hand the request to a human).

The decision is kept in the state (``Turn``) so every step of the turn acts on the same decision. An
appointment the caller names is proved theirs (``guards.booking``) before a change is offered, promised or
queued with its id.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Literal

from pydantic import ValidationError

from callstream.tenants import Practice
from guards import (
    CallContext,
    Command,
    Decision,
    GuardInputError,
    GuardName,
    MatchKind,
    Outcome,
    ReplyTemplate,
    TaskAudience,
    VisitReason,
    decide,
)
from guards.booking import change_needing_ownership
from guards.hours import is_after_hours as office_closed
from guards.replies import adapt_reply
from schemas.models import AuditAction, AuditOutcome, CommandKind
from streams.callflow.audits import decision_audits, escalation_audit, transition
from streams.callflow.booking import offer_slots, search_window
from streams.callflow.protocol import AuditOut, Output, ReviewOut, Step
from streams.callflow.replies import reply
from streams.callflow.review_queue import CS_REQUEST_PARAM, identity_params, queue_for_review, queued_reason
from streams.callflow.state import CallPhase, CallState, Turn, earlier_cs_requests, remember
from streams.callflow.tasks import queue_task, task_note, task_settled
from streams.callflow.work import (
    WRITE_COMMAND_KINDS,
    CancelAppointment,
    CheckAppointment,
    CreateTask,
    ReadChartFlags,
    SearchSlots,
)

_PHASE_OF_OUTCOME: dict[Outcome, CallPhase] = {
    Outcome.ESCALATE: CallPhase.ESCALATED,
    Outcome.BLOCK_AND_ROUTE: CallPhase.ROUTED,
    Outcome.REVIEW_QUEUE: CallPhase.REVIEW_QUEUED,
}
_HANDOFF_REPLY = ReplyTemplate.ROUTED_TO_CARE_TEAM


def is_after_hours(now: datetime, practice: Practice) -> bool:
    """Outside the practice's office hours (guards.hours; Monday-Friday 08:00-17:00 when none are configured)."""
    return office_closed(now, practice.timezone, practice.office_hours)


def _context(state: CallState, practice: Practice, now: datetime, intent_event_id: str) -> CallContext:
    earlier = earlier_cs_requests(state, intent_event_id)
    return CallContext(
        call_id=state.call_id,
        practice_id=state.practice_id,
        caller_identified=state.identity is not None and state.lookup is not None,
        patient_id=state.patient_id,
        is_new_patient=state.lookup is MatchKind.NONE,
        transcript_ref=state.transcript_ref,
        after_hours=is_after_hours(now, practice),
        after_hours_bookings_held=practice.office_hours.after_hours_bookings == "staff_confirm",
        refill_requests_earlier_in_call=min(earlier, 1000),
    )


def decide_turn(state: CallState, practice: Practice, now: datetime) -> Step:
    """Ask the guard about the pending intent and start carrying out its decision."""
    pending = state.pending
    assert pending is not None
    chart = state.chart if state.patient_id is not None else None
    try:
        decision = decide(_context(state, practice, now, pending.event_id), pending.request(), chart,
                          practice.phase, now)
    except (GuardInputError, ValidationError) as exc:
        return hand_off(state, practice, now, type(exc).__name__, CommandKind.CREATE_TASK)
    outputs: list[Output] = list(decision_audits(decision, pending))
    if Command.READ_COMPLIANCE_FLAGS in decision.commands and state.patient_id is not None:
        return Step(state, work=ReadChartFlags(state.patient_id))
    counts = (pending.controlled_substance_request or decision.asked_for_controlled_substance) and (
        pending.event_id not in state.cs_requests
    )
    if counts:
        state = state.model_copy(update={"cs_requests": remember(state.cs_requests, pending.event_id)})
    tasks = tuple(task for task in decision.tasks if task.idempotency_key not in state.tasks_done)
    # A provider task this call already created (or queued) escalates a repeated request as well.
    earlier = [t.idempotency_key for t in decision.tasks if t.audience is TaskAudience.PROVIDER and t not in tasks]
    already: Literal["no", "done", "queued"] = "no"
    if earlier:
        already = "queued" if all(key in state.tasks_queued for key in earlier) else "done"
    turn = Turn(event_id=pending.event_id, decision=decision, pending_tasks=tasks, counts_cs_request=counts,
                provider_escalated=already)
    state = state.model_copy(update={"turn": turn})
    if counts and already == "queued" and not any(t.audience is TaskAudience.PROVIDER for t in tasks):
        # A repeated request escalates to the provider task queued earlier in the call: its command again (same
        # id, so the same item) names this request, for the review queue to count once the item is stored.
        queued = next(t for t in decision.tasks if t.audience is TaskAudience.PROVIDER and t not in tasks)
        outputs.extend(replace(review, params={**review.params, CS_REQUEST_PARAM: pending.event_id})
                       for review in queue_task(state, queued, "needs_staff") if isinstance(review, ReviewOut))
    ambiguous = Command.SEARCH_PATIENT in decision.commands  # the search ran and matched several charts
    if ambiguous or Command.CREATE_TASK in decision.queued_commands:
        # No chart to write to, or the read-only phase: the decision's tasks wait for a human.
        for task in tasks:
            outputs.extend(queue_task(state, task, "ambiguous_patient_match" if ambiguous else "read_only_phase"))
            state = task_settled(state, task, "queued")
    if ambiguous:
        outputs.extend(escalation_audit(state))
        step = hand_off(state, practice, now, "AmbiguousPatientMatch", CommandKind.SEARCH_PATIENT)
        return Step(step.state, step.work, (*outputs, *step.outputs))
    step = continue_turn(state, practice, now)
    return Step(step.state, step.work, (*outputs, *step.outputs))


def continue_turn(state: CallState, practice: Practice, now: datetime) -> Step:
    """Run the decision's next command, or finish the turn with the reply."""
    turn = state.turn
    pending = state.pending
    assert turn is not None and pending is not None
    decision = turn.decision
    if turn.pending_tasks:
        task = turn.pending_tasks[0]
        if task.patient_id is None:
            # No chart to attach it to yet: a human takes it now (a controlled-substance request is never held back).
            outputs = queue_task(state, task, state.lookup_failure or "caller_not_matched")
            step = continue_turn(task_settled(state, task, "queued"), practice, now)
            return Step(step.state, step.work, (*outputs, *step.outputs))
        return Step(state, work=CreateTask(task, task_note(task)))
    check = _ownership_check(state)
    if check is not None:
        state = state.model_copy(update={"turn": turn.model_copy(update={"appointment_check": "running"})})
        return Step(state, work=check)
    if Command.SEARCH_SLOTS in decision.commands and not turn.slots_searched and decision.visit_reason is not None:
        window = search_window(pending.requested_dates, practice, now)
        if window is None:  # the caller's dates are all in the past
            return offer_slots(state, (), practice, now)
        return Step(state, work=SearchSlots(decision.visit_reason, *window, patient_id=state.patient_id))
    if Command.CANCEL_APPOINTMENT in decision.commands:
        if pending.appointment_id is not None and state.patient_id is not None:
            return Step(state, work=CancelAppointment(state.patient_id, pending.appointment_id))
        outputs = queue_for_review(state, CommandKind.CANCEL_APPOINTMENT, pending.event_id, identity_params(state),
                                   "appointment_not_identified")
        step = finish_turn(state, practice, now, ReplyTemplate.CHANGE_STAFF_WILL_CONFIRM)
        return Step(step.state, step.work, (*outputs, *step.outputs))
    return finish_turn(state, practice, now)


def _ownership_check(state: CallState) -> CheckAppointment | None:
    """The read that proves an appointment the caller names (the id comes from the voice agent) theirs, once their
    chart is known and before the turn goes on, when the decision changes it (``guards.booking``)."""
    turn, pending = state.turn, state.pending
    assert turn is not None and pending is not None
    if turn.appointment_check != "no" or pending.appointment_id is None or state.patient_id is None:
        return None
    change = change_needing_ownership(turn.decision)
    return None if change is None else CheckAppointment(state.patient_id, pending.appointment_id, change)


def finish_turn(state: CallState, practice: Practice, now: datetime, template: ReplyTemplate | None = None, *,
                visit_reason: VisitReason | None = None, appointment_time: datetime | None = None) -> Step:
    """End the turn with a reply: the guard's template unless what happened calls for another one."""
    turn = state.turn
    pending = state.pending
    assert turn is not None and pending is not None
    decision = turn.decision
    if state.lookup_failure is not None and GuardName.CALLER_IDENTIFICATION_REQUIRED in decision.guards_fired:
        return _search_failed(state, state.lookup_failure, practice, now)
    template = template or decision.reply
    outputs: list[Output] = list(escalation_audit(state))
    # Only an appointment proved the caller's (its ownership is checked once the chart is known) is named.
    target = (pending.appointment_id,) if pending.appointment_id and state.patient_id else ()
    for command in decision.queued_commands:
        if command is not Command.CREATE_TASK:
            outputs.extend(queue_for_review(state, WRITE_COMMAND_KINDS[command], pending.event_id,
                                            {"intent": pending.intent.value, **dict(zip(("appointment_id",), target)),
                                             **identity_params(state)},
                                            queued_reason(practice), resource_type="Appointment", resource_ids=target))
    if Command.CREATE_DOCUMENT_REFERENCE in decision.commands:
        # Asked for outside a booking: a link is signed for an appointment this call has not made, so staff send
        # it, and the reply says so (a booking's confirmation carries the link itself: booking._intake_push).
        outputs.extend(queue_for_review(state, CommandKind.CREATE_DOCUMENT_REFERENCE, pending.event_id,
                                        {"patient_id": state.patient_id or ""}, "intake_link_by_staff"))
        template = ReplyTemplate.INTAKE_STAFF_WILL_SEND
    state, replies = reply(state, template, practice, now, visit_reason=visit_reason or decision.visit_reason,
                           appointment_time=appointment_time, escalated=decision.escalated)
    outputs.extend(replies)
    # Decided again once the caller is identified (a refill then also reaches the chart's provider).
    keep = GuardName.CALLER_IDENTIFICATION_REQUIRED in decision.guards_fired
    state = state.model_copy(update={"turn": None, "pending": pending if keep else None})
    state, moved = transition(state, _phase_after(decision, template))
    return Step(state, outputs=(*outputs, *moved))


def _search_failed(state: CallState, failure: str, practice: Practice, now: datetime) -> Step:
    """The chart search failed on ModMed's side: the caller is not asked for name and date of birth again and
    never hears they were not found; they hear the office will follow up. The decision's tasks are already
    queued under the failure; a request without tasks becomes a hand-off item under it."""
    turn = state.turn
    assert turn is not None
    if not turn.decision.tasks:
        return hand_off(state, practice, now, failure, CommandKind.SEARCH_PATIENT)
    outputs = tuple(escalation_audit(state))
    template = adapt_reply(_HANDOFF_REPLY, after_hours=is_after_hours(now, practice), writes_queued=False)
    state, replies = reply(state, template, practice, now, escalated=True)
    state = state.model_copy(update={"turn": None, "pending": None, "offer": None})
    state, moved = transition(state, CallPhase.HANDED_OFF)
    return Step(state, outputs=(*outputs, *replies, *moved))


def _phase_after(decision: Decision, template: ReplyTemplate) -> CallPhase:
    if decision.outcome in _PHASE_OF_OUTCOME:
        return _PHASE_OF_OUTCOME[decision.outcome]
    if template in (ReplyTemplate.CHANGE_STAFF_WILL_CONFIRM, ReplyTemplate.INTAKE_STAFF_WILL_SEND):
        return CallPhase.REVIEW_QUEUED
    if template is ReplyTemplate.CANCELLATION_CONFIRMED:
        return CallPhase.CANCELLED
    if decision.outcome is Outcome.NEEDS_INFORMATION:
        if GuardName.VISIT_REASON_REQUIRED in decision.guards_fired:
            return CallPhase.AWAITING_VISIT_REASON
        return CallPhase.AWAITING_IDENTITY
    if GuardName.UNRECOGNISED_INTENT_CLARIFIED in decision.guards_fired:
        return CallPhase.CLARIFYING
    if decision.tasks:
        return CallPhase.MESSAGE_TAKEN
    return CallPhase.IDENTIFIED


def hand_off(state: CallState, practice: Practice, now: datetime, reason: str, kind: CommandKind) -> Step:
    """No safe automatic answer: a human takes the call's request (review queue) and the caller is told so.

    A controlled-substance request not yet counted is counted here as escalated to a human (QUEUED)."""
    outputs: list[Output] = [
        AuditOut(
            action=AuditAction.ESCALATION,
            outcome=AuditOutcome.QUEUED,
            error_class=reason,
            command=kind,
            detail={"escalation_kind": "human_handoff"},
        )
    ]
    pending = state.pending
    counted = pending is not None and pending.controlled_substance_request and pending.event_id not in state.cs_requests
    if pending is not None and counted:
        state = state.model_copy(update={"cs_requests": remember(state.cs_requests, pending.event_id)})
        outputs.append(AuditOut(
            action=AuditAction.ESCALATION,
            outcome=AuditOutcome.QUEUED,
            detail={"trigger": "controlled_substance", "escalation_kind": "human_handoff",
                    "intent": pending.intent.value},
        ))
    params = {"intent": pending.intent.value} if pending else {}
    if pending is not None and pending.controlled_substance_request:
        params["controlled_substance"] = "true"  # the review queue's age alarm watches these
        if counted:
            params[CS_REQUEST_PARAM] = pending.event_id  # counted as escalated once the item is stored
    outputs.extend(queue_for_review(state, kind, f"handoff:{state.last_event_id}",
                                    {**params, **identity_params(state)}, reason))
    template = adapt_reply(_HANDOFF_REPLY, after_hours=is_after_hours(now, practice), writes_queued=False)
    state, replies = reply(state, template, practice, now, escalated=True)
    state = state.model_copy(update={"turn": None, "pending": None, "offer": None})
    state, moved = transition(state, CallPhase.HANDED_OFF)
    return Step(state, outputs=(*outputs, *replies, *moved))
