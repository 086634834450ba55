"""``Cursors``: which fetched records are folded, and what may be committed."""

from __future__ import annotations

from aosk.streams.offsets import Cursors


def test_admit_allows_gaps_drops_below_next_and_unowned() -> None:
    c = Cursors()
    assert not c.admit(0, 0)  # not owned
    c.arm(0, next_offset=5, committed=5)
    assert [c.admit(0, o) for o in (3, 4, 5, 6, 9)] == [False, False, True, True, True]
    c.advance(0, 6)
    c.advance(0, 9)  # a transaction marker took offsets 6..8: the gap is allowed
    assert not c.admit(0, 8) and c.admit(0, 9) and c.next_offset(0) == 9
    c.advance(0, 7)  # never goes back
    assert c.next_offset(0) == 9
    c.advance(1, 3)  # not owned: ignored
    assert c.next_offset(1) is None and c.owned() == {0}
    c.disarm({0})
    assert not c.admit(0, 9) and c.owned() == set() and c.committed_offset(0) is None


def test_a_stopped_partition_admits_nothing_and_commits_only_up_to_the_stop() -> None:
    c = Cursors()
    c.arm(0, next_offset=0, committed=None)
    c.arm(1, next_offset=0, committed=None)
    c.advance(0, 4)
    c.stop(0)
    assert not c.admit(0, 4) and not c.admit(0, 5) and c.admit(1, 0)
    assert c.commit_plan({0, 1}) == {0: 4, 1: 0}
    c.committed({0: 4})
    assert c.commit_plan({0}) == {}
    c.stop(7)  # not owned: ignored
    c.arm(0, next_offset=4, committed=4)  # re-assigned: read again from the commit
    assert c.admit(0, 4)


def test_commit_plan_and_committed() -> None:
    c = Cursors()
    c.arm(0, next_offset=10, committed=10)
    c.arm(1, next_offset=0, committed=None)
    c.arm(2, next_offset=3, committed=3)
    # Never committed: committed even before anything was folded (offset 0).
    assert c.commit_plan(c.owned()) == {1: 0}
    c.advance(0, 12)
    c.advance(2, 5)
    assert c.commit_plan({0}) == {0: 12}
    assert c.commit_plan({0, 1, 2, 9}) == {0: 12, 1: 0, 2: 5}
    c.committed({0: 12, 1: 0, 9: 1})
    assert c.committed_offset(0) == 12 and c.committed_offset(1) == 0 and c.committed_offset(9) is None
    assert c.commit_plan(c.owned()) == {2: 5}
    c.committed({0: 11})  # an older plan never moves a commit back
    assert c.committed_offset(0) == 12


def test_silent_while_re_folding_below_the_committed_offset() -> None:
    c = Cursors()
    assert not c.silent(0)
    c.arm(0, next_offset=0, committed=None)
    assert not c.silent(0)  # never committed: every record is judged with outputs
    c.arm(1, next_offset=4, committed=10)  # restored from a floor below the commit
    assert c.silent(1)
    c.advance(1, 9)
    assert c.silent(1) and c.commit_plan({1}) == {}  # nothing to commit while re-folding
    c.advance(1, 10)
    assert not c.silent(1) and c.commit_plan({1}) == {}
    c.advance(1, 11)
    assert c.commit_plan({1}) == {1: 11}
