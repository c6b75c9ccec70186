"""What a guard that fired did to the caller's request: the GUARD_HIT record's guard_action and outcome.

The audit trail practices reconcile against says BLOCKED only for a guard that stopped the request, never for
one that merely noted or asked; which guard does what is a rule, so it lives here beside the rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from guards.decision import Decision
from guards.model import GuardAction, GuardName, Intent, Outcome

BLOCKING_GUARDS: frozenset[GuardName] = frozenset({
    GuardName.AGREEMENT_BLOCKS_CONTROLLED_VISIT,
    GuardName.AGREEMENT_REVIEW_GATED,
    GuardName.PHONE_RESTRICTION_HONOURED,
    GuardName.PROTECTED_RESULTS_WITHHELD,
    GuardName.MEDICATION_WRITE_REFUSED,
})
"""Guards that stop the caller's request itself, even when an escalation outranks the block."""

GUARD_ACTIONS: Mapping[GuardName, GuardAction] = MappingProxyType({
    GuardName.MEDICATION_WRITE_REFUSED: GuardAction.BLOCKED,
    **dict.fromkeys((GuardName.AGREEMENT_BLOCKS_CONTROLLED_VISIT, GuardName.AGREEMENT_REVIEW_GATED,
                     GuardName.PHONE_RESTRICTION_HONOURED, GuardName.PROTECTED_RESULTS_WITHHELD,
                     GuardName.ABERRANT_UDS_ROUTES, GuardName.UDS_QUESTION_TO_COORDINATOR,
                     GuardName.UDS_DUE_TO_COORDINATOR, GuardName.MESSAGE_ROUTED_TO_TEAM), GuardAction.ROUTED),
    **dict.fromkeys((GuardName.REFILL_ESCALATES_TO_PROVIDER, GuardName.CONTROLLED_SUBSTANCE_ESCALATES,
                     GuardName.CONTROLLED_VISIT_ESCALATES), GuardAction.ESCALATED),
})
"""What each guard does to the request when it fires; every other guard only notes or asks (NOTED)."""

_VISIT_INTENTS = frozenset({Intent.BOOK_APPOINTMENT, Intent.RESCHEDULE_APPOINTMENT})


def guard_action(guard: GuardName) -> GuardAction:
    """What ``guard`` did to the request when it fired."""
    return GUARD_ACTIONS.get(guard, GuardAction.NOTED)


def stopped_request(guard: GuardName, decision: Decision, intent: Intent) -> bool:
    """Whether ``guard`` stopped the caller's request: a blocking guard always, an aberrant-UDS flag only when it
    routed a controlled visit (a booking or reschedule the turn blocked)."""
    routed_visit = (guard is GuardName.ABERRANT_UDS_ROUTES and decision.outcome is Outcome.BLOCK_AND_ROUTE
                    and intent in _VISIT_INTENTS)
    return guard in BLOCKING_GUARDS or routed_visit
