"""What one event adds to its practice's drift window (streams.drift_counts): FHIR write requests from the
event's tally, the rest read off its audit records; a stored window value that cannot be read counts as nothing."""

from __future__ import annotations

from callstream.work_scope import WriteRequests
from schemas.models import AuditAction, AuditOutcome
from streams import callflow
from streams.drift_counts import DriftCounts, drift_counts


def test_drift_counts_take_fhir_write_requests_from_the_tally_and_the_rest_off_the_audit() -> None:
    audit = callflow.AuditOut
    outputs: list[callflow.Output] = [
        audit(action=AuditAction.FHIR_WRITE, outcome=AuditOutcome.SUCCESS),
        audit(action=AuditAction.EMA_WRITE, outcome=AuditOutcome.FAILURE),
        audit(action=AuditAction.ESCALATION, outcome=AuditOutcome.QUEUED, detail={"trigger": "controlled_substance"}),
        audit(action=AuditAction.ESCALATION, outcome=AuditOutcome.FAILURE, detail={"trigger": "controlled_substance"}),
        audit(action=AuditAction.ESCALATION, outcome=AuditOutcome.SUCCESS, detail={"escalation_kind": "provider"}),
        audit(action=AuditAction.BYPASS_ATTEMPT, outcome=AuditOutcome.BLOCKED),
    ]
    # The FHIR_WRITE audit is the command's final outcome; its requests (one failed, one resent) come from the tally.
    assert drift_counts(outputs, WriteRequests(sent=2, succeeded=1)) == DriftCounts(3, 1, 2, 1, 1)
    assert drift_counts(outputs, WriteRequests()) == DriftCounts(1, 0, 2, 1, 1)
    assert DriftCounts.from_dict({"write_attempts": -1}) == DriftCounts()
    assert DriftCounts.from_dict("garbage") == DriftCounts()
    assert DriftCounts.from_dict(DriftCounts(3, 2, 1, 1, 0).to_dict()) == DriftCounts(3, 2, 1, 1, 0)


