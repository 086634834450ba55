"""``aosk runtime`` on the real stack with the stand-in model server: tasks run to their
answers through model turns and tool calls, every step a journal record; a runtime
SIGKILLed mid-task is replaced by the next owner of its partitions, and afterwards every
accepted request has exactly one accepted completion and no turn was taken twice."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from aosk.client import KernelClient
from aosk.events import Budgets, TaskSubmitted
from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from tests.support.runtime_harness import Runtimes, end_offsets, journal_report
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


def run_fleet(settings, tmp_path: Path, *, agents: int, tasks_per_agent: int, kills: int, concurrency: int,
              delay_ms: int, schema: str) -> None:
    """Agents with tasks of 2-4 tool calls (3-5 model calls), two runtimes with a model
    concurrency of ``concurrency``, one SIGKILLed ``kills`` times at random moments and
    restarted; a worker (timeouts, deliveries) and a projector run beside them. Then:
    every task succeeded, every accepted request has exactly one accepted completion, no
    turn was taken twice, the model server saw at most (model calls + kills x
    concurrency) requests, and the audit chains verify against the journal."""
    from tests.support.projector_harness import Projectors, projector_env, run_cli, wait_caught_up
    from tests.support.worker_harness import Workers

    ensure_topics(settings.kafka.bootstrap_servers, settings.kafka, mark_new_journal=True)
    tasks = submit_tasks(settings, agents=agents, tasks_per_agent=tasks_per_agent, prefix="k", delay_ms=delay_ms)
    rng = random.Random()
    (tmp_path / "p").mkdir()
    projs = Projectors(settings, tmp_path / "p", schema=schema)
    with standin_process(tmp_path) as standin, Workers(settings, tmp_path / "w") as workers, \
            Runtimes(settings, tmp_path / "r", standin.url, group_id=f"rt-{uuid.uuid4().hex[:8]}", schema=schema,
                     extra_env={"AOSK_RUNTIME_MODEL_CONCURRENCY": str(concurrency)}) as runtimes:
        try:
            workers.start("w1")
            projs.start("p1")
            runtimes.start("a")
            runtimes.start("b")
            wait_for(lambda: journal_report(settings).accepted("LlmCallCompleted") > 0, timeout=60, interval=0.5,
                     what="the first model call to complete")
            for _ in range(kills):
                time.sleep(rng.uniform(0.5, 3.0))  # a random moment of the run, not a synchronisation
                runtimes.kill("a")
                runtimes.start("a")
            wait_all_ended(settings, len(tasks), runtimes, timeout=600)
            report = journal_report(settings)
            wait_caught_up(settings.storage.postgresql.dsn, schema, end_offsets(settings), timeout=120, procs=projs)
        finally:
            projs.close()
        chat_requests = standin.log().count("POST /v1/chat/completions")
    assert report.problems == []
    assert report.tasks_by_outcome() == {"succeeded": len(tasks)}
    model_calls = report.accepted("LlmCallCompleted")
    assert 3 * len(tasks) <= model_calls <= 5 * len(tasks)
    assert chat_requests <= model_calls + kills * concurrency, (chat_requests, model_calls)
    verify = run_cli(settings, "audit", "verify", "--schema", schema, "--against-journal", "--no-progress",
                     timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # A rebuild needs no model: with the model server gone and AOSK_LLM_BASE_URL on a dead
    # port, aosk replay rebuilds every projection (tasks included) to the same digests.
    before = run_cli(settings, "db", "digest", "--schema", schema, "--format", "json")
    assert before.returncode == 0 and '"tasks"' in before.stdout, before.stdout + before.stderr
    dead = {**projector_env(settings), "AOSK_LLM_BASE_URL": "http://127.0.0.1:9/v1",
            "AOSK_EMBEDDINGS_BASE_URL": "http://127.0.0.1:9/v1"}
    replay = subprocess.run([sys.executable, "-m", "aosk.cli", "replay", "--schema", schema, "--no-progress",
                             "--drop-old"], env=dead,
                            capture_output=True, text=True, timeout=600)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    after = run_cli(settings, "db", "digest", "--schema", schema, "--format", "json")
    assert json.loads(after.stdout) == json.loads(before.stdout)


def test_a_killed_runtime_is_replaced_and_nothing_runs_twice(settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"topic_prefix": settings.kafka.topic_prefix + "-kill"})})
    run_fleet(settings, tmp_path, agents=10, tasks_per_agent=2, kills=2, concurrency=4, delay_ms=300,
              schema="fleet")


@pytest.mark.chaos
def test_fleet_of_50_agents_with_5_kills(settings, tmp_path: Path) -> None:
    """The issue's full size: 50 agents x 4 tasks, model concurrency 16, 5 kills."""
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"topic_prefix": settings.kafka.topic_prefix + "-chaos"})})
    run_fleet(settings, tmp_path, agents=50, tasks_per_agent=4, kills=5, concurrency=16, delay_ms=300,
              schema="fleet_chaos")


def test_kernel_tools_remember_recall_message_and_spawn(settings, standin, tmp_path: Path) -> None:
    """Agents use the built-in kernel tools through the model: ``remember`` stores an
    embedded memory, a later task's ``recall`` finds it by meaning, ``send_message``
    reaches another agent's inbox and ``spawn_child`` creates a child (both through the
    worker), and a context entry paged out gets its embedding (``MemoryEmbedded``)."""
    from tests.support.projector_harness import Projectors, wait_caught_up
    from tests.support.worker_harness import Workers

    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"topic_prefix": settings.kafka.topic_prefix + "-kt"})})
    ensure_topics(settings.kafka.bootstrap_servers, settings.kafka, mark_new_journal=True)
    caps = ("remember", "recall", "send_message", "spawn_child")
    small = Budgets(max_tokens=1_000_000, max_tool_calls=1_000, max_steps=10_000, context_window_tokens=400)
    schema = "kernel_tools"
    with KernelClient.from_settings(settings) as kernel:
        for a in ("kt-a", "kt-b"):
            kernel.spawn(agent_id=a, tenant_id="acme", name=a, budgets=small, capabilities=caps).result()
        kernel.emit(TaskSubmitted, agent_id="kt-a", tenant_id="acme", task_id="store", metadata={},
                    input='remember(text="the launch code of the blue rocket is 4417"), then '
                          'send_message(to_agent_id="kt-b", body="hello from kt-a"), then '
                          'spawn_child(child_id="kt-a.kid", name="helper")').result()
    (tmp_path / "p").mkdir()
    projs = Projectors(settings, tmp_path / "p", schema=schema)
    with Workers(settings, tmp_path / "w") as workers, \
            Runtimes(settings, tmp_path / "r", standin.url, group_id=f"rt-{uuid.uuid4().hex[:8]}",
                     schema=schema) as runtimes:
        workers.start("w1")
        projs.start("p1")
        runtimes.start("one")
        wait_all_ended(settings, 1, runtimes, timeout=90)
        # recall searches the projection: let the projector catch up with what the first task wrote
        wait_caught_up(settings.storage.postgresql.dsn, schema, end_offsets(settings), timeout=60, procs=projs)
        with KernelClient.from_settings(settings) as kernel:
            kernel.emit(TaskSubmitted, agent_id="kt-a", tenant_id="acme", task_id="find", metadata={},
                        input='recall(query="blue rocket launch code")').result()
        wait_all_ended(settings, 2, runtimes, timeout=90)
        with KernelClient.from_settings(settings) as kernel:  # an input that fills the window pages the rest out
            kernel.emit(TaskSubmitted, agent_id="kt-a", tenant_id="acme", task_id="long", metadata={},
                        input="Read this: " + "the quick brown fox jumps over the lazy dog " * 33).result()
        wait_all_ended(settings, 3, runtimes, timeout=90)
        wait_for(lambda: journal_report(settings).accepted("MemoryEmbedded") >= 1, timeout=30, interval=0.5,
                 what="paged-out context to be embedded")
    projs.close()
    report = journal_report(settings)
    assert report.problems == []
    failed = [(r.event.task_id, r.event.reason, r.event.message) for r in report.records  # type: ignore[union-attr]
              if r.event is not None and type(r.event).__name__ == "TaskFailed"]
    assert failed == []
    assert report.tasks_by_outcome() == {"succeeded": 3}
    find = next(r.event.output for r in report.records  # type: ignore[union-attr]
                if r.event is not None and type(r.event).__name__ == "TaskCompleted" and r.event.task_id == "find")
    assert "4417" in find, find  # the recalled memory's text, quoted in the answer
    b = report.slots["kt-b"].state
    assert [m.body for m in b.inbox.messages] == ["hello from kt-a"]
    assert report.slots["kt-a.kid"].state.identity is not None
    assert report.slots["kt-a.kid"].state.identity.parent_id == "kt-a"
    assert report.accepted("MemoryRecalled") == 1 and report.accepted("MemoryStored") == 1
    assert report.accepted("MemoryEmbedded") >= 1  # the small window paged entries out; they were embedded
