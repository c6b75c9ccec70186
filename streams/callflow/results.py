"""Work results fed back into the call: chart search and flags, appointment ownership, tasks and cancellations
written, and every failure of the dispatcher (a taken slot is searched again, anything else goes to staff).
"""

from __future__ import annotations

from datetime import datetime

from callstream.tenants import Practice
from guards import Command, MatchKind, ReplyTemplate
from guards.booking import change_needing_ownership
from schemas.models import AuditAction, AuditOutcome, CommandKind, CommandRoute
from streams.callflow.audits import intake_audit, read_audit, transition, write_audit
from streams.callflow.booking import (
    booking_to_staff,
    confirm_booking,
    on_appointment_written,
    on_intake_sent,
    on_slots,
    slot_taken,
)
from streams.callflow.protocol import AuditOut, Step
from streams.callflow.registration import on_coverage, on_recheck, on_registered, registration_failed
from streams.callflow.replies import reply
from streams.callflow.review_queue import identity_params, queue_for_review
from streams.callflow.state import CallPhase, CallState, remember
from streams.callflow.tasks import queue_task, task_settled
from streams.callflow.turn import continue_turn, decide_turn, finish_turn, hand_off
from streams.callflow.work import (
    WRITE_COMMAND_KINDS,
    AppointmentChecked,
    AppointmentWritten,
    ChartFlagsRead,
    CoverageCreated,
    IntakeSent,
    PatientLookedUp,
    PatientRegistered,
    ReadChartFlags,
    SlotsFound,
    TaskWritten,
    WorkFailed,
    WorkResult,
)


def on_result(state: CallState, result: WorkResult, practice: Practice, now: datetime) -> Step:
    """Advance a call with the outcome of the work the previous step asked for."""
    if isinstance(result, PatientLookedUp):
        if state.phase is CallPhase.REGISTERING:
            return on_recheck(state, result, practice, now)
        return _on_lookup(state, result, practice, now)
    if isinstance(result, PatientRegistered):
        return on_registered(state, result)
    if isinstance(result, CoverageCreated):
        return on_coverage(state, result)
    if isinstance(result, IntakeSent):
        return on_intake_sent(state, result, practice, now)
    if isinstance(result, ChartFlagsRead):
        return _on_flags(state, result, practice, now)
    if isinstance(result, SlotsFound):
        return on_slots(state, result, practice, now)
    if isinstance(result, TaskWritten):
        return _on_task_written(state, result, practice, now)
    if isinstance(result, AppointmentChecked):
        return _on_appointment_checked(state, result, practice, now)
    if isinstance(result, AppointmentWritten):
        if result.command is Command.CANCEL_APPOINTMENT:
            return _on_cancelled(state, result, practice, now)
        return on_appointment_written(state, result, practice, now)
    return _on_failure(state, result, practice, now)


def _on_lookup(state: CallState, result: PatientLookedUp, practice: Practice, now: datetime) -> Step:
    # A chart read is reconciled like a write: a unique match carries the link that opens the chart.
    chart = result.patient_id if result.kind is MatchKind.UNIQUE else None
    audit = read_audit(
        "Patient", [result.patient_id] if result.patient_id else [], result.route, result.latency_ms,
        CommandKind.SEARCH_PATIENT, practice.chart_deep_link(chart) if chart else None,
        operation=f"match_{result.kind.value}",
    )
    state = state.model_copy(update={"lookup": result.kind, "patient_id": result.patient_id})
    state, moved = transition(state, CallPhase.IDENTIFIED)
    if result.kind is MatchKind.UNIQUE and result.patient_id is not None:
        return Step(state, work=ReadChartFlags(result.patient_id), outputs=(audit, *moved))
    step = decide_turn(state, practice, now) if state.pending is not None else Step(state)
    return Step(step.state, step.work, (audit, *moved, *step.outputs))


def _on_flags(state: CallState, result: ChartFlagsRead, practice: Practice, now: datetime) -> Step:
    audit = read_audit(
        "Flag", [state.patient_id] if state.patient_id else [], result.route, result.latency_ms,
        CommandKind.READ_COMPLIANCE_FLAGS, practice.chart_deep_link(state.patient_id) if state.patient_id else None,
    )
    state = state.model_copy(update={"chart": result.flags})
    step = decide_turn(state, practice, now) if state.pending is not None else Step(state)
    return Step(step.state, step.work, (audit, *step.outputs))


def _on_appointment_checked(state: CallState, result: AppointmentChecked, practice: Practice, now: datetime) -> Step:
    turn = state.turn
    assert turn is not None
    if result.owned:
        change = change_needing_ownership(turn.decision) or Command.CANCEL_APPOINTMENT
        audit = read_audit("Appointment", (result.appointment_id,), result.route, result.latency_ms,
                           WRITE_COMMAND_KINDS[change], operation="ownership_proved")
        state = state.model_copy(update={"turn": turn.model_copy(update={"appointment_check": "owned"})})
        step = continue_turn(state, practice, now)
        return Step(step.state, step.work, (audit, *step.outputs))
    # Not the caller's (or not this practice's): ask again; nothing is promised, and no id the caller named is
    # kept in the record or queued for staff.
    refusal = AuditOut(
        action=AuditAction.FHIR_READ if result.route is CommandRoute.FHIR else AuditAction.EMA_READ,
        outcome=AuditOutcome.FAILURE,
        resource_type="Appointment",
        error_class="AppointmentNotForPatient",
        latency_ms=result.latency_ms,
        detail={"operation": "ownership_refused"},
    )
    state = state.model_copy(update={"turn": None, "pending": None, "offer": None})
    state, outputs = reply(state, ReplyTemplate.CLARIFY, practice, now)
    state, moved = transition(state, CallPhase.CLARIFYING)
    return Step(state, outputs=(refusal, *outputs, *moved))


def _on_task_written(state: CallState, result: TaskWritten, practice: Practice, now: datetime) -> Step:
    turn = state.turn
    assert turn is not None and turn.pending_tasks
    task = turn.pending_tasks[0]
    ref = f"{result.resource_type}/{result.resource_id}"
    audits = (
        write_audit(result.route, AuditOutcome.SUCCESS, CommandKind.CREATE_TASK, result.resource_type,
                    (result.resource_id,), result.latency_ms, result.deep_link, task_refs=(ref,),
                    transcript_ref=state.transcript_ref),
        AuditOut(
            action=AuditAction.ESCALATION,
            outcome=AuditOutcome.SUCCESS,
            resource_type=result.resource_type,
            resource_ids=(result.resource_id,),
            task_refs=(ref,),
            deep_link=result.deep_link,
            command=CommandKind.CREATE_TASK,
            detail={"escalation_kind": task.audience.value, "rule": task.reason.value},
            transcript_ref=state.transcript_ref,
        ),
    )
    state = state.model_copy(update={"task_refs": remember(state.task_refs, ref)})
    step = continue_turn(task_settled(state, task, "done"), practice, now)
    return Step(step.state, step.work, (*audits, *step.outputs))


def _on_cancelled(state: CallState, result: AppointmentWritten, practice: Practice, now: datetime) -> Step:
    audit = write_audit(result.route, AuditOutcome.SUCCESS, CommandKind.CANCEL_APPOINTMENT, "Appointment",
                        (result.appointment_id,), result.latency_ms, result.deep_link)
    step = finish_turn(state, practice, now, visit_reason=result.visit_reason, appointment_time=result.start)
    return Step(step.state, step.work, (audit, *step.outputs))


def _on_failure(state: CallState, failure: WorkFailed, practice: Practice, now: datetime) -> Step:
    """ModMed (or EMA) could not do the work: a taken slot is searched again; anything else goes to staff."""
    route = failure.route or CommandRoute.FHIR
    if state.confirming is not None:
        # The visit is booked; the link did not go out: staff send it, the caller hears the plain confirmation.
        sent = state.confirming
        audit = intake_audit(sent, AuditOutcome.FAILURE, failure.latency_ms, failure.error_class)
        queued = queue_for_review(state, CommandKind.CREATE_DOCUMENT_REFERENCE, sent.appointment_id,
                                  {"patient_id": sent.patient_id, "appointment_id": sent.appointment_id,
                                   "channel": sent.channel},
                                  failure.error_class, resource_type="Appointment", resource_ids=(sent.appointment_id,))
        return confirm_booking(state, practice, now, ReplyTemplate.BOOKING_CONFIRMED, (audit, *queued))
    if failure.command in (CommandKind.REGISTER_PATIENT, CommandKind.CREATE_COVERAGE) or (
            state.phase is CallPhase.REGISTERING and failure.command is CommandKind.SEARCH_PATIENT):
        return registration_failed(state, failure, practice, now)
    if state.turn is not None and state.turn.appointment_check == "running":
        # Whose appointment it is stays unknown: staff take the request, without the id the caller named.
        audit = AuditOut(action=AuditAction.FHIR_READ, outcome=AuditOutcome.FAILURE, resource_type="Appointment",
                         command=failure.command, error_class=failure.error_class, latency_ms=failure.latency_ms)
        state = state.model_copy(update={"pending": state.pending.model_copy(update={"appointment_id": None})
                                         if state.pending is not None else None})
        step = hand_off(state, practice, now, failure.error_class, failure.command)
        return Step(step.state, step.work, (audit, *step.outputs))
    if failure.command is CommandKind.CREATE_TASK:
        turn = state.turn
        assert turn is not None and turn.pending_tasks
        task = turn.pending_tasks[0]
        audit = write_audit(route, AuditOutcome.FAILURE, CommandKind.CREATE_TASK, "Task", (), failure.latency_ms,
                            error_class=failure.error_class)
        outputs = (audit, *queue_task(state, task, failure.error_class))
        step = continue_turn(task_settled(state, task, "queued"), practice, now)
        return Step(step.state, step.work, (*outputs, *step.outputs))
    if failure.command in (CommandKind.BOOK_APPOINTMENT, CommandKind.RESCHEDULE_APPOINTMENT):
        offer = state.offer
        audit = write_audit(route, AuditOutcome.FAILURE, failure.command, "Appointment",
                            (offer.appointment_id,) if offer and offer.appointment_id else (), failure.latency_ms,
                            error_class=failure.error_class, slot_id=offer.chosen_slot_id if offer else None)
        step = slot_taken(state, practice, now) if failure.slot_taken else booking_to_staff(
            state, failure.error_class, practice, now)
        return Step(step.state, step.work, (audit, *step.outputs))
    if failure.command is CommandKind.CANCEL_APPOINTMENT:
        pending = state.pending
        assert pending is not None
        target = (pending.appointment_id,) if pending.appointment_id else ()
        audit = write_audit(route, AuditOutcome.FAILURE, CommandKind.CANCEL_APPOINTMENT, "Appointment", target,
                            failure.latency_ms, error_class=failure.error_class)
        queued = queue_for_review(state, CommandKind.CANCEL_APPOINTMENT, pending.event_id,
                                  {"appointment_id": pending.appointment_id or "", **identity_params(state)},
                                  failure.error_class, resource_type="Appointment", resource_ids=target)
        step = finish_turn(state, practice, now, ReplyTemplate.CHANGE_STAFF_WILL_CONFIRM)
        return Step(step.state, step.work, (audit, *queued, *step.outputs))
    resource = {CommandKind.SEARCH_PATIENT: "Patient", CommandKind.READ_COMPLIANCE_FLAGS: "Flag"}.get(
        failure.command, "Slot")
    audit = AuditOut(
        action=AuditAction.EMA_READ if route is CommandRoute.EMA else AuditAction.FHIR_READ,
        outcome=AuditOutcome.FAILURE, resource_type=resource, command=failure.command,
        error_class=failure.error_class, latency_ms=failure.latency_ms,
    )
    if failure.command is CommandKind.SEARCH_PATIENT:
        # Whether a chart exists is unknown, and not because of the caller: they are not asked again. The
        # request's tasks wait for staff (with the identity, for a later search) under what failed.
        state = state.model_copy(update={"lookup": None, "lookup_failure": failure.error_class, "patient_id": None,
                                         "chart": None})
        step = decide_turn(state, practice, now) if state.pending is not None else Step(state)
        return Step(step.state, step.work, (audit, *step.outputs))
    if state.pending is None:
        return Step(state, outputs=(audit,))
    step = hand_off(state, practice, now, failure.error_class, failure.command)
    return Step(step.state, step.work, (audit, *step.outputs))
