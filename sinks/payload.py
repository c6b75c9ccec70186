"""Audit payload hygiene: the one place an AuditEvent becomes what leaves callstream.

Both sinks (ClickHouse and every practice's SIEM) store or send an `AuditRecord`, never the raw
event, so the rule of issue 7 point 3 is enforced once: a record keeps what the seeds list for
chart reconciliation (call id, caller number, state-transition timestamps, FHIR resource ids, the
slot chosen, EMA deep link, task references with the transcript reference, guards fired with their
action and the dialogue path) plus the event's own
bookkeeping (id, practice, action, outcome, command, error class, latency), and nothing else.

The schema already bounds every field; this module removes what a well-formed but careless or
hostile producer could still smuggle through:

- ``detail`` keeps only allow-listed keys whose values are short machine tokens. Anything else
  (a PDMP note, a UDS result, a name, a DOB, a phone number, a token) is dropped, because a
  deny-list of what PHI looks like always misses something.
- Machine names (states, guard names, error class) that look like a date, a phone number or a
  secret are dropped.
- References and the deep link lose URL credentials and query strings (where presigned
  signatures and session tokens live, and where careless stores put patient names) and are
  dropped when they contain spaces (free text such as a transcript) or a secret marker.
- Every path or fragment segment of a reference (percent-decoded) that holds a birth-date-like
  date, a phone number, an e-mail address or a capitalised name pair ("Romero-Gabriel") is
  replaced by `redacted`, keeping the rest of the reference: a transcript store that names its
  folders after patients (`s3://…/Romero-Gabriel-1947-07-17/call-9.json`) leaves callstream as
  `s3://…/redacted/call-9.json`. A lower-case name alone is not recognisable; a store that writes
  one without a date next to it must not be used for `transcript_ref`. (The scrubber is
  callstream.references, shared with the ModMed Tasks that carry the transcript reference.)

What was removed is listed by field name only in `AuditRecord.redactions`, never by value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from callstream.references import SECRET_MARKERS, clean_reference
from callstream.tenants import ApiTrack, AuthMethod
from guards import GoLivePhase
from schemas.models import AuditEvent, Intent

ALLOWED_DETAIL_KEYS: frozenset[str] = frozenset(
    {
        "alarm_kind",
        "api_track",
        "attempt",
        "auth_method",
        "bypass_attempts",
        "channel",
        "dispatch",
        "disposition",
        "dropped",
        "error_code",
        "escalation_kind",
        "http_status",
        "intent",
        "issue_code",
        "operation",
        "phase",
        "queue",
        "retry_after_s",
        "route",
        "rule",
        "screen",
        "seq",
        "signal",
        "step",
        "template",
        "topic",
        "track",
        "trigger",
        "version_id",
        "visit_reason",
    }
)
"""Context keys a SIEM may receive; every other detail key is dropped (extend here, deliberately).

Values of keys without a grammar below only need to be short machine tokens: a producer that puts
a short password or a bare result word under such a key cannot be told apart from a template name,
so keys are for machine names only (docs: schemas AuditEvent.detail)."""

_NUMBER = re.compile(r"^\d{1,6}(\.\d{1,3})?\Z")
VISIT_REASONS = frozenset({"new-patient-consult", "follow-up", "medication-management", "agreement-review", "esi",
                           "facet-injection", "rfa", "scs-trial", "kyphoplasty", "trigger-point"})
DETAIL_GRAMMARS: Mapping[str, Callable[[str], bool]] = MappingProxyType({
    **{key: (lambda value: bool(_NUMBER.match(value))) for key in ("http_status", "attempt", "bypass_attempts",
                                                                   "retry_after_s", "seq")},
    "dropped": frozenset({"call_ended", "out_of_order"}).__contains__,
    "phase": frozenset(phase.value for phase in GoLivePhase).__contains__,
    "track": frozenset(track.value for track in ApiTrack).__contains__,
    "api_track": frozenset(track.value for track in ApiTrack).__contains__,
    "auth_method": frozenset(method.value for method in AuthMethod).__contains__,
    "intent": frozenset(intent.value for intent in Intent).__contains__,
    "visit_reason": VISIT_REASONS.__contains__,
})
"""Keys whose values have a known shape or vocabulary; anything else under them is dropped."""

_DETAIL_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,127}\Z")
_DATE_LIKE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}/\d{1,2}/\d{2,4}")
_PHONE_LIKE = re.compile(r"\d(?:[-.]?\d){6,}")
_OPAQUE_RUN = re.compile(r"[A-Za-z0-9+=]{24,}")
REDACTED_FIELD_ORDER = ("state_from", "state_to", "error_class", "guards_fired", "ema_deep_link", "task_refs",
                        "transcript_ref", "detail")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """The outward form of an audit event: only seed-listed fields, already scrubbed."""

    event_id: str
    occurred_at: datetime
    practice_id: str
    call_id: str | None
    caller_number: str | None
    action: str
    outcome: str
    state_from: str | None
    state_to: str | None
    resource_type: str | None
    resource_ids: tuple[str, ...]
    ema_deep_link: str | None
    task_refs: tuple[str, ...]
    transcript_ref: str | None
    guards_fired: tuple[str, ...]
    command: str | None
    error_class: str | None
    latency_ms: float | None
    detail: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    redactions: tuple[str, ...] = ()
    """Names of fields something was removed from (never the removed values)."""
    guard_action: str | None = None
    """What a guard hit truly did (BLOCKED, ROUTED, ESCALATED, NOTED)."""
    dialogue_path: str | None = None
    """The dialogue path a guard hit acted on (``BOOK_APPOINTMENT/medication-management``)."""
    slot_id: str | None = None
    """The Slot a booking step booked, tried or queued (offered slots are a Slot read's resource_ids)."""

    @property
    def occurred_at_ms(self) -> int:
        """Epoch milliseconds, the unit OCSF `time` uses."""
        return int(self.occurred_at.timestamp() * 1000)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready form (ISO 8601 UTC timestamp, lists for arrays) for SIEM bodies and the CLI."""
        return {
            "event_id": self.event_id,
            "occurred_at": self.occurred_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "practice_id": self.practice_id,
            "call_id": self.call_id,
            "caller_number": self.caller_number,
            "action": self.action,
            "outcome": self.outcome,
            "state_from": self.state_from,
            "state_to": self.state_to,
            "resource_type": self.resource_type,
            "resource_ids": list(self.resource_ids),
            "ema_deep_link": self.ema_deep_link,
            "task_refs": list(self.task_refs),
            "transcript_ref": self.transcript_ref,
            "guards_fired": list(self.guards_fired),
            "command": self.command,
            "error_class": self.error_class,
            "latency_ms": self.latency_ms,
            "detail": dict(self.detail),
            "redactions": list(self.redactions),
            "guard_action": self.guard_action,
            "dialogue_path": self.dialogue_path,
            "slot_id": self.slot_id,
        }


def audit_record(event: AuditEvent) -> AuditRecord:
    """Build the only payload either sink may store or send for `event`."""
    redacted: set[str] = set()

    def machine_name(value: str | None, name: str) -> str | None:
        if value is None or not _looks_sensitive(value):
            return value
        redacted.add(name)
        return None

    def reference(value: str | None, name: str) -> str | None:
        if value is None:
            return None
        cleaned = clean_reference(value)
        if cleaned != value:
            redacted.add(name)
        return cleaned

    guards = tuple(guard for guard in event.guards_fired if machine_name(guard, "guards_fired") is not None)
    task_refs = tuple(ref for ref in (reference(ref, "task_refs") for ref in event.task_refs) if ref is not None)
    detail = {key: value for key, value in event.detail.items() if _detail_entry_allowed(key, value)}
    if len(detail) != len(event.detail):
        redacted.add("detail")
    return AuditRecord(
        event_id=str(event.event_id),
        occurred_at=event.occurred_at.astimezone(UTC),
        practice_id=event.practice_id,
        call_id=event.call_id,
        caller_number=event.caller_number,
        action=event.action.value,
        outcome=event.outcome.value,
        state_from=machine_name(event.state_from, "state_from"),
        state_to=machine_name(event.state_to, "state_to"),
        resource_type=event.resource_type,
        resource_ids=tuple(event.resource_ids),
        ema_deep_link=reference(event.ema_deep_link, "ema_deep_link"),
        task_refs=task_refs,
        transcript_ref=reference(event.transcript_ref, "transcript_ref"),
        guards_fired=guards,
        command=event.command.value if event.command is not None else None,
        error_class=machine_name(event.error_class, "error_class"),
        latency_ms=event.latency_ms,
        detail=MappingProxyType(detail),
        redactions=tuple(name for name in REDACTED_FIELD_ORDER if name in redacted),
        guard_action=event.guard_action.value if event.guard_action is not None else None,
        dialogue_path=event.dialogue_path,
        slot_id=event.slot_id,
    )


def _looks_sensitive(value: str) -> bool:
    """A date (DOB), a phone-like digit run, a secret marker or an opaque token inside a machine name."""
    if _DATE_LIKE.search(value) or _PHONE_LIKE.search(value) or SECRET_MARKERS.search(value):
        return True
    return _has_opaque_token(value)


def _has_opaque_token(value: str) -> bool:
    """A long run mixing letters and digits: an API key, a hex digest or a base64 secret, not a word."""
    for match in _OPAQUE_RUN.finditer(value):
        run = match.group()
        if sum(c.isdigit() for c in run) >= 2 and sum(c.isalpha() for c in run) >= 2:
            return True
    return False


def _detail_entry_allowed(key: str, value: str) -> bool:
    """Allow-listed key, a value of its grammar (or a short token that is not a date, a phone number
    or a secret)."""
    if key not in ALLOWED_DETAIL_KEYS:
        return False
    grammar = DETAIL_GRAMMARS.get(key)
    if grammar is not None:
        return grammar(value)
    return bool(_DETAIL_VALUE.match(value)) and not _looks_sensitive(value)
