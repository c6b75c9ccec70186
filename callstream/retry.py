"""The retry vocabulary every outgoing call shares: exponential backoff with jitter, and Retry-After.

One policy type for the ModMed client (connectors/fhir.py), the audit sinks, the SIEM and alert
webhooks, the review queue and patient messaging; each user picks its own parameters. Two jitter
shapes, after the AWS "Exponential Backoff and Jitter" analysis:

* ``"equal"``: half the ceiling plus a random half. Never zero, so a sender that must not hammer a
  struggling receiver (sinks, webhooks, the review queue) always waits at least half the step.
* ``"full"``: anywhere between zero and the ceiling. Spreads many concurrent callers best, for calls
  made inside a caller's time budget (the ModMed client) where a short wait is worth having.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal, Protocol

Jitter = Literal["equal", "full"]
MAX_EXPONENT = 64
"""Past this the ceiling is the cap anyway; keeps ``multiplier ** attempt`` from overflowing."""


class UniformSource(Protocol):
    """What a backoff draws its jitter from: a `random.Random`, or the `random` module itself."""

    def uniform(self, a: float, b: float, /) -> float: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff capped at `cap_s`, jittered so retries never march in lock-step."""

    base_s: float = 0.5
    cap_s: float = 30.0
    multiplier: float = 2.0
    jitter: Jitter = "equal"

    def ceiling(self, attempt: int) -> float:
        """The un-jittered step before retry number `attempt` (0 for the first retry)."""
        return min(self.cap_s, self.base_s * self.multiplier ** min(attempt, MAX_EXPONENT))

    def delay(self, attempt: int, rng: UniformSource) -> float:
        """Seconds to wait before retry number `attempt` (0 for the first retry)."""
        ceiling = self.ceiling(attempt)
        if self.jitter == "full":
            return rng.uniform(0, ceiling)
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """A Retry-After header as seconds: delta-seconds (fractions tolerated) or an HTTP date.

    None when absent or unreadable; a date in the past is 0. Callers cap the result, so a hostile
    header cannot park a sender for hours.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # RFC 9110 dates are GMT
        moment = moment.replace(tzinfo=dt.UTC)
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)
