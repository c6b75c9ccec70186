"""Call events from the telephony side: started, identified, intent recognised, slot chosen, ended.

Redeliveries are recognised by ``seq`` (the last event re-sends its reply, older ones are dropped with a record);
the end of a call replaces its state by a marker without PHI.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from pydantic import ValidationError

from callstream.tenants import Practice
from guards import DateRange, Intent, MatchKind, ReplyTemplate, VisitReason
from guards.booking import refuse_choice
from schemas.models import (
    AuditAction,
    AuditOutcome,
    CallEnded,
    CallerIdentified,
    CallEvent,
    CallStarted,
    GuardAction,
    IntentRecognised,
    SlotChosen,
)
from streams.callflow.audits import dialogue_path, transition
from streams.callflow.booking import booking_to_staff
from streams.callflow.protocol import AuditOut, CallFlowError, DropReason, Output, ReplyOut, Step
from streams.callflow.registration import register_again
from streams.callflow.replies import reply
from streams.callflow.review_queue import queued_reason
from streams.callflow.state import CallerIdentity, CallPhase, CallState, PendingIntent
from streams.callflow.turn import decide_turn
from streams.callflow.work import SearchPatient, WriteAppointment


def _visit_reason(code: str | None) -> tuple[VisitReason | None, bool]:
    """A visit-reason code from the voice agent; an unknown code is treated as none (the guard asks)."""
    if code is None:
        return None, False
    try:
        return VisitReason(code), False
    except ValueError:
        return None, True


def _requested_dates(payload: IntentRecognised) -> DateRange | None:
    if payload.date_from is None and payload.date_to is None:
        return None
    start = payload.date_from or payload.date_to
    end = payload.date_to or payload.date_from
    assert start is not None and end is not None
    try:
        return DateRange(start=start, end=end)
    except ValidationError:
        return None


def on_event(state: CallState, event: CallEvent, practice: Practice, now: datetime) -> Step:
    """Advance a call by one event of the telephony side.

    Redeliveries are recognised by ``seq``: the last event again re-sends its reply (same reply id);
    an older one, or any other event of an ended call, is dropped, with a record saying so (``Step.dropped``).
    An event that reuses a seq with another id, or whose called number belongs to another practice than the
    call's, raises CallFlowError (the shell dead-letters it).
    """
    if event.call_id != state.call_id:
        raise CallFlowError("event belongs to another call")
    if practice.practice_id != state.practice_id:
        raise CallFlowError("called number resolves to another practice than the call's")
    event_id = str(event.event_id)
    if event.seq <= state.last_seq:
        if event.seq == state.last_seq and event_id != state.last_event_id:
            raise CallFlowError("seq already used by another event of this call")
        last = state.last_reply
        if event_id == state.last_event_id and last is not None and last.in_reply_to == event_id:
            return Step(state, outputs=(ReplyOut(last),))
        if event_id == state.last_event_id:
            return Step(state)  # the last event redelivered: nothing new happened
        return Step(state, dropped=DropReason.CALL_ENDED if state.ended else DropReason.OUT_OF_ORDER)
    if state.ended:
        return Step(state, dropped=DropReason.CALL_ENDED)
    state = state.model_copy(update={"last_seq": event.seq, "last_event_id": event_id, "updated_at": now, "turn": None})
    payload = event.payload
    if isinstance(payload, CallStarted):
        return Step(state.model_copy(update={"caller_number": payload.caller_number,
                                             "transcript_ref": payload.transcript_ref or state.transcript_ref}))
    if isinstance(payload, CallerIdentified):
        return _on_identified(state, payload)
    if isinstance(payload, IntentRecognised):
        return _on_intent(state, event_id, payload, practice, now)
    if isinstance(payload, SlotChosen):
        return _on_slot_chosen(state, payload, practice, now)
    assert isinstance(payload, CallEnded)
    return _on_ended(state, payload)


def _on_identified(state: CallState, payload: CallerIdentified) -> Step:
    """Search the chart at once (and read its flags right after), whatever the intent: tasks then carry
    the patient and the PDMP check time, and the intent's turn needs no extra round trip."""
    identity = CallerIdentity(
        family_name=payload.family_name,
        given_name=payload.given_name,
        birth_date=payload.birth_date,
        callback_number=payload.callback_number,
        email=payload.email,
        contact_channel=payload.contact_channel,
    )
    registration = payload.registration or (
        state.registration if state.identity is not None and state.identity.same_person(identity) else None)
    awaited = state.phase is CallPhase.AWAITING_REGISTRATION and state.offer is not None
    if awaited and payload.registration is not None and state.identity is not None and state.identity.same_person(identity):
        # The details the new patient was asked for: search again (no duplicate chart), then register and book.
        return register_again(state.model_copy(update={"identity": identity, "registration": registration}))
    state = state.model_copy(
        update={"identity": identity, "lookup": None, "lookup_failure": None, "patient_id": None, "chart": None,
                "offer": None, "registration": registration, "registered": False}
    )
    work = SearchPatient(
        family_name=identity.family_name,
        given_name=identity.given_name,
        birth_date=identity.birth_date,
        phone=identity.callback_number or state.caller_number,
    )
    return Step(state, work=work)


def _on_intent(state: CallState, event_id: str, payload: IntentRecognised, practice: Practice, now: datetime) -> Step:
    reason, unreadable = _visit_reason(payload.visit_reason)
    pending = PendingIntent(
        event_id=event_id,
        intent=Intent(payload.intent.value),
        visit_reason=reason,
        medication_mentioned=payload.medication_mentioned,
        controlled_substance_mentioned=payload.controlled_substance_mentioned,
        transcript_snippet=payload.transcript_snippet,
        requested_dates=_requested_dates(payload),
        provider_hint=payload.provider_hint,
        appointment_id=payload.appointment_id,
    )
    state = state.model_copy(update={"pending": pending, "offer": None})
    outputs: tuple[Output, ...] = ()
    if unreadable:  # not a contract code: treated as "no visit reason", so the guard asks for it
        outputs = (
            AuditOut(
                action=AuditAction.GUARD_HIT,
                outcome=AuditOutcome.SUCCESS,
                error_class="UnknownVisitReason",
                guard_action=GuardAction.NOTED,
                dialogue_path=dialogue_path(pending.intent),
                detail={"intent": pending.intent.value},
            ),
        )
    step = decide_turn(state, practice, now)
    return Step(step.state, step.work, outputs + step.outputs)


def _on_slot_chosen(state: CallState, payload: SlotChosen, practice: Practice, now: datetime) -> Step:
    offer = state.offer
    refused = refuse_choice(None if offer is None else [slot.slot_id for slot in offer.slots], payload.slot_id)
    if refused is not None:
        refusal = AuditOut(
            action=AuditAction.GUARD_HIT,
            outcome=AuditOutcome.BLOCKED,
            error_class=refused.value,
            guard_action=GuardAction.BLOCKED,
            dialogue_path=dialogue_path(offer.write.value, offer.visit_reason) if offer else None,
        )
        state, outputs = reply(state, ReplyTemplate.CLARIFY, practice, now)
        state, moved = transition(state, CallPhase.CLARIFYING)
        return Step(state, outputs=(refusal, *outputs, *moved))
    assert offer is not None
    chosen = next(slot for slot in offer.slots if slot.slot_id == payload.slot_id)
    state = state.model_copy(update={"offer": offer.model_copy(update={"chosen_slot_id": chosen.slot_id})})
    if offer.queued:
        return booking_to_staff(state, queued_reason(practice), practice, now)
    if state.patient_id is None:
        if state.lookup is not MatchKind.NONE or state.identity is None:
            return booking_to_staff(state, "new_patient_registration", practice, now)
        if state.registration is None:
            # A new patient: the voice agent collects demographics, insurance, address and pharmacy, and sends
            # them with the caller's name and birth date again; the chosen slot waits.
            state, replies = reply(state, ReplyTemplate.ASK_NEW_PATIENT_DETAILS, practice, now,
                                   visit_reason=chosen.visit_reason)
            state, moved = transition(state, CallPhase.AWAITING_REGISTRATION)
            return Step(state, outputs=(*replies, *moved))
        return register_again(state)
    work = WriteAppointment(
        command=offer.write, patient_id=state.patient_id, slot=chosen, appointment_id=offer.appointment_id
    )
    return Step(state, work=work)


def _on_ended(state: CallState, payload: CallEnded) -> Step:
    """Purge PHI now: only a marker with ids stays, so late redeliveries are recognised and dropped."""
    marker = CallState(
        call_id=state.call_id,
        practice_id=state.practice_id,
        partition=state.partition,
        phase=state.phase,
        last_seq=state.last_seq,
        last_event_id=state.last_event_id,
        started_at=state.started_at,
        updated_at=state.updated_at,
        transcript_ref=payload.transcript_ref,
    )
    marker, moved = transition(marker, CallPhase.ENDED)
    # The call's tasks with the final transcript reference, on the record every sink receives.
    audits = tuple(
        replace(audit, detail={"disposition": payload.disposition.value}, task_refs=state.task_refs)
        if isinstance(audit, AuditOut) else audit
        for audit in moved
    )
    return Step(marker, outputs=audits)
