"""What the SIEM firehose reports per practice and outcome: the metrics seam and the in-process tally.

The firehose reports through `SiemMetrics` only, so the sinks process can hand it its Prometheus
metrics (sinks.metrics) and a test or the CLI's periodic summary a `DeliveryTally`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from callstream.siem_delivery import SiemOutcome


class SiemMetrics(Protocol):
    """What the firehose reports; streams.metrics.Metrics satisfies it (siem_deliveries_total)."""

    def record_siem_delivery(self, practice_id: str, outcome: SiemOutcome | str, seconds: float | None = None) -> None:
        """One outcome for one practice, with the request latency when a request was made."""


@dataclass
class DeliveryTally:
    """In-process counts per practice and outcome: the CLI's periodic summary and the tests' view."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_siem_delivery(self, practice_id: str, outcome: SiemOutcome | str, seconds: float | None = None) -> None:
        with self._lock:
            key = (practice_id, str(outcome))
            self.counts[key] = self.counts.get(key, 0) + 1

    def total(self, outcome: SiemOutcome, practice_id: str | None = None) -> int:
        with self._lock:
            return sum(n for (practice, kind), n in self.counts.items()
                       if kind == outcome.value and practice_id in (None, practice))

    def summary(self) -> str:
        """One log line: totals per outcome, no practice breakdown."""
        return ", ".join(f"{outcome.value} {self.total(outcome)}" for outcome in SiemOutcome)
