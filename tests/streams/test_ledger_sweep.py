"""The ledger's horizon sweep and refresh against the real broker: tombstones land on the partition of the
entry they forget, only past the horizon and its margins, and a restore from the changelog keeps the rest."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import faust
import pytest
from faust.types.tuples import Message

from callstream.backends import ensure_topics
from callstream.settings import load_settings
from callstream.tenants import parse_tenant_directory
from callstream.work_scope import WorkScope
from connectors.ledger import LedgerEntry, LedgerState, idempotency_key, stored_updated_at
from schemas.topics import CALL_EVENTS, topic_named
from streams.app import Pipeline, WorkerOptions
from streams.faust_boundary import RawTableChangelog
from streams.horizon import HORIZON_MARGIN
from devkit.bench_ledger import read_log
from streams.outputs import KafkaOutputs
from tests.streams.test_app import handling

pytestmark = pytest.mark.broker
PARTITIONS = topic_named(CALL_EVENTS).partitions


@pytest.fixture
async def pipeline(pipeline_broker: str, tmp_path: Path) -> AsyncIterator[Pipeline]:
    """A worker's tables and ledger (the app not started) writing to a changelog of their own on the broker."""
    made = Pipeline(load_settings(kafka_bootstrap_servers=pipeline_broker), parse_tenant_directory({"practices": []}, "empty"),
                    WorkerOptions(app_id=f"ledger-sweep-{uuid.uuid4().hex[:8]}", data_dir=str(tmp_path / "var")))
    ensure_topics(pipeline_broker, [(made.ledger.changelog_topic.get_topic_name(), PARTITIONS)])
    outputs = KafkaOutputs(pipeline_broker)
    outputs.start(asyncio.get_running_loop())
    made.runtime.outputs = outputs
    try:
        yield made
    finally:
        await outputs.close()


def entry(name: str, updated_at: datetime) -> tuple[str, bytes]:
    key = idempotency_key(f"call-{name}", "CREATE_TASK", "Patient/pt-1|callback")
    return key, LedgerEntry(key=key, command="CREATE_TASK", state=LedgerState.DONE, attempts=1, resource_type="Task",
                            resource_id=f"task-{name}", updated_at=updated_at).model_dump_json().encode()


def restored(bootstrap: str, topic: str) -> dict[str, tuple[int, bytes]]:
    """The table a restore builds from the changelog, key → (partition, value): the last record of each key
    wins and a tombstone removes it (what Faust's recovery, or a compacted log, leaves)."""
    table: dict[str, tuple[int, bytes]] = {}
    for message in read_log(bootstrap, topic):
        key = json.loads(message.key())
        if message.value() is None:
            table.pop(key, None)
        else:
            table[key] = (message.partition(), message.value())
    return table


async def test_the_sweep_tombstones_entries_past_the_horizon_on_their_own_partition(
    pipeline: Pipeline, pipeline_broker: str,
) -> None:
    now = datetime.now(UTC)
    cutoff = pipeline.horizon.ledger_cutoff(now)
    writer = RawTableChangelog(pipeline.ledger, pipeline.runtime)
    forgotten, kept = [entry("old-2", cutoff - timedelta(minutes=1)), entry("old-7", cutoff - timedelta(days=30))], [
        entry("young", now - timedelta(minutes=5)),
        entry("past-horizon-within-margin", now - pipeline.horizon.horizon - HORIZON_MARGIN),
    ]
    not_owned = entry("old-elsewhere", cutoff - timedelta(days=1))
    placed = {forgotten[0][0]: 2, forgotten[1][0]: 7, kept[0][0]: 2, kept[1][0]: 7, not_owned[0]: 9}
    await asyncio.gather(*(writer.write(key, placed[key], value) for key, value in [*forgotten, *kept, not_owned]))

    turns = 0

    async def neighbour() -> None:  # a call event's task, say
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    running = asyncio.ensure_future(neighbour())
    try:
        assert await pipeline.write_ledger.forget_past_horizon({2, 7}, now, chunk=2) == 2
    finally:
        running.cancel()
    assert turns >= len(placed) // 2, "the event loop had a turn for others at every chunk"

    assert set(pipeline.ledger.data) == {kept[0][0], kept[1][0], not_owned[0]}
    assert set(writer.partitions) == set(pipeline.ledger.data)
    table = restored(pipeline_broker, pipeline.ledger.changelog_topic.get_topic_name())
    assert table == {key: (placed[key], value) for key, value in [*kept, not_owned]}, \
        "each tombstone removed its entry on the partition it lives on"
    assert await pipeline.write_ledger.forget_past_horizon({2, 7}, now) == 0


async def test_an_entry_an_event_reads_after_the_margin_is_written_again_and_outlives_the_sweep(
    pipeline: Pipeline, pipeline_broker: str,
) -> None:
    now = datetime.now(UTC)
    writer = RawTableChangelog(pipeline.ledger, pipeline.runtime)
    (old_key, old_value), (recent_key, recent_value) = entry("asked-earlier", now - 2 * HORIZON_MARGIN), entry(
        "asked-just-now", now - timedelta(minutes=1))
    await asyncio.gather(writer.write(old_key, 4, old_value), writer.write(recent_key, 4, recent_value))
    scope = handling(4, 500)
    assert pipeline.write_ledger.get(old_key, scope=scope) == LedgerEntry.model_validate_json(old_value)
    assert pipeline.write_ledger.get(recent_key, scope=scope) == LedgerEntry.model_validate_json(recent_value)
    held = scope.held_acks
    assert held is not None and len(held) == 1, "only the entry older than the margin is written again, and the event waits for it"
    await asyncio.gather(*held)

    refreshed = stored_updated_at(pipeline.ledger.data[old_key])
    assert refreshed is not None and refreshed >= now
    table = restored(pipeline_broker, pipeline.ledger.changelog_topic.get_topic_name())
    assert table[old_key][0] == 4 and stored_updated_at(table[old_key][1]) == refreshed
    later = now + pipeline.horizon.horizon + 3 * HORIZON_MARGIN - timedelta(seconds=30)  # cutoff: now - 30 s
    assert await pipeline.write_ledger.forget_past_horizon({4}, later) == 1, "the entry not read since goes"
    assert set(pipeline.ledger.data) == {old_key}


async def test_two_events_in_flight_write_on_their_own_partitions_and_hold_only_their_own_acks(
    pipeline: Pipeline, pipeline_broker: str,
) -> None:
    """Each write passes its event's scope: the pending entry is on the broker before ``begin`` returns, the
    outcome holds that event's acknowledgement and no other's, and each lands on its event's partition."""
    ledger = pipeline.write_ledger
    first, second = handling(3, 40), handling(8, 90)
    one, two = (entry(name, datetime.now(UTC))[0] for name in ("scoped-first", "scoped-second"))

    async def write(key: str, scope: WorkScope) -> None:
        await ledger.begin(key, "CREATE_TASK", scope=scope)
        assert scope.held_acks == [], "a pending entry is awaited, never held"
        await ledger.complete(key, "Task", "task-1", scope=scope)

    await asyncio.gather(write(one, first), write(two, second))
    assert first.held_acks is not None and second.held_acks is not None
    assert len(first.held_acks) == 1 and len(second.held_acks) == 1
    await asyncio.gather(*first.held_acks, *second.held_acks)
    table = restored(pipeline_broker, pipeline.ledger.changelog_topic.get_topic_name())
    assert (table[one][0], table[two][0]) == (3, 8)
    assert {LedgerEntry.model_validate_json(table[key][1]).state for key in (one, two)} == {LedgerState.DONE}


def test_the_sweep_knows_the_partition_of_an_entry_faust_restored(tmp_path: Path) -> None:
    """Faust's memory store records each restored key's changelog partition; the sweep reads that map."""
    made = Pipeline(load_settings(), parse_tenant_directory({"practices": []}, "empty"),
                    WorkerOptions(data_dir=str(tmp_path / "var")))
    key, value = entry("restored", datetime.now(UTC))
    message = Message(made.ledger.changelog_topic.get_topic_name(), 6, 0, 0.0, 0, {}, json.dumps(key).encode(), value,
                      None)
    made.ledger.data.apply_changelog_batch([faust.Event(made.app, key, value, {}, message)],
                                           to_key=lambda k: k, to_value=lambda v: v)
    assert made.ledger.data[key] == value
    assert RawTableChangelog(made.ledger, made.runtime).partitions[key] == 6
