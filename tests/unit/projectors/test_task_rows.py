"""The ``tasks`` rows: derived from the fold's state around each accepted record, they
follow the fold (status, counters, how a task ended), and how the journal is cut into
batches never changes them."""

from __future__ import annotations

import random
import re
import uuid
from importlib import resources
from typing import Any

import pytest

from aosk.events import AgentFailed, AgentKilled, AgentSpawned, TaskCancelled, TaskSubmitted
from aosk.kernel import Record, apply, fold_args, fold_key, partition_state
from aosk.kernel.state import Task
from aosk.projectors.batch import fold_batch
from aosk.projectors.rows import ms_of
from aosk.projectors.task_rows import TASK_COLUMNS, TASK_TYPES, TaskChanges
from task_steps import BUDGETS, COMPLETION_TOKENS, PROMPT_TOKENS, LocalJournal


def _h(agent: str, tenant: str = "acme") -> dict[str, Any]:
    return dict(event_id=str(uuid.uuid4()), agent_id=agent, tenant_id=tenant, occurred_at=0, origin="client")


def _spawn(j: LocalJournal, agent: str, caps: tuple[str, ...] = ("calc",)) -> None:
    j.append(AgentSpawned(**_h(agent), parent_id=None, name=agent, priority=50, capabilities=caps, budgets=BUDGETS,
                          metadata={}))


def _submit(j: LocalJournal, agent: str, task_id: str, text: str = "add 2 and 3", **meta: str) -> str:
    return j.append(TaskSubmitted(**_h(agent), task_id=task_id, input=text, metadata=meta)).kind


def task_journal() -> LocalJournal:
    j = LocalJournal()
    _spawn(j, "a-1")
    assert _submit(j, "a-1", "t-1", who="me") == "accepted"
    _submit(j, "a-1", "t-2")
    _submit(j, "a-1", "t-3", "please fail")
    assert _submit(j, "a-1", "t-2") == "rejected"  # task_id_in_use: no row changes
    j.run("a-1")
    _spawn(j, "a-2", caps=())
    _submit(j, "a-2", "x-1")
    _submit(j, "a-2", "x-2")
    _submit(j, "a-2", "x-3")
    j.append(TaskCancelled(**_h("a-2"), task_id="x-2", reason="not needed"))  # a queued one
    j.append(TaskCancelled(**_h("a-2"), task_id="x-1", reason=""))  # the running one: x-3 starts
    j.run("a-2")
    for i in range(33):  # the fold forgets x-0's end after 32 more: the id may be used again
        _submit(j, "a-2", f"r-{i}")
        j.run("a-2")
    assert _submit(j, "a-2", "r-0", "again") == "accepted"
    _spawn(j, "a-3")
    _submit(j, "a-3", "k-1")
    _submit(j, "a-3", "k-2")
    j.append(AgentKilled(**_h("a-3"), signal="SIGKILL", by="op"))
    _spawn(j, "a-4")
    _submit(j, "a-4", "f-1")
    j.append(AgentFailed(**_h("a-4"), error="boom"))
    return j


class TaskTable:
    """What the writer does with TaskChanges, on a dict: upsert full rows, patch rows that exist."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], list[Any]] = {}

    def apply(self, changes: TaskChanges) -> None:
        for row in changes.full():
            self.rows[(row[0], row[1])] = list(row)
        for row in changes.patches():
            old = self.rows.get((row[0], row[1]))
            if old is not None:
                self.rows[(row[0], row[1])] = [o if n is None else n for o, n in zip(old, row, strict=True)]


def _project(records: list[Record], cuts: list[int]) -> dict[tuple[str, str], list[Any]]:
    cache: dict[str, Any] = {}
    table = TaskTable()
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(records)}), len(records)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        parts: dict[int, list[Record]] = {}
        for r in records[a:b]:
            parts.setdefault(r.partition, []).append(r)
        batch = fold_batch(parts, cache.get, checkpoint_every=100)
        changes = TaskChanges()
        for o in batch.outcomes:
            changes.add(o.tasks)
        table.apply(changes)
        cache.update(batch.entries)
    return table.rows


def _by_partition(records: list[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (r.partition, r.offset))


def test_columns_match_the_migration() -> None:
    assert len(TASK_COLUMNS) == len(TASK_TYPES)
    text = resources.files("aosk.projectors").joinpath("migrations/0007_tasks.sql").read_text()
    start = text.index("create table tasks (")
    body = text[start:text.index(");", start)]
    declared = re.findall(r"^\s{4}([a-z_]+)\s", body, flags=re.M)
    assert tuple(c for c in declared if c != "primary") == TASK_COLUMNS


def test_rows_follow_the_fold() -> None:
    j = task_journal()
    rows = _project(_by_partition(j.records), [])
    # The fold, record by record: each task's last entry and the record that ended it.
    last: dict[tuple[str, str], Task] = {}
    ended_at: dict[tuple[str, str], int] = {}
    slots: dict[str, Any] = {}
    for r in _by_partition(j.records):
        ps = partition_state(slots, r.partition)
        k = fold_key(r, ps)
        before = slots[k].state.tasks.queue if k in slots else ()
        slots[k], _ = apply(slots.get(k), r, **fold_args(ps)._asdict())
        after = {t.task_id for t in slots[k].state.tasks.queue}
        for t in slots[k].state.tasks.queue:
            last[(k, t.task_id)] = t
        for t in before:
            if t.task_id not in after:
                ended_at[(k, t.task_id)] = r.timestamp
    assert set(rows) == set(last)
    for key, t in last.items():
        row = dict(zip(TASK_COLUMNS, rows[key], strict=True))
        st = slots[key[0]].state.tasks
        queued = st.find(key[1])
        if queued is not None and queued == t:
            assert row["status"] == ("running" if t.started else "pending"), key
            assert row["ended_at"] is None
        else:
            assert row["status"] in ("succeeded", "failed", "cancelled"), key
            assert ms_of(row["ended_at"]) == ended_at[key]
            if st.ended_as(key[1]) is not None:
                assert row["status"] == st.ended_as(key[1])
        assert (row["turns"], row["model_calls"], row["tool_calls"], row["tokens"]) == (
            t.turn, t.model_calls, t.tool_calls, t.tokens), key
        assert row["steps"] == t.model_calls + t.tool_calls
        assert row["input"] == t.input and row["submitted_seq"] == t.submitted_seq
        assert row["tenant_id"] == "acme" and row["submitted_at"] is not None
    get = lambda a, t: dict(zip(TASK_COLUMNS, rows[(a, t)], strict=True))  # noqa: E731
    t1 = get("a-1", "t-1")
    assert t1["status"] == "succeeded" and t1["output"] == "answer to add 2 and 3"
    assert t1["metadata"] == {"who": "me"} and t1["started_at"] == t1["submitted_at"]
    assert (t1["turns"], t1["model_calls"], t1["tool_calls"]) == (2, 2, 1)
    assert t1["tokens"] == 2 * (PROMPT_TOKENS + COMPLETION_TOKENS)
    t2 = get("a-1", "t-2")
    assert t2["started_at"] > t2["submitted_at"]  # queued behind t-1
    t3 = get("a-1", "t-3")
    assert (t3["status"], t3["reason"], t3["output"]) == ("failed", "gave_up", None)
    assert get("a-2", "x-2")["started_at"] is None
    assert (get("a-2", "x-2")["status"], get("a-2", "x-2")["reason"], get("a-2", "x-2")["message"]) == (
        "cancelled", "cancelled", "not needed")
    assert get("a-2", "x-1")["status"] == "cancelled" and get("a-2", "x-3")["status"] == "succeeded"
    again = get("a-2", "r-0")  # submitted again: a new row, as the fold's new task
    assert (again["status"], again["input"], again["output"], again["ended_at"]) == ("running", "again", None, None)
    for t in ("k-1", "k-2"):
        k = get("a-3", t)
        assert (k["status"], k["reason"], k["message"]) == ("cancelled", "agent_terminated",
                                                            "AgentKilled ended the agent")
    assert (get("a-4", "f-1")["status"], get("a-4", "f-1")["reason"]) == ("failed", "agent_error")


@pytest.mark.parametrize("seed", range(6))
def test_any_batching_gives_the_same_rows(seed: int) -> None:
    records = _by_partition(task_journal().records)
    whole = _project(records, [])
    rnd = random.Random(seed)
    cuts = rnd.sample(range(1, len(records)), k=rnd.choice([1, 5, 40, len(records) - 1]))
    assert _project(records, cuts) == whole
