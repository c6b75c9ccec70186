"""What the caller hears: closed reply templates rendered in the practice's time zone, with their audit record.

Reply (and audit) ids derive from the event they answer, so a redelivered event yields the very same reply
and consumers de-duplicate; the last reply is kept in the state so a redelivery re-sends it unchanged.
Interim replies (please hold) are sent while a turn's work still runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo
import uuid

from callstream.tenants import Practice
from guards import ReplyTemplate, ReplyValues, VisitReason, render_reply
from guards.replies import INTERIM_TEMPLATES
from schemas.models import AuditAction, AuditOutcome
from streams.callflow.protocol import AuditOut, Output, ReplyOut
from streams.callflow.state import CallState, SentReply
from streams.callflow.work import SlotChoice

REPLY_NAMESPACE = uuid.UUID("6b1f3c52-8f0e-4f6e-9d0a-3c0a8f0e5b11")
"""uuid5 namespace of reply and audit ids: a redelivered event yields the same ids, so consumers de-duplicate."""


def reply_id_for(event_id: str) -> str:
    """Deterministic ids: the same event processed twice produces the same reply (and audit) ids."""
    return str(uuid.uuid5(REPLY_NAMESPACE, f"{event_id}:reply"))


def reply(
    state: CallState,
    template: ReplyTemplate,
    practice: Practice,
    now: datetime,
    *,
    visit_reason: VisitReason | None = None,
    slots: Sequence[SlotChoice] = (),
    appointment_time: datetime | None = None,
    escalated: bool = False,
) -> tuple[CallState, tuple[Output, ...]]:
    """Render a closed template (times in the practice's zone) in reply to the event being processed,
    and remember it so a redelivery of that event gets the very same reply."""
    zone = ZoneInfo(practice.timezone)
    values = ReplyValues(
        visit_reason=visit_reason,
        slot_starts=tuple(slot.start.astimezone(zone) for slot in slots),
        appointment_time=appointment_time.astimezone(zone) if appointment_time is not None else None,
    )
    reply = SentReply(
        reply_id=reply_id_for(state.last_event_id),
        in_reply_to=state.last_event_id,
        template=template,
        text=render_reply(template, values),
        offered_slots=tuple(slots),
        escalated=escalated,
        created_at=now,
    )
    detail = {"template": template.value, "phase": practice.phase.value}
    if visit_reason is not None:  # lets the per-call record rebuild what the caller heard (guards.replies.outline_reply)
        detail["visit_reason"] = visit_reason.value
    audit = AuditOut(action=AuditAction.REPLY_SENT, outcome=AuditOutcome.SUCCESS, detail=detail)
    return state.model_copy(update={"last_reply": reply}), (ReplyOut(reply), audit)


def awaits_reply(state: CallState) -> bool:
    """Whether the caller waits on the turn's answer: a request or a chosen slot is being handled. A chart
    lookup right after identification runs while the conversation goes on, and needs no hold message."""
    return state.pending is not None or (state.offer is not None and state.offer.chosen is not None)


def interim_reply(state: CallState, template: ReplyTemplate, practice: Practice, now: datetime) -> tuple[Output, ...]:
    """A reply sent while the turn's work still runs (``INTERIM_TEMPLATES``), with its audit record.

    Its id derives from the event and the template, apart from the final reply's, so a redelivered event
    repeats it rather than adding one. It is not remembered as the call's last reply: a redelivery of a
    finished turn re-sends the final answer only."""
    return interim_reply_for(state.last_event_id, template, practice, now)


def interim_reply_for(event_id: str, template: ReplyTemplate, practice: Practice, now: datetime) -> tuple[Output, ...]:
    """``interim_reply`` for an event not yet run (it waits behind its call's previous event)."""
    if template not in INTERIM_TEMPLATES:
        raise ValueError(f"{template.value} is not an interim reply")
    reply = SentReply(
        reply_id=str(uuid.uuid5(REPLY_NAMESPACE, f"{event_id}:{template.value}")),
        in_reply_to=event_id,
        template=template,
        text=render_reply(template, ReplyValues()),
        escalated=False,
        created_at=now,
    )
    audit = AuditOut(
        action=AuditAction.REPLY_SENT,
        outcome=AuditOutcome.SUCCESS,
        detail={"template": template.value, "phase": practice.phase.value, "interim": "true"},
    )
    return ReplyOut(reply), audit
