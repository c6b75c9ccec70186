"""The audit records of a call, built in one place: the contract practices reconcile against.

Every phase change, ModMed or EMA read and write, guard hit, bypass attempt, controlled-substance escalation,
patient message, dropped event and purge is recorded with a closed vocabulary (``schemas.models``), never
with the caller's words or other PHI.
"""

from __future__ import annotations

from collections.abc import Iterable

from guards import Decision, GuardName, Intent, TaskAudience, VisitReason, effects
from schemas.models import AuditAction, AuditOutcome, CommandKind, CommandRoute, GuardAction
from streams.callflow.protocol import DROPPED_DETAIL, AuditOut, DropReason, Output
from streams.callflow.state import CallPhase, CallState, PendingIntent
from streams.callflow.work import SendIntake

_CONTROLLED_SUBSTANCE_GUARDS = frozenset(
    {GuardName.REFILL_ESCALATES_TO_PROVIDER, GuardName.CONTROLLED_SUBSTANCE_ESCALATES}
)


def dialogue_path(intent: Intent | str, visit_reason: VisitReason | None = None) -> str:
    """The dialogue path a guard acted on, as audited: the intent, with the visit reason when one is set."""
    name = intent.value if isinstance(intent, Intent) else intent
    return f"{name}/{visit_reason.value}" if visit_reason is not None else name


def transition(state: CallState, phase: CallPhase) -> tuple[CallState, tuple[Output, ...]]:
    """Move the call to ``phase`` with its CALL_STATE_TRANSITION record; staying in the same phase records nothing."""
    if state.phase is phase:
        return state, ()
    audit = AuditOut(
        action=AuditAction.CALL_STATE_TRANSITION,
        outcome=AuditOutcome.SUCCESS,
        state_from=state.phase.value,
        state_to=phase.value,
        transcript_ref=state.transcript_ref,
    )
    return state.model_copy(update={"phase": phase}), (audit,)


def dropped_audit(state: CallState, seq: int, reason: DropReason) -> AuditOut:
    """The record of an event dropped unprocessed: the call's phase unchanged, BLOCKED, why and the event's seq."""
    return AuditOut(
        action=AuditAction.CALL_STATE_TRANSITION,
        outcome=AuditOutcome.BLOCKED,
        state_from=state.phase.value,
        state_to=state.phase.value,
        detail={DROPPED_DETAIL: reason.value, "seq": str(seq)},
    )


def expiry_audit(state: CallState) -> AuditOut:
    """The audit record of a call the TTL timer purges."""
    return AuditOut(
        action=AuditAction.CALL_STATE_TRANSITION,
        outcome=AuditOutcome.SUCCESS,
        state_from=state.phase.value,
        state_to="expired",
    )


def read_audit(resource_type: str, ids: Iterable[str], route: CommandRoute, latency_ms: float, command: CommandKind,
               deep_link: str | None = None, **detail: str) -> AuditOut:
    """A successful ModMed (FHIR) or EMA read: what was read (at most 100 ids), the route and its latency."""
    return AuditOut(
        action=AuditAction.EMA_READ if route is CommandRoute.EMA else AuditAction.FHIR_READ,
        outcome=AuditOutcome.SUCCESS,
        resource_type=resource_type,
        resource_ids=tuple(ids)[:100],
        deep_link=deep_link,
        command=command,
        latency_ms=latency_ms,
        detail={"route": route.value, **detail},
    )


def decision_audits(decision: Decision, pending: PendingIntent) -> Iterable[AuditOut]:
    """One GUARD_HIT record per guard that fired, with what it truly did (``guard_action``) and the dialogue path
    it acted on: BLOCKED only for a guard that stopped the request, never for one that merely noted or asked."""
    path = dialogue_path(pending.intent, pending.visit_reason or decision.visit_reason)
    detail = {"intent": pending.intent.value, "template": decision.reply.value}
    if decision.visit_reason is not None:
        detail["visit_reason"] = decision.visit_reason.value
    for guard in decision.guards_fired:
        if guard is GuardName.BYPASS_ATTEMPT_RECORDED:
            continue  # one BYPASS_ATTEMPT record per signal below
        yield AuditOut(
            action=AuditAction.GUARD_HIT,
            outcome=_guard_outcome(guard, decision, pending),
            guards_fired=(guard.value,),
            guard_action=effects.guard_action(guard),
            dialogue_path=path,
            detail=detail,
        )
    for signal in decision.bypass_signals:
        # The attempt itself is refused: nothing a caller says changes what the guards decide.
        yield AuditOut(
            action=AuditAction.BYPASS_ATTEMPT,
            outcome=AuditOutcome.BLOCKED,
            guards_fired=(GuardName.BYPASS_ATTEMPT_RECORDED.value,),
            guard_action=GuardAction.BLOCKED,
            dialogue_path=path,
            detail={"signal": signal.value, "intent": pending.intent.value},
        )


def _guard_outcome(guard: GuardName, decision: Decision, pending: PendingIntent) -> AuditOutcome:
    """BLOCKED when this guard stopped the caller's request (guards.effects), QUEUED for the read-only phase's
    queueing, SUCCESS for everything else."""
    if effects.stopped_request(guard, decision, pending.intent):
        return AuditOutcome.BLOCKED
    if guard is GuardName.READ_ONLY_WRITES_QUEUED:
        return AuditOutcome.QUEUED
    return AuditOutcome.SUCCESS


def escalation_audit(state: CallState) -> Iterable[AuditOut]:
    """The controlled-substance sentinel: one record per request, SUCCESS only once a provider task exists
    (QUEUED when it waits in the review queue); FAILURE would mean a request slipped past the provider."""
    turn = state.turn
    pending = state.pending
    assert turn is not None and pending is not None
    if not turn.counts_cs_request:
        return
    outcome = {"done": AuditOutcome.SUCCESS, "queued": AuditOutcome.QUEUED}.get(turn.provider_escalated,
                                                                               AuditOutcome.FAILURE)
    yield AuditOut(
        action=AuditAction.ESCALATION,
        outcome=outcome,
        guards_fired=tuple(g.value for g in turn.decision.guards_fired if g in _CONTROLLED_SUBSTANCE_GUARDS),
        error_class=None if outcome is not AuditOutcome.FAILURE else "ControlledSubstanceNotEscalated",
        detail={"trigger": "controlled_substance", "escalation_kind": TaskAudience.PROVIDER.value,
                "intent": pending.intent.value},
    )


def write_audit(route: CommandRoute, outcome: AuditOutcome, command: CommandKind, resource_type: str,
                ids: tuple[str, ...], latency_ms: float, deep_link: str | None = None,
                error_class: str | None = None, task_refs: tuple[str, ...] = (), slot_id: str | None = None,
                transcript_ref: str | None = None, **detail: str) -> AuditOut:
    """A ModMed (FHIR) or EMA write, succeeded or failed: what it wrote, the link staff open it with, its route."""
    return AuditOut(
        action=AuditAction.EMA_WRITE if route is CommandRoute.EMA else AuditAction.FHIR_WRITE,
        outcome=outcome,
        resource_type=resource_type,
        resource_ids=ids,
        deep_link=deep_link,
        task_refs=task_refs,
        command=command,
        error_class=error_class,
        latency_ms=latency_ms,
        detail={"route": route.value, **detail},
        slot_id=slot_id,
        transcript_ref=transcript_ref,
    )


def intake_audit(sent: SendIntake, outcome: AuditOutcome, latency_ms: float, error_class: str | None = None) -> AuditOut:
    """Channel and visit only: the number or address it went to is PHI and never in an audit payload."""
    return AuditOut(action=AuditAction.PATIENT_MESSAGE, outcome=outcome, resource_type="Appointment",
                    resource_ids=(sent.appointment_id,), command=CommandKind.CREATE_DOCUMENT_REFERENCE,
                    error_class=error_class, latency_ms=latency_ms,
                    detail={"channel": sent.channel, "message": "booking_confirmation_intake_link",
                            "visit_reason": sent.visit_reason.value})
