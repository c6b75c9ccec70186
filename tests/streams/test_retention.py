"""PHI retention: which stored calls the TTL timer deletes, and the audited purge of abandoned calls."""

from __future__ import annotations

from datetime import timedelta

import pytest

from schemas.models import AuditEvent
from schemas.topics import AUDIT
from streams import callflow
from streams.call_states import InMemoryCallStates
from streams.outputs import KafkaOutputs
from streams.retention import CALL_IDLE_TTL, ENDED_MARKER_TTL, expired, expired_calls, purge_expired
from tests.fixtures.pipeline import TopicReader
from tests.streams.callflow.helpers import NOW, Call, Driver


def test_ttl_expiry_of_live_calls_and_ended_markers() -> None:
    driver, call = Driver(), Call()
    driver.send(call.started())
    driver.send(call.identified())
    assert driver.state is not None and driver.state.holds_phi
    assert not expired(driver.state, NOW + timedelta(minutes=90))
    assert expired(driver.state, NOW + CALL_IDLE_TTL)
    driver.send(call.ended())
    assert expired(driver.state, NOW + ENDED_MARKER_TTL)
    assert callflow.expiry_audit(driver.state).state_to == "expired"


def sweep_cases() -> tuple[callflow.CallState, callflow.CallState, InMemoryCallStates]:
    """A live call and an ended one on partition 3, and a live call of partition 7, as stored."""
    live, ended, elsewhere = Driver(), Driver(), Driver()
    for driver in (live, ended, elsewhere):
        call = Call()
        driver.send(call.started())
        if driver is ended:
            driver.send(call.ended())
    assert live.state is not None and ended.state is not None and elsewhere.state is not None
    states = InMemoryCallStates({d.state.call_id: d.state.model_dump_json().encode() for d in (live, ended)})
    states[elsewhere.state.call_id] = elsewhere.state.model_copy(update={"partition": 7}).model_dump_json().encode()
    return live.state, ended.state, states


async def test_the_ttl_sweep_picks_abandoned_calls_and_old_markers_of_owned_partitions() -> None:
    live, ended, states = sweep_cases()
    states["corrupt"] = b'{"not": "a call"}'
    owned = {3}
    assert await expired_calls(states, owned, NOW + timedelta(minutes=30), chunk=2) == []
    soon = {call_id for call_id, _ in await expired_calls(states, owned, NOW + ENDED_MARKER_TTL, chunk=2)}
    assert soon == {ended.call_id}
    later = {call_id for call_id, _ in await expired_calls(states, owned, NOW + CALL_IDLE_TTL, chunk=2)}
    assert later == {live.call_id, ended.call_id}


@pytest.mark.broker
async def test_the_ttl_sweep_purges_abandoned_calls_and_audits_each_purge(
    outputs: KafkaOutputs, pipeline_broker: str,
) -> None:
    abandoned, ended, states = sweep_cases()
    elsewhere = set(states) - {abandoned.call_id, ended.call_id}
    assert await purge_expired(states, {3}, outputs, NOW + CALL_IDLE_TTL) == 2
    assert set(states) == elsewhere, "another worker's partition is left to that worker"
    gone = {abandoned.call_id, ended.call_id}
    reader = TopicReader(pipeline_broker, AUDIT, AuditEvent)
    try:
        audit = reader.wait_for(lambda rs: any(r is not None and r.call_id in gone for r in rs))
    finally:
        reader.close()
    purged = [r for r in audit if r is not None and r.call_id in gone]
    assert [(r.call_id, r.state_to) for r in purged] == [(abandoned.call_id, "expired")]
