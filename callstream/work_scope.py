"""What one piece of work carries from the call processor down to the FHIR client, passed explicitly.

The processor opens a ``WorkScope`` per call event (``WorkScope.for_event``) and hands it down: the work
adapter gives it the turn's deadline, the dispatcher and the connector pass it to the idempotency
ledger and to every FHIR client request. Each layer reads what it needs and nothing calls back up:

- ``deadline``: the caller's turn (``callstream.deadline``); every wait the connectors control ends
  before it or fails fast with a typed error. None: background work, no caller waiting;
- ``event``: the partition and offset of the call event being handled; the changelog ledger writes its
  entries on that partition and proves "never attempted" only for events fresh on it. None: no event
  (review retries, the intake poller, go-live), and the changelog ledger refuses to write;
- ``writes``: the FHIR write requests the event sent, for write-success drift;
- ``held_acks``: publications the event's acknowledgement waits for (``hold_ack``).

``BACKGROUND`` is the scope of work without a caller or an event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from callstream.deadline import Deadline


@dataclass(frozen=True, slots=True)
class EventPosition:
    """Where the call event being handled sits in its topic."""

    partition: int
    offset: int


@dataclass(slots=True)
class WriteRequests:
    """The FHIR write requests (POST/PUT, resends included) one event sent to its practice.

    Write-success drift is judged on what ModMed answered to each request, not on the command's final
    outcome: the connector resends a write once it has proved the first did not land, so a practice
    failing 20 % of its writes would show as ~4 % failed commands and the degradation would stay hidden
    until it got worse. A write refused before sending (open circuit breaker) is no attempt."""

    sent: int = 0
    succeeded: int = 0

    def record(self, status: int | None) -> None:
        """One write request went out; ``status`` is ModMed's answer (None: no answer arrived)."""
        self.sent += 1
        self.succeeded += status is not None and 200 <= status < 300


@dataclass(frozen=True, slots=True)
class WorkScope:
    """The deadline, event position, write tally and held acknowledgements of one piece of work."""

    deadline: Deadline | None = None
    event: EventPosition | None = None
    writes: WriteRequests | None = None
    held_acks: list[Awaitable[None]] | None = field(default=None, compare=False)

    @classmethod
    def for_event(cls, partition: int, offset: int) -> WorkScope:
        """A fresh scope for one call event: its position, an empty tally, nothing held yet, no deadline."""
        return cls(event=EventPosition(partition, offset), writes=WriteRequests(), held_acks=[])

    def under(self, deadline: Deadline | None) -> WorkScope:
        """The same event's scope with another deadline (a turn's, a write's own)."""
        return replace(self, deadline=deadline)

    def hold_ack(self, publish: Callable[[], Awaitable[None]]) -> None:
        """Publish now and acknowledge the event only once that is acknowledged, without waiting for it here:
        for records that must be durable before the event counts as done but need not delay the reply.
        Outside an event nothing is published (RuntimeError)."""
        if self.held_acks is None:
            raise RuntimeError("no call event is being handled")
        self.held_acks.append(publish())


BACKGROUND = WorkScope()
"""Work without a caller or an event: no deadline, no tally, nothing to hold, no ledger writes."""
