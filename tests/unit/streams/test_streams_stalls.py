"""``StallWatch``: when an idle partition is looked at, and how often it is sought again."""

from __future__ import annotations

from aosk.streams.stalls import StallWatch


def test_idle_partitions_are_due_after_stall_s_and_progress_resets_them() -> None:
    w = StallWatch(30.0)
    assert not w.due(1, 100.0)  # first seen now
    assert not w.due(1, 129.0)
    assert w.due(1, 130.0)
    w.progressed(1, 130.0)
    assert not w.due(1, 150.0) and w.due(1, 160.0)


def test_a_partition_sought_without_progress_waits_longer_each_time_and_is_loud_once() -> None:
    w = StallWatch(30.0)
    w.due(2, 0.0)
    assert w.due(2, 30.0) and w.reseek(2, 30.0)
    assert not w.due(2, 89.0) and w.due(2, 90.0)  # 60 s after the first seek
    assert not w.reseek(2, 90.0)
    assert not w.due(2, 209.0) and w.due(2, 210.0)  # then 120 s
    assert w.idle(2, 210.0) == 210.0
    w.progressed(2, 211.0)
    assert w.due(2, 241.0) and w.reseek(2, 241.0)  # a new episode is loud again
    w.forget([2])
    assert not w.due(2, 1000.0)
