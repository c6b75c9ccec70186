"""The redelivery horizon: which events may still be processed, which ledger entries may be forgotten, and
that the two agree (no event the pipeline processes can need an entry the sweep has forgotten)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from callstream.errors import ConfigError
from callstream.settings import load_settings
from callstream.tenants import TenantDirectory
from connectors.dispatch import Dispatcher
from connectors.fhir import ModMedClient
from connectors.ledger import InMemoryLedger, LedgerEntry, LedgerState, stored_updated_at
from connectors.operations import ModMedConnector
from schemas.models import AuditAction, DeadLetter
from schemas.serde import AvroSerde
from schemas.topics import CALL_EVENTS, topic_named
from streams.horizon import (
    DEFAULT_HORIZON,
    HORIZON_MARGIN,
    REFUSAL_CLASS,
    RedeliveryHorizon,
    past_horizon,
)
from streams.metrics import Metrics
from streams.call_states import InMemoryCallStates
from streams.processor import CallProcessor
from streams.records import RawEvent
from streams.work import DISPATCH_TIMEOUT_S, MAX_WORK_STEPS
from tests.fixtures.outputs import InMemoryOutputs
from tests.streams.callflow.helpers import NOW, Call, practice

H = DEFAULT_HORIZON.horizon
M = HORIZON_MARGIN
CLOCK_SKEW = timedelta(minutes=5)
"""What the margin must leave room for between workers' clocks (NTP keeps them within seconds)."""
EVENT_SPAN = timedelta(seconds=MAX_WORK_STEPS * DISPATCH_TIMEOUT_S)
"""The longest an event runs from its horizon check to its last ledger read."""


def entry(key: str, updated_at: datetime) -> bytes:
    return LedgerEntry(key=key, command="CREATE_TASK", state=LedgerState.DONE, attempts=1, resource_type="Task",
                       resource_id="task-1", updated_at=updated_at).model_dump_json().encode()


def test_the_default_horizon_is_the_call_events_retention_and_a_setting_changes_it() -> None:
    assert H == timedelta(milliseconds=topic_named(CALL_EVENTS).retention_ms) == timedelta(days=7)
    assert RedeliveryHorizon.of(load_settings()) == DEFAULT_HORIZON
    assert RedeliveryHorizon.of(load_settings(redelivery_horizon_ms=2 * 86_400_000)).horizon == timedelta(days=2)
    with pytest.raises(ConfigError, match="redelivery_horizon_ms"):
        load_settings(redelivery_horizon_ms=60_000)  # shorter than a long call


def test_the_margin_covers_an_event_s_longest_run_and_clock_skew() -> None:
    assert EVENT_SPAN + 2 * CLOCK_SKEW <= M


@pytest.mark.parametrize(("age", "refused"), [
    (timedelta(0), False),
    (H, False),
    (H + timedelta(milliseconds=1), True),
    (-M, False),  # the telephony side's clock a little ahead
    (-M - timedelta(milliseconds=1), True),
])
def test_events_are_processed_only_within_the_horizon(age: timedelta, refused: bool) -> None:
    reason = DEFAULT_HORIZON.refusal(NOW - age, NOW)
    assert (reason is not None) == refused
    if reason is not None:
        assert "redelivery horizon" in reason


def test_a_refusal_names_durations_only() -> None:
    assert DEFAULT_HORIZON.refusal(NOW - timedelta(days=9, seconds=3), NOW) == (
        "event occurred 9 days, 0:00:03 ago, beyond the redelivery horizon of 7 days, 0:00:00: the ledger may "
        "have forgotten its writes, so it is not processed")


def test_entries_are_forgotten_three_margins_after_the_horizon_and_refreshed_after_one() -> None:
    assert DEFAULT_HORIZON.ledger_cutoff(NOW) == NOW - H - 3 * M
    assert not DEFAULT_HORIZON.refresh_due(NOW - M, NOW)
    assert DEFAULT_HORIZON.refresh_due(NOW - M - timedelta(milliseconds=1), NOW)


@given(
    first=st.timedeltas(min_value=-M, max_value=H),
    wrote_after=st.timedeltas(min_value=timedelta(0), max_value=EVENT_SPAN),
    copy=st.timedeltas(min_value=-M, max_value=H),
    read_after=st.timedeltas(min_value=timedelta(0), max_value=EVENT_SPAN),
    errors=st.tuples(*[st.timedeltas(min_value=-CLOCK_SKEW / 2, max_value=CLOCK_SKEW / 2)] * 3),
)
@example(first=-M, wrote_after=timedelta(0), copy=H, read_after=EVENT_SPAN,  # the tightest corner
         errors=(timedelta(0), -CLOCK_SKEW / 2, CLOCK_SKEW / 2))
def test_no_copy_of_a_processed_event_finds_its_ledger_entry_forgotten(
    first: timedelta, wrote_after: timedelta, copy: timedelta, read_after: timedelta,
    errors: tuple[timedelta, timedelta, timedelta],
) -> None:
    """An event that occurred at NOW passes worker A's check when A's clock reads ``NOW + first`` and writes
    or reads an entry by ``wrote_after`` later; a copy of it passes worker B's check when B's clock reads
    ``NOW + copy`` and reads the entry by ``read_after`` later, while worker C sweeps. Each clock has its own
    error against real time; ``first`` and ``copy`` span exactly what the checks let through."""
    a, b, c = errors
    assert DEFAULT_HORIZON.refusal(NOW, NOW + first) is None and DEFAULT_HORIZON.refusal(NOW, NOW + copy) is None
    oldest = NOW + first + wrote_after - M  # A's clock: an entry it wrote, or read and did not need to refresh
    read = NOW + copy - b + read_after  # real time
    assert oldest >= DEFAULT_HORIZON.ledger_cutoff(read + c)


def test_the_sweep_picks_old_readable_entries_of_owned_partitions() -> None:
    cutoff = NOW - H - 3 * M
    old, young = cutoff - timedelta(seconds=1), cutoff + timedelta(seconds=1)
    store: dict[str, Any] = {
        "old-owned": entry("cs1-" + "a" * 64, old),
        "young-owned": entry("cs1-" + "b" * 64, young),
        "old-other-partition": entry("cs1-" + "c" * 64, old),
        "old-unknown-partition": entry("cs1-" + "d" * 64, old),
        "unreadable": b"{not json",
        "a-mapping": {"updated_at": old.isoformat()},
    }
    partitions = {key: 3 for key in store if key not in ("old-other-partition", "old-unknown-partition")}
    partitions["old-other-partition"] = 5
    assert past_horizon(store, store, partitions, {3}, cutoff) == [("old-owned", 3)]
    assert past_horizon(["young-owned", "gone"], store, partitions, {3}, cutoff) == []


def test_a_naive_or_missing_updated_at_reads_as_unreadable() -> None:
    assert stored_updated_at(entry("cs1-" + "a" * 64, NOW)) == NOW
    assert stored_updated_at(b'{"updated_at": "2026-03-03T15:00:00"}') is None
    assert stored_updated_at(b'{"state": "done"}') is None
    assert stored_updated_at(None) is None


@pytest.fixture
async def processor_at() -> AsyncIterator[Any]:
    """Hands one call's first event to a processor whose clock reads ``NOW + age``."""
    async with ModMedClient() as client:  # never called: a call start needs no ModMed
        async def handle(age: timedelta) -> tuple[InMemoryOutputs, InMemoryCallStates]:
            published, states, ledger = InMemoryOutputs(), InMemoryCallStates(), InMemoryLedger()
            processor = CallProcessor(tenants=TenantDirectory([practice()]), outputs=published, states=states,
                                      dispatcher=Dispatcher(ModMedConnector(client, ledger), ledger),
                                      metrics=Metrics(), clock=lambda: NOW + age)
            call = Call()
            await processor.handle(RawEvent(CALL_EVENTS, 2, 40, call.call_id.encode(),
                                            AvroSerde.for_topic(CALL_EVENTS).encode(call.started().to_avro())))
            return published, states

        yield handle


@pytest.mark.parametrize("age", [H + timedelta(seconds=1), -M - timedelta(seconds=1)], ids=["old", "future"])
async def test_an_event_outside_the_horizon_is_dead_lettered_and_not_processed(processor_at: Any,
                                                                                  age: timedelta) -> None:
    published, states = await processor_at(age)
    [letter] = published.dead_letters
    assert isinstance(letter, DeadLetter) and letter.error_class == REFUSAL_CLASS
    assert "redelivery horizon" in letter.reason and letter.practice_id == "pain-1001"
    assert any(a.action is AuditAction.DEAD_LETTER and a.error_class == REFUSAL_CLASS
               for a in published.audits)
    assert not states, "the call was not started"


async def test_an_event_inside_the_horizon_is_processed(processor_at: Any) -> None:
    published, states = await processor_at(H)
    assert published.dead_letters == []
    assert len(states) == 1
