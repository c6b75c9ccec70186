"""Plays the catalogue through a real worker against the mirrored sandbox (the checks: golive.scenario_checks).

One sandbox (started from the mirror), one private broker and one worker serve the whole run. Every
scenario is its own call of its own patient (golive.planning), so they run side by side: first every
scenario without faults at once, then the fault scenarios, grouped by the faults they set (faults are
per practice). Each go-live phase a scenario needs gets its own tenant entry for the same sandbox
practice (its own called number), so one mirror is checked in the sandbox, read-only and write phases
alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from golive.planning import Planned
from devkit.cast import Script
from devkit.telephony import ReplayReport, Telephony

DEFAULT_CONCURRENCY = 4
"""Calls in progress at once: one practice's phone lines on a busy morning. All scenarios at once would queue
behind the worker's per-practice ModMed concurrency (8 operations, EMA screens among them) and test the
turn budget's hand-offs instead of the scenarios."""


def play(bootstrap: str, plans: Sequence[Planned | Script], on_call_done: Callable[[str], None] | None = None,
         concurrency: int = DEFAULT_CONCURRENCY, reply_timeout_s: float = 60.0) -> ReplayReport:
    """Every planned call at once, each paced on its own replies as the voice agent would, its events stamped
    when sent (as a live telephony side does, so each turn's hold and budget timers start then)."""
    telephony = Telephony(bootstrap, reply_timeout_s=reply_timeout_s)
    done = (lambda call: on_call_done(call.events[0].call_id)) if on_call_done is not None else None
    try:
        telephony.listen()
        scripts = [plan.script if isinstance(plan, Planned) else plan for plan in plans]
        return telephony.replay([script.events for script in scripts], max_concurrent_calls=concurrency,
                                restamp=True, on_call_done=done)
    finally:
        telephony.close()


def set_faults(sandbox_url: str, practice_id: str, faults: Mapping[str, Any] | None) -> None:
    """Apply (or with None clear) a practice's sandbox faults, and lift an EMA lockout a fault left."""
    base = f"{sandbox_url}/_admin/practices/{practice_id}"
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        if faults is None:
            http.delete(f"{base}/faults").raise_for_status()
            http.delete(f"{base}/lockout").raise_for_status()
        else:
            http.put(f"{base}/faults", json=dict(faults)).raise_for_status()


def merge_reports(reports: Sequence[ReplayReport]) -> ReplayReport:
    replies: dict[str, list[Any]] = {}
    for report in reports:
        replies.update(report.replies)
    return ReplayReport(calls=sum(r.calls for r in reports), events_sent=sum(r.events_sent for r in reports),
                        replies=replies, timeouts=sum(r.timeouts for r in reports),
                        seconds=sum(r.seconds for r in reports))
