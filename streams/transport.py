"""Faust's Kafka transport with short waits, so a call event is picked up within milliseconds.

faust-streaming builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting to change
it. Kafka answers a waiting fetch as soon as data arrives, but Tansu (the embedded broker) holds it for
the whole wait, which put hundreds of milliseconds on every hop of a caller's turn. A short wait costs a
few idle fetch requests per second on any broker and keeps the turn latency low on all of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

DEFAULT_FETCH_MAX_WAIT_MS = 20
GETMANY_TIMEOUT_S = 0.05
PREFETCH_BACKOFF_S = 0.002


class ShortWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms = DEFAULT_FETCH_MAX_WAIT_MS

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
    """faust.App whose Kafka transport fetches with a short wait (see the module docstring)."""

    def _new_transport(self) -> Any:
        return ShortWaitTransport(self.conf.broker_consumer, self)
