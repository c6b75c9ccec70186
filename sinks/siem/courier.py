"""What both delivery paths of the firehose share: the signed POST, outcome reporting, and writes the
broker must acknowledge (dead letters, backlog records).

The live chains (sinks/siem/firehose.py) and the parked backlogs (sinks/siem/parking.py) send,
report and dead-letter the same way; this is that one way. Metrics are best effort, deliveries are not:
a failing metrics backend never turns a delivered event into a dead letter, and a dead letter is
retried until the broker has it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import httpx
from confluent_kafka import KafkaError, KafkaException, Message

from callstream.siem_delivery import SiemOutcome
from sinks.kafka_io import DeadLetterWriter, dead_letter, position
from sinks.siem.endpoints import Endpoint, EndpointDirectory, post_signed
from sinks.siem.outcomes import SiemMetrics
from sinks.siem.policy import SiemPolicy

logger = logging.getLogger(__name__)


class Courier:
    """Sends, reports and dead-letters for the firehose; its HTTP transport is set while the firehose runs."""

    def __init__(self, endpoints: EndpointDirectory, metrics: SiemMetrics, dead_letters: DeadLetterWriter,
                 dead_letter_topic: str, policy: SiemPolicy, rng: random.Random) -> None:
        self.endpoints = endpoints
        self.metrics = metrics
        self.dead_letter_topic = dead_letter_topic
        self.transport: httpx.AsyncHTTPTransport | None = None
        self._dead_letters = dead_letters
        self._backoff = policy.backoff
        self._rng = rng
        self._timeout = httpx.Timeout(policy.request_timeout_s, pool=None).as_dict()
        self._metrics_failed = False

    async def post(self, endpoint: Endpoint, event_id: str, body: bytes) -> tuple[int | None, float | None, float, str]:
        assert self.transport is not None
        return await post_signed(self.transport, endpoint, event_id, body, self._timeout)

    async def dead_letter(self, message: Message, practice_id: str | None, reason: str, error_class: str,
                          attempts: int) -> None:
        """Write to the SIEM dead-letter topic, retrying until the broker acknowledges it."""
        letter = dead_letter(message, reason=reason, error_class=error_class, attempts=attempts, practice_id=practice_id)
        key = practice_id.encode() if practice_id else None
        await self.until_acknowledged(
            lambda settle: self._dead_letters.write_async(self.dead_letter_topic, key, letter, settle),
            "SIEM dead letter for partition {} offset {}".format(*position(message)))

    async def until_acknowledged(self, write: Callable[[Callable[[KafkaError | None], None]], None],
                                 what: str) -> None:
        """Produce with `write(on_done)` until the broker acknowledges it, backing off between refusals."""
        loop = asyncio.get_running_loop()
        retry = 0
        while True:
            acknowledged: asyncio.Future[KafkaError | None] = loop.create_future()

            def settle(error: KafkaError | None, future: asyncio.Future[KafkaError | None] = acknowledged) -> None:
                if not future.done():
                    future.set_result(error)

            try:
                write(settle)
                refusal = await asyncio.wait_for(acknowledged, timeout=30.0)
                failure = None if refusal is None else refusal.name()
            except (KafkaException, BufferError, TimeoutError) as exc:
                failure = type(exc).__name__
            if failure is None:
                return
            logger.warning("%s not written (%s); retrying", what, failure)
            await asyncio.sleep(self._backoff.delay(retry, self._rng))
            retry += 1

    def record(self, practice_id: str, outcome: SiemOutcome, seconds: float | None = None) -> None:
        """Report an outcome; a failing metrics backend must not turn a delivered event into a dead letter."""
        try:
            self.metrics.record_siem_delivery(practice_id, outcome, seconds)
        except Exception as exc:  # noqa: BLE001 - metrics are best effort, deliveries are not
            if not self._metrics_failed:
                self._metrics_failed = True
                logger.warning("SIEM delivery metrics failing (%s); deliveries continue", type(exc).__name__)
