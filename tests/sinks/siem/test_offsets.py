"""The commit position of the SIEM firehose: only past a settled prefix of each partition."""

from __future__ import annotations

from sinks.siem.offsets import OffsetTracker


def test_offsets_become_committable_only_over_a_settled_prefix() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12, 13):
        tracker.start(0, offset)
    tracker.start(1, 5)
    tracker.finish(0, 12)
    tracker.finish(0, 11)
    assert tracker.take_committable() == {}, "offset 10 is still on its way"
    tracker.finish(0, 10)
    tracker.finish(1, 5)
    assert tracker.take_committable() == {0: 13, 1: 6}
    assert tracker.pending == 1 and tracker.take_committable() == {}
    tracker.forget({0})
    tracker.finish(0, 13)  # settled after its partition was revoked: the new owner re-reads it
    assert tracker.take_committable() == {} and tracker.pending == 0
