"""What one call event adds to its practice's drift window: the counts the sentinel's alarms are judged on.

``CallProcessor`` computes them once the event's outputs are known and hands them to a ``DriftSink``; the
worker sums them per practice in a windowed table (``streams.app``) and the pure drift core
(``streams.drift``) judges each closed window. The rules of what counts live here: FHIR write requests as
ModMed answered them (``callstream.work_scope.WriteRequests``), EMA writes, controlled-substance requests and
their escalations, and bypass attempts read off the audit records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from callstream.work_scope import WriteRequests
from schemas.models import AuditAction, AuditOutcome
from streams.callflow import AuditOut, Output


@dataclass
class DriftCounts:
    """What one event contributed to its practice's drift window."""

    write_attempts: int = 0
    write_successes: int = 0
    cs_requests: int = 0
    cs_escalations: int = 0
    bypass_attempts: int = 0

    def __bool__(self) -> bool:
        return any((self.write_attempts, self.cs_requests, self.bypass_attempts))

    def add(self, other: DriftCounts) -> DriftCounts:
        return DriftCounts(
            self.write_attempts + other.write_attempts,
            self.write_successes + other.write_successes,
            self.cs_requests + other.cs_requests,
            self.cs_escalations + other.cs_escalations,
            self.bypass_attempts + other.bypass_attempts,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "write_attempts": self.write_attempts,
            "write_successes": self.write_successes,
            "cs_requests": self.cs_requests,
            "cs_escalations": self.cs_escalations,
            "bypass_attempts": self.bypass_attempts,
        }

    @classmethod
    def from_dict(cls, data: Any) -> DriftCounts:
        """A stored window value; anything unreadable counts as nothing rather than breaking the drift feed."""
        if not isinstance(data, dict):
            return cls()
        values = {name: data.get(name, 0) for name in cls().to_dict()}
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values.values()):
            return cls()
        return cls(**values)


def drift_counts(outputs: list[Output], fhir_writes: WriteRequests) -> DriftCounts:
    """FHIR write requests from the tally; EMA writes (one screen submit per command), controlled-substance
    requests and bypass attempts read off the audit records."""
    counts = DriftCounts(write_attempts=fhir_writes.sent, write_successes=fhir_writes.succeeded)
    for output in outputs:
        if not isinstance(output, AuditOut):
            continue
        if output.action is AuditAction.EMA_WRITE:
            counts.write_attempts += 1
            counts.write_successes += output.outcome is AuditOutcome.SUCCESS
        elif output.action is AuditAction.ESCALATION and output.detail.get("trigger") == "controlled_substance":
            counts.cs_requests += 1
            # The window alarm judges the turn: a Task written or its command acknowledged on the review topic.
            # Whether a queued one became a staff-visible item is the review queue's to count (the counters).
            counts.cs_escalations += output.outcome in (AuditOutcome.SUCCESS, AuditOutcome.QUEUED)
        elif output.action is AuditAction.BYPASS_ATTEMPT:
            counts.bypass_attempts += 1
    return counts


class DriftSink(Protocol):
    """Where the worker adds an event's counts to its practice's open window."""

    def __call__(self, practice_id: str, counts: DriftCounts) -> None: ...
