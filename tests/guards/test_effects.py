"""What a guard that fired did to the request (guards.effects): the audit's BLOCKED is kept for a guard that
stopped it, never for one that noted, asked or escalated beside the request."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from guards import CallContext, ChartFlags, GoLivePhase, GuardName, Intent, IntentRequest, Outcome, VisitReason, decide
from guards.effects import BLOCKING_GUARDS, guard_action, stopped_request
from guards.model import GuardAction

NOW = datetime(2025, 3, 3, 10, 30, tzinfo=timezone(timedelta(hours=-5)))
CALLER = CallContext(call_id="call-1", practice_id="pain-atl", caller_identified=True, patient_id="pat-77")
ABERRANT = ChartFlags(chronic_opioid=True, aberrant_uds=True)


def test_a_blocking_guard_stops_the_request_and_a_noting_guard_stops_nothing() -> None:
    assert {guard_action(g) for g in BLOCKING_GUARDS} <= {GuardAction.BLOCKED, GuardAction.ROUTED}
    assert guard_action(GuardName.MEDICATION_WRITE_REFUSED) is GuardAction.BLOCKED
    assert guard_action(GuardName.REFILL_ESCALATES_TO_PROVIDER) is GuardAction.ESCALATED
    assert guard_action(GuardName.CALLER_IDENTIFICATION_REQUIRED) is GuardAction.NOTED
    noted = decide(CALLER, IntentRequest(intent=Intent.GENERAL_QUESTION), None, GoLivePhase.WRITE, NOW)
    assert not any(stopped_request(g, noted, Intent.GENERAL_QUESTION) for g in noted.guards_fired)


def test_an_aberrant_uds_flag_stops_only_a_controlled_visit_it_routed() -> None:
    visit = IntentRequest(intent=Intent.BOOK_APPOINTMENT, visit_reason=VisitReason.MEDICATION_MANAGEMENT)
    routed = decide(CALLER, visit, ChartFlags(aberrant_uds=True), GoLivePhase.WRITE, NOW)
    assert routed.outcome is Outcome.BLOCK_AND_ROUTE and GuardName.ABERRANT_UDS_ROUTES in routed.guards_fired
    assert stopped_request(GuardName.ABERRANT_UDS_ROUTES, routed, Intent.BOOK_APPOINTMENT)
    escalated = decide(CALLER, visit, ABERRANT, GoLivePhase.WRITE, NOW)  # the escalation outranks the routing
    assert escalated.outcome is Outcome.ESCALATE and GuardName.ABERRANT_UDS_ROUTES in escalated.guards_fired
    assert not stopped_request(GuardName.ABERRANT_UDS_ROUTES, escalated, Intent.BOOK_APPOINTMENT)
    assert guard_action(GuardName.ABERRANT_UDS_ROUTES) is GuardAction.ROUTED
