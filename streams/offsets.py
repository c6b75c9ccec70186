"""Which offset a consumer may commit while events are processed concurrently.

A committed offset is the next offset to read: after a crash the group resumes there, so it must never
pass an event still in flight, or that event is lost (its reply, its audit record, and perhaps the
audit record of a ModMed write it already made). Events of one partition finish out of order (a slow
practice next to a quick one), so the rule is: per partition, commit only past the longest prefix of
delivered events that have all finished.

The prefix is taken in delivery order, not by offset arithmetic: offsets of a partition need not be
consecutive (transaction markers, compaction), and the consumer delivers a partition's records in offset
order. Faust's own rule (``min(acked) - committed > 1``, skipped before the first commit) is off by one
and lets a commit pass an in-flight event; ``streams.faust_boundary`` asks this module instead.

Pure and synchronous: no Kafka here, so the rule is unit-tested on its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class InFlight:
    """One delivered event; its owner marks it finished (or never, if it failed)."""

    partition: Hashable
    offset: int
    finished: bool = False
    log: deque[InFlight] | None = field(default=None, repr=False)


class OffsetTracker:
    """Per partition (any hashable id, e.g. Faust's TP), the events delivered since the partition was assigned.

    ``started`` on delivery, ``finish`` when everything the event caused is acknowledged, ``committable`` for
    the offset to commit. A failed event is never finished, so no commit passes it: it is redelivered
    from the committed offset after the worker restarts. ``assigned``/``revoked`` start a partition afresh:
    an event delivered before a revocation that finishes afterwards moves nothing.
    """

    def __init__(self) -> None:
        self._delivered: dict[Hashable, deque[InFlight]] = {}
        self._last_offset: dict[Hashable, int] = {}
        self._safe: dict[Hashable, int] = {}

    def assigned(self, partitions: Iterable[Hashable]) -> None:
        for partition in partitions:
            self._forget(partition)

    def revoked(self, partitions: Iterable[Hashable]) -> None:
        for partition in partitions:
            self._forget(partition)

    def started(self, partition: Hashable, offset: int) -> InFlight:
        """Record a delivered event. An offset at or below the last delivered one means the consumer went
        back (a seek after reassignment): the partition starts afresh, and every event from there on is
        delivered again, so nothing earlier may move the committable offset any more."""
        last = self._last_offset.get(partition)
        if last is not None and offset <= last:
            self._forget(partition)
        log = self._delivered.setdefault(partition, deque())
        entry = InFlight(partition, offset, log=log)
        log.append(entry)
        self._last_offset[partition] = offset
        return entry

    def finish(self, entry: InFlight) -> None:
        """The event is done; the committable offset moves past every finished event at the head."""
        entry.finished = True
        log = entry.log
        if log is None or self._delivered.get(entry.partition) is not log:
            return  # delivered before the partition was revoked (or reassigned): its offset is no longer ours
        while log and log[0].finished:
            head = log.popleft()
            head.log = None
            self._safe[entry.partition] = head.offset + 1

    def committable(self, partition: Hashable) -> int | None:
        """The offset to commit (next to read), or None before any event of the partition finished."""
        return self._safe.get(partition)

    def in_flight(self, partition: Hashable) -> int:
        """Delivered events of the partition at or after the first unfinished one (held back from commit)."""
        log = self._delivered.get(partition)
        return len(log) if log else 0

    def _forget(self, partition: Hashable) -> None:
        log = self._delivered.pop(partition, None)
        if log is not None:
            for entry in log:
                entry.log = None
        self._last_offset.pop(partition, None)
        self._safe.pop(partition, None)
