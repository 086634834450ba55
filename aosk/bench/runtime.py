"""``aosk bench runtime``: the agent runtime's scheduling overhead and its step rate.

Each run gets a fresh journal (topic prefix), consumer group and (absent) projection
schema, so the runtime folds from offset 0. Agents are spawned and their tasks submitted
first; then one ``aosk runtime`` process is started against the dev stack's stand-in model
server (or ``llm.base_url``) and the run ends when every task has ended. Every figure is
computed from the journal's broker timestamps (LogAppendTime), never from the runtime's
own clocks. A task is one calculator call: model turn, tool run, model turn (the answer),
so five steps (start, model, tool, model, finish) and eight records (an agent's later
tasks start as the earlier one ends, without a start step: four steps and seven records).

- **Scheduling overhead**, with the stand-in answering each model call after
  ``delay_ms`` (a marker in the task text): for each agent, from a record that ends a
  step (``AgentStarted``, ``LlmCallCompleted``, ``ToolCallCompleted``, ``TaskCompleted``)
  to the agent's next record (the next step's first write). That is the fold seeing the
  record, the run queue, and the next write reaching the broker; p50 and p99 over every
  such pair, median over the runs. With ``agents`` agents and a 1 s model, about
  ``agents`` model calls per second are offered, and as many other steps again.
  The runtime's model concurrency is set above ``agents`` so the model slots never queue.
- **Step rate**, with an instant model: steps per second from the runtime's first record
  to the last task's end. Baseline, in the same run on the same records: one process
  producing the run's journal to a scratch topic (the SDK's producer, acknowledged) and
  decoding and folding it (``fold_with_verdicts``, state hashing off as the runtime runs
  it). The runtime does at least that for every record it writes (it writes each and
  folds it), so the ratio of records per second is what the rest (the model and tool
  calls over HTTP and processes, asyncio, the queue) costs on top. The baseline's
  records include the agents' spawns and tasks (about 15% of them), which the runtime
  folds too, mostly before its first write.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aosk.config import Settings
from aosk.errors import AoskError

STEP_ENDS = frozenset({"AgentStarted", "LlmCallCompleted", "ToolCallCompleted", "TaskCompleted"})
"""Records that end a step: the agent's next record is its next step's first write."""
RUNTIME_TYPES = frozenset({"AgentStarted", "LlmCallRequested", "LlmCallCompleted", "ToolCallRequested",
                           "ToolCallCompleted", "TaskCompleted", "TaskFailed"})
STEPS = frozenset({"AgentStarted", "LlmCallCompleted", "ToolCallCompleted", "TaskCompleted", "TaskFailed"})
"""One of these per step."""
RUN_TIMEOUT_S = 600.0
STALL_S = 60.0
WARMUP_MS = 2_000
"""The start of a run that the steady-state figures leave out: every agent starts at once."""


@dataclass(frozen=True)
class RuntimeRun:
    """One run's figures, from the journal."""

    agents: int
    tasks: int
    delay_ms: int
    seconds: float
    """Broker time from the runtime's first record to the last task's end."""
    steps: int
    records: int
    """Records the runtime wrote."""
    model_calls: int
    failed: int
    gaps_ms: list[int] = field(repr=False)
    """Step end -> the agent's next record, every pair."""
    steady_gaps_ms: list[int] = field(repr=False)
    """The pairs whose step ended after the first ``WARMUP_MS`` of the run."""
    load: float
    """Load average (1 min) when the run started."""

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0

    @property
    def model_calls_per_s(self) -> float:
        return self.model_calls / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float, *, steady: bool = False) -> float:
        return _percentile(self.steady_gaps_ms if steady else self.gaps_ms, q)


@dataclass(frozen=True)
class Baseline:
    records: int
    produce_s: float
    fold_s: float

    @property
    def per_s(self) -> float:
        return self.records / (self.produce_s + self.fold_s)


@dataclass
class RuntimeBenchResult:
    agents: int
    tasks_per_agent: int
    delay_ms: int
    repeat: int
    overhead: list[RuntimeRun]
    rate: list[RuntimeRun]
    baseline: list[Baseline]

    def median_overhead(self, q: float, *, steady: bool = False) -> float:
        return statistics.median(r.percentile(q, steady=steady) for r in self.overhead)

    def median_rate(self) -> RuntimeRun:
        return sorted(self.rate, key=lambda r: r.steps_per_s)[len(self.rate) // 2]

    def median_baseline(self) -> Baseline:
        return sorted(self.baseline, key=lambda b: b.per_s)[len(self.baseline) // 2]


def _percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))])


def task_text(i: int, delay_ms: int) -> str:
    delay = f" [[standin:delay-ms={delay_ms}]]" if delay_ms else ""
    return f'Work this out: calculator(expression="{i}*3").{delay}'


class _Run:
    """A fresh topic prefix with its agents and tasks written, and one runtime started on it."""

    def __init__(self, settings: Settings, *, agents: int, tasks: int, delay_ms: int, llm_url: str) -> None:
        from aosk.endpoints import resolve_endpoints
        from aosk.topics import ensure_topics

        ep = resolve_endpoints(settings)
        run = uuid.uuid4().hex[:8]
        self.prefix = f"bench-runtime-{run}"
        self.schema = f"bench_runtime_{run}"  # never created: the runtime folds from offset 0
        self.bootstrap = ep.bootstrap
        self.settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
            update={"topic_prefix": self.prefix, "bootstrap_servers": ep.bootstrap})})
        ensure_topics(ep.bootstrap, self.settings.kafka, mark_new_journal=True)  # fold version 4: tasks
        self.agents, self.tasks, self.delay_ms, self.llm_url = agents, tasks, delay_ms, llm_url
        self.logdir = Path(tempfile.mkdtemp(prefix="aosk-bench-runtime-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.load = os.getloadavg()[0]

    def submit(self) -> None:
        from aosk.client import KernelClient
        from aosk.events import Budgets, TaskSubmitted

        budgets = Budgets(max_tokens=100_000_000, max_tool_calls=1_000_000, max_steps=1_000_000,
                          context_window_tokens=100_000)
        with KernelClient.from_settings(self.settings) as kernel:
            for i in range(self.agents):
                a = f"agent-{i}"
                kernel.spawn(agent_id=a, tenant_id=f"tenant-{i % 4}", name=a, budgets=budgets,
                             capabilities=("calculator",))
                for j in range(self.tasks):
                    kernel.emit(TaskSubmitted, agent_id=a, tenant_id=f"tenant-{i % 4}", task_id=f"{a}-t{j}",
                                input=task_text(i + j, self.delay_ms), metadata={})
            if kernel.flush(60):
                raise AoskError("the benchmark's agents and tasks were not all acknowledged within 60 s")

    def start(self) -> None:
        from aosk.bench.follow import worker_env

        env = dict(worker_env(self.settings, self.logdir), AOSK_LLM_BASE_URL=self.llm_url,
                   AOSK_EMBEDDINGS_BASE_URL=self.llm_url,
                   AOSK_RUNTIME_GROUP_ID=f"{self.prefix}-runtime",
                   AOSK_RUNTIME_MODEL_CONCURRENCY=str(max(16, 2 * self.agents)),
                   AOSK_RUNTIME_TOOL_CONCURRENCY=str(max(4, self.agents)),
                   AOSK_TOOLS_WORKERS="2")
        with open(self.logdir / "runtime.log", "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "aosk.cli", "runtime", "--schema", self.schema,
                                          "--log-level", "warning"],
                                         env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ended(self, say: Callable[..., None]) -> list[Any]:
        """Every record of the journal once each task has ended."""
        from aosk.journal import JournalReader

        want = self.agents * self.tasks
        deadline = time.monotonic() + RUN_TIMEOUT_S
        grew = time.monotonic()
        records: list[Any] = []
        with JournalReader(self.bootstrap, self.settings.kafka.journal_topic) as reader:
            nexts = {p: 0 for p in range(reader.partitions())}
            ended = 0
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise AoskError(f"the benchmark's aosk runtime exited {self.proc.returncode}; see "
                                    f"{self.logdir / 'runtime.log'}")
                for p, start in nexts.items():
                    end = reader.end_offset(p)
                    if end > start:
                        new = list(reader.read(p, start, end))
                        ended += sum(1 for r in new if type(r.event).__name__ in ("TaskCompleted", "TaskFailed"))
                        records.extend(new)
                        nexts[p] = end
                        grew = time.monotonic()
                if ended >= want:
                    return records
                if time.monotonic() - grew > STALL_S:
                    raise AoskError(f"{ended} of {want} tasks ended and the journal has not grown for {STALL_S:.0f} s; "
                                    f"see {self.logdir / 'runtime.log'}")
                if time.monotonic() > deadline:
                    raise AoskError(f"{ended} of {want} tasks ended within {RUN_TIMEOUT_S:.0f} s; see "
                                    f"{self.logdir / 'runtime.log'}")
                time.sleep(0.5)

    def close(self, ok: bool) -> None:
        from aosk.bench.project import _stop_all
        from aosk.bench.worker import _drop_prefix

        if self.proc is not None:
            _stop_all([self.proc], timeout=30)
        _drop_prefix(self.bootstrap, self.prefix)
        if ok:
            shutil.rmtree(self.logdir, ignore_errors=True)


def figures(records: list[Any], *, agents: int, tasks: int, delay_ms: int, load: float) -> RuntimeRun:
    """A run's figures from its journal (records of every partition, any order)."""
    mine = [r for r in records if r.event is not None and type(r.event).__name__ in RUNTIME_TYPES
            and r.event.origin == "kernel"]
    by_agent: dict[str, list[Any]] = {}
    for r in sorted(mine, key=lambda r: (r.partition, r.offset)):
        by_agent.setdefault(r.event.agent_id, []).append(r)
    first = min(r.timestamp for r in mine)
    pairs = [(a.timestamp, b.timestamp - a.timestamp) for rs in by_agent.values()
             for a, b in zip(rs, rs[1:], strict=False) if type(a.event).__name__ in STEP_ENDS]
    names = [type(r.event).__name__ for r in mine]
    last = max(r.timestamp for r in mine if type(r.event).__name__ in ("TaskCompleted", "TaskFailed"))
    return RuntimeRun(agents=agents, tasks=agents * tasks, delay_ms=delay_ms, seconds=(last - first) / 1000,
                      steps=sum(1 for n in names if n in STEPS), records=len(mine),
                      model_calls=names.count("LlmCallCompleted"), failed=names.count("TaskFailed"),
                      gaps_ms=[g for _, g in pairs], steady_gaps_ms=[g for t, g in pairs if t >= first + WARMUP_MS],
                      load=load)


def produce_fold_baseline(settings: Settings, records: list[Any]) -> Baseline:
    """``records`` (a run's whole journal, raw bytes, in offset order per partition)
    produced to a scratch topic by one acknowledged SDK producer, then decoded and folded
    in this process."""
    from aosk.bench.worker import _drop_prefix
    from aosk.client._producer import DeliveringProducer, producer_config
    from aosk.events import decode
    from aosk.kernel import Record, fold_with_verdicts
    from aosk.topics import ensure_topics

    prefix = f"bench-runtime-base-{uuid.uuid4().hex[:8]}"
    kafka = settings.kafka.model_copy(update={"topic_prefix": prefix})
    bootstrap = kafka.bootstrap_servers or ""
    ensure_topics(bootstrap, kafka)
    try:
        producer = DeliveringProducer(producer_config(bootstrap, client_id=prefix))
        try:
            producer.produce(kafka.journal_topic, key=None, value=records[0].value)  # connected, idempotence set up
            producer.flush(30)
            t0 = time.perf_counter()
            for r in records:
                producer.produce(kafka.journal_topic, key=r.key.encode() if r.key else None, value=r.value)
            if producer.flush(60):
                raise AoskError("the baseline's records were not all acknowledged within 60 s")
            produce_s = time.perf_counter() - t0
        finally:
            producer.close()
        t0 = time.perf_counter()
        decoded = [Record(r.key, r.partition, r.offset, r.timestamp, r.value, decode(r.value)) for r in records]
        fold_with_verdicts(decoded, hash_state=False)
        fold_s = time.perf_counter() - t0
    finally:
        _drop_prefix(bootstrap, prefix)
    return Baseline(len(records), produce_s, fold_s)


def bench_runtime(settings: Settings, *, agents: int = 200, tasks_per_agent: int = 5, delay_ms: int = 1000,
                  repeat: int = 3, progress: bool = True) -> RuntimeBenchResult:
    from aosk.endpoints import resolve_model_url

    if repeat < 1 or agents < 1 or tasks_per_agent < 1:
        raise AoskError("--repeat, --agents and --tasks must be at least 1")
    say = print if progress else (lambda *a, **k: None)
    llm_url, _ = resolve_model_url(settings, "llm")
    result = RuntimeBenchResult(agents, tasks_per_agent, delay_ms, repeat, [], [], [])
    for i in range(repeat):
        for kind, delay in (("overhead", delay_ms), ("rate", 0)):
            say(f"run {i + 1}/{repeat}, {kind}: {agents} agents x {tasks_per_agent} tasks, model delay {delay} ms ...",
                flush=True)
            run = _Run(settings, agents=agents, tasks=tasks_per_agent, delay_ms=delay, llm_url=llm_url)
            ok = False
            try:
                run.submit()
                run.start()
                records = run.wait_ended(say)
                fig = figures(records, agents=agents, tasks=tasks_per_agent, delay_ms=delay, load=run.load)
                ok = True
            finally:
                run.close(ok)
            say(f"  {fig.steps_per_s:,.0f} steps/s, {fig.model_calls_per_s:,.0f} model calls/s, gaps p50 "
                f"{fig.percentile(50):.0f} ms p99 {fig.percentile(99):.0f} ms (load {fig.load:.2f})", flush=True)
            if kind == "overhead":
                result.overhead.append(fig)
            else:
                result.rate.append(fig)
                base = produce_fold_baseline(run.settings, sorted(records, key=lambda r: (r.partition, r.offset)))
                result.baseline.append(base)
                say(f"  baseline produce + fold: {base.per_s:,.0f} records/s", flush=True)
    return result


def command_line(r: RuntimeBenchResult, quick: bool) -> str:
    if quick:
        return "aosk bench runtime --quick"
    return (f"aosk bench runtime --agents {r.agents} --tasks {r.tasks_per_agent} --delay-ms {r.delay_ms} "
            f"--repeat {r.repeat}")


def report_markdown(r: RuntimeBenchResult, machine: str, command: str) -> str:
    o50, o99 = r.median_overhead(50), r.median_overhead(99)
    rate, base = r.median_rate(), r.median_baseline()
    loads = ", ".join(f"{x.load:.2f}" for x in (*r.overhead, *r.rate))
    lines = [
        "## Runtime: scheduling overhead and step rate",
        "",
        f"`{command}` on {machine}; the embedded dev stack (one broker, 12 partitions) and its stand-in model "
        f"server, all on the same cores; one `aosk runtime` process; load average when each run started: {loads}. "
        f"Each run: {r.agents} agents in 4 tenants, {r.tasks_per_agent} tasks each written first (one calculator "
        "call per task: start, model turn, tool run, model turn, finish), a fresh journal folded from offset 0. "
        "Figures from the journal's broker timestamps.",
        "",
        f"**Scheduling overhead**, the stand-in answering each model call after {r.delay_ms} ms: from a record "
        "that ends a step (`AgentStarted`, `LlmCallCompleted`, `ToolCallCompleted`, `TaskCompleted`) to the same "
        "agent's next record (the fold sees the record, the run queue pops the agent, the next write reaches the "
        "broker).",
        "",
        f"The steady columns leave out the step ends of the first {WARMUP_MS / 1000:g} s, when every agent starts "
        "at once.",
        "",
        "| run | steps/s | model calls/s | step ends measured | p50 ms | p99 ms | max ms | steady p50 ms | "
        "steady p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, x in enumerate(r.overhead):
        lines.append(f"| {i + 1} | {x.steps_per_s:,.0f} | {x.model_calls_per_s:,.0f} | {len(x.gaps_ms):,} | "
                     f"{x.percentile(50):.0f} | {x.percentile(99):.0f} | {max(x.gaps_ms, default=0):,} | "
                     f"{x.percentile(50, steady=True):.0f} | {x.percentile(99, steady=True):.0f} |")
    s50, s99 = r.median_overhead(50, steady=True), r.median_overhead(99, steady=True)
    lines += [
        f"| **median** | | | | **{o50:.0f}** | **{o99:.0f}** | | **{s50:.0f}** | **{s99:.0f}** |",
        "",
        f"Goal: p99 under 50 ms ({'met' if o99 < 50 else '**missed**'}; steady state: "
        f"{'met' if s99 < 50 else '**missed**'}).",
        "",
        "**Step rate**, an instant model (no delay): steps per second from the runtime's first record to the last "
        "task's end. Baseline: one process producing the same run's journal (raw bytes; the SDK's idempotent "
        "producer, acks=all) to a scratch topic, then decoding and folding it (`fold_with_verdicts`, state hashing "
        "off as the runtime folds): work the runtime does for every record it writes, without the model and tool "
        "calls, the queue and asyncio. Ratio: the runtime's records written per second over the baseline's.",
        "",
        "| run | steps | records | seconds | steps/s | records/s | baseline records/s | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (x, b) in enumerate(zip(r.rate, r.baseline, strict=True)):
        rps = x.records / x.seconds if x.seconds else 0.0
        lines.append(f"| {i + 1} | {x.steps:,} | {x.records:,} | {x.seconds:.2f} | {x.steps_per_s:,.0f} | "
                     f"{rps:,.0f} | {b.per_s:,.0f} | {rps / b.per_s:.2f} |")
    rps = rate.records / rate.seconds if rate.seconds else 0.0
    lines += [
        "",
        f"Median: **{rate.steps_per_s:,.0f} steps/s** ({rate.model_calls_per_s:,.0f} model calls/s), "
        f"{rps:,.0f} records/s; baseline (median) {base.per_s:,.0f} records/s "
        f"(produce {base.produce_s:.2f} s + fold {base.fold_s:.2f} s for {base.records:,}); runtime / baseline: "
        f"**{rps / base.per_s:.2f}x**. Failed tasks: "
        f"{sum(x.failed for x in (*r.overhead, *r.rate))}.",
    ]
    return "\n".join(lines)
