"""The FHIR client over real HTTP: its footprint per request, and what it refuses to send."""

from __future__ import annotations

import gc

import pytest
from fhir.resources.R4B.patient import Patient

from callstream.tenants import Practice
from connectors.errors import InvalidRequestError, ResourceNotAllowed
from connectors.fhir import ModMedClient
from connectors.ledger import InMemoryLedger
from connectors.operations import ModMedConnector
from tests.connectors.helpers import Recorder

REQUESTS = 30


async def test_requests_leave_no_reference_cycles_for_the_gc(client: ModMedClient, main_practice: Practice) -> None:
    """A cycle per request (httpx's response ↔ body stream holds ~30 objects) would pile up until a GC pass
    frees thousands of objects at once, pausing every call in flight; each request must free its own."""
    await client.search(main_practice, Patient, {"_count": "2"})  # token, connection and caches warm
    gc.collect()
    gc.disable()
    try:
        for _ in range(REQUESTS):
            await client.search(main_practice, Patient, {"_count": "2"})
        left_for_the_gc = gc.collect()
    finally:
        gc.enable()
    assert left_for_the_gc < REQUESTS, f"{left_for_the_gc} objects in cycles after {REQUESTS} requests"


@pytest.mark.parametrize("resource_id", ["pt-1\n", "pt-1\r\n", "..", "pt/1"])
async def test_an_id_that_is_not_a_whole_fhir_id_is_refused_before_sending(
    client: ModMedClient, main_practice: Practice, task_practice: Practice, recorder: Recorder, resource_id: str
) -> None:
    """An id from a call event or a foreign answer never reaches a URL unless it is a FHIR id and nothing more
    (Python's ``$`` would also accept one trailing newline)."""
    with pytest.raises(ResourceNotAllowed):
        await client.read(main_practice, Patient, resource_id)
    with pytest.raises(InvalidRequestError):
        await ModMedConnector(client, InMemoryLedger()).create_task(
            task_practice, call_id="call-newline", patient_id="pt-1", task_code="callback\n", description="x")
    assert recorder.calls == []
