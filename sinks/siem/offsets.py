"""When an offset of the audit topic may be committed: only past events that are all settled.

Deliveries of different practices finish out of order (each practice has its own chain), so the
committable position of a partition is one past the longest finished prefix of what was consumed.
Pure bookkeeping, no Kafka: the firehose feeds it and commits what it returns.
"""

from __future__ import annotations

from collections import deque


class OffsetTracker:
    """Per partition, the offsets consumed in order and which of them are finished.

    The committable position is one past the longest finished prefix, so an offset is never
    committed while an earlier event of its partition is still on its way.
    """

    def __init__(self) -> None:
        self._in_order: dict[int, deque[int]] = {}
        self._finished: dict[int, set[int]] = {}
        self._committable: dict[int, int] = {}

    @property
    def pending(self) -> int:
        return sum(len(offsets) for offsets in self._in_order.values())

    def start(self, partition: int, offset: int) -> None:
        self._in_order.setdefault(partition, deque()).append(offset)

    def finish(self, partition: int, offset: int) -> None:
        if partition not in self._in_order:
            return  # the partition was revoked meanwhile; its new owner re-reads the event
        finished = self._finished.setdefault(partition, set())
        finished.add(offset)
        in_order = self._in_order[partition]
        while in_order and in_order[0] in finished:
            head = in_order.popleft()
            finished.discard(head)
            self._committable[partition] = head + 1

    def take_committable(self) -> dict[int, int]:
        """Positions that advanced since the last call."""
        committable, self._committable = self._committable, {}
        return committable

    def forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._in_order.pop(partition, None)
            self._finished.pop(partition, None)
            self._committable.pop(partition, None)
