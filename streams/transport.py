"""Faust's Kafka transport with short waits, so a call event is picked up within milliseconds, and with
commits that never pass an event still in flight.

faust-streaming builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting to change
it. Kafka answers a waiting fetch as soon as data arrives, but Tansu (the embedded broker) holds it for
the whole wait, which put hundreds of milliseconds on every hop of a caller's turn. A short wait costs a
few idle fetch requests per second on any broker and keeps the turn latency low on all of them.

Commits: the app's ``offsets`` (``streams.offsets.OffsetTracker``) decide the offset committed for the
partitions it tracks; Faust's own acked-offset bookkeeping is cleared, unused, for those partitions.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import faust
from aiokafka.structs import TopicPartition as KafkaTopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.offsets import OffsetTracker

DEFAULT_FETCH_MAX_WAIT_MS = 20
GETMANY_TIMEOUT_S = 0.05
PREFETCH_BACKOFF_S = 0.002


FAUST_MACHINERY_LOG = logging.getLogger("faust.callstream")
"""Where the worker's Faust services (these and streams.app's runtime) log their start and stop: under ``faust``, whose INFO is held back below DEBUG
(callstream.logs), as Faust's own services' is; mode would name the logger after this module."""


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
