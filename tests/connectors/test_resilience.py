"""Faults over real HTTP (private sandbox): lost responses, 5xx, timeouts, 429s, the limiter, the breaker."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Iterator

import pytest
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.location import Location
from fhir.resources.R4B.patient import Patient

from callstream.tenants import Practice
from connectors.breaker import BreakerState
from connectors.errors import CircuitOpenError, RateLimitedError, RetryableError
from connectors.fhir import ClientConfig, ModMedClient
from connectors.ledger import InMemoryLedger, LedgerState, idempotency_key
from connectors.operations import ModMedConnector
from connectors.ratelimit import RateLimiterRegistry
from guards.model import Command, VisitReason
from sandbox.generator import build_world
from tests.connectors.helpers import PracticeSet, Recorder, practice_entry
from tests.fixtures.sandbox import MovableTime, SandboxServer, running_sandbox

FAST_RETRIES = ClientConfig(backoff_base_s=0.01, backoff_cap_s=0.02, breaker_failure_threshold=3, breaker_reset_s=0.5)


@pytest.fixture
def faulted(private_sandbox: SandboxServer) -> Iterator[SandboxServer]:
    """The private sandbox, with every practice's faults cleared after the test."""
    yield private_sandbox
    for listing in private_sandbox.practices:
        private_sandbox.clear_faults(listing["practice_id"])


@pytest.fixture
def booking_practice(private_practices: PracticeSet) -> Practice:
    return private_practices.proprietary(fhir_task_create=False)


@pytest.fixture
def other_practice(private_practices: PracticeSet) -> Practice:
    return private_practices.proprietary(fhir_task_create=True)


async def test_lost_write_response_books_exactly_once(
    faulted: SandboxServer, booking_practice: Practice, limiters: RateLimiterRegistry, recorder: Recorder
) -> None:
    ledger = InMemoryLedger()
    async with ModMedClient(limiters=limiters, observer=recorder, config=FAST_RETRIES) as client:
        connector = ModMedConnector(client, ledger)
        patient = (await client.search(booking_practice, Patient, {"_count": "3"}, max_pages=1)).matches[1]
        today = dt.date.today()
        offer = (await connector.search_slots(
            booking_practice, visit_reason=VisitReason.FOLLOW_UP, date_from=today + dt.timedelta(days=2),
            date_to=today + dt.timedelta(days=12),
        ))[0]
        faulted.set_faults(booking_practice.practice_id, error_5xx_after_write_ratio=1.0)
        booked = await connector.book_appointment(booking_practice, call_id="call-lost", patient_id=patient.id, slot_id=offer.slot_id)
        faulted.clear_faults(booking_practice.practice_id)
        assert recorder.count(resource="Appointment", method="POST") == 1
        assert recorder.count(resource="Appointment", method="POST", status=500) == 1
        key = idempotency_key("call-lost", Command.BOOK_APPOINTMENT, f"Patient/{patient.id}|Slot/{offer.slot_id}")
        assert ledger.get(key).state is LedgerState.DONE and ledger.get(key).resource_id == booked.id
        redelivered = await ModMedConnector(client, InMemoryLedger()).book_appointment(
            booking_practice, call_id="call-lost", patient_id=patient.id, slot_id=offer.slot_id
        )
        assert redelivered.id == booked.id
        existing = await client.search(booking_practice, Appointment, {"patient": patient.id, "date": offer.start.isoformat()})
        assert [a.id for a in existing.matches if a.status == "booked"] == [booked.id]


async def test_reads_retry_5xx_then_fail_and_writes_never_resend_blindly(
    faulted: SandboxServer, booking_practice: Practice, limiters: RateLimiterRegistry, recorder: Recorder
) -> None:
    async with ModMedClient(limiters=limiters, observer=recorder, config=ClientConfig(backoff_base_s=0.01)) as client:
        await client.search(booking_practice, Location, {}, max_pages=1)  # token before the fault
        faulted.set_faults(booking_practice.practice_id, error_5xx_ratio=1.0)
        with pytest.raises(RetryableError) as failure:
            await client.search(booking_practice, Location, {}, max_pages=1)
        assert failure.value.status == 500
        assert recorder.count(resource="Location", status=500) == 3  # bounded attempts
        with pytest.raises(RetryableError):
            await ModMedConnector(client, InMemoryLedger()).book_appointment(
                booking_practice, call_id="call-5xx", patient_id="pt-x", slot_id="slot-x"
            )
        assert recorder.count(resource="Appointment", method="POST") == 0  # nothing was sent blindly


async def test_timeouts_are_retryable_and_bounded(
    faulted: SandboxServer, booking_practice: Practice, limiters: RateLimiterRegistry, recorder: Recorder
) -> None:
    config = ClientConfig(read_timeout_s=0.15, backoff_base_s=0.01, attempts=2)
    async with ModMedClient(limiters=limiters, observer=recorder, config=config) as client:
        await client.search(booking_practice, Location, {}, max_pages=1)
        faulted.set_faults(booking_practice.practice_id, latency_ms=400)
        with pytest.raises(RetryableError, match="in time"):
            await client.search(booking_practice, Location, {}, max_pages=1)
        assert recorder.count(resource="Location", status=None) == 2


async def test_429_is_waited_out_honouring_retry_after_or_reported(
    faulted: SandboxServer, booking_practice: Practice, limiters: RateLimiterRegistry, recorder: Recorder
) -> None:
    async with ModMedClient(limiters=limiters, observer=recorder) as client:
        await client.search(booking_practice, Location, {}, max_pages=1)
        limiter = client.limiter(booking_practice)
        before = limiter.stats().http_429
        faulted.set_faults(booking_practice.practice_id, burst_429=1)
        await client.search(booking_practice, Location, {}, max_pages=1)
        assert limiter.stats().http_429 == before + 1
        assert [status for *_, status in recorder.calls[-2:]] == [429, 200]
        (_, refused_at), (resent_at, _) = recorder.moments[-2:]
        paused_until = limiter.stats().paused_until  # the limiter's clock is time.monotonic, like the recorder's
        assert paused_until >= refused_at + 1.0  # Retry-After: 1 paused the key...
        assert resent_at >= paused_until  # ...and the resend waited for the pause to end
    async with ModMedClient(limiters=RateLimiterRegistry(), config=ClientConfig(request_budget_s=0.5)) as impatient:
        await impatient.search(booking_practice, Location, {}, max_pages=1)
        faulted.set_faults(booking_practice.practice_id, burst_429=5)
        with pytest.raises(RateLimitedError) as refused:
            await impatient.search(booking_practice, Location, {}, max_pages=1)
        assert refused.value.retry_after == 1.0 and refused.value.status == 429


async def test_client_limiter_holds_calls_instead_of_earning_429s(tmp_path_factory: pytest.TempPathFactory) -> None:
    world = build_world(seed=31, practices=1, patients_per_practice=2)
    with running_sandbox(world) as server:
        listing = server.practices[0]
        server.update_settings(listing["practice_id"], rate_limit_per_minute=8)
        practice = practice_entry(listing, tmp_path_factory.mktemp("limit"), rate_limit_per_min=8)
        async with ModMedClient(limiters=RateLimiterRegistry(burst_fraction=1.0)) as client:
            reads = [asyncio.ensure_future(client.search(practice, Location, {}, max_pages=1)) for _ in range(10)]
            done, pending = await asyncio.wait(reads, timeout=1.5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            assert len(done) == 7 and all(task.exception() is None for task in done)  # 1 token + 7 searches = 8
            stats = server.stats(listing["practice_id"])
            assert stats["calls"] == 8 and stats["status_429"] == 0
            assert client.limiter(practice).stats().http_429 == 0


async def test_breaker_isolates_a_failing_practice(
    faulted: SandboxServer, booking_practice: Practice, other_practice: Practice, recorder: Recorder
) -> None:
    clock = MovableTime()
    config = dataclasses.replace(FAST_RETRIES, breaker_reset_s=60.0)  # only the moved clock ends the open state
    async with ModMedClient(limiters=RateLimiterRegistry(), observer=recorder, config=config,
                            clock=clock.monotonic) as client:
        for practice in (booking_practice, other_practice):
            await client.search(practice, Location, {}, max_pages=1)
        faulted.set_faults(booking_practice.practice_id, error_5xx_ratio=1.0)
        with pytest.raises(RetryableError):
            await client.search(booking_practice, Location, {}, max_pages=1)
        assert client.session(booking_practice).breaker.state is BreakerState.OPEN
        calls_before = faulted.stats(booking_practice.practice_id)["calls"]
        with pytest.raises(CircuitOpenError):
            await client.search(booking_practice, Location, {}, max_pages=1)
        assert faulted.stats(booking_practice.practice_id)["calls"] == calls_before  # failed fast, nothing sent
        healthy = await client.search(other_practice, Location, {}, max_pages=1)
        assert healthy.matches and client.session(other_practice).breaker.state is BreakerState.CLOSED
        faulted.clear_faults(booking_practice.practice_id)
        assert client.session(booking_practice).breaker.state is BreakerState.OPEN
        clock.advance(config.breaker_reset_s)
        assert client.session(booking_practice).breaker.state is BreakerState.HALF_OPEN
        await client.search(booking_practice, Location, {}, max_pages=1)  # the probe succeeds
        assert client.session(booking_practice).breaker.state is BreakerState.CLOSED


async def test_a_slow_practice_does_not_hold_up_another(
    faulted: SandboxServer, booking_practice: Practice, other_practice: Practice
) -> None:
    config = ClientConfig(read_timeout_s=3.0, max_in_flight_per_practice=4)
    async with ModMedClient(limiters=RateLimiterRegistry(), config=config) as client:
        for practice in (booking_practice, other_practice):
            await client.search(practice, Location, {}, max_pages=1)
        faulted.set_faults(booking_practice.practice_id, latency_ms=1500)
        slow = [asyncio.ensure_future(client.search(booking_practice, Location, {}, max_pages=1)) for _ in range(12)]
        await asyncio.sleep(0.05)
        fast = asyncio.ensure_future(client.search(other_practice, Location, {}, max_pages=1))
        done, _ = await asyncio.wait([*slow, fast], return_when=asyncio.FIRST_COMPLETED)
        assert done == {fast} and fast.result().matches
        faulted.clear_faults(booking_practice.practice_id)
        await asyncio.gather(*slow)
