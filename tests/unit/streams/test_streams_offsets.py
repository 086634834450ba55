"""Offsets the worker owns: strictly in order per partition, commits only after the
outputs were acknowledged, gaps and stalls answered by seeking back."""

from __future__ import annotations

import asyncio

from aosk.streams.commits import DEFAULT_CAP, CommitGate
from aosk.streams.offsets import Admit, Cursors, failed


def test_only_the_next_offset_is_folded() -> None:
    c = Cursors()
    assert c.admit(0, 5) is Admit.UNARMED
    c.arm(0, 5)
    assert [c.admit(0, o) for o in (4, 5, 6)] == [Admit.DONE, Admit.FOLD, Admit.GAP]
    assert c.folded(0, 5, [])
    assert c.admit(0, 5) is Admit.DONE and c.admit(0, 6) is Admit.FOLD
    assert not c.folded(0, 9, [])  # not the next one: ignored
    c.disarm({0})
    assert c.admit(0, 6) is Admit.UNARMED and not c.folded(0, 6, [])


def test_a_commit_plan_covers_folded_records_and_their_deliveries() -> None:
    c = Cursors()
    c.arm(0, 10)
    c.arm(1, 0)
    assert c.commit_plan().offsets == {}
    c.folded(0, 10, ["f1", "f2"])
    c.folded(0, 11, ["f3"])
    plan = c.commit_plan()
    assert plan.offsets == {0: 12} and plan.deliveries == ["f1", "f2", "f3"]
    c.committed(plan.offsets)
    assert c.commit_plan().offsets == {} and c.uncommitted() == 0


def test_failed_deliveries_are_reported() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        ok, bad = loop.create_future(), loop.create_future()
        ok.set_result(1)
        bad.set_exception(RuntimeError("broker said no"))
        assert failed([ok]) is None
        assert str(failed([ok, bad])) == "broker said no"

    asyncio.run(run())


def test_seeks_are_rate_limited_and_stalls_detected() -> None:
    c = Cursors(reseek_after_s=2.0)
    c.arm(0, 3, now=0.0)
    assert c.seek_due(0, now=1.0) == 3
    assert c.seek_due(0, now=2.0) is None
    assert c.seek_due(0, now=3.5) == 3
    assert not c.stalled(0, highwater=3, now=100.0, after_s=3)  # nothing past the next offset
    assert c.stalled(0, highwater=9, now=100.0, after_s=3)
    c.arm(1, 0)
    c.folded(1, 0, [], now=100.0)  # busy with another partition: not stalled
    assert not c.stalled(0, highwater=9, now=101.0, after_s=3)
    assert c.stalled(0, highwater=9, now=103.5, after_s=3)


def test_the_gate_commits_before_an_agent_reaches_the_cap() -> None:
    commits: list[int] = []

    async def commit() -> bool:
        commits.append(1)
        return True

    async def run() -> None:
        gate = CommitGate(commit, cap=3)
        for _ in range(3):
            await gate.before("a")
            gate.folded("a")
        assert commits == []
        await gate.before("b")
        assert commits == []
        await gate.before("a")
        assert commits == [1] and gate.forced == 1

    asyncio.run(run())
    assert 1 <= DEFAULT_CAP < 64
