"""The closed set of things the voice agent may say, and the only way to fill them in.

Every reply is a fixed text with named placeholders. Placeholders are filled from `ReplyValues`,
whose fields are typed (a visit reason, tz-aware times): no caller words and no chart flag can
reach a reply. Medication replies say the request went to the provider's care team; no template
promises a refill, gives a timeline or a quantity, or mentions a compliance flag (tests/guards/test_replies.py).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from string import Formatter
from typing import Annotated

from pydantic import AwareDatetime, Field

from guards.errors import GuardInputError
from guards.model import FrozenModel, GoLivePhase, VisitReason


class ReplyTemplate(StrEnum):
    """Template names (the Reply record's `template` field); the text is `template.text`."""

    ASK_IDENTITY = "ASK_IDENTITY"
    PLEASE_HOLD = "PLEASE_HOLD"
    ASK_VISIT_REASON = "ASK_VISIT_REASON"
    CLARIFY = "CLARIFY"
    MEDICATION_REQUEST_FORWARDED = "MEDICATION_REQUEST_FORWARDED"
    MEDICATION_REQUEST_FORWARDED_AFTER_HOURS = "MEDICATION_REQUEST_FORWARDED_AFTER_HOURS"
    MEDICATION_REQUEST_FORWARDED_NEED_IDENTITY = "MEDICATION_REQUEST_FORWARDED_NEED_IDENTITY"
    ROUTED_TO_CARE_TEAM = "ROUTED_TO_CARE_TEAM"
    ROUTED_TO_CARE_TEAM_AFTER_HOURS = "ROUTED_TO_CARE_TEAM_AFTER_HOURS"
    ROUTED_OFFER_AGREEMENT_REVIEW = "ROUTED_OFFER_AGREEMENT_REVIEW"
    RESULTS_NOT_SHARED_BY_PHONE = "RESULTS_NOT_SHARED_BY_PHONE"
    MESSAGE_FORWARDED = "MESSAGE_FORWARDED"
    MESSAGE_FORWARDED_AFTER_HOURS = "MESSAGE_FORWARDED_AFTER_HOURS"
    OFFER_SLOTS = "OFFER_SLOTS"
    OFFER_SLOTS_STAFF_WILL_CONFIRM = "OFFER_SLOTS_STAFF_WILL_CONFIRM"
    NEW_PATIENT_CONSULT_OFFER = "NEW_PATIENT_CONSULT_OFFER"
    NEW_PATIENT_CONSULT_OFFER_STAFF_WILL_CONFIRM = "NEW_PATIENT_CONSULT_OFFER_STAFF_WILL_CONFIRM"
    NO_SLOTS_FOUND = "NO_SLOTS_FOUND"
    OFFER_SLOTS_MEDICATION_FORWARDED = "OFFER_SLOTS_MEDICATION_FORWARDED"
    """A booking asked for together with a refill: the refill went to the provider, the booking goes on."""
    OFFER_SLOTS_MEDICATION_FORWARDED_STAFF_WILL_CONFIRM = "OFFER_SLOTS_MEDICATION_FORWARDED_STAFF_WILL_CONFIRM"
    NO_SLOTS_MEDICATION_FORWARDED = "NO_SLOTS_MEDICATION_FORWARDED"
    OFFER_SLOTS_MEDICATION_FORWARDED_AFTER_HOURS = "OFFER_SLOTS_MEDICATION_FORWARDED_AFTER_HOURS"
    """The same after hours: the office is closed, the request is recorded, emergencies dial 911."""
    OFFER_SLOTS_MEDICATION_FORWARDED_STAFF_WILL_CONFIRM_AFTER_HOURS = (
        "OFFER_SLOTS_MEDICATION_FORWARDED_STAFF_WILL_CONFIRM_AFTER_HOURS"
    )
    NO_SLOTS_MEDICATION_FORWARDED_AFTER_HOURS = "NO_SLOTS_MEDICATION_FORWARDED_AFTER_HOURS"
    BOOKING_CONFIRMED = "BOOKING_CONFIRMED"
    BOOKING_QUEUED_FOR_REVIEW = "BOOKING_QUEUED_FOR_REVIEW"
    CANCELLATION_CONFIRMED = "CANCELLATION_CONFIRMED"
    CHANGE_STAFF_WILL_CONFIRM = "CHANGE_STAFF_WILL_CONFIRM"
    INTAKE_LINK_SENT = "INTAKE_LINK_SENT"
    ASK_NEW_PATIENT_DETAILS = "ASK_NEW_PATIENT_DETAILS"
    """A new patient chose a slot: their record is set up first (the voice agent collects address, insurance and
    preferred pharmacy: CallerIdentified.registration; the reply itself names no pharmacy, as no reply does)."""
    BOOKING_CONFIRMED_INTAKE_SENT = "BOOKING_CONFIRMED_INTAKE_SENT"
    """Booked, and the confirmation went to the patient with the practice's intake link (SMS or e-mail)."""
    INTAKE_STAFF_WILL_SEND = "INTAKE_STAFF_WILL_SEND"
    TRANSFER_TO_STAFF = "TRANSFER_TO_STAFF"
    """The call could not be handled at all (its event was dead-lettered): a person takes over."""
    STILL_WORKING_STAFF_WILL_FOLLOW_UP = "STILL_WORKING_STAFF_WILL_FOLLOW_UP"
    """The turn's budget passed while a ModMed write was still under way: honest, and true whatever its
    outcome (the write lands, or its failure becomes a review-queue item staff follow up)."""

    @property
    def text(self) -> str:
        """The fixed wording, with {placeholders}."""
        return _TEXTS[self]

    @property
    def placeholders(self) -> frozenset[str]:
        """Names of the placeholders the text needs."""
        return frozenset(name for _, name, _, _ in Formatter().parse(_TEXTS[self]) if name)


INTERIM_TEMPLATES = frozenset({ReplyTemplate.PLEASE_HOLD, ReplyTemplate.STILL_WORKING_STAFF_WILL_FOLLOW_UP})
"""Replies a slow turn gets while its work still runs; the turn's final reply follows them (docs/events.md)."""

_CLOSED_OFFICE = "The office is closed right now. "
_EMERGENCY = " If this is a medical emergency, please hang up and dial 911."
_ANYTHING_ELSE = " Is there anything else I can help you with?"
_PROVIDER_REVIEWS = "Medication requests are reviewed by your provider"

_TEXTS: dict[ReplyTemplate, str] = {
    ReplyTemplate.ASK_IDENTITY: "I can help with that. First, may I have your full name and date of birth?",
    ReplyTemplate.PLEASE_HOLD: "Thank you. One moment while I pull up your information.",
    ReplyTemplate.STILL_WORKING_STAFF_WILL_FOLLOW_UP: (
        "I'm sorry, our system is slower than usual right now. Your request is recorded with the details "
        "of this call, and our staff will follow up with you."
    ),
    ReplyTemplate.ASK_VISIT_REASON: (
        "Which visit is this for? For example, a follow-up, a consultation, or a procedure."
    ),
    ReplyTemplate.CLARIFY: (
        "I'm sorry, I didn't quite catch that. I can help you schedule, change or cancel a visit, "
        "or pass a message to the care team. What would you like to do?"
    ),
    ReplyTemplate.MEDICATION_REQUEST_FORWARDED: (
        "Thank you. I've sent your request to your provider's care team with the details of this call. "
        f"{_PROVIDER_REVIEWS}, and the care team will reach out to you about next steps.{_ANYTHING_ELSE}"
    ),
    ReplyTemplate.MEDICATION_REQUEST_FORWARDED_AFTER_HOURS: (
        f"Thank you. {_CLOSED_OFFICE}I've recorded your request for your provider's care team with the "
        f"details of this call. {_PROVIDER_REVIEWS}, and the care team will reach out to you about next "
        f"steps.{_EMERGENCY}"
    ),
    ReplyTemplate.MEDICATION_REQUEST_FORWARDED_NEED_IDENTITY: (
        f"I've noted your request for your provider's care team. {_PROVIDER_REVIEWS}. "
        "So the team can find your chart, may I have your full name and date of birth?"
    ),
    ReplyTemplate.ROUTED_TO_CARE_TEAM: (
        "I'm not able to take care of that over the phone, so I've passed your request to the care team "
        f"with the details of this call. They will reach out to you about next steps.{_ANYTHING_ELSE}"
    ),
    ReplyTemplate.ROUTED_TO_CARE_TEAM_AFTER_HOURS: (
        f"{_CLOSED_OFFICE}I'm not able to take care of that over the phone, so I've recorded your request "
        f"for the care team with the details of this call.{_EMERGENCY}"
    ),
    ReplyTemplate.ROUTED_OFFER_AGREEMENT_REVIEW: (
        "I'm not able to book that visit over the phone, so I've passed your request to the care team. "
        "If you'd like, I can schedule an in-person agreement review visit with your provider instead."
    ),
    ReplyTemplate.RESULTS_NOT_SHARED_BY_PHONE: (
        "I'm not able to share test results or records over the phone. I've passed your request to the "
        f"care team, and they will reach out to you.{_ANYTHING_ELSE}"
    ),
    ReplyTemplate.MESSAGE_FORWARDED: (
        "Thank you. I've passed your message to the right team at the practice with the details of this "
        f"call, and they will reach out to you.{_ANYTHING_ELSE}"
    ),
    ReplyTemplate.MESSAGE_FORWARDED_AFTER_HOURS: (
        f"Thank you. {_CLOSED_OFFICE}I've recorded your message for the right team at the practice."
        f"{_EMERGENCY}"
    ),
    ReplyTemplate.OFFER_SLOTS: (
        "I found these openings for your {visit_label}: {slot_list}. Which one works best for you?"
    ),
    ReplyTemplate.OFFER_SLOTS_STAFF_WILL_CONFIRM: (
        "I found these openings for your {visit_label}: {slot_list}. Once you choose one, our staff "
        "will confirm the appointment with you."
    ),
    ReplyTemplate.NEW_PATIENT_CONSULT_OFFER: (
        "New patients start with a consultation with one of our providers. I found these openings for "
        "your {visit_label}: {slot_list}. Which one works best for you?"
    ),
    ReplyTemplate.NEW_PATIENT_CONSULT_OFFER_STAFF_WILL_CONFIRM: (
        "New patients start with a consultation with one of our providers. I found these openings for "
        "your {visit_label}: {slot_list}. Once you choose one, our staff will confirm the appointment with you."
    ),
    ReplyTemplate.NO_SLOTS_FOUND: (
        "I don't see an opening for your {visit_label} in that time frame. Would you like me to check other dates?"
    ),
    ReplyTemplate.OFFER_SLOTS_MEDICATION_FORWARDED: (
        "I've sent your medication request to your provider's care team with the details of this call. "
        f"{_PROVIDER_REVIEWS}. For your {{visit_label}}, I found these openings: {{slot_list}}. "
        "Which one works best for you?"
    ),
    ReplyTemplate.OFFER_SLOTS_MEDICATION_FORWARDED_STAFF_WILL_CONFIRM: (
        "I've sent your medication request to your provider's care team with the details of this call. "
        f"{_PROVIDER_REVIEWS}. For your {{visit_label}}, I found these openings: {{slot_list}}. "
        "Once you choose one, our staff will confirm the appointment with you."
    ),
    ReplyTemplate.NO_SLOTS_MEDICATION_FORWARDED: (
        "I've sent your medication request to your provider's care team with the details of this call. "
        f"{_PROVIDER_REVIEWS}. I don't see an opening for your {{visit_label}} in that time frame. "
        "Would you like me to check other dates?"
    ),
    ReplyTemplate.OFFER_SLOTS_MEDICATION_FORWARDED_AFTER_HOURS: (
        f"{_CLOSED_OFFICE}I've recorded your medication request for your provider's care team with the details "
        f"of this call. {_PROVIDER_REVIEWS}.{_EMERGENCY} For your {{visit_label}}, I found these openings: "
        "{slot_list}. Which one works best for you?"
    ),
    ReplyTemplate.OFFER_SLOTS_MEDICATION_FORWARDED_STAFF_WILL_CONFIRM_AFTER_HOURS: (
        f"{_CLOSED_OFFICE}I've recorded your medication request for your provider's care team with the details "
        f"of this call. {_PROVIDER_REVIEWS}.{_EMERGENCY} For your {{visit_label}}, I found these openings: "
        "{slot_list}. Once you choose one, our staff will confirm the appointment with you."
    ),
    ReplyTemplate.NO_SLOTS_MEDICATION_FORWARDED_AFTER_HOURS: (
        f"{_CLOSED_OFFICE}I've recorded your medication request for your provider's care team with the details "
        f"of this call. {_PROVIDER_REVIEWS}.{_EMERGENCY} I don't see an opening for your {{visit_label}} in that "
        "time frame. Would you like me to check other dates?"
    ),
    ReplyTemplate.BOOKING_CONFIRMED: (
        f"You're all set. Your {{visit_label}} is booked for {{appointment_time}}.{_ANYTHING_ELSE}"
    ),
    ReplyTemplate.BOOKING_QUEUED_FOR_REVIEW: (
        "I've noted {appointment_time} for your {visit_label}. Our staff will confirm the appointment with you."
    ),
    ReplyTemplate.CANCELLATION_CONFIRMED: (
        "Your {visit_label} on {appointment_time} is cancelled. Would you like to schedule a new time?"
    ),
    ReplyTemplate.CHANGE_STAFF_WILL_CONFIRM: "I've noted your request, and our staff will confirm the change with you.",
    ReplyTemplate.INTAKE_LINK_SENT: "I'm sending you a secure link to complete your intake forms before your visit.",
    ReplyTemplate.ASK_NEW_PATIENT_DETAILS: (
        "Since this is your first visit with us, I'll set up your record before I book your {visit_label}. "
        "I need a few more details for it, starting with your home address and your insurance card."
    ),
    ReplyTemplate.BOOKING_CONFIRMED_INTAKE_SENT: (
        "You're all set. Your {visit_label} is booked for {appointment_time}. I've sent you the confirmation with "
        f"a secure link to complete your intake forms before your visit.{_ANYTHING_ELSE}"
    ),
    ReplyTemplate.INTAKE_STAFF_WILL_SEND: (
        "I've noted your request, and our staff will send you a secure link to complete your intake forms."
    ),
    ReplyTemplate.TRANSFER_TO_STAFF: (
        "I'm sorry, I'm not able to help with that over the phone. Please stay on the line while I transfer "
        f"you to a member of our staff.{_EMERGENCY}"
    ),
}

VISIT_LABELS: dict[VisitReason, str] = {
    VisitReason.NEW_PATIENT_CONSULT: "new patient consultation",
    VisitReason.FOLLOW_UP: "follow-up visit",
    VisitReason.MEDICATION_MANAGEMENT: "medication management visit",
    VisitReason.AGREEMENT_REVIEW: "agreement review visit",
    VisitReason.ESI: "epidural steroid injection",
    VisitReason.FACET_INJECTION: "facet joint injection",
    VisitReason.RFA: "radiofrequency ablation",
    VisitReason.SCS_TRIAL: "spinal cord stimulator trial",
    VisitReason.KYPHOPLASTY: "kyphoplasty",
    VisitReason.TRIGGER_POINT: "trigger point injection",
}
"""How each visit reason is spoken: the only words {visit_label} can become."""

_AFTER_HOURS_VARIANT: dict[ReplyTemplate, ReplyTemplate] = {
    ReplyTemplate.MEDICATION_REQUEST_FORWARDED: ReplyTemplate.MEDICATION_REQUEST_FORWARDED_AFTER_HOURS,
    ReplyTemplate.ROUTED_TO_CARE_TEAM: ReplyTemplate.ROUTED_TO_CARE_TEAM_AFTER_HOURS,
    ReplyTemplate.RESULTS_NOT_SHARED_BY_PHONE: ReplyTemplate.ROUTED_TO_CARE_TEAM_AFTER_HOURS,
    ReplyTemplate.MESSAGE_FORWARDED: ReplyTemplate.MESSAGE_FORWARDED_AFTER_HOURS,
    ReplyTemplate.OFFER_SLOTS_MEDICATION_FORWARDED: ReplyTemplate.OFFER_SLOTS_MEDICATION_FORWARDED_AFTER_HOURS,
    ReplyTemplate.OFFER_SLOTS_MEDICATION_FORWARDED_STAFF_WILL_CONFIRM: (
        ReplyTemplate.OFFER_SLOTS_MEDICATION_FORWARDED_STAFF_WILL_CONFIRM_AFTER_HOURS
    ),
    ReplyTemplate.NO_SLOTS_MEDICATION_FORWARDED: ReplyTemplate.NO_SLOTS_MEDICATION_FORWARDED_AFTER_HOURS,
}
"""After hours a forwarded request says the office is closed and points emergencies to 911."""

_STAFF_WILL_CONFIRM_VARIANT: dict[ReplyTemplate, ReplyTemplate] = {
    ReplyTemplate.OFFER_SLOTS: ReplyTemplate.OFFER_SLOTS_STAFF_WILL_CONFIRM,
    ReplyTemplate.NEW_PATIENT_CONSULT_OFFER: ReplyTemplate.NEW_PATIENT_CONSULT_OFFER_STAFF_WILL_CONFIRM,
    ReplyTemplate.CANCELLATION_CONFIRMED: ReplyTemplate.CHANGE_STAFF_WILL_CONFIRM,
    ReplyTemplate.INTAKE_LINK_SENT: ReplyTemplate.INTAKE_STAFF_WILL_SEND,
    ReplyTemplate.OFFER_SLOTS_MEDICATION_FORWARDED: ReplyTemplate.OFFER_SLOTS_MEDICATION_FORWARDED_STAFF_WILL_CONFIRM,
}
"""In the read-only phase nothing is written while the caller waits, so the reply says staff will confirm."""

_SLOT_OFFERS = frozenset(
    {
        ReplyTemplate.OFFER_SLOTS,
        ReplyTemplate.OFFER_SLOTS_STAFF_WILL_CONFIRM,
        ReplyTemplate.NEW_PATIENT_CONSULT_OFFER,
        ReplyTemplate.NEW_PATIENT_CONSULT_OFFER_STAFF_WILL_CONFIRM,
    }
)
_MEDICATION_AND_SLOT_OFFERS = frozenset(
    {ReplyTemplate.OFFER_SLOTS_MEDICATION_FORWARDED, ReplyTemplate.OFFER_SLOTS_MEDICATION_FORWARDED_STAFF_WILL_CONFIRM}
)
_MEDICATION_AND_SLOT_OFFERS_AFTER_HOURS = frozenset(
    {ReplyTemplate.OFFER_SLOTS_MEDICATION_FORWARDED_AFTER_HOURS,
     ReplyTemplate.OFFER_SLOTS_MEDICATION_FORWARDED_STAFF_WILL_CONFIRM_AFTER_HOURS}
)


def adapt_reply(template: ReplyTemplate, *, after_hours: bool, writes_queued: bool) -> ReplyTemplate:
    """The variant of `template` that tells the truth about office hours and the review queue."""
    if writes_queued:
        template = _STAFF_WILL_CONFIRM_VARIANT.get(template, template)
    if after_hours:
        template = _AFTER_HOURS_VARIANT.get(template, template)
    return template


def after_slot_search(template: ReplyTemplate, *, slots_found: int) -> ReplyTemplate:
    """What to say once SEARCH_SLOTS has run: the offer the guard chose, or NO_SLOTS_FOUND if nothing fits
    (still saying where a medication request asked for in the same breath went)."""
    if template in _SLOT_OFFERS and slots_found == 0:
        return ReplyTemplate.NO_SLOTS_FOUND
    if template in _MEDICATION_AND_SLOT_OFFERS and slots_found == 0:
        return ReplyTemplate.NO_SLOTS_MEDICATION_FORWARDED
    if template in _MEDICATION_AND_SLOT_OFFERS_AFTER_HOURS and slots_found == 0:
        return ReplyTemplate.NO_SLOTS_MEDICATION_FORWARDED_AFTER_HOURS
    return template


def after_booking(phase: GoLivePhase) -> ReplyTemplate:
    """What to say once the chosen slot is booked (or, in the read-only phase, queued for staff)."""
    if phase is GoLivePhase.READ_ONLY:
        return ReplyTemplate.BOOKING_QUEUED_FOR_REVIEW
    return ReplyTemplate.BOOKING_CONFIRMED


class ReplyValues(FrozenModel):
    """The only values a placeholder can take: typed, from the schedule, never from the caller."""

    visit_reason: VisitReason | None = None
    slot_starts: Annotated[tuple[AwareDatetime, ...], Field(max_length=5)] = ()
    """Start times of the offered slots, in the practice's time zone (they are spoken in their own zone)."""
    appointment_time: AwareDatetime | None = None


_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)


def spoken_time(moment: datetime) -> str:
    """'Tuesday, March 3 at 9:30 AM' in the moment's own zone: absolute, never 'today' or 'tomorrow'."""
    hour = moment.hour % 12 or 12
    meridiem = "AM" if moment.hour < 12 else "PM"
    day = f"{_WEEKDAYS[moment.weekday()]}, {_MONTHS[moment.month - 1]} {moment.day}"
    return f"{day} at {hour}:{moment.minute:02d} {meridiem}"


def _spoken_list(items: list[str]) -> str:
    """'A', 'A or B', 'A, B, or C'."""
    if len(items) <= 2:
        return " or ".join(items)
    return f"{', '.join(items[:-1])}, or {items[-1]}"


def _placeholder_value(name: str, values: ReplyValues) -> str | None:
    if name == "visit_label" and values.visit_reason is not None:
        return VISIT_LABELS[values.visit_reason]
    if name == "slot_list" and values.slot_starts:
        return _spoken_list([spoken_time(start) for start in values.slot_starts])
    if name == "appointment_time" and values.appointment_time is not None:
        return spoken_time(values.appointment_time)
    return None


def render_reply(template: ReplyTemplate, values: ReplyValues) -> str:
    """The text to speak.

    Raises:
        GuardInputError: a placeholder the template needs has no value.
    """
    filled: dict[str, str] = {}
    for name in template.placeholders:
        value = _placeholder_value(name, values)
        if value is None:
            raise GuardInputError(f"{template} needs a value for {{{name}}}")
        filled[name] = value
    return template.text.format_map(filled)


UNKNOWN_VALUE_MARKERS: dict[str, str] = {
    "visit_label": "[visit]",
    "slot_list": "[the offered times]",
    "appointment_time": "[the appointment time]",
}
"""What `outline_reply` puts where a value is not known to the reader (an audit record keeps no times)."""


def outline_reply(template: ReplyTemplate, values: ReplyValues) -> tuple[str, tuple[str, ...]]:
    """The text as spoken, with a bracketed marker for each placeholder whose value ``values`` lacks, and the
    names of those placeholders: what a reviewer can rebuild of a reply from its audit record."""
    filled: dict[str, str] = {}
    unknown: list[str] = []
    for name in sorted(template.placeholders):
        value = _placeholder_value(name, values)
        if value is None:
            unknown.append(name)
        filled[name] = value if value is not None else UNKNOWN_VALUE_MARKERS[name]
    return template.text.format_map(filled), tuple(unknown)
