"""The guard's answer for one turn of a call: a closed outcome, the commands it allows, tasks and the reply."""

from __future__ import annotations

from typing import Self

from pydantic import model_validator

from guards.model import (
    WRITE_COMMANDS,
    BypassSignal,
    Command,
    FrozenModel,
    GuardName,
    Outcome,
    TaskAudience,
    TaskReason,
    TaskSpec,
    VisitReason,
)
from guards.replies import ReplyTemplate

_CHANGES_TO_CHART_OR_SCHEDULE = WRITE_COMMANDS - {Command.CREATE_TASK}
_CONTROLLED_SUBSTANCE_ASKS = frozenset(
    {TaskReason.REFILL_REQUESTED, TaskReason.CONTROLLED_SUBSTANCE_MENTIONED, TaskReason.MEDICATION_CHANGE_REQUESTED}
)


class Decision(FrozenModel):
    """What happens next. Its validators make the safety invariants impossible to break by construction:
    an escalation always carries a provider task, a block always routes to someone, and a turn that
    still needs information writes nothing but tasks."""

    outcome: Outcome
    commands: tuple[Command, ...]
    """Dispatch now, in this order (reads first)."""
    queued_commands: tuple[Command, ...] = ()
    """Read-only phase: writes that wait in the human review queue instead of running."""
    tasks: tuple[TaskSpec, ...] = ()
    """Provider tasks first; each is created through one CREATE_TASK (keyed by TaskSpec.idempotency_key)."""
    visit_reason: VisitReason | None = None
    """The visit the turn is about, after VISIT_TYPE_MATCHES_PATIENT: what SEARCH_SLOTS and booking use."""
    reply: ReplyTemplate
    guards_fired: tuple[GuardName, ...]
    """Every rule that applied, in the order it ran: for the audit record and GUARD_HIT events."""
    bypass_signals: tuple[BypassSignal, ...] = ()

    @model_validator(mode="after")
    def _safety_invariants(self) -> Self:
        """Reject any combination that would let a request slip past a human."""
        every_command = self.commands + self.queued_commands
        if len(set(every_command)) != len(every_command):
            raise ValueError("a command appears twice")
        if not set(self.queued_commands) <= WRITE_COMMANDS:
            raise ValueError("only writes can wait in the review queue")
        if (Command.CREATE_TASK in every_command) != bool(self.tasks):
            raise ValueError("CREATE_TASK must be present exactly when there are tasks")
        if self.outcome is Outcome.ESCALATE and not any(t.audience is TaskAudience.PROVIDER for t in self.tasks):
            raise ValueError("an escalation needs a provider task")
        if self.outcome is Outcome.BLOCK_AND_ROUTE and not self.tasks:
            raise ValueError("a blocked request must be routed to a team")
        if self.outcome is Outcome.REVIEW_QUEUE and not self.queued_commands:
            raise ValueError("REVIEW_QUEUE without queued writes")
        if self.outcome is Outcome.NEEDS_INFORMATION and set(every_command) & _CHANGES_TO_CHART_OR_SCHEDULE:
            raise ValueError("nothing but tasks is written while information is missing")
        return self

    @property
    def task(self) -> TaskSpec | None:
        """The task the outcome is about (the provider task of an escalation), if any."""
        return self.tasks[0] if self.tasks else None

    @property
    def asked_for_controlled_substance(self) -> bool:
        """The turn asked for a controlled substance (not just booked the visit): the dispatcher adds these up
        into CallContext.refill_requests_earlier_in_call, so repeated pressure in one call is seen."""
        return any(task.reason in _CONTROLLED_SUBSTANCE_ASKS for task in self.tasks)

    @property
    def escalated(self) -> bool:
        """What the Reply record's `escalated` flag and the escalation-rate metric count."""
        return self.outcome is Outcome.ESCALATE
