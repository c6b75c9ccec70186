"""Slots and appointment writes: searching, offering the ranked slots, booking the chosen one, a slot taken
meanwhile, a booking handed to staff, and the confirmation with the intake link.

Only slots the guards ranked are offered (``guards.filter_and_rank``); a slot somebody else took between offer
and choice is searched again for the same allowed write (``guards.booking.search_again``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from callstream.tenants import Practice
from guards import (
    Command,
    DateRange,
    GoLivePhase,
    Intent,
    MatchKind,
    Outcome,
    ReplyTemplate,
    after_booking,
    after_slot_search,
    filter_and_rank,
)
from guards.booking import search_again
from schemas.models import AuditOutcome, CommandKind
from streams.callflow.audits import escalation_audit, intake_audit, read_audit, transition, write_audit
from streams.callflow.protocol import Output, Step
from streams.callflow.replies import reply
from streams.callflow.review_queue import guard_params, identity_params, queue_for_review, registration_params
from streams.callflow.state import CallPhase, CallState, Offer, PendingIntent, Turn, earlier_cs_requests
from streams.callflow.work import (
    WRITE_COMMAND_KINDS,
    AppointmentWritten,
    FoundSlot,
    IntakeSent,
    SearchSlots,
    SendIntake,
    SlotChoice,
    SlotsFound,
    WriteAppointment,
)

DEFAULT_SEARCH_DAYS = 14
MAX_SEARCH_DAYS = 31
"""Longest slot search (the EMA booking screen is searched day by day; FHIR allows up to 92 days)."""
OFFERED_SLOTS = 3


def book_chosen(state: CallState) -> WriteAppointment:
    """The write of the slot the caller chose: a booking, or the reschedule of the appointment they named."""
    offer = state.offer
    assert offer is not None and offer.chosen is not None and state.patient_id is not None
    return WriteAppointment(command=offer.write, patient_id=state.patient_id, slot=offer.chosen,
                            appointment_id=offer.appointment_id)


def search_window(requested: DateRange | None, practice: Practice, now: datetime) -> tuple[date, date] | None:
    """The days to search, in the practice's zone: the caller's dates from today on, at most MAX_SEARCH_DAYS
    (DEFAULT_SEARCH_DAYS from today when they named none); None when their dates are all past."""
    today = now.astimezone(ZoneInfo(practice.timezone)).date()
    if requested is None:
        return today, today + timedelta(days=DEFAULT_SEARCH_DAYS)
    start = max(requested.start, today)
    end = min(requested.end, start + timedelta(days=MAX_SEARCH_DAYS))
    return (start, end) if start <= end else None


def _preferred_practitioner(hint: str | None, slots: Sequence[FoundSlot]) -> str | None:
    """The practitioner the caller named ("Dr. Rivera"), matched on the words of the display names."""
    if not hint:
        return None
    words = {word.strip(".,").casefold() for word in hint.split()} - {"dr", "doctor", "the", "with", "np", "pa"}
    for slot in slots:
        names = {word.strip(".,").casefold() for word in slot.practitioner_display.split()}
        if words & names:
            return slot.candidate.practitioner_id
    return None


def on_slots(state: CallState, result: SlotsFound, practice: Practice, now: datetime) -> Step:
    """Rank the free slots by the guards' rules and offer the best OFFERED_SLOTS (after a slot was taken, none of
    those offered before); the read's record names the slots offered."""
    turn = state.turn
    pending = state.pending
    assert turn is not None and pending is not None and turn.decision.visit_reason is not None
    visit_reason = turn.decision.visit_reason
    usable = [s for s in result.slots if s.candidate.slot_id not in turn.excluded_slots]
    ranked = filter_and_rank(
        (s.candidate for s in usable),
        visit_reason,
        now=now,
        patient_is_new=state.lookup is MatchKind.NONE,
        preferred_practitioner=_preferred_practitioner(pending.provider_hint, usable),
        requested_dates=pending.requested_dates,
        limit=OFFERED_SLOTS,
    )
    by_id = {s.candidate.slot_id: s for s in usable}
    choices = tuple(
        SlotChoice(
            slot_id=c.slot_id, start=c.start, end=c.end, practitioner_id=c.practitioner_id,
            practitioner_display=by_id[c.slot_id].practitioner_display,
            location_display=by_id[c.slot_id].location_display,
            visit_reason=visit_reason, route=by_id[c.slot_id].route,
        )
        for c in ranked
    )
    # The read's record names the slots offered (what the caller heard), and how many were free.
    audit = read_audit("Slot", [choice.slot_id for choice in choices], result.route, result.latency_ms,
                       CommandKind.SEARCH_SLOTS, visit_reason=visit_reason.value,
                       operation=f"offered_{len(choices)}_of_{len(result.slots)}")
    state = state.model_copy(update={"turn": turn.model_copy(update={"slots_searched": True})})
    step = offer_slots(state, choices, practice, now)
    return Step(step.state, step.work, (audit, *step.outputs))


def offer_slots(state: CallState, choices: tuple[SlotChoice, ...], practice: Practice, now: datetime) -> Step:
    """Offer the ranked slots (or say none fit); the booking waits for the caller's choice."""
    turn = state.turn
    pending = state.pending
    assert turn is not None and pending is not None
    decision = turn.decision
    visit_reason = decision.visit_reason
    assert visit_reason is not None
    template = after_slot_search(decision.reply, slots_found=len(choices))
    outputs: list[Output] = list(escalation_audit(state))
    write = next((c for c in (Command.BOOK_APPOINTMENT, Command.RESCHEDULE_APPOINTMENT)
                  if c in decision.commands or c in decision.queued_commands), None)
    offer = None
    if choices and write is not None and template is not ReplyTemplate.NO_SLOTS_FOUND:
        offer = Offer(
            write=write,
            queued=write in decision.queued_commands,
            visit_reason=visit_reason,
            appointment_id=pending.appointment_id,
            requested_dates=pending.requested_dates,
            slots=choices,
            decided=pending.request(),
            earlier_cs_requests=earlier_cs_requests(state, pending.event_id),
        )
    state, replies = reply(state, template, practice, now, visit_reason=decision.visit_reason,
                           slots=choices if offer is not None else (), escalated=decision.escalated)
    outputs.extend(replies)
    state = state.model_copy(update={"turn": None, "offer": offer, "pending": None})
    phase = CallPhase.OFFERING_SLOTS if offer is not None else CallPhase.NO_SLOTS
    if decision.outcome is Outcome.ESCALATE:
        phase = CallPhase.ESCALATED
    state, moved = transition(state, phase)
    return Step(state, outputs=(*outputs, *moved))


def on_appointment_written(state: CallState, result: AppointmentWritten, practice: Practice, now: datetime) -> Step:
    """The booking or reschedule is in ModMed: the caller hears it confirmed, unless the confirmation with the
    intake link goes out first (a new booking, a form for the visit and a channel to the caller)."""
    offer = state.offer
    assert offer is not None
    # A reschedule names the appointment it moved as well as the one it wrote (the same id when moved in place).
    ids = tuple(dict.fromkeys(filter(None, (result.appointment_id, offer.appointment_id))))
    audit = write_audit(result.route, AuditOutcome.SUCCESS, WRITE_COMMAND_KINDS[offer.write], "Appointment",
                        ids, result.latency_ms, result.deep_link, slot_id=offer.chosen_slot_id,
                        visit_reason=result.visit_reason.value)
    intake = _intake_push(state, practice, offer, result) if result.command is Command.BOOK_APPOINTMENT else None
    if intake is not None:
        # The confirmation goes out with the intake link first; the caller then hears that it was sent.
        return Step(state.model_copy(update={"confirming": intake}), work=intake, outputs=(audit,))
    state, replies = reply(state, after_booking(practice.phase), practice, now,
                           visit_reason=result.visit_reason, appointment_time=result.start)
    state, moved = transition(state.model_copy(update={"offer": None}), CallPhase.BOOKED)
    return Step(state, outputs=(audit, *replies, *moved))


def _intake_push(state: CallState, practice: Practice, offer: Offer, booked: AppointmentWritten) -> SendIntake | None:
    """The intake link to send after a booking: the practice has a form for the visit (its own, or the pain-specific
    variant for a procedure) and a channel the caller can be reached on; their choice first, SMS by default."""
    intake = practice.intake
    if intake is None or state.patient_id is None or intake.form_url(booked.visit_reason) is None:
        return None
    identity = state.identity
    phone = (identity.callback_number if identity else None) or state.caller_number
    email = identity.email if identity else None
    wanted = identity.contact_channel if identity and identity.contact_channel else "sms"
    reachable = {"sms": phone if intake.sms is not None else None, "email": email if intake.email is not None else None}
    channel = next((c for c in (wanted, "email" if wanted == "sms" else "sms") if reachable[c]), None)
    if channel is None:
        return None
    to = reachable[channel]
    assert to is not None
    return SendIntake(channel=channel, to=to, visit_reason=booked.visit_reason, start=booked.start,
                      appointment_id=booked.appointment_id, patient_id=state.patient_id)


def on_intake_sent(state: CallState, result: IntakeSent, practice: Practice, now: datetime) -> Step:
    """The confirmation with the intake link went out: the caller hears that it did."""
    sent = state.confirming
    assert sent is not None
    audit = intake_audit(sent, AuditOutcome.SUCCESS, result.latency_ms)
    return confirm_booking(state, practice, now, ReplyTemplate.BOOKING_CONFIRMED_INTAKE_SENT, (audit,))


def confirm_booking(state: CallState, practice: Practice, now: datetime, template: ReplyTemplate,
                    outputs: tuple[Output, ...]) -> Step:
    """End a booking whose confirmation was being sent: the reply with the visit's time, and the BOOKED phase."""
    sent = state.confirming
    assert sent is not None
    state, replies = reply(state, template, practice, now, visit_reason=sent.visit_reason,
                           appointment_time=sent.start)
    state, moved = transition(state.model_copy(update={"offer": None, "confirming": None}), CallPhase.BOOKED)
    return Step(state, outputs=(*outputs, *replies, *moved))


def slot_taken(state: CallState, practice: Practice, now: datetime) -> Step:
    """Somebody else took the slot between offer and choice: search again (the same allowed booking)
    and offer what is still free, never the slots already offered."""
    offer = state.offer
    assert offer is not None
    intent = Intent.RESCHEDULE_APPOINTMENT if offer.write is Command.RESCHEDULE_APPOINTMENT else Intent.BOOK_APPOINTMENT
    pending = PendingIntent(event_id=state.last_event_id, intent=intent, visit_reason=offer.visit_reason,
                            appointment_id=offer.appointment_id, requested_dates=offer.requested_dates)
    turn = Turn(event_id=state.last_event_id, decision=search_again(offer.write, offer.visit_reason),
                pending_tasks=(),
                excluded_slots=tuple(slot.slot_id for slot in offer.slots))
    state = state.model_copy(update={"pending": pending, "turn": turn, "offer": None})
    window = search_window(offer.requested_dates, practice, now)
    if window is None:
        return offer_slots(state, (), practice, now)
    return Step(state, work=SearchSlots(offer.visit_reason, *window, patient_id=state.patient_id))


def booking_to_staff(state: CallState, reason: str, practice: Practice, now: datetime) -> Step:
    """The chosen slot goes to the review queue; the caller hears that staff will confirm it."""
    offer = state.offer
    assert offer is not None
    chosen = offer.chosen
    assert chosen is not None
    params = {
        "slot_id": chosen.slot_id,
        "visit_reason": chosen.visit_reason.value,
        "start": chosen.start.isoformat(),
        "practitioner_id": chosen.practitioner_id,
        **({"appointment_id": offer.appointment_id} if offer.appointment_id else {}),
        **({"patient_id": state.patient_id} if state.patient_id else
           {**identity_params(state), **registration_params(state)}),
        **guard_params(offer.decided, offer.earlier_cs_requests),
    }
    queued = queue_for_review(state, WRITE_COMMAND_KINDS[offer.write], chosen.slot_id, params, reason,
                              resource_type="Appointment", slot_id=chosen.slot_id,
                              resource_ids=(offer.appointment_id,) if offer.appointment_id and state.patient_id else ())
    state, replies = reply(state, after_booking(GoLivePhase.READ_ONLY), practice, now,
                           visit_reason=chosen.visit_reason, appointment_time=chosen.start)
    state, moved = transition(state.model_copy(update={"offer": None}), CallPhase.REVIEW_QUEUED)
    return Step(state, outputs=(*queued, *replies, *moved))
