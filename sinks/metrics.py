"""What `callstream sinks run` exports on /metrics, on its own registry.

Same names as the worker where the meaning is the same (`callstream_siem_deliveries_total`,
`callstream_alarm_state`), so the PrometheusRule and the dashboard need not know which process
a series came from. Backlog gauges are read from the firehose at scrape time, so a practice that
caught up simply disappears from them. The practice id is the only tenant label.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from callstream.siem_delivery import SiemOutcome
from sinks.backlog import BacklogFigures

SIEM_DELIVERY_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _BacklogCollector(Collector):
    def __init__(self, snapshot: Callable[[], Iterable[BacklogFigures]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        events = GaugeMetricFamily("callstream_siem_backlog_events",
                                   "Audit events owed to a parked practice's SIEM endpoint.", labels=["practice_id"])
        oldest = GaugeMetricFamily("callstream_siem_oldest_undelivered_seconds",
                                   "Age of a parked practice's oldest undelivered audit event.", labels=["practice_id"])
        for figures in self._snapshot():
            events.add_metric([figures.practice_id], figures.events)
            oldest.add_metric([figures.practice_id], figures.oldest_age_s)
        yield events
        yield oldest


class SinkMetrics:
    """The sinks process's metrics; satisfies sinks.siem.outcomes.SiemMetrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.siem_deliveries = Counter("callstream_siem_deliveries", "SIEM webhook deliveries by outcome.",
                                       ("practice_id", "outcome"), registry=r)
        self.siem_delivery_seconds = Histogram("callstream_siem_delivery_seconds", "SIEM webhook delivery latency.",
                                               (), buckets=SIEM_DELIVERY_BUCKETS, registry=r)
        self.alarm_state = Gauge("callstream_alarm_state", "Sentinel alarm state: 1 firing, 0 clear.",
                                 ("practice_id", "kind"), registry=r)
        self.clickhouse_insert_lag = Gauge("callstream_clickhouse_insert_lag_seconds",
                                           "Seconds from the newest event of the last ClickHouse insert to the insert.",
                                           registry=r)
        self.clickhouse_last_insert = Gauge("callstream_clickhouse_last_insert_timestamp_seconds",
                                            "When the ClickHouse audit sink last inserted rows.", registry=r)

    def record_siem_delivery(self, practice_id: str, outcome: SiemOutcome | str, seconds: float | None = None) -> None:
        self.siem_deliveries.labels(practice_id, SiemOutcome(outcome).value).inc()
        if seconds is not None:
            self.siem_delivery_seconds.observe(max(0.0, seconds))

    def set_alarm_state(self, practice_id: str, kind: str, firing: bool) -> None:
        self.alarm_state.labels(practice_id, kind).set(1 if firing else 0)

    def observe_insert(self, newest_event_at: float) -> None:
        """One ClickHouse insert whose newest event happened at `newest_event_at` (epoch seconds)."""
        now = time.time()
        self.clickhouse_insert_lag.set(max(0.0, now - newest_event_at))
        self.clickhouse_last_insert.set(now)

    def watch_backlogs(self, snapshot: Callable[[], Iterable[BacklogFigures]]) -> None:
        """Export the firehose's parked practices at every scrape."""
        self.registry.register(_BacklogCollector(snapshot))
