"""The commit rule: per partition, never commit past an event still in flight."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.offsets import OffsetTracker

P0 = ("callstream.call-events.v1", 0)
P1 = ("callstream.call-events.v1", 1)


def test_nothing_is_committable_before_the_first_delivered_event_finishes() -> None:
    tracker = OffsetTracker()
    tracker.assigned([P0])
    first = tracker.started(P0, 17)  # a new group starts wherever the log starts, not at 0
    tracker.started(P0, 18)
    assert tracker.committable(P0) is None
    tracker.finish(first)
    assert tracker.committable(P0) == 18


def test_a_slow_event_holds_the_commit_while_later_events_finish() -> None:
    """The reported failure: a slow practice's event at 19, a quick practice's 20..38 done."""
    tracker = OffsetTracker()
    tracker.assigned([P0])
    slow = tracker.started(P0, 19)
    quick = [tracker.started(P0, offset) for offset in range(20, 39)]
    for entry in reversed(quick):
        tracker.finish(entry)
    assert tracker.committable(P0) is None
    assert tracker.in_flight(P0) == 20
    tracker.finish(slow)
    assert tracker.committable(P0) == 39
    assert tracker.in_flight(P0) == 0


def test_the_commit_stops_at_the_first_unfinished_event_after_a_commit() -> None:
    tracker = OffsetTracker()
    entries = {offset: tracker.started(P0, offset) for offset in range(136, 162)}
    tracker.finish(entries[136])
    assert tracker.committable(P0) == 137
    for offset in range(138, 162):
        tracker.finish(entries[offset])
    assert tracker.committable(P0) == 137  # 137 is still in flight


def test_a_failed_event_is_never_passed() -> None:
    tracker = OffsetTracker()
    done = tracker.started(P0, 0)
    tracker.started(P0, 1)  # fails: its owner never calls finish
    later = tracker.started(P0, 2)
    tracker.finish(done)
    tracker.finish(later)
    assert tracker.committable(P0) == 1


def test_offsets_with_holes_commit_past_the_last_finished_event() -> None:
    """Transaction markers take offsets no consumer delivers: the prefix is in delivery order."""
    tracker = OffsetTracker()
    first, after_marker = tracker.started(P0, 5), tracker.started(P0, 8)
    tracker.finish(after_marker)
    assert tracker.committable(P0) is None
    tracker.finish(first)
    assert tracker.committable(P0) == 9


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    slow = tracker.started(P0, 3)
    quick = tracker.started(P1, 40)
    tracker.finish(quick)
    assert tracker.committable(P1) == 41
    assert tracker.committable(P0) is None
    tracker.finish(slow)
    assert tracker.committable(P0) == 4


def test_an_event_finishing_after_its_partition_was_revoked_moves_nothing() -> None:
    tracker = OffsetTracker()
    tracker.assigned([P0])
    in_flight = tracker.started(P0, 10)
    tracker.revoked([P0])
    tracker.finish(in_flight)
    assert tracker.committable(P0) is None


def test_a_reassigned_partition_ignores_events_of_the_earlier_assignment() -> None:
    """Revoked and assigned again (a rebalance mid-flight): the old delivery of 10 finishing late must not
    count for the new delivery of 10, which is still running."""
    tracker = OffsetTracker()
    tracker.assigned([P0])
    old = tracker.started(P0, 10)
    tracker.revoked([P0])
    tracker.assigned([P0])
    new = tracker.started(P0, 10)
    tracker.started(P0, 11)
    tracker.finish(old)
    assert tracker.committable(P0) is None
    tracker.finish(new)
    assert tracker.committable(P0) == 11


def test_a_seek_back_starts_the_partition_afresh() -> None:
    tracker = OffsetTracker()
    stale = tracker.started(P0, 50)
    tracker.started(P0, 51)
    again = tracker.started(P0, 40)  # the consumer went back to the committed offset
    tracker.finish(stale)
    assert tracker.committable(P0) is None
    tracker.finish(again)
    assert tracker.committable(P0) == 41


@given(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=60), st.randoms(use_true_random=False))
def test_the_committable_offset_never_passes_an_unfinished_event(gaps: list[int], random) -> None:  # type: ignore[no-untyped-def]
    tracker = OffsetTracker()
    offsets, offset = [], 0
    for gap in gaps:
        offset += gap
        offsets.append(offset)
    entries = [tracker.started(P0, value) for value in offsets]
    order = list(range(len(entries)))
    random.shuffle(order)
    finished: set[int] = set()
    for index in order[: random.randint(0, len(order))]:
        tracker.finish(entries[index])
        finished.add(index)
        committable = tracker.committable(P0)
        unfinished = [offsets[i] for i in range(len(offsets)) if i not in finished]
        prefix = next((i for i in range(len(offsets)) if i not in finished), len(offsets))
        if prefix == 0:
            assert committable is None
        else:
            assert committable == offsets[prefix - 1] + 1
            assert not unfinished or committable <= min(unfinished)
