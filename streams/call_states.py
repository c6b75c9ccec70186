"""Where a call's state lives between its events: the store the processor reads and writes, and reading
a stored value back into a ``CallState``.

The worker's store is the changelogged ``calls`` table (``streams.faust_boundary.ChangelogCallStates``); tests
and tools use the dict.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, Protocol

from streams.callflow import CallState


class CallStateStore(Protocol):
    """Where per-call state lives between events (``CallState`` JSON, keyed by call id).

    ``put`` returns once the state is durable: the event that changed it is acknowledged only after, so a
    worker killed at any moment resumes every call from a state at least as new as its committed offset."""

    def get(self, call_id: str) -> Any: ...

    def items(self) -> Iterable[tuple[str, Any]]: ...

    def put(self, call_id: str, partition: int, value: bytes | None) -> Awaitable[None]:
        """Store ``value`` (None deletes) for the call, whose events live on ``partition``."""


class InMemoryCallStates(dict[str, Any]):
    """A CallStateStore in a dict (tests, tools): durable as soon as it is set."""

    async def put(self, call_id: str, partition: int, value: bytes | None) -> None:
        if value is None:
            self.pop(call_id, None)
        else:
            self[call_id] = value


def stored_state(stored: bytes | str | Mapping[str, Any]) -> CallState:
    """A call state from the table: the JSON bytes written while processing, or the mapping Faust's JSON
    codec makes of them when it restores the table from its changelog after a restart.

    Raises:
        ValidationError: the stored value is not a call state (the caller starts the call afresh).
    """
    if isinstance(stored, bytes | str):
        return CallState.model_validate_json(stored)
    return CallState.model_validate(stored)
