"""The call-state store seam (streams.call_states): a stored value reads back whichever form the table holds."""

from __future__ import annotations

import json

import pytest

from streams.call_states import InMemoryCallStates, stored_state
from tests.streams.callflow.helpers import Call, Driver


def test_a_stored_state_reads_back_as_written_and_as_restored_from_the_changelog() -> None:
    driver = Driver()
    driver.send(Call().started())
    assert driver.state is not None
    written = driver.state.model_dump_json().encode()
    assert stored_state(written) == driver.state
    assert stored_state(json.loads(written)) == driver.state  # what Faust's JSON codec restores
    with pytest.raises(ValueError):
        stored_state(b'{"call_id": 7}')


async def test_the_in_memory_store_keeps_what_is_put_and_deletes_on_none() -> None:
    states = InMemoryCallStates()
    await states.put("call-1", 3, b"{}")
    assert states.get("call-1") == b"{}" and list(states.items()) == [("call-1", b"{}")]
    await states.put("call-1", 3, None)
    await states.put("call-unknown", 3, None)  # deleting what is not there is no error
    assert states == {}
