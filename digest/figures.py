"""What a practice's digest says about one local day, read from the audit store (and the review queue).

Counts only, with call ids: the audit records hold a caller number and chart ids too, and none of that goes
into an e-mail. The rules of what counts are the pipeline's own (streams/drift_counts.py `drift_counts`):
a controlled-substance request is an ESCALATION record with ``detail.trigger = controlled_substance``,
escalated when SUCCESS (a provider task exists) or QUEUED (a review item waits for staff); a block is a
GUARD_HIT whose outcome is BLOCKED; write success is SUCCESS over SUCCESS + FAILURE of FHIR_WRITE and
EMA_WRITE records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from guards.hours import local_day_window
from sinks.clickhouse_schema import AUDIT_TABLE
from sinks.clickhouse_store import AuditStore

MAX_LISTED_CALLS = 50
"""Call ids listed per section; more are counted, not listed (the QA view lists them all)."""

_CS = "action = 'ESCALATION' AND detail['trigger'] = 'controlled_substance'"
_WRITE = "action IN ('FHIR_WRITE', 'EMA_WRITE')"
_BLOCK = "action = 'GUARD_HIT' AND outcome = 'BLOCKED'"


@dataclass(frozen=True, slots=True)
class OpenReviewItems:
    """The practice's review items open when the digest was made (not of the day: what still waits)."""

    count: int
    controlled_substance: int
    oldest_created_at: str | None
    call_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DayFigures:
    """One practice's day (see the module docstring for what each figure counts)."""

    practice_id: str
    day: date
    time_zone: str
    calls: int
    cs_requests: int
    cs_escalated: int
    cs_queued_for_staff: int
    provider_tasks: int
    blocks: int
    blocks_by_guard: dict[str, int]
    bypass_attempts: int
    writes_succeeded: int
    writes_failed: int
    cs_call_ids: tuple[str, ...]
    blocked_call_ids: tuple[str, ...]
    review: OpenReviewItems | None = None
    """None when the review queue could not be read (``review_error`` says why)."""
    review_error: str | None = None
    listed_limit: int = field(default=MAX_LISTED_CALLS)

    @property
    def cs_not_escalated(self) -> int:
        """Must be 0: a controlled-substance request that reached neither a provider task nor staff."""
        return self.cs_requests - self.cs_escalated

    @property
    def write_success_rate(self) -> float | None:
        """ModMed write success, None on a day without writes."""
        attempts = self.writes_succeeded + self.writes_failed
        return self.writes_succeeded / attempts if attempts else None

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "practice_id": self.practice_id, "date": self.day.isoformat(), "time_zone": self.time_zone,
            "calls": self.calls, "cs_requests": self.cs_requests, "cs_escalated": self.cs_escalated,
            "cs_not_escalated": self.cs_not_escalated, "cs_queued_for_staff": self.cs_queued_for_staff,
            "provider_tasks": self.provider_tasks, "blocks": self.blocks, "blocks_by_guard": dict(self.blocks_by_guard),
            "bypass_attempts": self.bypass_attempts, "writes_succeeded": self.writes_succeeded,
            "writes_failed": self.writes_failed, "write_success_rate": self.write_success_rate,
            "cs_call_ids": list(self.cs_call_ids), "blocked_call_ids": list(self.blocked_call_ids),
            "open_review_items": None if self.review is None else {
                "count": self.review.count, "controlled_substance": self.review.controlled_substance,
                "oldest_created_at": self.review.oldest_created_at, "call_ids": list(self.review.call_ids)},
            "review_error": self.review_error,
        }


def day_figures(store: AuditStore, practice_id: str, day: date, zone: str) -> DayFigures:
    """The audit store's figures of one practice's local day (review items are added by `with_review`).

    Raises:
        StoreUnavailableError: ClickHouse did not answer.
    """
    since, until = local_day_window(day, zone)
    window = {"practice_id": practice_id, "since": since, "until": until}
    where = (f"FROM {store.database}.{AUDIT_TABLE} FINAL WHERE practice_id = {{practice_id:String}} "
             "AND occurred_at >= {since:DateTime64(3, 'UTC')} AND occurred_at < {until:DateTime64(3, 'UTC')}")
    [row] = store.select(
        f"SELECT uniqExactIf(call_id, call_id != ''), countIf({_CS}), "
        f"countIf({_CS} AND outcome IN ('SUCCESS', 'QUEUED')), countIf({_CS} AND outcome = 'QUEUED'), "
        "countIf(action = 'ESCALATION' AND length(task_refs) > 0), "
        f"countIf({_BLOCK}), countIf(action = 'BYPASS_ATTEMPT'), "
        f"countIf({_WRITE} AND outcome = 'SUCCESS'), countIf({_WRITE} AND outcome = 'FAILURE'), "
        f"arraySort(groupUniqArrayIf(call_id, {_CS} AND call_id != '')), "
        f"arraySort(groupUniqArrayIf(call_id, {_BLOCK} AND call_id != '')) {where}",
        window,
    )
    guards = store.select(
        "SELECT guard, count() FROM (SELECT arrayJoin(if(empty(guards_fired), [ifNull(error_class, 'unnamed')], "
        f"guards_fired)) AS guard {where} AND {_BLOCK}) GROUP BY guard ORDER BY guard",
        window,
    )
    return DayFigures(
        practice_id=practice_id, day=day, time_zone=zone, calls=int(row[0]), cs_requests=int(row[1]),
        cs_escalated=int(row[2]), cs_queued_for_staff=int(row[3]), provider_tasks=int(row[4]), blocks=int(row[5]),
        blocks_by_guard={str(guard): int(count) for guard, count in guards}, bypass_attempts=int(row[6]),
        writes_succeeded=int(row[7]), writes_failed=int(row[8]), cs_call_ids=tuple(row[9]),
        blocked_call_ids=tuple(row[10]),
    )


def open_review_items(items: list[dict[str, Any]]) -> OpenReviewItems:
    """Summarise the practice's open items (``ReviewItem.to_json_dict`` shapes, oldest first)."""
    call_ids = sorted({str(item["call_id"]) for item in items if item.get("call_id")})
    created = sorted(str(item["created_at"]) for item in items if item.get("created_at"))
    return OpenReviewItems(count=len(items), controlled_substance=sum(1 for item in items if item.get("controlled_substance")),
                           oldest_created_at=created[0] if created else None, call_ids=tuple(call_ids))
