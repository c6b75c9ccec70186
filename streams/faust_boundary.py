"""Where callstream reaches into faust-streaming, aiokafka and aiohttp below their public API: one place.

Faust's Kafka transport, with short waits and safe commits:

- a call event is picked up within milliseconds. faust-streaming builds its aiokafka consumer with
  ``fetch_max_wait_ms=1500`` and no setting to change it. Kafka answers a waiting fetch as soon as data
  arrives, but Tansu (the embedded broker) holds it for the whole wait, which put hundreds of milliseconds
  on every hop of a caller's turn. A short wait costs a few idle fetch requests per second on any broker
  and keeps the turn latency low on all of them;
- commits never pass an event still in flight: the app's ``offsets`` (``streams.offsets.OffsetTracker``)
  decide the offset committed for the partitions it tracks; Faust's own acked-offset bookkeeping is
  cleared, unused, for those partitions.

The ``calls`` and ``ledger`` tables write their changelog records themselves (``RawTableChangelog``),
through the outputs producer, so each write is acknowledged before its event is (``ChangelogCallStates``,
``ChangelogLedger``; streams.app describes the tables).

``PRIVATE_DEPENDENCIES`` lists every private attribute or method of those libraries this code (and the
FHIR client's aiohttp transport) relies on; tests/streams/test_faust_boundary.py fails, naming the
override, when an upgrade renames one. A new private access belongs in that list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import faust
from aiokafka.structs import TopicPartition as KafkaTopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from callstream.work_scope import BACKGROUND, WorkScope
from connectors.ledger import LedgerEntry, LedgerState, MappingLedger
from streams.horizon import SWEEP_CHUNK, RedeliveryHorizon, past_horizon
from streams.offsets import OffsetTracker
from streams.outputs import KafkaOutputs

DEFAULT_FETCH_MAX_WAIT_MS = 20
GETMANY_TIMEOUT_S = 0.05
PREFETCH_BACKOFF_S = 0.002


FAUST_MACHINERY_LOG = logging.getLogger("faust.callstream")
"""Where the worker's Faust services (these and streams.app's runtime) log their start and stop: under ``faust``, whose INFO is held back below DEBUG
(callstream.logs), as Faust's own services' is; mode would name the logger after this module."""


@dataclass(frozen=True, slots=True)
class PrivateDependency:
    """A private attribute or method of faust-streaming, aiokafka or aiohttp that an override relies on.

    ``owner`` is ``module:Class``. A ``method`` must still be a function of the class; an ``attribute``
    must still be assigned (``self.<name> =``) in ``assigned_in``. ``read_in`` names the library method
    whose source must still use it: what makes the override take effect (e.g. aiokafka building its
    fetcher from ``_fetch_max_wait_ms`` in ``start``)."""

    owner: str
    name: str
    kind: Literal["method", "attribute"]
    used_by: str
    assigned_in: str | None = None
    read_in: str | None = None


_THREAD = "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread"
_FAUST_CONSUMER = "faust.transport.consumer:Consumer"
_KAFKA_CONSUMER = "aiokafka.consumer.consumer:AIOKafkaConsumer"

PRIVATE_DEPENDENCIES: tuple[PrivateDependency, ...] = (
    PrivateDependency(_THREAD, "_create_worker_consumer", "method", "ShortWaitConsumerThread._create_worker_consumer",
                      read_in="_create_consumer"),
    PrivateDependency(_KAFKA_CONSUMER, "_fetch_max_wait_ms", "attribute",
                      "ShortWaitConsumerThread._create_worker_consumer", assigned_in="__init__", read_in="start"),
    PrivateDependency(_THREAD, "_consumer", "attribute", "ShortWaitConsumerThread.on_start", assigned_in="on_start"),
    PrivateDependency(_KAFKA_CONSUMER, "_fetcher", "attribute", "ShortWaitConsumerThread.on_start",
                      assigned_in="start"),
    PrivateDependency("aiokafka.consumer.fetcher:Fetcher", "_prefetch_backoff", "attribute",
                      "ShortWaitConsumerThread.on_start", assigned_in="__init__", read_in="_proc_fetch_request"),
    PrivateDependency(_FAUST_CONSUMER, "_new_offset", "method", "ShortWaitConsumer._new_offset",
                      read_in="_filter_committable_offsets"),
    PrivateDependency(_FAUST_CONSUMER, "_acked", "attribute", "ShortWaitConsumer._new_offset",
                      assigned_in="__init__", read_in="ack"),
    PrivateDependency(_FAUST_CONSUMER, "_acked_index", "attribute", "ShortWaitConsumer._new_offset",
                      assigned_in="__init__", read_in="ack"),
    PrivateDependency(_FAUST_CONSUMER, "_committed_offset", "attribute", "ShortWaitConsumer.perform_seek",
                      assigned_in="__init__"),
    PrivateDependency("faust.transport.consumer:ThreadDelegateConsumer", "_thread", "attribute",
                      "ShortWaitConsumer.perform_seek", assigned_in="__init__"),
    PrivateDependency("faust.transport.consumer:ThreadDelegateConsumer", "_new_consumer_thread", "method",
                      "ShortWaitConsumer._new_consumer_thread", read_in="__init__"),
    PrivateDependency("faust.app.base:App", "_new_transport", "method", "PipelineFaustApp._new_transport",
                      read_in="transport"),
    PrivateDependency("faust.stores.memory:Store", "_key_partition", "attribute", "_key_partitions",
                      assigned_in="__post_init__", read_in="apply_changelog_batch"),
    PrivateDependency("aiohttp.client:ClientSession", "_retry_connection", "attribute",
                      "connectors.http_transport.AiohttpTransport._open", assigned_in="__init__", read_in="_request"),
)
"""Every private name of those libraries callstream touches, here and in the FHIR client's aiohttp transport
(which the connector layer owns, so it cannot live here). tests/streams/test_faust_boundary.py checks each
on the installed versions and that these modules touch no other."""

class ShortWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms = DEFAULT_FETCH_MAX_WAIT_MS
    logger = FAUST_MACHINERY_LOG

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when start() builds its fetcher, which happens after this returns.
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        # Faust "pauses" table changelog partitions only in its own bookkeeping, so aiokafka keeps
        # prefetching the worker's own changelog writes; nobody drains them, and while a partition of a
        # broker holds undrained records aiokafka sends that broker no fetch for its prefetch backoff
        # (0.1 s): every call event waited up to that long, again and again. Shorten the backoff; a
        # partition with undrained records is still never fetched twice, so memory stays bounded.
        consumer = self._consumer
        assert consumer is not None  # created by super().on_start()
        consumer._fetcher._prefetch_backoff = PREFETCH_BACKOFF_S


class ShortWaitConsumer(faust_aiokafka.Consumer):
    logger = FAUST_MACHINERY_LOG

    def _tracker(self) -> PipelineFaustApp | None:
        app = self.app
        return app if isinstance(app, PipelineFaustApp) and app.tracked_topics else None

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit: callstream's contiguous-prefix rule for tracked topics, Faust's elsewhere."""
        app = self._tracker()
        if app is None or tp.topic not in app.tracked_topics:
            return super()._new_offset(tp)
        self._acked[tp].clear()
        self._acked_index[tp].clear()
        return app.offsets.committable(tp)

    async def perform_seek(self) -> None:
        """Faust seeks each partition to its committed offset. A call-events partition with none (its worker
        died before the first commit) must start at its beginning, as ``auto_offset_reset=earliest`` says;
        seen under kill -9, the fetcher otherwise kept the position it stood at and events already in the
        partition were never processed."""
        await super().perform_seek()
        app = self._tracker()
        if app is None:
            return
        uncommitted = [KafkaTopicPartition(tp.topic, tp.partition) for tp in self.assignment()
                       if tp.topic in app.tracked_topics and self._committed_offset.get(tp) is None]
        if uncommitted:
            await self._thread.seek_to_beginning(*uncommitted)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        app = self._tracker()
        if app is not None:
            app.offsets.assigned(tp for tp in assigned if tp.topic in app.tracked_topics)
        await super().on_partitions_assigned(assigned, generation_id)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Faust's handler waits for in-flight events and commits their prefix; after it, the revoked
        partitions are forgotten, so an event finishing later moves nothing."""
        try:
            await super().on_partitions_revoked(revoked)
        finally:
            app = self._tracker()
            if app is not None:
                app.offsets.revoked(tp for tp in revoked if tp.topic in app.tracked_topics)

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ShortWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        """Faust's fetch loop waits up to 1 s per call on the consumer thread, and the offset commits it
        queues there wait behind it (stalling delivery for up to that second): wait briefly instead."""
        async for record in super().getmany(min(timeout, GETMANY_TIMEOUT_S)):
            yield record


class ShortWaitTransport(faust_aiokafka.Transport):
    Consumer = ShortWaitConsumer


class PipelineFaustApp(faust.App):
    """faust.App whose Kafka transport fetches with a short wait and commits ``offsets``' safe prefix for
    ``tracked_topics`` (see the module docstring)."""

    logger = FAUST_MACHINERY_LOG
    offsets: OffsetTracker
    tracked_topics: frozenset[str] = frozenset()

    def track_offsets(self, topics: frozenset[str]) -> OffsetTracker:
        """Commit ``topics`` by the contiguous-prefix rule; the agent reports deliveries to the returned tracker."""
        self.offsets = OffsetTracker()
        self.tracked_topics = topics
        return self.offsets

    def _new_transport(self) -> Any:
        return ShortWaitTransport(self.conf.broker_consumer, self)


class OutputsHolder(Protocol):
    """Whatever holds the worker's outputs producer (streams.app's runtime, once started)."""

    outputs: KafkaOutputs | None


class RawTableChangelog:
    """Writes one key of a raw-value table: to the table's store, and to its changelog through the outputs
    producer (librdkafka). The records carry exactly the key and value bytes Faust writes (JSON key, raw
    value), so Faust restores the table from them as ever."""

    def __init__(self, table: faust.Table, runtime: OutputsHolder) -> None:
        self.table = table
        self._runtime = runtime
        self._topic = table.changelog_topic.get_topic_name()
        self.partitions = _key_partitions(table)

    def write(self, key: str, partition: int, value: bytes | None, *,
              on_callers_clock: bool = False) -> asyncio.Future[None]:
        """Store ``value`` (None: delete) and publish it; the future completes on the broker's acknowledgement."""
        outputs = self._runtime.outputs
        assert outputs is not None  # the agent and the timers start once the runtime is ready
        record_key, _ = self.table.changelog_topic.prepare_key(key, "json")
        if value is None:
            self.table.data.pop(key, None)
            self.partitions.pop(key, None)
        else:
            self.table.data[key] = value
            self.partitions[key] = partition
        return outputs.changelog(self._topic, partition, record_key, value, on_callers_clock=on_callers_clock)


class ChangelogCallStates:
    """The ``calls`` table as the processor's CallStateStore: reads from the table's store, writes through
    ``RawTableChangelog``, awaited.

    Faust's own table writes go through its Python producer and are flushed only before an offset
    commit; here each write is acknowledged before its event is."""

    def __init__(self, table: faust.Table, runtime: OutputsHolder) -> None:
        self._changelog = RawTableChangelog(table, runtime)

    def get(self, call_id: str) -> Any:
        return self._changelog.table.data.get(call_id)

    def items(self) -> list[tuple[str, Any]]:
        return list(self._changelog.table.data.items())

    async def put(self, call_id: str, partition: int, value: bytes | None) -> None:
        await self._changelog.write(call_id, partition, value)


class ChangelogLedger(MappingLedger):
    """The ``ledger`` table as a write-ahead idempotency ledger: each entry is written to the table's store
    and to its changelog, on the partition of the event being handled (the ``scope`` each call passes; where
    Faust's own table writes go, so the worker that owns the call restores it).

    A ``pending`` entry is acknowledged before the write it announces leaves. So for an event that reached
    the partition after this worker took it over, no entry means no worker ever attempted the write, and
    the connector need not ask the practice before a first write whose marker only callstream sets
    (connectors.operations). Events already in the partition when it was assigned get no such proof:
    a previous owner may still be finishing them, or may have run older code without write-ahead.

    An outcome (``done``, ``failed``) holds back the event's acknowledgement, not the reply: were it lost,
    the entry would read ``pending`` and the practice would be asked, which is always safe. Records of one
    key reach the changelog in order: a record waits for the key's previous one to be acknowledged.

    Entries are forgotten (tombstoned) only past the redelivery horizon, and an entry an event reads is
    written again once it is older than the horizon's margin: no event old enough to need a forgotten entry
    is processed (``streams.horizon`` states the bound), so forgetting keeps the proof for late duplicates.
    The proof also needs acknowledged records to survive a broker failure: the producers use acks=all, so in
    production the changelog topics need replication with ``min.insync.replicas`` of 2 or more."""

    write_ahead = True

    def __init__(self, table: faust.Table, runtime: OutputsHolder, horizon: RedeliveryHorizon) -> None:
        super().__init__(table.data)
        self._changelog = RawTableChangelog(table, runtime)
        self._horizon = horizon
        self._fresh_from: dict[int, int] = {}
        self._unsettled: dict[str, asyncio.Future[None]] = {}

    def get(self, key: str, *, scope: WorkScope = BACKGROUND) -> LedgerEntry | None:
        """The entry; read while an event is handled (``scope``) and older than the horizon's margin, it is
        written again with the time of reading (the event's acknowledgement waits for it), so copies of this
        event find it for as long as the horizon lets them through."""
        entry = super().get(key)
        event = scope.event
        now = datetime.now(UTC)
        if entry is None or event is None or not self._horizon.refresh_due(entry.updated_at, now):
            return entry
        value = entry.model_copy(update={"updated_at": now}).model_dump_json().encode()
        partition = event.partition
        scope.hold_ack(lambda: self._settling(key, self._changelog.write(key, partition, value)))
        return entry

    async def forget_past_horizon(self, owned: set[int], now: datetime, *, chunk: int = SWEEP_CHUNK) -> int:
        """Tombstone the entries of the ``owned`` partitions past the horizon; returns how many, once the broker
        acknowledged them all. ``chunk`` entries at a time are read and their stale ones tombstoned in one
        step (no event can write an entry in between), then acknowledged before the next chunk."""
        cutoff = self._horizon.ledger_cutoff(now)
        keys = tuple(self._store)
        forgotten = 0
        for start in range(0, len(keys), chunk):
            await asyncio.sleep(0)
            stale = past_horizon(keys[start:start + chunk], self._store, self._changelog.partitions, owned, cutoff)
            await asyncio.gather(*(self._settling(key, self._changelog.write(key, partition, None))
                                   for key, partition in stale))
            forgotten += len(stale)
        return forgotten

    def partitions_assigned(self, end_offsets: dict[int, int]) -> None:
        """Call-event partition → its end offset when this worker took it (events from there on are fresh)."""
        self._fresh_from = dict(end_offsets)

    def partitions_revoked(self) -> None:
        self._fresh_from = {}

    def proves_unattempted(self, key: str, *, scope: WorkScope = BACKGROUND) -> bool:
        event = scope.event
        if event is None:
            return False
        fresh_from = self._fresh_from.get(event.partition)
        return fresh_from is not None and event.offset >= fresh_from and super().proves_unattempted(key)

    async def _put(self, entry: LedgerEntry, scope: WorkScope) -> LedgerEntry:
        event = scope.event
        if event is None:
            raise RuntimeError("ledger entries are written while a call event is handled")
        previous = self._unsettled.pop(entry.key, None)
        if previous is not None:
            await asyncio.shield(previous)
        value = entry.model_dump_json().encode()
        partition = event.partition
        if entry.state is LedgerState.PENDING:
            await self._changelog.write(entry.key, partition, value, on_callers_clock=True)
        else:
            scope.hold_ack(lambda: self._settling(entry.key, self._changelog.write(entry.key, partition, value)))
        return entry

    def _settling(self, key: str, acknowledged: asyncio.Future[None]) -> asyncio.Future[None]:
        """Track the key's record (an outcome, a refresh, a tombstone) until the broker acknowledged it."""
        self._unsettled[key] = acknowledged

        def settled(done: asyncio.Future[None]) -> None:
            if self._unsettled.get(key) is done:
                del self._unsettled[key]

        acknowledged.add_done_callback(settled)
        return acknowledged


def _key_partitions(table: faust.Table) -> MutableMapping[str, int]:
    """The table store's key → changelog partition map. Faust's memory store fills it as it restores a
    table and drops the keys of partitions this worker no longer holds once a recovery completes; writes
    through ``RawTableChangelog`` keep it too, and the ledger's horizon sweep reads it."""
    partitions = getattr(table.data, "_key_partition", None)
    if not isinstance(partitions, MutableMapping):
        raise RuntimeError("the table store keeps no key partitions (faust-streaming's memory store does)")
    return partitions
