"""How ``aosk runtime`` shares its model calls, on the real stack with the stand-in: a
tenant's few tasks submitted behind another tenant's backlog finish within 3x the time
they take alone (fair share per tenant), and within a tenant, tasks submitted at once
while the runtime is saturated finish in priority order.

The stand-in answers each model call after ``DELAY_MS`` (a marker in the task text) and
the runtime makes ``MODEL_CONCURRENCY`` calls at once, so the model is the bottleneck
and the run queue decides who gets it. Every duration is read from the journal's broker
timestamps (LogAppendTime): a makespan runs from a tenant's first ``TaskSubmitted`` to
its last ``TaskCompleted``. The baseline (the same tasks alone) is measured in the same
test, on a journal and consumer group of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aosk.client import KernelClient
from aosk.config import Settings
from aosk.events import Budgets, TaskSubmitted
from aosk.kernel import Record
from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from tests.support.journal_tail import JournalTail, of_type
from tests.support.runtime_harness import Runtimes, journal_report
from tests.support.standin_harness import standin_process

pytestmark = pytest.mark.integration

MODEL_CONCURRENCY = 4
DELAY_MS = 400
B_TASKS = 10
BUDGETS = Budgets(max_tokens=10_000_000, max_tool_calls=10_000, max_steps=100_000, context_window_tokens=100_000)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    with standin_process(tmp_path_factory.mktemp("standin")) as server:
        yield server


def one_tool_task(i: int) -> str:
    """A task of two model turns (a calculator call, then the answer) and one tool run."""
    return f'Work this out: calculator(expression="{i}+1"). [[standin:delay-ms={DELAY_MS}]]'


def on_journal(settings: Settings, name: str) -> Settings:
    """``settings`` with a journal (topic prefix) of its own, created and marked."""
    kafka = settings.kafka.model_copy(update={"topic_prefix": f"{settings.kafka.topic_prefix}-{name}"})
    settings = settings.model_copy(update={"kafka": kafka})
    ensure_topics(kafka.bootstrap_servers or "", kafka, mark_new_journal=True)
    return settings


def spawn(settings: Settings, tenant: str, agents: list[str], *, priority: int = 50, tasks: bool = True) -> None:
    with KernelClient.from_settings(settings) as kernel:
        pending = []
        for i, a in enumerate(agents):
            pending.append(kernel.spawn(agent_id=a, tenant_id=tenant, name=a, budgets=BUDGETS,
                                        capabilities=("calculator",), priority=priority))
            if tasks:
                pending.append(kernel.emit(TaskSubmitted, agent_id=a, tenant_id=tenant, task_id=f"{a}-t",
                                           input=one_tool_task(i), metadata={}))
        for p in pending:
            p.result()


def submit(settings: Settings, tenant: str, agents: list[str]) -> None:
    """One task for each of ``agents`` (spawned already), produced together."""
    with KernelClient.from_settings(settings) as kernel:
        pending = [kernel.emit(TaskSubmitted, agent_id=a, tenant_id=tenant, task_id=f"{a}-t", input=one_tool_task(i),
                               metadata={}) for i, a in enumerate(agents)]
        for p in pending:
            p.result()


@contextmanager
def acting_runtime(settings: Settings, tmp_path: Path, standin, *,
                   model_concurrency: int = MODEL_CONCURRENCY) -> Iterator[Runtimes]:
    """One ``aosk runtime`` process, yielded once it acts on every partition."""
    env = {"AOSK_RUNTIME_MODEL_CONCURRENCY": str(model_concurrency)}
    with Runtimes(settings, tmp_path / settings.kafka.topic_prefix, standin.url,
                  group_id=f"rt-{uuid.uuid4().hex[:8]}", extra_env=env) as runtimes:
        rt = runtimes.start("rt")
        n = settings.kafka.journal_partitions

        def acting() -> bool:
            if not rt.alive():
                raise AssertionError(f"aosk runtime exited {rt.proc.returncode}:\n{rt.log()[-3000:]}")
            return rt.log().count(" acts on partition ") >= n

        wait_for(acting, timeout=60, interval=0.2, what=f"the runtime to act on {n} partitions")
        yield runtimes
        assert runtimes.stop("rt") == 0, runtimes.logs()


def ended(records: list[Record], agents: set[str]) -> list[Record]:
    return [r for r in records if r.event is not None and r.event.agent_id in agents
            and type(r.event).__name__ in ("TaskCompleted", "TaskFailed")]


def wait_ended(tail: JournalTail, agents: set[str], runtimes: Runtimes, *, timeout: float) -> list[Record]:
    """The ``TaskCompleted`` / ``TaskFailed`` records of ``agents``' tasks, once each has one."""
    def done() -> bool:
        tail.poll()
        for p in runtimes.procs.values():
            if not p.alive():
                raise AssertionError(f"runtime {p.name} exited {p.proc.returncode}:\n{p.log()[-3000:]}")
        return len(ended(tail.records, agents)) >= len(agents)

    try:
        wait_for(done, timeout=timeout, interval=0.5, what=f"{len(agents)} tasks to end")
    except TimeoutError:
        raise AssertionError(f"{len(ended(tail.records, agents))} of {len(agents)} tasks ended\n"
                             f"{runtimes.logs()}") from None
    out = ended(tail.records, agents)
    assert {type(r.event).__name__ for r in out} == {"TaskCompleted"}, [r.event for r in out]
    return out


def makespan_ms(records: list[Record], agents: set[str]) -> int:
    """From the first ``TaskSubmitted`` of ``agents`` to their last task's end, broker time."""
    submitted = [r.timestamp for r in of_type(records, "TaskSubmitted") if r.event.agent_id in agents]  # type: ignore[union-attr]
    return max(r.timestamp for r in ended(records, agents)) - min(submitted)


def b_alone_ms(settings: Settings, tmp_path: Path, standin) -> int:
    settings = on_journal(settings, "alone")
    b = [f"b-{i}" for i in range(B_TASKS)]
    with acting_runtime(settings, tmp_path, standin) as runtimes, JournalTail(settings) as tail:
        spawn(settings, "tenant-b", b)
        wait_ended(tail, set(b), runtimes, timeout=120)
    return makespan_ms(tail.records, set(b))


@pytest.mark.parametrize("backlog", [100, pytest.param(500, marks=pytest.mark.chaos)])
def test_a_small_tenant_is_not_queued_behind_a_large_one(settings, standin, tmp_path: Path, backlog: int) -> None:
    alone = b_alone_ms(settings, tmp_path, standin)

    settings = on_journal(settings, f"fair{backlog}")
    a = [f"a-{i}" for i in range(backlog)]
    b = [f"b-{i}" for i in range(B_TASKS)]
    with acting_runtime(settings, tmp_path, standin) as runtimes, JournalTail(settings) as tail:
        spawn(settings, "tenant-a", a)

        def saturated() -> bool:  # A's calls are running: the runtime is busy with A
            tail.poll()
            return tail.count("LlmCallCompleted") >= MODEL_CONCURRENCY

        wait_for(saturated, timeout=60, interval=0.2, what="tenant A's model calls to run")
        spawn(settings, "tenant-b", b)
        b_ends = wait_ended(tail, set(b), runtimes, timeout=300)
    contended = makespan_ms(tail.records, set(b))
    b_last = max(r.timestamp for r in b_ends)
    a_done_before = sum(1 for r in ended(tail.records, set(a)) if r.timestamp <= b_last)
    print(f"tenant B's {B_TASKS} tasks: {alone} ms alone, {contended} ms behind tenant A's {backlog} "
          f"({contended / alone:.2f}x); A finished {a_done_before} of its tasks meanwhile")
    assert a_done_before < backlog - B_TASKS, "A's backlog ran out before B finished: no contention measured"
    assert contended <= 3 * alone, f"B took {contended} ms behind A, {contended / alone:.2f}x its {alone} ms alone"


def test_priority_order_within_a_tenant(settings, standin, tmp_path: Path) -> None:
    """One model slot, always wanted by priority-30 fillers: each time it frees, the queue
    alone decides who gets it (with several slots, two can free in the same instant and
    two agents run their turns side by side, finishing in the same millisecond)."""
    settings = on_journal(settings, "prio")
    fillers = [f"f-{i}" for i in range(6)]
    ranked = {90: "p-90", 50: "p-50", 10: "p-10"}
    with acting_runtime(settings, tmp_path, standin, model_concurrency=1) as runtimes, \
            JournalTail(settings) as tail:
        for priority, agent in ranked.items():
            spawn(settings, "tenant-p", [agent], priority=priority, tasks=False)
        spawn(settings, "tenant-p", fillers, priority=30)

        def saturated() -> bool:
            tail.poll()
            return tail.count("LlmCallCompleted") >= 2

        wait_for(saturated, timeout=60, interval=0.2, what="the fillers' model calls to run")
        submit(settings, "tenant-p", list(ranked.values()))
        wait_ended(tail, {*fillers, *ranked.values()}, runtimes, timeout=300)
    done_at = {r.event.agent_id: r.timestamp for r in ended(tail.records, set(ranked.values()))}  # type: ignore[union-attr]
    order = sorted(done_at, key=done_at.__getitem__)
    print("completion (broker ms):", {a: done_at[a] for a in order})
    assert order == ["p-90", "p-50", "p-10"], done_at
    assert done_at["p-90"] < done_at["p-50"] < done_at["p-10"], done_at  # no ties
    fillers_done = max(r.timestamp for r in ended(tail.records, set(fillers)))
    assert done_at["p-50"] < fillers_done < done_at["p-10"], "10 waits for the priority-30 fillers, 50 does not"
    report = journal_report(settings)
    assert report.problems == []
    assert report.tasks_by_outcome() == {"succeeded": len(fillers) + len(ranked)}
