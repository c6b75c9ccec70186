"""Dropped events are recorded: an event of an ended call or an older one of a live call changes nothing, and
says so in an audit record the replay tool reads (and the sinks keep); a redelivered last event stays silent."""

from __future__ import annotations

import uuid

from schemas.models import AuditAction, AuditEvent, AuditOutcome
from sinks.payload import audit_record
from streams import callflow
from streams.callflow import DropReason
from tests.streams.callflow.helpers import NOW, Call, Driver


def test_an_older_event_of_a_live_call_is_dropped_with_its_seq_and_the_sinks_keep_the_record() -> None:
    driver, call = Driver(), Call()
    started = call.started()
    driver.send(started)
    driver.send(call.intent("GENERAL_QUESTION"))
    before = driver.state
    assert before is not None
    step = callflow.on_event(before, started.model_copy(update={"event_id": uuid.uuid4()}), driver.practice, NOW)
    assert (step.dropped, step.outputs, step.work, step.state) == (DropReason.OUT_OF_ORDER, (), None, before)
    record = callflow.dropped_audit(before, started.seq, DropReason.OUT_OF_ORDER)
    assert (record.action, record.outcome) == (AuditAction.CALL_STATE_TRANSITION, AuditOutcome.BLOCKED)
    assert record.state_from == record.state_to == before.phase.value
    event = AuditEvent(event_id=uuid.uuid4(), occurred_at=NOW, practice_id="pain-1001", call_id=call.call_id,
                       action=record.action, outcome=record.outcome, detail=record.detail)
    assert dict(audit_record(event).detail) == {"dropped": "out_of_order", "seq": "0"}


def test_every_event_of_an_ended_call_is_dropped_but_its_last_one_redelivered_is_silent() -> None:
    driver, call = Driver(), Call()
    started, ended = call.started(), call.ended()
    driver.send(started)
    driver.send(ended)
    state = driver.state
    assert state is not None and state.ended
    assert callflow.on_event(state, started, driver.practice, NOW).dropped is DropReason.CALL_ENDED
    later = call.intent("GENERAL_QUESTION")
    assert callflow.on_event(state, later, driver.practice, NOW).dropped is DropReason.CALL_ENDED
    again = callflow.on_event(state, ended, driver.practice, NOW)
    assert (again.dropped, again.outputs) == (None, ())
