"""Window quotas on the real stack: an agent whose task needs more tokens than one quota
window allows is held ``rate_limited`` by ``aosk runtime`` (it asks ``quota_refusal``
before writing a request and parks the agent until the window turns on broker time) and
its task succeeds over several windows. From the journal alone: no window's accepted
usage is over the limit, and every accepted request fitted its window when it was
written. The verdicts an ``aosk worker`` published while the task ran are those of a
fold of the journal from offset 0, byte for byte."""

from __future__ import annotations

import dataclasses
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from aosk.client import KernelClient
from aosk.events import Budgets, TaskSubmitted
from aosk.kernel import Kind, Reason
from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from tests.support.runtime_harness import Runtimes, journal_report
from tests.support.standin_harness import standin_process
from tests.support.worker_harness import Workers, check_run

pytestmark = pytest.mark.integration

WINDOW_MS = 6_000
TOKENS_PER_WINDOW = 1_700
"""A model call's estimate is its prompt plus the 1,024 tokens a reply may take (1,225 to
about 1,440 over the four turns here) and a call reports about 200: two calls fit in a
window, not four."""
BUDGETS = Budgets(max_tokens=1_000_000, max_tool_calls=100, max_steps=1_000, context_window_tokens=100_000,
                  tokens_per_hour=TOKENS_PER_WINDOW, quota_window_ms=WINDOW_MS)
TASK = ('Work this out: calculator(expression="6*7"), then calculator(expression="2+2"), '
        'then word_count(text="one two three").')


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    with standin_process(tmp_path_factory.mktemp("standin")) as server:
        yield server


def test_an_agent_over_its_window_quota_waits_for_the_next_window(settings, standin, tmp_path: Path) -> None:
    ensure_topics(settings.kafka.bootstrap_servers or "", settings.kafka, mark_new_journal=True)
    with Workers(settings, tmp_path / "workers") as workers, \
            Runtimes(settings, tmp_path / "runtime", standin.url, group_id=f"rt-{uuid.uuid4().hex[:8]}") as runtimes:
        workers.start("w1")
        rt = runtimes.start("rt")
        with KernelClient.from_settings(settings) as kernel:
            kernel.spawn(agent_id="q-0", tenant_id="acme", name="q-0", budgets=BUDGETS,
                         capabilities=("calculator", "word_count")).result()
            kernel.emit(TaskSubmitted, agent_id="q-0", tenant_id="acme", task_id="q-0-t", input=TASK,
                        metadata={}).result()

        def ended() -> bool:
            if not rt.alive():
                raise AssertionError(f"aosk runtime exited {rt.proc.returncode}:\n{rt.log()[-3000:]}")
            return sum(journal_report(settings).tasks_by_outcome().values()) >= 1

        wait_for(ended, timeout=6 * WINDOW_MS / 1000, interval=0.5, what="the task to end")
        assert runtimes.stop("rt") == 0

        # The workers' verdicts (published live) equal a fold of the journal from offset 0.
        def replayed() -> bool:
            run = check_run(settings)
            return not run.problems
        try:
            wait_for(replayed, timeout=60, interval=0.5, what="the worker's verdicts to equal the fold's")
        except TimeoutError:
            raise AssertionError(f"{check_run(settings).problems}\n{workers.logs()}") from None
        workers.stop("w1")

    report = journal_report(settings)
    assert report.problems == []
    assert report.tasks_by_outcome() == {"succeeded": 1}

    # From the journal: requests by window, and each window's accepted usage.
    requests: dict[int, list[int]] = defaultdict(list)  # window -> token estimates of accepted requests
    used: dict[int, int] = defaultdict(int)  # window -> tokens reported by accepted completions
    timeline = []
    rejected = 0
    for r, v in zip(report.records, report.verdicts, strict=True):
        ev = r.event
        name = type(ev).__name__
        window = r.timestamp // WINDOW_MS
        if name == "LlmCallRequested" and v.kind == Kind.ACCEPTED:
            assert used[window] + ev.token_estimate <= TOKENS_PER_WINDOW, (window, used[window], ev)  # type: ignore[union-attr]
            requests[window].append(ev.token_estimate)  # type: ignore[union-attr]
            timeline.append((r.timestamp, "requested", ev.token_estimate))  # type: ignore[union-attr]
        elif name == "LlmCallRequested" and v.reason == Reason.RATE_LIMITED:
            rejected += 1
        elif name == "LlmCallCompleted" and v.kind == Kind.ACCEPTED:
            used[window] += ev.prompt_tokens + ev.completion_tokens  # type: ignore[union-attr]
            timeline.append((r.timestamp, "completed", ev.prompt_tokens + ev.completion_tokens))  # type: ignore[union-attr]
    print("broker ms, step, tokens:", timeline)
    print("requests by window:", dict(requests), "tokens used by window:", dict(used),
          "rate_limited rejections:", rejected)
    assert sum(len(v) for v in requests.values()) == 4  # three tool calls, then the answer
    assert len(requests) >= 2, f"all model calls in one window: {dict(requests)}"
    assert all(u <= TOKENS_PER_WINDOW for u in used.values()), dict(used)
    # Held: the runtime parked the agent (its pre-check), or the fold refused a request.
    assert "is rate limited; asking again" in rt.log() or rejected, rt.log()[-3000:]


def test_a_call_no_window_can_take_fails_its_task(settings, standin, tmp_path: Path) -> None:
    """A model call estimated over ``tokens_per_hour`` would be refused in every window:
    the task fails ``request_too_large`` instead of waiting for ever."""
    kafka = settings.kafka.model_copy(update={"topic_prefix": settings.kafka.topic_prefix + "-never"})
    settings = settings.model_copy(update={"kafka": kafka})
    ensure_topics(kafka.bootstrap_servers or "", kafka, mark_new_journal=True)
    budgets = dataclasses.replace(BUDGETS, tokens_per_hour=1_000)
    with Runtimes(settings, tmp_path, standin.url, group_id=f"rt-{uuid.uuid4().hex[:8]}") as runtimes:
        rt = runtimes.start("rt")
        with KernelClient.from_settings(settings) as kernel:
            kernel.spawn(agent_id="q-1", tenant_id="acme", name="q-1", budgets=budgets,
                         capabilities=("calculator", "word_count")).result()
            kernel.emit(TaskSubmitted, agent_id="q-1", tenant_id="acme", task_id="q-1-t", input=TASK,
                        metadata={}).result()
        wait_for(lambda: sum(journal_report(settings).tasks_by_outcome().values()) >= 1, timeout=30, interval=0.5,
                 what="the task to end")
        assert runtimes.stop("rt") == 0, rt.log()[-3000:]
    report = journal_report(settings)
    assert report.tasks_by_outcome() == {"failed": 1}
    (failed,) = [r.event for r in report.records if type(r.event).__name__ == "TaskFailed"]
    assert failed.reason == "request_too_large", failed  # type: ignore[union-attr]
    assert report.accepted("LlmCallRequested") == 0
