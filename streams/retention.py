"""PHI retention of the call-state table: how long a call's state may stay, and the sweep that deletes it.

A live call's state holds the caller's PHI (number, name, date of birth, chart references) until the call
ends; ``call_ended`` then replaces it by a PHI-free marker that only lets late redeliveries be recognised.
A call whose end never arrives is abandoned: after ``CALL_IDLE_TTL`` without an event its PHI is deleted
and the purge is audited. Ended markers go after ``ENDED_MARKER_TTL``. The worker's TTL timer
(``streams.app``) calls ``purge_expired`` for the partitions it owns; everything deciding what is deleted
lives here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from streams import callflow
from streams.callflow import CallState
from streams.call_states import CallStateStore, stored_state
from streams.outputs import Outputs
from streams.records import audit_record

CALL_IDLE_TTL = timedelta(hours=2)
"""A live call with no event for this long is abandoned: its PHI is purged."""
ENDED_MARKER_TTL = timedelta(hours=1)
"""How long the PHI-free marker of an ended call stays, so late redeliveries are recognised."""
SWEEP_CHUNK = 200
"""Stored call states read between two yields to the event loop during the TTL sweep."""


def expired(state: CallState, now: datetime) -> bool:
    """Whether the TTL timer must delete this call: abandoned live calls and old ended markers."""
    return now - state.updated_at >= (ENDED_MARKER_TTL if state.ended else CALL_IDLE_TTL)


async def purge_expired(states: CallStateStore, owned_partitions: set[int], outputs: Outputs, now: datetime) -> int:
    """The TTL sweep: delete abandoned calls (their PHI) and old ended markers of the owned partitions, and
    audit each abandoned call's purge; returns once every deletion and audit record is acknowledged."""
    pending: list[Awaitable[None]] = []
    expired = await expired_calls(states, owned_partitions, now)
    for call_id, state in expired:
        pending.append(states.put(call_id, state.partition, None))
        if not state.ended:
            audit = audit_record(callflow.expiry_audit(state), f"expired:{call_id}", state.practice_id, call_id,
                                 None, now)
            pending.append(outputs.audit(audit))
    await asyncio.gather(*pending)
    return len(expired)


async def expired_calls(states: CallStateStore | Mapping[str, Any], owned_partitions: set[int], now: datetime,
                        *, chunk: int = SWEEP_CHUNK) -> list[tuple[str, CallState]]:
    """Calls the TTL sweep must delete: abandoned live calls (PHI) and old ended markers, on owned partitions.

    Reading a stored state costs tens of microseconds and the table may hold thousands of calls: the
    sweep gives the event loop back every ``chunk`` entries, so call events never wait behind it. An
    unreadable stored value is left alone (it is replaced when its call's next event arrives)."""
    found = []
    for index, (call_id, stored) in enumerate(list(states.items()), start=1):
        if index % chunk == 0:
            await asyncio.sleep(0)
        try:
            state = stored_state(stored)
        except ValidationError:
            continue
        if state.partition in owned_partitions and expired(state, now):
            found.append((call_id, state))
    return found
