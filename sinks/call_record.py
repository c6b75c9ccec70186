"""The per-call audit record a practice reconciles against its chart, and the call list's summary lines.

Built from the audit table's rows of one call (`assemble_call_record`, fed by `AuditStore.call_record`,
whose SELECT lists the columns in the order it unpacks them), turned into JSON for the read API and
`callstream audit call --json`, and into text for the CLI and the QA PDF. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from guards.model import VisitReason
from guards.replies import INTERIM_TEMPLATES, ReplyTemplate, ReplyValues, outline_reply

@dataclass(frozen=True, slots=True)
class StateTransition:
    """A call state change with its timestamp (the seeds: "timestamps for every state transition")."""

    at: datetime
    state_from: str | None
    state_to: str | None


@dataclass(frozen=True, slots=True)
class TaskReference:
    """A provider task with the transcript reference the provider needs for context."""

    at: datetime
    task_ref: str
    transcript_ref: str | None


@dataclass(frozen=True, slots=True)
class GuardHit:
    """Which guardrail fired, what it truly did and which dialogue path it acted on (blocked, when
    ``guard_action`` is BLOCKED or ROUTED)."""

    at: datetime
    guard: str
    action: str
    outcome: str
    command: str | None
    guard_action: str | None = None
    dialogue_path: str | None = None


@dataclass(frozen=True, slots=True)
class QueuedWrite:
    """A write handed to the review queue, with what it targets: the appointment of a reschedule or cancel,
    the slot the caller chose."""

    at: datetime
    command: str | None
    reason: str | None
    resource_type: str | None
    resource_ids: tuple[str, ...]
    slot_id: str | None


@dataclass(frozen=True, slots=True)
class HeardReply:
    """A reply the caller heard: its template and its wording rebuilt from the audit record (times are not
    recorded, so ``unknown_values`` names the placeholders left as bracketed markers in ``text``)."""

    at: datetime
    template: str
    text: str | None
    """None for a template this build does not know (a newer worker wrote the record)."""
    interim: bool = False
    """A hold message (guards.replies.INTERIM_TEMPLATES): the turn's answer followed it."""
    unknown_values: tuple[str, ...] = ()


def heard_reply(at: datetime, template: str, visit_reason: str | None) -> HeardReply:
    """Rebuild a REPLY_SENT record's wording with the closed template set (guards.replies)."""
    try:
        known = ReplyTemplate(template)
    except ValueError:
        return HeardReply(at, template, None)
    try:
        values = ReplyValues(visit_reason=VisitReason(visit_reason) if visit_reason else None)
    except ValueError:  # a visit reason this build does not know: spoken as unknown
        values = ReplyValues()
    text, unknown = outline_reply(known, values)
    return HeardReply(at, template, text, known in INTERIM_TEMPLATES, unknown)


CALL_SPAN = timedelta(hours=6)
"""How long a call can last at most, for the listing's time window: events of a call that began in the window are
read this far past it (and before it, to see whether it began earlier)."""


@dataclass(frozen=True, slots=True)
class CallSummary:
    """One line of a practice's call list: counts of what the call's audit records say happened."""

    call_id: str
    started_at: datetime
    last_event_at: datetime
    event_count: int
    controlled_substance_requests: int
    escalations_with_task: int
    blocks: int
    bypass_attempts: int
    review_queued: int
    writes_succeeded: int
    writes_failed: int
    dead_lettered: int
    last_state: str | None

    def to_json_dict(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "started_at": _iso(self.started_at), "last_event_at": _iso(self.last_event_at),
                "event_count": self.event_count, "controlled_substance_requests": self.controlled_substance_requests,
                "escalations_with_task": self.escalations_with_task, "blocks": self.blocks,
                "bypass_attempts": self.bypass_attempts, "review_queued": self.review_queued,
                "writes_succeeded": self.writes_succeeded, "writes_failed": self.writes_failed,
                "dead_lettered": self.dead_lettered, "last_state": self.last_state}


SLOT_ROLES = ("offered", "booked", "queued", "failed")
"""How a call touched a Slot: offered to the caller, booked, queued for staff to book, chosen but not booked."""


@dataclass(frozen=True, slots=True)
class CallAuditRecord:
    """What a practice reconciles against the chart for one call (the seeds' audit record)."""

    call_id: str
    practice_id: str
    caller_number: str | None
    first_event_at: datetime
    last_event_at: datetime
    event_count: int
    state_transitions: tuple[StateTransition, ...]
    fhir_resources: Mapping[str, tuple[str, ...]]
    ema_deep_links: tuple[str, ...]
    tasks: tuple[TaskReference, ...]
    transcript_ref: str | None
    guards_fired: tuple[GuardHit, ...]
    outcomes: Mapping[str, int] = field(default_factory=dict)
    slots: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Slot ids by SLOT_ROLES (every one is also under fhir_resources["Slot"])."""
    queued_writes: tuple[QueuedWrite, ...] = ()
    replies: tuple[HeardReply, ...] = ()
    """What the caller heard, in order (interim hold messages included)."""

    def to_json_dict(self) -> dict[str, Any]:
        """The record for `callstream audit call --json`."""
        return {
            "call_id": self.call_id,
            "practice_id": self.practice_id,
            "caller_number": self.caller_number,
            "first_event_at": _iso(self.first_event_at),
            "last_event_at": _iso(self.last_event_at),
            "event_count": self.event_count,
            "state_transitions": [
                {"at": _iso(step.at), "from": step.state_from, "to": step.state_to} for step in self.state_transitions
            ],
            "fhir_resources": {kind: list(ids) for kind, ids in self.fhir_resources.items()},
            "slots": {role: list(ids) for role, ids in self.slots.items()},
            "ema_deep_links": list(self.ema_deep_links),
            "tasks": [
                {"at": _iso(task.at), "task_ref": task.task_ref, "transcript_ref": task.transcript_ref} for task in self.tasks
            ],
            "transcript_ref": self.transcript_ref,
            "guards_fired": [
                {"at": _iso(hit.at), "guard": hit.guard, "action": hit.action, "outcome": hit.outcome, "command": hit.command,
                 "guard_action": hit.guard_action, "dialogue_path": hit.dialogue_path}
                for hit in self.guards_fired
            ],
            "queued_writes": [
                {"at": _iso(item.at), "command": item.command, "reason": item.reason,
                 "resource_type": item.resource_type, "resource_ids": list(item.resource_ids), "slot_id": item.slot_id}
                for item in self.queued_writes
            ],
            "replies": [
                {"at": _iso(reply.at), "template": reply.template, "text": reply.text, "interim": reply.interim,
                 "unknown_values": list(reply.unknown_values)}
                for reply in self.replies
            ],
            "outcomes": dict(self.outcomes),
        }

    def render_text(self) -> str:
        """The human-readable form, one section per item the seeds list."""
        return render_call_text(self.to_json_dict())


def render_call_text(record: Mapping[str, Any]) -> str:
    """`CallAuditRecord.to_json_dict()` as text (also what `callstream audit call` prints from the read API)."""
    lines = [
        f"call {record['call_id']}  (practice {record['practice_id']})",
        f"caller number: {record['caller_number'] or '-'}",
        f"events: {record['event_count']}, {record['first_event_at']} .. {record['last_event_at']}",
        "state transitions:",
        *(f"  {step['at']}  {step['from'] or '-'} -> {step['to'] or '-'}" for step in record["state_transitions"]),
        "FHIR resources touched:",
        *(f"  {kind}: {', '.join(ids)}" for kind, ids in record["fhir_resources"].items()),
        "slots:",
        *(f"  {role}: {', '.join(ids)}" for role, ids in record["slots"].items()),
        "EMA chart links:",
        *(f"  {link}" for link in record["ema_deep_links"]),
        "provider tasks:",
        *(f"  {task['at']}  {task['task_ref']}  transcript {task['transcript_ref'] or '-'}" for task in record["tasks"]),
        f"transcript: {record['transcript_ref'] or '-'}",
        "guards fired:",
        *(_guard_line(hit) for hit in record["guards_fired"]),
        "queued for staff:",
        *(_queued_line(item) for item in record["queued_writes"]),
        "what the caller heard:",
        *(_heard_line(reply) for reply in record.get("replies", ())),
    ]
    return "\n".join(_with_none_marker(lines))


def _guard_line(hit: Mapping[str, Any]) -> str:
    command = f", {hit['command']}" if hit["command"] else ""
    return (f"  {hit['at']}  {hit['guard']}  {hit['guard_action'] or '-'} {hit['dialogue_path'] or '-'}"
            f"  ({hit['action']} {hit['outcome']}{command})")


def _queued_line(item: Mapping[str, Any]) -> str:
    target = f"  {item['resource_type']}: {', '.join(item['resource_ids'])}" if item["resource_ids"] else ""
    slot = f"  slot {item['slot_id']}" if item["slot_id"] else ""
    return f"  {item['at']}  {item['command'] or '-'}  {item['reason'] or '-'}{target}{slot}"


def _heard_line(reply: Mapping[str, Any]) -> str:
    interim = "  (interim)" if reply["interim"] else ""
    wording = reply["text"] or "(wording unknown to this build)"
    return f"  {reply['at']}  {reply['template']}{interim}\n      \"{wording}\""


def _with_none_marker(lines: list[str]) -> list[str]:
    """Print "  (none)" under a section heading that has no entries."""
    marked: list[str] = []
    for index, line in enumerate(lines):
        marked.append(line)
        if line.endswith(":") and (index + 1 == len(lines) or not lines[index + 1].startswith("  ")):
            marked.append("  (none)")
    return marked


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc(moment: datetime) -> datetime:
    """chDB returns DateTime64('UTC') values without a zone; they are UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)



def assemble_call_record(call_id: str, practice_id: str, rows: list[tuple[Any, ...]]) -> CallAuditRecord:
    """Fold one call's rows (in time order) into the reconciliation record."""
    caller_number: str | None = None
    transitions: list[StateTransition] = []
    resources: dict[str, list[str]] = {}
    slots: dict[str, list[str]] = {}
    links: list[str] = []
    tasks: dict[str, TaskReference] = {}
    transcript_ref: str | None = None
    guards: list[GuardHit] = []
    queued: list[QueuedWrite] = []
    outcomes: dict[str, int] = {}
    heard: list[HeardReply] = []
    for (occurred_at, _practice, number, action, outcome, state_from, state_to, resource_type, resource_ids, link,
         task_refs, row_transcript_ref, guards_fired, command, error_class, guard_action, dialogue_path, slot_id,
         operation, template, visit_reason) in rows:
        at = utc(occurred_at)
        caller_number = caller_number or number
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if action == "CALL_STATE_TRANSITION":
            transitions.append(StateTransition(at, state_from, state_to))
        if resource_ids:
            _add(resources, resource_type or "Resource", resource_ids)
        if resource_type == "Slot" and action in ("FHIR_READ", "EMA_READ"):
            _add(slots, "offered", resource_ids)
        if slot_id:
            _add(resources, "Slot", (slot_id,))
            role = "queued" if action == "REVIEW_QUEUED" else "booked" if outcome == "SUCCESS" else "failed"
            _add(slots, role, (slot_id,))
        if link and link not in links:
            links.append(link)
        transcript_ref = row_transcript_ref or transcript_ref
        for ref in task_refs:  # the write and its escalation record name the same task: once, earliest
            if ref not in tasks or (tasks[ref].transcript_ref is None and row_transcript_ref):
                tasks[ref] = TaskReference(tasks[ref].at if ref in tasks else at, ref, row_transcript_ref)
        if action in ("GUARD_HIT", "BYPASS_ATTEMPT"):
            names = guards_fired or ([error_class] if error_class else [])
            guards.extend(GuardHit(at, guard, action, outcome, command, guard_action, dialogue_path) for guard in names)
        if action == "REVIEW_QUEUED":
            queued.append(QueuedWrite(at, command, operation or None, resource_type, tuple(resource_ids), slot_id))
        if action == "REPLY_SENT" and template:
            heard.append(heard_reply(at, template, visit_reason or None))
    return CallAuditRecord(
        call_id=call_id,
        practice_id=practice_id,
        caller_number=caller_number,
        first_event_at=utc(rows[0][0]),
        last_event_at=utc(rows[-1][0]),
        event_count=len(rows),
        state_transitions=tuple(transitions),
        fhir_resources={kind: tuple(ids) for kind, ids in resources.items()},
        ema_deep_links=tuple(links),
        tasks=tuple(TaskReference(task.at, task.task_ref, task.transcript_ref or transcript_ref)
                    for task in tasks.values()),
        transcript_ref=transcript_ref,
        guards_fired=tuple(guards),
        outcomes=outcomes,
        slots={role: tuple(slots[role]) for role in SLOT_ROLES if role in slots},
        queued_writes=tuple(queued),
        replies=tuple(heard),
    )


def _add(groups: dict[str, list[str]], key: str, ids: Sequence[str]) -> None:
    known = groups.setdefault(key, [])
    known.extend(rid for rid in ids if rid not in known)
