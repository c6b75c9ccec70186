"""The SIEM firehose's knobs in one value: live attempts before parking, the parked schedule, timeouts, limits.

One frozen value shared by the live delivery chains, the parked backlogs and the courier, so a
reader finds every number that shapes delivery in one place and a test can tighten them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from callstream.retry import Backoff
from sinks.backlog import DeliverySchedule

DEFAULT_SIEM_BACKOFF = Backoff(base_s=1.0, cap_s=8.0)


@dataclass(frozen=True, slots=True)
class SiemPolicy:
    """Live attempts before parking, the parked schedule, timeouts and limits of the firehose."""

    max_attempts: int = 4
    schedule: DeliverySchedule = DeliverySchedule()
    backoff: Backoff = DEFAULT_SIEM_BACKOFF
    request_timeout_s: float = 10.0
    max_pending: int = 10_000
    max_connections: int = 200
    commit_interval_s: float = 0.5
    drain_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.max_pending < 1 or self.request_timeout_s <= 0:
            raise ValueError("max_attempts and max_pending must be >= 1 and request_timeout_s > 0")
