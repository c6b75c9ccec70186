"""`callstream replay FILE`: scripted calls played as the telephony side would, each call reported as it ends.

A call's report says what its caller heard (each reply's template and text, hold messages marked) and
what happened, read off the audit and dead-letter topics while the calls play (devkit.telephony with
``watch_outcomes``): booked / rescheduled / cancelled appointments, tasks and escalations, review-queue
items, guard hits, the end of the call; an event the pipeline dead-lettered (with the dead letter's
reason) or dropped because the call had already ended is reported as soon as it is seen, never waited on.
``--json`` prints one JSON object per call as it ends, then one summary object.

Exit status: 0 when every call played as scripted; 1 when a wait timed out, an event was dead-lettered or a
call had already ended; 2 for a bad script or an unreachable broker (one ``callstream: error:`` line).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from callstream.backends import ensure_topics, wait_for_broker
from callstream.cli_options import add_logging_options, add_service_options, configure_logging_from, settings_from
from connectors.bulk import ProgressBar
from schemas.models import AuditAction, AuditEvent, AuditOutcome, CommandKind, UNRESOLVED_PRACTICE_ID
from schemas.registry import SchemaRegistryClient
from schemas.topics import TOPICS
from streams.callflow import DROPPED_DETAIL, DropReason
from streams.horizon import REFUSAL_CLASS
from devkit.telephony import (
    INTERIM_TEMPLATE_NAMES,
    CallProgress,
    DeadLettered,
    ReplayReport,
    Telephony,
    calls_of,
    load_script,
)

PROGRESS_INTERVAL_S = 0.2
_WRITE_VERBS = {CommandKind.BOOK_APPOINTMENT: "booked", CommandKind.RESCHEDULE_APPOINTMENT: "rescheduled",
                CommandKind.CANCEL_APPOINTMENT: "cancelled"}
_DEAD_LETTER_CAUSES = {
    "UnknownCalledNumber": "unknown practice",
    REFUSAL_CLASS: "outside the redelivery horizon",
    "SchemaError": "malformed event",
    "CallFlowError": "refused by the call flow",
}
"""Short causes for the dead letters' error classes; the dead letter's own reason follows in parentheses."""


@dataclass(frozen=True, slots=True)
class Happened:
    """One thing the pipeline did with the call (``kind`` for scripts, ``text`` for people)."""

    kind: str
    text: str


def what_happened(call: CallProgress, reply_timeout_s: float) -> list[Happened]:
    """The call's outcomes in the order the pipeline recorded them, then dead letters, drops and timeouts."""
    happened: list[Happened] = []
    seen: set[str] = set()
    for record in call.audit:
        if str(record.event_id) in seen:
            continue  # a redelivered record
        seen.add(str(record.event_id))
        outcome = _outcome_of(record)
        if outcome is not None:
            happened.append(outcome)
    for letter, seqs in _dead_letters_by_cause(call.dead_lettered):
        happened.append(Happened("dead_lettered", f"dead-lettered: {dead_letter_cause(letter)} (events seq {seqs})"))
    if call.ended_before:
        happened.append(Happened("already_ended", "already ended: the pipeline had this call as ended before, so it "
                                                  "dropped its events (replay it under a new call_id to play it again)"))
    out_of_order = sorted({drop.seq for drop in call.dropped if drop.why != DropReason.CALL_ENDED})
    if out_of_order:
        happened.append(Happened("dropped", f"dropped out of order: events seq {', '.join(map(str, out_of_order))}"))
    if call.timed_out:
        happened.append(Happened("timed_out", f"{call.timed_out} wait(s) got no answer within {reply_timeout_s:g} s "
                                              "(is a worker running on this cluster?)"))
    return happened


def dead_letter_cause(letter: DeadLettered) -> str:
    """'unknown practice (called number +1512… matches no practice)': the cause, then the dead letter's reason."""
    cause = _DEAD_LETTER_CAUSES.get(letter.error_class)
    if letter.error_class == "UnknownCalledNumber":
        return f"{cause} (called number {letter.event.called_number} matches no practice in the tenant directory)"
    return f"{cause} ({letter.reason})" if cause else f"{letter.reason} ({letter.error_class})"


def _dead_letters_by_cause(letters: Sequence[DeadLettered]) -> list[tuple[DeadLettered, str]]:
    causes: dict[tuple[str, str], list[DeadLettered]] = {}
    for letter in letters:
        causes.setdefault((letter.error_class, letter.reason), []).append(letter)
    return [(group[0], ", ".join(str(letter.event.seq) for letter in sorted(group, key=lambda l: l.event.seq)))
            for group in causes.values()]


def _outcome_of(record: AuditEvent) -> Happened | None:
    ref = f"{record.resource_type}/{record.resource_ids[0]}" if record.resource_ids else (record.resource_type or "")
    if record.action in (AuditAction.FHIR_WRITE, AuditAction.EMA_WRITE) and record.command is not None:
        if record.outcome is AuditOutcome.FAILURE:
            return Happened("write_failed", f"{record.command.value} failed ({record.error_class or 'error'})")
        verb = _WRITE_VERBS.get(record.command)
        if verb is not None and record.outcome is AuditOutcome.SUCCESS:
            slot = f" (slot {record.slot_id})" if record.slot_id else ""
            return Happened(verb, f"{verb} {ref}{slot}")
        return None  # a task's write: its ESCALATION record says it
    if record.action is AuditAction.ESCALATION:
        audience = record.detail.get("escalation_kind", "staff")
        substance = " (controlled substance)" if record.detail.get("trigger") == "controlled_substance" else ""
        if record.task_refs:
            return Happened("task", f"task {', '.join(record.task_refs)} for {audience}{substance}")
        return Happened("escalated", f"escalated to {audience}{substance}, {record.outcome.value.lower()}")
    if record.action is AuditAction.REVIEW_QUEUED:
        what = record.command.value if record.command is not None else "request"
        return Happened("queued", f"queued for staff review: {what} ({record.detail.get('operation', 'review')})")
    if record.action is AuditAction.GUARD_HIT:
        action = record.guard_action.value if record.guard_action is not None else record.outcome.value
        return Happened("guard", f"guard {', '.join(record.guards_fired) or '?'}: {action}")
    if record.action is AuditAction.BYPASS_ATTEMPT:
        return Happened("bypass_attempt", f"bypass attempt recorded: {record.detail.get('signal', '?')}")
    if (record.action is AuditAction.CALL_STATE_TRANSITION and record.state_to == "ended"
            and DROPPED_DETAIL not in record.detail):
        return Happened("ended", "call ended")
    return None


def practice_of(call: CallProgress) -> str | None:
    """The practice the pipeline resolved for the call (from its replies or audit records), if any."""
    for reply in call.replies:
        if reply.practice_id:
            return reply.practice_id
    return next((r.practice_id for r in call.audit if r.practice_id != UNRESOLVED_PRACTICE_ID), None)


def call_json(call: CallProgress, reply_timeout_s: float) -> dict[str, Any]:
    """The call's report as one JSON object (``--json``)."""
    seq_of = {str(event.event_id): event.seq for event in call.events}
    return {
        "type": "call",
        "call_id": call.call_id,
        "practice_id": practice_of(call),
        "events": len(call.events),
        "events_sent": call.sent,
        "heard": [{"template": reply.template, "text": reply.text, "interim": reply.template in INTERIM_TEMPLATE_NAMES,
                   "in_reply_to_seq": seq_of.get(str(reply.in_reply_to))} for reply in call.replies],
        "happened": [{"kind": item.kind, "text": item.text} for item in what_happened(call, reply_timeout_s)],
        "dead_lettered": [{"seq": letter.event.seq, "event_id": str(letter.event.event_id),
                           "error_class": letter.error_class, "reason": letter.reason} for letter in call.dead_lettered],
        "already_ended": call.ended_before,
        "timed_out": call.timed_out,
    }


def call_text(call: CallProgress, reply_timeout_s: float) -> str:
    """The call's report for a person: what the caller heard, then what happened."""
    practice = practice_of(call)
    lines = [f"call {call.call_id}{f' ({practice})' if practice else ''}: {call.sent} of {len(call.events)} events sent"]
    for (template, text), times in _runs((reply.template, reply.text) for reply in call.replies):
        hold = " (while waiting)" if template in INTERIM_TEMPLATE_NAMES else ""
        lines.append(f"  heard  {template}{hold}{f' (x{times})' if times > 1 else ''}: \"{text}\"")
    if not call.replies:
        lines.append("  heard  nothing")
    lines += [f"  {item.text}" for item in what_happened(call, reply_timeout_s)]
    return "\n".join(lines)


def _runs(items: Iterable[tuple[str, str]]) -> list[tuple[tuple[str, str], int]]:
    """Consecutive equal items counted: the same hand-over heard for each dead-lettered event is one line."""
    runs: list[tuple[tuple[str, str], int]] = []
    for item in items:
        if runs and runs[-1][0] == item:
            runs[-1] = (item, runs[-1][1] + 1)
        else:
            runs.append((item, 1))
    return runs


def summary(report: ReplayReport, calls: Sequence[CallProgress]) -> dict[str, Any]:
    return {
        "type": "summary",
        "calls": report.calls,
        "events_sent": report.events_sent,
        "replies": sum(len(found) for found in report.replies.values()),
        "timeouts": report.timeouts,
        "calls_dead_lettered": sum(1 for call in calls if call.dead_lettered),
        "calls_already_ended": sum(1 for call in calls if call.ended_before),
        "seconds": round(report.seconds, 3),
    }


def summary_text(totals: dict[str, Any]) -> str:
    text = (f"replayed {totals['calls']} calls ({totals['events_sent']} events) in {totals['seconds']:.1f} s; "
            f"{totals['replies']} replies received, {totals['timeouts']} waits timed out")
    extra = [f"{totals['calls_dead_lettered']} with dead-lettered events" if totals["calls_dead_lettered"] else "",
             f"{totals['calls_already_ended']} already ended" if totals["calls_already_ended"] else ""]
    return text + "".join(f"; {part}" for part in extra if part)


class _Progress:
    """A status line on a terminal's stderr (nothing when stderr is a file or a pipe)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._bar = ProgressBar(stream) if stream.isatty() else None
        self._shown = 0.0

    def tick(self, calls: Sequence[CallProgress]) -> None:
        now = time.monotonic()
        if self._bar is None or now - self._shown < PROGRESS_INTERVAL_S:
            return
        self._shown = now
        ended = sum(1 for call in calls if call.finished_at is not None)
        sent = sum(call.sent for call in calls)
        waiting = sum(1 for call in calls if call.waiting_for is not None)
        total = sum(len(call.events) for call in calls)
        self._bar.status(f"replaying: {ended}/{len(calls)} calls done, {sent}/{total} events sent, {waiting} waiting")

    def clear(self) -> None:
        """Blank the status line so a call's report starts at the left margin."""
        if self._bar is not None and self._shown:
            self._stream.write(f"\r{' ' * 100}\r")
            self._stream.flush()


def main(argv: list[str]) -> int:
    """`callstream replay FILE [--json] [--no-wait] [--keep-times] [--reply-timeout S] [-b SERVERS]`."""
    parser = argparse.ArgumentParser(
        prog="callstream replay",
        description="Publish scripted calls (JSONL, docs/events.md) as the telephony side would and report, per "
                    "call, what the caller heard and what happened (booked, task, escalated, dead-lettered).")
    parser.add_argument("file", type=Path, help="one CallEvent per line (docs/events.md)")
    parser.add_argument("--json", action="store_true", help="one JSON object per call as it ends, then a summary object")
    parser.add_argument("--no-wait", action="store_true",
                        help="publish every event at once instead of pacing each call on its replies")
    parser.add_argument("--reply-timeout", type=float, default=30.0, help="seconds to wait for one reply (default 30)")
    parser.add_argument("--keep-times", action="store_true",
                        help="send the script's occurred_at as written (default: the moment each event is sent, as a "
                             "live telephony side stamps it; times older than the worker's redelivery horizon are "
                             "dead-lettered)")
    add_service_options(parser, kafka=True)
    add_logging_options(parser)
    options = parser.parse_args(argv)
    settings = settings_from(options)
    configure_logging_from(settings)
    calls = calls_of(load_script(options.file))
    wait_for_broker(settings.bootstrap_servers, settings.connect_timeout_s)
    ensure_topics(settings.bootstrap_servers, [(topic.name, topic.partitions) for topic in TOPICS])
    registry = SchemaRegistryClient(settings.schema_registry_url) if settings.schema_registry_url else None
    telephony = Telephony(settings.bootstrap_servers, registry=registry, reply_timeout_s=options.reply_timeout,
                          watch_outcomes=True)
    progress = _Progress(sys.stderr)
    finished: list[CallProgress] = []

    def report_call(call: CallProgress) -> None:
        finished.append(call)
        progress.clear()
        if options.json:
            print(json.dumps(call_json(call, options.reply_timeout)), flush=True)
        else:
            print(call_text(call, options.reply_timeout), flush=True)

    try:
        report = telephony.replay(calls, wait_for_replies=not options.no_wait, restamp=not options.keep_times,
                                  on_call_done=report_call, on_tick=progress.tick)
    finally:
        telephony.close()
    progress.clear()
    totals = summary(report, finished)
    print(json.dumps(totals) if options.json else summary_text(totals), flush=True)
    clean = not (totals["timeouts"] or totals["calls_dead_lettered"] or totals["calls_already_ended"])
    return 0 if clean else 1
