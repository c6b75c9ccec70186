"""The public entry point: one pure, synchronous decision per recognised intent."""

from __future__ import annotations

from datetime import datetime

from guards.decision import Decision
from guards.draft import Draft, gather_facts
from guards.errors import GuardInputError
from guards.model import CallContext, ChartFlags, GoLivePhase, IntentRequest
from guards.rules import RULES


def decide(
    ctx: CallContext, request: IntentRequest, chart: ChartFlags | None, phase: GoLivePhase, now: datetime
) -> Decision:
    """Decide what happens next in a call: outcome, commands, tasks, reply and the guards that fired.

    `chart` is None until the patient's compliance flags are read (a new patient has none).
    `now` is passed in, never read, and must carry a zone: the practice's own zone gives the right
    calendar day for agreement renewal dates.

    Raises:
        GuardInputError: `now` has no zone, or flags are given for a caller matched to no chart.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise GuardInputError("now must be timezone-aware")
    if chart is not None and ctx.patient_id is None and not ctx.is_new_patient:
        raise GuardInputError("compliance flags given for a call with no matched patient")
    facts = gather_facts(ctx, request, chart, phase, now.date())
    draft = Draft(facts)
    for rule in RULES:
        rule(facts, draft)
    return draft.to_decision()
