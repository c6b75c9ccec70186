"""Issue 7 acceptance for ClickHouse: after a broker restart and a ClickHouse outage, the stored
row count equals the number of audit events produced; nothing is committed before it is stored."""

from __future__ import annotations

import random
import uuid

import pytest

from callstream.backends import ensure_topics, free_port, open_clickhouse
from callstream.retry import Backoff
from devkit.broker import TansuBroker
from sinks.clickhouse_store import AuditStore
from sinks.consumer import ClickHouseAuditSink
from tests.sinks.audit_helpers import (
    MotoS3,
    Produced,
    committed_offsets,
    discard_broker,
    make_event,
    produce,
    produce_events,
    read_dead_letters,
    run_in_thread,
    wait_until,
)

AUDIT_TOPIC = "audit"
DEAD_LETTERS = "dead-letters"
PARTITIONS = 3
PRACTICES = ("p-east", "p-west", "p-north", "p-south")


def _events(count: int, seed: int) -> list:  # type: ignore[type-arg]
    rng = random.Random(seed)
    return [make_event(rng.choice(PRACTICES), index) for index in range(count)]


@pytest.mark.broker
def test_every_event_lands_once_across_broker_restart_and_clickhouse_outage(
    clickhouse_dsn: str, clickhouse_client, clickhouse_database: str  # type: ignore[no-untyped-def]
) -> None:
    with MotoS3() as s3:
        port = free_port()
        broker = TansuBroker(port=port, storage_engine=f"s3://{s3.bucket}/", env=s3.broker_env)
        broker.start()
        try:
            ensure_topics(broker.bootstrap, [(AUDIT_TOPIC, PARTITIONS), (DEAD_LETTERS, 1)])
            store = AuditStore(open_clickhouse(clickhouse_dsn), clickhouse_database)  # the sink's own connection
            store.migrate()
            group = f"audit-clickhouse-{uuid.uuid4().hex[:8]}"
            sink = ClickHouseAuditSink(store, bootstrap=broker.bootstrap, topic=AUDIT_TOPIC, group_id=group,
                                       dead_letter_topic=DEAD_LETTERS, max_rows=60, max_wait_s=0.2,
                                       backoff=Backoff(base_s=0.1, cap_s=0.5), rng=random.Random(3))
            table = f"{clickhouse_database}.audit_events"
            stored = AuditStore(clickhouse_client, clickhouse_database).count_events  # the test's own connection
            events, messages = Produced(), Produced()  # audit events; everything incl. poison

            def send(batch: Produced, *, are_events: bool = True) -> None:
                messages.add(batch)
                if are_events:
                    events.add(batch)

            def committed() -> dict[int, int]:
                offsets = committed_offsets(broker.bootstrap, group, AUDIT_TOPIC, PARTITIONS)
                return {partition: offset for partition, offset in offsets.items() if offset}

            with run_in_thread(sink.run):
                # Phase 1: normal operation, including two poison messages.
                send(produce_events(broker.bootstrap, AUDIT_TOPIC, _events(150, seed=1)))
                send(produce(broker.bootstrap, AUDIT_TOPIC, [(b"p-east", b"\x00not avro"), (b"p-west", b"")]),
                     are_events=False)
                wait_until(lambda: stored() == events.count, 30, "phase-1 events in ClickHouse")
                wait_until(lambda: committed() == messages.ends, 15, "phase-1 offsets committed")
                phase_one_ends = dict(messages.ends)

                # Phase 2: ClickHouse refuses writes (the real engine: the table is detached).
                clickhouse_client.command(f"DETACH TABLE {table}")
                failures_before = sink.stats.insert_failures
                send(produce_events(broker.bootstrap, AUDIT_TOPIC, _events(150, seed=2)))
                wait_until(lambda: sink.stats.insert_failures >= failures_before + 3, 20, "insert retries during outage")
                assert committed() == phase_one_ends, "offsets advanced while ClickHouse was down"

                # Phase 3: the broker crashes and comes back on the same storage, still during the outage.
                assert broker.process is not None
                broker.process.kill()
                broker.process.wait(10)
                broker = TansuBroker(port=port, storage_engine=f"s3://{s3.bucket}/", env=s3.broker_env)
                broker.start()
                send(produce_events(broker.bootstrap, AUDIT_TOPIC, _events(100, seed=3)))

                # Phase 4: ClickHouse is back; everything lands, exactly once after de-duplication.
                clickhouse_client.command(f"ATTACH TABLE {table}")
                wait_until(lambda: stored() == events.count, 60, "every produced event in ClickHouse")
                wait_until(lambda: committed() == messages.ends, 20, "every offset committed")
            assert events.count == 400 and stored() == 400
            assert sink.stats.insert_failures >= 3 and sink.stats.dead_lettered >= 2
            letters = read_dead_letters(broker.bootstrap, DEAD_LETTERS, expected=2)
            assert {letter.value for letter in letters} == {b"\x00not avro", b""}
            assert all(letter.source_topic == AUDIT_TOPIC and letter.error_class == "SchemaError" for letter in letters)
        finally:
            discard_broker(broker)


@pytest.mark.broker
def test_rebalance_during_an_outage_loses_nothing(
    kafka_bootstrap: str, topic_name: str, clickhouse_dsn: str, clickhouse_client, clickhouse_database: str  # type: ignore[no-untyped-def]
) -> None:
    """A second sink joins while ClickHouse is down (revoked rows are dropped uncommitted and re-read by
    the new owner), then leaves again; every event is stored once."""
    dead_letters = f"{topic_name}-dlq"
    ensure_topics(kafka_bootstrap, [(topic_name, 4), (dead_letters, 1)])
    store = AuditStore(open_clickhouse(clickhouse_dsn), clickhouse_database)
    store.migrate()
    stored = AuditStore(clickhouse_client, clickhouse_database).count_events
    group = f"audit-clickhouse-{uuid.uuid4().hex[:8]}"
    practices = [f"practice-{index}" for index in range(16)]  # keys spread over every partition

    def new_sink() -> ClickHouseAuditSink:
        return ClickHouseAuditSink(AuditStore(open_clickhouse(clickhouse_dsn), clickhouse_database),
                                   bootstrap=kafka_bootstrap, topic=topic_name, group_id=group,
                                   dead_letter_topic=dead_letters, max_rows=25, max_wait_s=0.2,
                                   backoff=Backoff(base_s=0.1, cap_s=0.3), rng=random.Random(5))

    def batch(count: int, start: int) -> list:  # type: ignore[type-arg]
        return [make_event(practices[index % 16], index) for index in range(start, start + count)]

    messages = Produced()
    first, second = new_sink(), new_sink()
    with run_in_thread(first.run):
        messages.add(produce_events(kafka_bootstrap, topic_name, batch(80, 0)))
        wait_until(lambda: stored() == 80, 30, "events stored by the first sink")
        clickhouse_client.command(f"DETACH TABLE {clickhouse_database}.audit_events")
        messages.add(produce_events(kafka_bootstrap, topic_name, batch(80, 80)))
        wait_until(lambda: first.stats.insert_failures >= 2, 20, "the first sink to hit the outage")
        with run_in_thread(second.run):
            wait_until(lambda: first.stats.revocations >= 1 and second.stats.insert_failures >= 1, 30,
                       "a rebalance during the outage")
            clickhouse_client.command(f"ATTACH TABLE {clickhouse_database}.audit_events")
            wait_until(lambda: stored() == 160, 30, "the outage backlog stored")
            messages.add(produce_events(kafka_bootstrap, topic_name, batch(80, 160)))
            wait_until(lambda: stored() == 240, 30, "events stored by both sinks")
        messages.add(produce_events(kafka_bootstrap, topic_name, batch(40, 240)))  # second has left: first takes over
        wait_until(lambda: stored() == 280, 30, "events stored after the second sink left")
        wait_until(lambda: committed_offsets(kafka_bootstrap, group, topic_name, 4)
                   == {partition: messages.ends.get(partition, 0) for partition in range(4)}, 20, "offsets committed")
    assert second.stats.rows_inserted > 0 and first.stats.revocations >= 2
    assert stored() == 280
