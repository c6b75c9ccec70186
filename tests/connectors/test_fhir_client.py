"""The FHIR client's footprint per request over real HTTP."""

from __future__ import annotations

import gc

from fhir.resources.R4B.patient import Patient

from callstream.tenants import Practice
from connectors.fhir import ModMedClient

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
