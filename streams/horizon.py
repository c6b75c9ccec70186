"""The redelivery horizon: how old a call event may be and still be processed, and so how long the
idempotency ledger has to remember a write.

Without it the ledger (``streams.faust_boundary.ChangelogLedger``) grows by every write forever, and so do the
worker's memory and the time it takes to restore the ledger from its changelog. With it, both sides of
the ledger's proof use one ``RedeliveryHorizon`` (horizon H, margin M):

- an event is processed only if ``now - H <= occurred_at <= now + M``; any other is dead-lettered
  (``refusal``);
- an entry older than M that an event reads is written again with the time of reading
  (``ChangelogLedger.get``), so once an event has written or read an entry at time t (after its check, so
  ``t >= occurred_at - M``), the entry's ``updated_at >= t - M >= occurred_at - 2M``;
- an entry is tombstoned only once ``updated_at < now - H - 3M`` (``ledger_cutoff``).

Why the proof stays sound: a copy of that event (redelivered, re-published or replayed) is processed
only at some ``P <= occurred_at + H`` and reads the ledger by ``P + d``, where d, the time from an event's
check to its last ledger read, is at most ``MAX_WORK_STEPS × DISPATCH_TIMEOUT_S`` (``streams.work``, 16 min).
Workers' clocks differ by some s (seconds, with NTP). With ``d + s <= M``, the entry is then at most
``H + 2M + d + s <= H + 3M`` old: still there. So for every event the pipeline processes, "no entry"
still means "no copy of this event attempted this write", as when entries were kept forever; only an
event older than the horizon could find its entries gone, and no such event is processed. A later event of
the same call that reuses a key (the caller asks for the same thing twice) is covered alike when it occurs
within 2M of the key's last use; further apart, only if it is processed within ``H + 3M - d - s`` of that use.

The comparison is against the event's own ``occurred_at``, never the Kafka record timestamp: the record
timestamp dates the record, not the event. Every re-publish of the same bytes (the telephony side
resending after a crash, ``callstream replay`` of a captured file, a topic mirror, a replayer of captured
traffic) gets a fresh one without anyone forging anything (CreateTime is stamped by the producing
client, LogAppendTime by the broker on append). ``occurred_at`` travels inside the Avro value and
survives every copy: to make an old event pass, a replayer has to rewrite and re-encode it, and whoever
can publish events of their own making needs no replay to cause a write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from callstream.settings import Settings
from connectors.ledger import stored_updated_at
from schemas.topics import CALL_EVENTS, topic_named

HORIZON_MARGIN = timedelta(hours=1)
"""Room for clocks and in-flight events (module docstring): far more than NTP-synchronised clocks differ by
plus the 16 minutes an event may run between its horizon check and its last ledger read."""
REFUSAL_CLASS = "RedeliveryHorizon"
"""The dead letters' error class (and metric label) of an event outside the horizon."""
SWEEP_CHUNK = 200
"""Ledger entries the sweep reads (about 5 µs each through Faust's store) and tombstones (about 25 µs each)
between two turns of the event loop: the loop is never held for more than a few milliseconds, and the
tombstones of a chunk are acknowledged before the next chunk, so a first sweep over a long-grown ledger
holds few of them in flight. (With 2,000 entries a chunk the loop was held for up to 70 ms.)"""


@dataclass(frozen=True, slots=True)
class RedeliveryHorizon:
    """One horizon for both sides of the ledger's proof (see the module docstring)."""

    horizon: timedelta
    margin: timedelta = HORIZON_MARGIN

    def __post_init__(self) -> None:
        if self.horizon <= timedelta(0) or self.margin < timedelta(0):
            raise ValueError("the redelivery horizon must be positive and its margin not negative")

    @classmethod
    def of(cls, settings: Settings) -> RedeliveryHorizon:
        """The configured horizon; by default the call-events retention (older events are mostly gone)."""
        if settings.redelivery_horizon_ms is None:
            return DEFAULT_HORIZON
        return cls(timedelta(milliseconds=settings.redelivery_horizon_ms))

    def refusal(self, occurred_at: datetime, now: datetime) -> str | None:
        """Why an event that occurred at ``occurred_at`` must not be processed at ``now``; None if it may.

        The reason names durations only (never the event's content)."""
        if occurred_at < now - self.horizon:
            return (f"event occurred {_span(now - occurred_at)} ago, beyond the redelivery horizon of "
                    f"{_span(self.horizon)}: the ledger may have forgotten its writes, so it is not processed")
        if occurred_at > now + self.margin:
            return (f"event occurred_at is {_span(occurred_at - now)} ahead of the worker's clock, beyond the "
                    f"redelivery horizon's margin of {_span(self.margin)}: its ledger entries could be forgotten "
                    f"before the event ages past the horizon, so it is not processed")
        return None

    def ledger_cutoff(self, now: datetime) -> datetime:
        """Ledger entries last updated before this instant are past the horizon and may be tombstoned."""
        return now - self.horizon - 3 * self.margin

    def refresh_due(self, updated_at: datetime, now: datetime) -> bool:
        """Whether an entry an event reads now is old enough to be written again (module docstring)."""
        return updated_at < now - self.margin


DEFAULT_HORIZON = RedeliveryHorizon(timedelta(milliseconds=topic_named(CALL_EVENTS).retention_ms))


def past_horizon(keys: Iterable[str], store: Mapping[str, object], partition_of: Mapping[str, int],
                 owned: set[int], cutoff: datetime) -> list[tuple[str, int]]:
    """(key, changelog partition) of those ``keys`` whose entries, on ``owned`` partitions, were last updated
    before ``cutoff``. An entry that cannot be read is left alone (it reads as ``pending``, which is always
    safe), and so is one whose partition is not known."""
    found = []
    for key in keys:
        partition = partition_of.get(key)
        if partition is None or partition not in owned:
            continue
        updated_at = stored_updated_at(store.get(key))
        if updated_at is not None and updated_at < cutoff:
            found.append((key, partition))
    return found


def _span(duration: timedelta) -> str:
    """A duration to the second, e.g. '7 days, 0:00:00'."""
    return str(timedelta(seconds=round(duration.total_seconds())))
