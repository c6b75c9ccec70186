"""Writes that land once although ModMed has no idempotency keys: the ledger plus "did it land?" checks.

Every write carries a key (connectors.ledger.idempotency_key) and is wrapped in the write-ahead ledger
*and* a practice check: before (re)creating anything the connector asks ModMed whether the write
already landed, so a retry, a lost response or a redelivered event never writes twice. A write is sent
a second time only after that check proved the first one did not land. Each operation brings its own
check (an Appointment at the patient's start, the slot the appointment holds ...); the resources that
carry the key as an identifier share ``carrying_key``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal, TypeVar

from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.task import Task

from callstream.tenants import Practice
from callstream.work_scope import WorkScope
from connectors.errors import ConflictError, InvalidResponseError, ModMedError, RequestNotSentError, RetryableError
from connectors.fhir import ModMedClient
from connectors.ledger import IdempotencyLedger, LedgerState
from connectors.vocabulary import IDEMPOTENCY_KEY_SYSTEM
from guards.model import Command

log = logging.getLogger(__name__)

W = TypeVar("W", Appointment, Task, DocumentReference, Patient, Coverage)
K = TypeVar("K", Task, Patient, Coverage)


class IdempotentWriter:
    """Ledger + practice check around each write of the connector."""

    def __init__(self, client: ModMedClient, ledger: IdempotencyLedger) -> None:
        self._client = client
        self._ledger = ledger

    async def already_done(self, practice: Practice, key: str, model: type[W], scope: WorkScope) -> W | None:
        """The resource the ledger says this key wrote, read back from ModMed; None when not done."""
        entry = self._ledger.get(key, scope=scope)
        if entry is None or entry.state is not LedgerState.DONE or entry.resource_id is None:
            return None
        return await self._client.read(practice, model, entry.resource_id, scope=scope)

    async def write(
        self,
        practice: Practice,
        key: str,
        command: Command,
        method: Literal["POST", "PUT"],
        resource: W,
        landed: Callable[[], Awaitable[W | None]],
        *,
        ask_first: bool,
        scope: WorkScope,
    ) -> W:
        """Ledger + practice check around one write; resend only once the check proved it did not land.

        ``ask_first``: ask the practice (``landed``) before the first attempt. Callers say no only where
        that answer is already known: the write's target was just read, or only callstream writes what
        ``landed`` looks for and a write-ahead ledger proves this key never left. Otherwise the event may
        have been handled by a worker whose ledger entry was lost, or the practice's staff made the write.
        """
        resource_type = resource.get_resource_type()
        if ask_first:
            found = await landed()
            if found is not None:
                return await self._done(key, found, scope)
        await self._ledger.begin(key, command.value, scope=scope)
        for attempt in (1, 2):
            try:
                written = await self._client.write(practice, method, resource, scope=scope)
            except RequestNotSentError as exc:
                await self._ledger.fail(key, type(exc).__name__, scope=scope)
                raise
            except ConflictError:
                found = await landed()  # our own earlier attempt may hold the slot
                if found is not None:
                    return await self._done(key, found, scope)
                await self._ledger.fail(key, "ConflictError", scope=scope)
                raise
            except (RetryableError, InvalidResponseError) as exc:  # outcome unknown: ask the practice
                log.warning(
                    "practice %s: %s %s outcome unknown (%s); checking whether it landed",
                    practice.practice_id, method, resource_type, type(exc).__name__,
                )
                found = await landed()
                if found is not None:
                    return await self._done(key, found, scope)
                if attempt == 2:
                    raise
                await self._ledger.begin(key, command.value, scope=scope)
                continue
            except ModMedError as exc:
                await self._ledger.fail(key, type(exc).__name__, scope=scope)
                raise
            return await self._done(key, written, scope)  # type: ignore[arg-type]
        raise AssertionError("unreachable: the loop returns or raises")

    async def _done(self, key: str, resource: W, scope: WorkScope) -> W:
        assert resource.id is not None
        await self._ledger.complete(key, resource.get_resource_type(), resource.id, scope=scope)
        return resource

    def carrying_key(
        self, practice: Practice, model: type[K], key: str, scope: WorkScope, search: Mapping[str, str] | None = None
    ) -> Callable[[], Awaitable[K | None]]:
        """The check for a write whose resource carries ``key`` as an identifier: the resource, once it landed.

        ModMed finds it by identifier search; ``search`` narrows by something else where ModMed has no
        identifier search for the type (a patient's Coverages), and the key is then matched here.
        """
        params = search or {"identifier": f"{IDEMPOTENCY_KEY_SYSTEM}|{key}"}

        async def landed() -> K | None:
            found = await self._client.search(practice, model, params, scope=scope)
            return next((r for r in found.matches if any(
                i.system == IDEMPOTENCY_KEY_SYSTEM and i.value == key for i in r.identifier or ())), None)

        return landed
