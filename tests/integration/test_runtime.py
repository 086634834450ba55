"""``aosk runtime`` on the real stack with the stand-in model server: tasks run to their
answers through model turns and tool calls, every step a journal record; a runtime
SIGKILLed mid-task is replaced by the next owner of its partitions, and afterwards every
accepted request has exactly one accepted completion and no turn was taken twice."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import pytest

from aosk.client import KernelClient
from aosk.events import Budgets, TaskSubmitted
from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from tests.support.runtime_harness import Runtimes, journal_report
from tests.support.standin_harness import standin_process

pytestmark = pytest.mark.integration

BUDGETS = Budgets(max_tokens=1_000_000, max_tool_calls=1_000, max_steps=10_000, context_window_tokens=100_000,
                  tokens_per_hour=1_000_000, calls_per_hour=10_000, tokens_per_request=20_000)
CAPS = ("calculator", "word_count")


def task_text(i: int, j: int, *, delay_ms: int = 0) -> str:
    """A task that needs 2-4 tool calls (one model turn each, then the answer); the
    stand-in answers each of its model calls after ``delay_ms``."""
    calls = [f'calculator(expression="{i}*{j + 2}")', f'word_count(text="agent {i} task {j} says hello")']
    calls += [f'calculator(expression="{i}+{j}")'] * (j % 3)
    delay = f" [[standin:delay-ms={delay_ms}]]" if delay_ms else ""
    return "Work this out: " + ", then ".join(calls) + "." + delay


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    with standin_process(tmp_path_factory.mktemp("standin")) as server:
        yield server


def submit_tasks(settings, agents: int, tasks_per_agent: int, *, tenant: str = "acme",
                 prefix: str = "r", delay_ms: int = 0) -> list[tuple[str, str]]:
    out = []
    with KernelClient.from_settings(settings) as kernel:
        pending = []
        for i in range(agents):
            a = f"{prefix}-{i}"
            pending.append(kernel.spawn(agent_id=a, tenant_id=tenant, name=a, budgets=BUDGETS, capabilities=CAPS))
            for j in range(tasks_per_agent):
                t = f"{a}-t{j}"
                pending.append(kernel.emit(TaskSubmitted, agent_id=a, tenant_id=tenant, task_id=t,
                                           input=task_text(i, j, delay_ms=delay_ms), metadata={}))
                out.append((a, t))
        for p in pending:
            p.result()
    return out


def wait_all_ended(settings, n_tasks: int, runtimes: Runtimes, *, timeout: float) -> None:
    def done() -> bool:
        for p in runtimes.procs.values():
            if not p.alive() and p.proc.returncode not in (-9, 0):
                raise AssertionError(f"runtime {p.name} exited {p.proc.returncode}:\n{p.log()[-3000:]}")
        return sum(journal_report(settings).tasks_by_outcome().values()) >= n_tasks

    try:
        wait_for(done, timeout=timeout, interval=1.0, what=f"{n_tasks} tasks to end")
    except TimeoutError:
        report = journal_report(settings)
        raise AssertionError(f"ended: {report.tasks_by_outcome()}, open: {report.open_tasks()}\n"
                             f"{runtimes.logs()}") from None


def test_tasks_run_to_their_answers(settings, standin, tmp_path: Path) -> None:
    ensure_topics(settings.kafka.bootstrap_servers, settings.kafka, mark_new_journal=True)
    tasks = submit_tasks(settings, agents=4, tasks_per_agent=2)
    with Runtimes(settings, tmp_path, standin.url, group_id=f"rt-{uuid.uuid4().hex[:8]}") as runtimes:
        runtimes.start("one")
        wait_all_ended(settings, len(tasks), runtimes, timeout=120)
        assert runtimes.stop("one") == 0
    report = journal_report(settings)
    assert report.problems == []
    assert report.tasks_by_outcome() == {"succeeded": len(tasks)}
    # Each answer quotes its tool results: the stand-in's final answer lists them.
    outputs = {r.event.task_id: r.event.output for r in report.records  # type: ignore[union-attr]
               if r.event is not None and type(r.event).__name__ == "TaskCompleted"}
    assert set(outputs) == {t for _, t in tasks}
    for task_id, output in outputs.items():
        i, j = int(task_id.split("-")[1]), int(task_id.rsplit("-t", 1)[1])
        assert f"calculator: {i * (j + 2)}" in output, output  # the tool's result, quoted in the answer
        assert '"words": 6' in output.replace(" ", "").replace('"words":6', '"words": 6'), output
    assert report.accepted("ToolCallCompleted") == sum(2 + j % 3 for j in range(2)) * 4


def test_a_killed_runtime_is_replaced_and_nothing_runs_twice(settings, standin, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"topic_prefix": settings.kafka.topic_prefix + "-kill"})})
    ensure_topics(settings.kafka.bootstrap_servers, settings.kafka, mark_new_journal=True)
    tasks = submit_tasks(settings, agents=10, tasks_per_agent=2, prefix="k", delay_ms=500)
    rng = random.Random(7)
    with Runtimes(settings, tmp_path, standin.url, group_id=f"rt-{uuid.uuid4().hex[:8]}",
                  extra_env={"AOSK_RUNTIME_MODEL_CONCURRENCY": "4"}) as runtimes:
        runtimes.start("a")
        runtimes.start("b")
        for _kill in range(2):
            # wait until some work has happened since the last kill, then kill mid-run
            before = journal_report(settings).accepted("LlmCallCompleted")
            wait_for(lambda b=before: journal_report(settings).accepted("LlmCallCompleted") > b + 3, timeout=60,
                     interval=0.3, what="model calls to complete")
            time.sleep(rng.uniform(0, 0.5))  # a random instant, not a synchronisation
            runtimes.kill("a")
            runtimes.start("a")
        wait_all_ended(settings, len(tasks), runtimes, timeout=180)
    report = journal_report(settings)
    assert report.problems == []
    assert report.tasks_by_outcome() == {"succeeded": len(tasks)}
