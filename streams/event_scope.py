"""What belongs to the call event being handled: its write tally and the acknowledgements it must wait for.

``CallProcessor.handle`` opens one scope per event (``event_scope``); the FHIR client's observer counts
write requests into it and the tables hold the event's acknowledgement on their changelog writes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from connectors.fhir import TOKEN_REQUEST_LABEL


@dataclass(slots=True)
class WriteRequests:
    """The FHIR write requests (POST/PUT, resends included) one event sent to its practice.

    Write-success drift is judged on what ModMed answered to each request, not on the command's final
    outcome: the connector resends a write once it has proved the first did not land, so a practice
    failing 20 % of its writes would show as ~4 % failed commands and the degradation would stay hidden
    until it got worse. A write refused before sending (open circuit breaker) is no attempt."""

    sent: int = 0
    succeeded: int = 0


_event_writes: ContextVar[WriteRequests | None] = ContextVar("callstream_event_writes", default=None)

_WRITE_METHODS = frozenset({"POST", "PUT"})

_held_acks: ContextVar[list[Awaitable[None]] | None] = ContextVar("callstream_held_acks", default=None)


def hold_event_ack(publish: Callable[[], Awaitable[None]]) -> None:
    """Publish now and acknowledge the event being handled only once that is acknowledged, without waiting
    for it here: for records that must be durable before the event counts as done but need not delay the
    reply. Outside an event nothing is published (RuntimeError)."""
    held = _held_acks.get()
    if held is None:
        raise RuntimeError("no call event is being handled")
    held.append(publish())


def tally_write_request(resource: str, method: str, status: int | None) -> None:
    """Called by the FHIR client's observer for every HTTP attempt; counts the writes of the event being
    handled (a context variable: the dispatcher's sub-tasks inherit it). Token requests are not writes."""
    tally = _event_writes.get()
    if tally is None or method not in _WRITE_METHODS or resource == TOKEN_REQUEST_LABEL:
        return
    tally.sent += 1
    tally.succeeded += status is not None and 200 <= status < 300



@contextmanager
def event_scope() -> Iterator[tuple[WriteRequests, list[Awaitable[None]]]]:
    """The write tally and held acknowledgements of one event, visible to everything it runs (sub-tasks too)."""
    writes = WriteRequests()
    held: list[Awaitable[None]] = []
    token, held_token = _event_writes.set(writes), _held_acks.set(held)
    try:
        yield writes, held
    finally:
        _event_writes.reset(token)
        _held_acks.reset(held_token)
