"""The worker's write-ahead ledger decides when a missing entry proves a write never attempted; the worker
runs the keeper of the EMA sessions it owns."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from faust.types import TP

from callstream.settings import load_settings
from callstream.tenants import parse_tenant_directory
from callstream.work_scope import BACKGROUND, WorkScope
from connectors.fhir import ModMedClient
from connectors.ledger import idempotency_key
from schemas.topics import CALL_EVENTS
from streams.app import Pipeline, WorkerOptions
from tests.streams.callflow.helpers import practice

KEY = idempotency_key("call-fresh", "CREATE_TASK", "Patient/pt-1|callback")


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    """The worker's app and tables, not started (no broker needed to ask the ledger)."""
    return Pipeline(load_settings(), parse_tenant_directory({"practices": []}, "empty"),
                    WorkerOptions(data_dir=str(tmp_path / "var")))


def handling(partition: int, offset: int) -> WorkScope:
    """The scope CallProcessor.handle passes down for the call event at (partition, offset)."""
    return WorkScope.for_event(partition, offset)


def test_only_an_event_that_arrived_after_the_assignment_gets_the_proof(pipeline: Pipeline) -> None:
    ledger = pipeline.write_ledger
    assert not ledger.proves_unattempted(KEY, scope=handling(4, 120)), \
        "before the assignment's end offsets are known: no proof"
    ledger.partitions_assigned({4: 100})
    assert ledger.proves_unattempted(KEY, scope=handling(4, 120))
    assert not ledger.proves_unattempted(KEY, scope=handling(4, 99)), \
        "in the partition before this worker took it: ask the practice"
    assert not ledger.proves_unattempted(KEY, scope=handling(5, 500)), "a partition without a recorded assignment"
    assert ledger.proves_unattempted(KEY, scope=handling(4, 100))
    ledger.partitions_revoked()
    assert not ledger.proves_unattempted(KEY, scope=handling(4, 100)), "during a rebalance"
    ledger.partitions_assigned({4: 100})
    assert not ledger.proves_unattempted(KEY, scope=BACKGROUND), "outside an event"
    assert not ledger.proves_unattempted(KEY), "no scope is background work"


async def test_the_ledger_refuses_a_write_outside_a_call_event_and_stores_nothing(pipeline: Pipeline) -> None:
    """Its entries live on the partition of the event that wrote them: without one (background work) there
    is no partition to write on, so the write is refused before anything is stored or sent."""
    ledger = pipeline.write_ledger
    with pytest.raises(RuntimeError):
        await ledger.begin(KEY, "CREATE_TASK")
    with pytest.raises(RuntimeError):
        await ledger.complete(KEY, "Task", "task-1", scope=BACKGROUND)
    assert KEY not in pipeline.ledger.data
    assert ledger.get(KEY, scope=handling(4, 1)) is None


def test_an_entry_takes_the_proof_away(pipeline: Pipeline) -> None:
    ledger = pipeline.write_ledger
    ledger.partitions_assigned({4: 0})
    pipeline.ledger.data[KEY] = b"{}"  # even an unreadable entry is an attempt
    assert not ledger.proves_unattempted(KEY, scope=handling(4, 7))


def test_the_consumer_commits_only_the_finished_prefix_of_call_events(pipeline: Pipeline) -> None:
    """Faust's own rule would commit 21 here (min(acked) - committed == 1 passes its gap check) and lose
    event 19 to a crash; the pipeline's consumer asks streams.offsets. Uses Faust's private commit
    bookkeeping (_acked, _acked_index, _committed_offset, _filter_committable_offsets): an upgrade that
    renames them fails here."""
    consumer = pipeline.app.consumer
    tp = TP(CALL_EVENTS, 3)
    slow = pipeline.offsets.started(tp, 19)
    quick = pipeline.offsets.started(tp, 20)
    consumer._committed_offset[tp] = 19
    consumer._acked[tp].append(20)
    consumer._acked_index[tp].add(20)
    pipeline.offsets.finish(quick)
    assert consumer._filter_committable_offsets([tp]) == {}
    assert consumer._acked[tp] == [], "Faust's unused bookkeeping does not grow"
    pipeline.offsets.finish(slow)
    assert consumer._filter_committable_offsets([tp]) == {tp: 21}


def test_other_topics_keep_fausts_commit_rule(pipeline: Pipeline) -> None:
    consumer = pipeline.app.consumer
    tp = TP("some-other-topic", 0)
    consumer._acked[tp].extend([0, 1, 2])
    consumer._acked_index[tp].update([0, 1, 2])
    assert consumer._filter_committable_offsets([tp]) == {tp: 3}


def test_the_faust_hooks_the_uncommitted_seek_relies_on_exist(pipeline: Pipeline) -> None:
    """streams.faust_boundary starts call-events partitions without a committed offset at their beginning, through
    Faust's perform_seek, its committed-offset map and the consumer thread's seek_to_beginning: an upgrade
    that renames them fails here."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    consumer = pipeline.app.consumer
    assert callable(consumer.perform_seek) and callable(AIOKafkaConsumerThread.seek_to_beginning)
    assert consumer._committed_offset.get(TP(CALL_EVENTS, 0)) is None


async def test_the_worker_keeps_its_ema_sessions_until_it_stops(tmp_path: Path) -> None:
    """The process that owns the EMA sessions runs their keeper (idle contexts closed, the rest checked), and
    stops it before it closes them; no practice here ever used EMA, so Chromium never starts."""
    pipeline = Pipeline(load_settings(), parse_tenant_directory({"practices": []}, "empty"),
                        WorkerOptions(data_dir=str(tmp_path / "var"), ema_upkeep_s=0.05, ema_idle_close_s=0.05))
    client = ModMedClient()
    try:
        await pipeline.runtime._ema(pipeline.settings, client)
        sessions = pipeline.runtime.ema_sessions
        assert sessions is not None
        first = sessions.keeper(practice())
        async with asyncio.timeout(10):
            while sessions.keeper(practice()) is first:  # the keeper closed the unused practice's session
                await asyncio.sleep(0.02)
        await pipeline.runtime.on_stop()
        kept = sessions.keeper(practice())
        await asyncio.sleep(0.3)
        assert sessions.keeper(practice()) is kept, "the keeper must stop with the worker"
        assert sessions.browser.context_count == 0
    finally:
        await client.aclose()
