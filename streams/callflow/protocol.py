"""What one step of the call flow hands the shell: the next state, the work to run and the outputs to publish.

Outputs are the reply to the caller, audit records without their envelope (the shell adds ids, time, practice,
call and caller number) and review-queue commands. ``CallFlowError`` is the one exception the core raises:
an event that cannot belong to the call it names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from schemas.models import AuditAction, AuditOutcome, CommandKind, GuardAction
from streams.callflow.state import CallState, SentReply
from streams.callflow.work import Work


@dataclass(frozen=True, slots=True)
class ReplyOut:
    reply: SentReply


@dataclass(frozen=True, slots=True)
class AuditOut:
    """An audit record without the envelope (id, time, practice, call, caller number) the shell adds."""

    action: AuditAction
    outcome: AuditOutcome
    state_from: str | None = None
    state_to: str | None = None
    resource_type: str | None = None
    resource_ids: tuple[str, ...] = ()
    deep_link: str | None = None
    task_refs: tuple[str, ...] = ()
    guards_fired: tuple[str, ...] = ()
    command: CommandKind | None = None
    error_class: str | None = None
    latency_ms: float | None = None
    detail: dict[str, str] = field(default_factory=dict)
    transcript_ref: str | None = None
    guard_action: GuardAction | None = None
    dialogue_path: str | None = None
    slot_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReviewOut:
    """A write handed to the human review queue (a REVIEW_QUEUE Command record); params may hold PHI."""

    kind: CommandKind
    idempotency_key: str
    params: dict[str, str] = field(repr=False)


Output = ReplyOut | AuditOut | ReviewOut


@dataclass(frozen=True, slots=True)
class Step:
    """What to do next: persist ``state`` (None: delete the call), run ``work``, publish ``outputs``; or, with
    ``dropped``, nothing but the record of a dropped event (``dropped_audit``)."""

    state: CallState | None
    work: Work | None = None
    outputs: tuple[Output, ...] = ()
    dropped: DropReason | None = None


class DropReason(StrEnum):
    """Why an event was dropped unprocessed (AuditEvent.detail ``dropped``; the replay tool reads it)."""

    CALL_ENDED = "call_ended"
    """The call had already ended (e.g. a script replayed under the same call id)."""
    OUT_OF_ORDER = "out_of_order"
    """An older seq than the call's last event."""


DROPPED_DETAIL = "dropped"
"""The audit detail key naming a DropReason (the event's ``seq`` beside it)."""


class CallFlowError(ValueError):
    """An event that cannot belong to the call it names (the shell dead-letters it)."""
