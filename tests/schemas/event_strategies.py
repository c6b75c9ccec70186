"""Hypothesis strategies producing valid instances of every event model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import strategies as st

from schemas import models

identifiers = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,30}", fullmatch=True)
codes = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,20}", fullmatch=True)
phone_numbers = st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True)
printable = st.characters(exclude_categories=["Cc", "Cs"])
short_texts = st.text(alphabet=printable, min_size=1, max_size=40)
long_texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=300)
references = st.text(alphabet=printable, min_size=1, max_size=80)
detail_maps = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_.]{0,15}", fullmatch=True), st.text(alphabet=printable, max_size=40), max_size=5
)
dates = st.dates(min_value=datetime(1900, 1, 1).date(), max_value=datetime(2100, 12, 31).date())
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
timestamps = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31), timezones=offsets)
"""Aware datetimes in any UTC offset with microseconds: the models normalise them to UTC millis."""


def _ordered(pair: tuple[datetime, datetime]) -> tuple[datetime, datetime]:
    earlier, later = sorted(pair, key=lambda moment: moment.astimezone(UTC))
    return earlier, later + timedelta(minutes=5)


call_started = st.builds(models.CallStarted, caller_number=phone_numbers)
caller_identified = st.builds(
    models.CallerIdentified,
    family_name=short_texts,
    given_name=short_texts,
    birth_date=dates,
    callback_number=st.none() | phone_numbers,
)


@st.composite
def intent_recognised(draw: st.DrawFn) -> models.IntentRecognised:
    window = sorted(draw(st.lists(dates, min_size=2, max_size=2)))
    return models.IntentRecognised(
        intent=draw(st.sampled_from(models.Intent)),
        confidence=draw(st.floats(min_value=0.0, max_value=1.0)),
        visit_reason=draw(st.none() | codes),
        provider_hint=draw(st.none() | short_texts),
        location_hint=draw(st.none() | short_texts),
        date_from=window[0] if draw(st.booleans()) else None,
        date_to=window[1] if draw(st.booleans()) else None,
        medication_mentioned=draw(st.booleans()),
        controlled_substance_mentioned=draw(st.booleans()),
        transcript_snippet=draw(st.none() | long_texts),
        appointment_id=draw(st.none() | identifiers),
    )


slot_chosen = st.builds(models.SlotChosen, slot_id=identifiers, offer_id=st.none() | identifiers)
call_ended = st.builds(models.CallEnded, transcript_ref=references, disposition=st.sampled_from(models.CallDisposition))

call_events = st.builds(
    models.CallEvent,
    event_id=st.uuids(),
    call_id=identifiers,
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    occurred_at=timestamps,
    called_number=phone_numbers,
    payload=st.one_of(call_started, caller_identified, intent_recognised(), slot_chosen, call_ended),
)


@st.composite
def offered_slots(draw: st.DrawFn) -> models.OfferedSlot:
    start, end = _ordered(draw(st.tuples(timestamps, timestamps)))
    return models.OfferedSlot(
        slot_id=draw(identifiers),
        start=start,
        end=end,
        practitioner_display=draw(short_texts),
        location_display=draw(short_texts),
        visit_reason=draw(codes),
    )


replies = st.builds(
    models.Reply,
    reply_id=st.uuids(),
    call_id=identifiers,
    in_reply_to=st.uuids(),
    practice_id=st.none() | identifiers,
    template=codes,
    text=long_texts,
    offered_slots=st.lists(offered_slots(), max_size=4),
    escalated=st.booleans(),
    created_at=timestamps,
)

commands = st.builds(
    models.CommandMessage,
    command_id=st.uuids(),
    call_id=identifiers,
    practice_id=identifiers,
    kind=st.sampled_from(models.CommandKind),
    route=st.sampled_from(models.CommandRoute),
    idempotency_key=short_texts,
    params=st.dictionaries(codes, st.text(alphabet=printable, max_size=40), max_size=5),
    issued_at=timestamps,
    attempt=st.integers(min_value=1, max_value=2**31 - 1),
)

audit_events = st.builds(
    models.AuditEvent,
    event_id=st.uuids(),
    occurred_at=timestamps,
    practice_id=identifiers,
    call_id=st.none() | identifiers,
    caller_number=st.none() | phone_numbers,
    action=st.sampled_from(models.AuditAction),
    outcome=st.sampled_from(models.AuditOutcome),
    state_from=st.none() | codes,
    state_to=st.none() | codes,
    resource_type=st.none() | st.sampled_from(["Patient", "Appointment", "Slot", "Task", "Flag"]),
    resource_ids=st.lists(identifiers, max_size=4),
    ema_deep_link=st.none() | identifiers.map(lambda chart: f"https://ema.example/firm/acme/chart/{chart}"),
    task_refs=st.lists(references, max_size=3),
    transcript_ref=st.none() | references,
    guards_fired=st.lists(codes, max_size=3),
    command=st.none() | st.sampled_from(models.CommandKind),
    error_class=st.none() | codes,
    latency_ms=st.none() | st.floats(min_value=0.0, max_value=1e6),
    detail=detail_maps,
)


@st.composite
def alarms(draw: st.DrawFn) -> models.Alarm:
    window_start, window_end = _ordered(draw(st.tuples(timestamps, timestamps)))
    return models.Alarm(
        alarm_id=draw(st.uuids()),
        practice_id=draw(identifiers),
        kind=draw(st.sampled_from(models.AlarmKind)),
        state=draw(st.sampled_from(models.AlarmState)),
        value=draw(st.floats(allow_nan=False, allow_infinity=False)),
        threshold=draw(st.floats(allow_nan=False, allow_infinity=False)),
        window_start=window_start,
        window_end=window_end,
        raised_at=draw(timestamps),
        detail=draw(detail_maps),
    )


dead_letters = st.builds(
    models.DeadLetter,
    dead_letter_id=st.uuids(),
    source_topic=st.from_regex(r"[A-Za-z0-9._\-]{1,40}", fullmatch=True),
    source_partition=st.integers(min_value=0, max_value=2**31 - 1),
    source_offset=st.integers(min_value=0, max_value=2**63 - 1),
    key=st.none() | st.binary(max_size=40),
    value=st.binary(max_size=200),
    reason=short_texts,
    error_class=codes,
    failed_at=timestamps,
    attempts=st.integers(min_value=0, max_value=100),
    practice_id=st.none() | identifiers,
)

appointment_changes = st.builds(
    models.AppointmentChange,
    practice_id=identifiers,
    appointment_id=identifiers,
    status=st.sampled_from(models.AppointmentStatus),
    version_id=st.none() | identifiers,
    last_updated=timestamps,
    source=st.sampled_from(models.ChangeSource),
    observed_at=timestamps,
)

EVENTS_BY_SCHEMA: dict[str, st.SearchStrategy[models.AvroModel]] = {
    "CallEvent": call_events,
    "Reply": replies,
    "Command": commands,
    "AuditEvent": audit_events,
    "Alarm": alarms(),
    "DeadLetter": dead_letters,
    "AppointmentChange": appointment_changes,
}
