"""The SIEM_DELIVERY alarm: FIRING on `callstream.alarms.v1` when a parked practice's oldest owed event
waits past the threshold, CLEARED once it owes nothing.

When to fire and clear is sinks.backlog.OutageAlarms (pure); this module publishes its transitions
as Alarm records and tells the sinks process's alarm gauge. A refused publish is logged, never fatal:
the next transition is published regardless.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from confluent_kafka import KafkaException, Producer

from schemas.models import Alarm, AlarmKind, AlarmState
from schemas.serde import AvroSerde
from schemas.topics import ALARMS
from sinks.backlog import BacklogFigures, Clock, OutageAlarms

logger = logging.getLogger(__name__)


class DeliveryAlarms:
    """Publishes SIEM_DELIVERY transitions of the parked practices' backlogs (`figures()`, read each check)."""

    def __init__(self, producer: Producer, figures: Callable[[], list[BacklogFigures]], clock: Clock,
                 alarms: OutageAlarms, topic: str = ALARMS,
                 on_alarm: Callable[[str, bool], None] | None = None) -> None:
        self._producer = producer
        self._figures = figures
        self._clock = clock
        self._alarms = alarms
        self._topic = topic
        self._serde = AvroSerde.for_topic(ALARMS)
        self._on_alarm = on_alarm
        """Told (practice id, firing) on every SIEM_DELIVERY transition: the sinks' alarm gauge."""

    def check(self) -> None:
        """SIEM_DELIVERY on callstream.alarms.v1: FIRING when a practice's oldest owed event waits past the
        threshold, CLEARED once it owes nothing."""
        now = self._clock.now()
        ages = {figures.practice_id: figures.oldest_age_s for figures in self._figures()}
        for practice_id in sorted(set(ages) | self._alarms.firing):
            transition = self._alarms.observe(practice_id, ages.get(practice_id))
            if transition is None:
                continue
            age = ages.get(practice_id, 0.0)
            moment = datetime.fromtimestamp(now, UTC)
            alarm = Alarm(alarm_id=uuid.uuid4(), practice_id=practice_id, kind=AlarmKind.SIEM_DELIVERY,
                          state=AlarmState(transition.value), value=age, threshold=self._alarms.threshold_s,
                          window_start=moment - timedelta(seconds=age), window_end=moment, raised_at=moment)
            try:
                self._producer.produce(self._topic, key=practice_id.encode(),
                                       value=self._serde.encode(alarm.to_avro()))
            except (KafkaException, BufferError) as exc:
                logger.warning("SIEM_DELIVERY alarm for practice %s not published (%s)", practice_id,
                               type(exc).__name__)
            if self._on_alarm is not None:
                self._on_alarm(practice_id, transition.value == "FIRING")
            logger.warning("SIEM_DELIVERY %s for practice %s (oldest owed event %.0f s old)", transition.value,
                           practice_id, age)
