"""``aosk bench worker``: the stream worker's verdict rate and latency, next to baselines.

Throughput (the headline): the workload (``aosk.workload``) is written to a fresh journal
first and acknowledged; then 1 or 2 ``aosk worker`` processes are started with
a fresh topic prefix (so their consumer group and snapshot topic are fresh too). Timed from
starting the processes (start-up included, as after a deploy) until the last journal
record -- including the records the workers derive into the journal (children's
spawns, message deliveries) -- has its verdict read back from the transitions topic;
the run is over when the journal has stopped growing and every record has a verdict.
Each is run ``repeat`` times; the run of median duration is reported.

In one Kafka transaction, as ``aosk bench project`` writes it: the transaction's commit
marker takes an offset no consumer sees, which the worker must (and does) step over.

Baselines in the same run, on the same journal (the first 1-worker run's, derived
records included):

- the in-process fold: ``record_from_message`` for every record, then
  ``aosk.kernel.fold_with_verdicts`` (state hashing on, as workers run it), one core;
- a pass-through: one process consuming the journal and producing each record to a
  scratch topic (``aosk.bench.passthrough``), timed from its start to the last
  acknowledgement. What any Kafka consume -> produce service costs on this machine.

Latency (``aosk.bench.latency``): one worker, a fresh prefix per offered rate, events
sent open-loop at the offered rate; produce -> verdict percentiles.

Also per run: the snapshot topic's bytes per journal byte (what the worker's state costs the
broker) and CPU per record from /proc (the worker processes; the broker's JVM when the
dev stack runs it -- other users of the same broker count too).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aosk.config import Settings
from aosk.errors import AoskError

if TYPE_CHECKING:
    from aosk.bench.follow import Message
    from aosk.workload import Workload

QUIET_S = 3.0
"""The journal and the verdicts must not grow for this long before a run is over
(not part of the timing: a run ends at the last new verdict)."""
SETTLE_TIMEOUT_S = 1800.0
WARMUP_EVENTS = 50


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerRun:
    """One run of N workers over a journal written first."""

    processes: int
    records: int
    """Journal records with a verdict at the end (the workload plus derived records)."""
    seconds: float
    """From starting the processes to reading the last new verdict."""
    worker_cpu: float
    broker_cpu: float
    journal_bytes: int
    snapshot_bytes: int

    @property
    def per_s(self) -> float:
        return self.records / self.seconds


@dataclass(frozen=True)
class FoldBaseline:
    records: int
    decode_seconds: float
    fold_seconds: float

    @property
    def per_s(self) -> float:
        return self.records / (self.decode_seconds + self.fold_seconds)


@dataclass(frozen=True)
class PassThroughRun:
    records: int
    seconds: float
    cpu: float

    @property
    def per_s(self) -> float:
        return self.records / self.seconds


@dataclass(frozen=True)
class LatencyRun:
    offered: float
    sent: int
    send_seconds: float
    p50: float
    p90: float
    p99: float
    """Seconds; ``inf`` where the percentile falls on an event without a verdict after the wait."""
    missing: int
    waited: float
    records: int
    """Journal records folded while the schedule ran (warm-up excluded)."""
    worker_cpu: float
    journal_bytes: int
    snapshot_bytes: int


@dataclass
class WorkerBenchResult:
    events: int
    agents: int
    repeat: int
    latency_seconds: float
    load_before: float
    runs: dict[int, list[WorkerRun]] = field(default_factory=dict)
    """processes -> every run (the report shows the median)."""
    fold: FoldBaseline | None = None
    passthrough: PassThroughRun | None = None
    latency: list[LatencyRun] = field(default_factory=list)

    def median(self, processes: int) -> WorkerRun:
        runs = sorted(self.runs[processes], key=lambda r: r.seconds)
        return runs[len(runs) // 2]


# --- one fresh journal with its workers ---------------------------------------------------


class _FreshRun:
    """A fresh topic prefix (journal, verdicts, consumer group, snapshots) and the worker
    processes started on it; on exit the workers are stopped and every topic of the
    prefix deleted (the workers' logs are kept when the run failed)."""

    def __init__(self, settings: Settings, workload: Workload, say: Callable[..., None]) -> None:
        from aosk.bench.project import fresh_bench_journal

        bj = fresh_bench_journal(settings, kind="worker", events=0, agents=0, seed=0, say=say, workload=workload)
        self.bootstrap = bj.endpoints.bootstrap
        self.prefix = bj.prefix
        pg = bj.settings.storage.postgresql.model_copy(update={"dsn": bj.endpoints.dsn})
        self.settings = bj.settings.model_copy(update={"storage": bj.settings.storage.model_copy(
            update={"postgresql": pg})})
        self.logdir = Path(tempfile.mkdtemp(prefix="aosk-bench-worker-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def pids(self) -> set[int]:
        return {p.pid for p in self.procs}

    def start(self, processes: int) -> None:
        from aosk.bench.follow import worker_env

        env = worker_env(self.settings, self.logdir)
        for i in range(processes):
            with open(self.logdir / f"worker-{i}.log", "wb") as out:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "aosk.cli", "worker", "--node-id", f"bench-{i}"],
                    env=env, stdout=out, stderr=subprocess.STDOUT))

    def alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise AoskError(f"a benchmark worker exited with status {p.returncode}; "
                                f"see its log in {self.logdir}")

    def stop(self) -> None:
        from aosk.bench.project import _stop_all

        _stop_all(self.procs, timeout=30)

    def __enter__(self) -> _FreshRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        _drop_prefix(self.bootstrap, self.prefix)
        if exc_type is None:
            shutil.rmtree(self.logdir, ignore_errors=True)


def _drop_prefix(bootstrap: str, prefix: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if not names:
        return
    for fut in admin.delete_topics(names).values():
        try:
            fut.result(30)
        except Exception:  # noqa: BLE001 - a leftover benchmark topic is harmless
            pass


def _lines(say: Callable[..., None], every_s: float = 10.0) -> Callable[[int, int], None]:
    """A ``wait_settled`` progress callback printing a line every ``every_s``."""
    t0 = time.monotonic()
    due = [t0 + every_s]

    def progress(verdicts: int, offsets: int) -> None:
        if time.monotonic() >= due[0]:
            due[0] += every_s
            say(f"    {time.monotonic() - t0:4.0f}s: {verdicts:,} verdicts, journal at {offsets:,} offsets",
                flush=True)

    return progress


def _bytes(messages: list[Message], covered: dict[int, set[int]] | None = None) -> int:
    return sum(len(m.key or b"") + len(m.value or b"") for m in messages
               if covered is None or m.offset in covered.get(m.partition, ()))


# --- the parts of a run -------------------------------------------------------------------


def _timed_workers(settings: Settings, w: Workload, *, processes: int, say: Callable[..., None],
                   then: Callable[[_FreshRun, list[Any]], None] | None = None) -> WorkerRun:
    """One run: journal written first, ``processes`` workers started, timed until settled.
    ``then(run, raw_journal_messages)`` runs on the same topics before they are dropped."""
    from aosk.bench.follow import Coverage, read_topic, topic_bytes, wait_settled
    from aosk.bench.project import _cpu_seconds, _stack_pids
    from aosk.workload import produce_workload

    with _FreshRun(settings, w, say) as run:
        k = run.settings.kafka
        say(f"  journal: {len(w.items):,} records ...", flush=True)
        # one transaction, committed before any worker starts
        produce_workload(run.bootstrap, k.journal_topic, w.items, transactional_id=f"{k.topic_prefix}-workload")
        coverage = Coverage(run.bootstrap, k.transitions_topic)
        try:
            _, broker = _stack_pids(Path(settings.dev.state_dir))
            broker0 = _cpu_seconds(broker, None)
            say(f"  starting {processes} worker(s) (logs in {run.logdir}) ...", flush=True)
            t0 = time.monotonic()
            run.start(processes)
            wait_settled(run.bootstrap, k.journal_topic, coverage, quiet_s=QUIET_S, timeout=SETTLE_TIMEOUT_S,
                         alive=run.alive, progress=_lines(say))
            seconds = coverage.last_new - t0
            worker_cpu = _cpu_seconds(run.pids, None)
            broker_cpu = _cpu_seconds(broker, None) - broker0
        finally:
            coverage.close()
        run.stop()
        raw = read_topic(run.bootstrap, k.journal_topic, raw=True)
        journal_bytes = sum(len(m.key() or b"") + len(m.value() or b"") for m in raw)
        snapshot_bytes = topic_bytes(run.bootstrap, run.settings.kafka.worker_snapshots_topic)
        result = WorkerRun(processes=processes, records=len(raw), seconds=seconds, worker_cpu=worker_cpu,
                           broker_cpu=broker_cpu, journal_bytes=journal_bytes, snapshot_bytes=snapshot_bytes)
        say(f"  {result.records:,} verdicts in {seconds:.1f}s: {result.per_s:,.0f}/s", flush=True)
        if then is not None:
            then(run, raw)
    return result


def _fold_baseline(raw: list[Any]) -> FoldBaseline:
    from aosk._gc import tune_gc
    from aosk.journal import record_from_message
    from aosk.kernel import fold_with_verdicts

    fold_with_verdicts(sorted((record_from_message(m) for m in raw[:200]), key=lambda r: (r.partition, r.offset)))
    gc.collect()  # the warm-up above (first use of each schema, caches) is not timed
    tune_gc()  # as the worker runs
    t = time.perf_counter()
    records = [record_from_message(m) for m in raw]
    decode = time.perf_counter() - t
    records.sort(key=lambda r: (r.partition, r.offset))
    gc.collect()
    t = time.perf_counter()
    fold_with_verdicts(records)
    return FoldBaseline(records=len(records), decode_seconds=decode, fold_seconds=time.perf_counter() - t)


def _pass_through(run: _FreshRun, records: int) -> PassThroughRun:
    from aosk.bench.ingest import _fresh_topic

    k = run.settings.kafka
    scratch = f"{run.prefix}.passthrough"
    _fresh_topic(run.bootstrap, scratch, k.journal_partitions)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "aosk.bench.passthrough", run.bootstrap, k.journal_topic, scratch,
         f"{run.prefix}-passthrough", str(records)],
        capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AoskError(f"the pass-through baseline failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return PassThroughRun(records=int(out["records"]), seconds=out["acked_at"] - t0, cpu=out["cpu"])


def _latency_run(settings: Settings, w: Workload, encoded: list[tuple[bytes, bytes, str | None]], *,
                 rate: float, seconds: float, say: Callable[..., None]) -> LatencyRun:
    from aosk.bench.follow import Coverage, read_topic, topic_bytes
    from aosk.bench.latency import VerdictClock, open_loop
    from aosk.bench.project import _cpu_seconds

    warmup = min(WARMUP_EVENTS, len(encoded) // 10)
    count = max(1, min(len(encoded) - warmup, round(rate * seconds)))
    with _FreshRun(settings, w, say) as run:
        k = run.settings.kafka
        clock = VerdictClock()
        coverage = Coverage(run.bootstrap, k.transitions_topic, on_verdict=clock.on_verdict)
        start: dict[str, float] = {}

        def on_start() -> None:
            start["cpu"], start["records"] = _cpu_seconds(run.pids, None), coverage.distinct()

        try:
            say(f"  offered {rate:,.0f} events/s: {count:,} events after a warm-up of {warmup} "
                f"(logs in {run.logdir}) ...", flush=True)
            run.start(1)
            r = open_loop(run.bootstrap, k.journal_topic, encoded[: warmup + count], clock, rate=rate,
                          warmup=warmup, drain_timeout=max(30.0, 3 * seconds), alive=run.alive, say=say,
                          on_start=on_start)
            worker_cpu = _cpu_seconds(run.pids, None) - start["cpu"]
            folded = coverage.distinct() - int(start["records"])
            covered = coverage.positions()
        finally:
            coverage.close()
        run.stop()
        journal = read_topic(run.bootstrap, k.journal_topic)
        snapshot_bytes = topic_bytes(run.bootstrap, run.settings.kafka.worker_snapshots_topic)
    result = LatencyRun(offered=rate, sent=r.sent, send_seconds=r.send_seconds, p50=r.percentile(0.5),
                        p90=r.percentile(0.9), p99=r.percentile(0.99), missing=r.missing, waited=r.waited,
                        records=folded, worker_cpu=worker_cpu, journal_bytes=_bytes(journal, covered),
                        snapshot_bytes=snapshot_bytes)
    say(f"  p50 {_ms(result.p50)}, p90 {_ms(result.p90)}, p99 {_ms(result.p99)} ms", flush=True)
    return result


# --- the benchmark ------------------------------------------------------------------------


def bench_worker(settings: Settings, *, events: int = 50_000, agents: int = 200, repeat: int = 3,
                 rates: tuple[float, ...] = (300, 1_000, 2_000), latency_seconds: float = 20.0, seed: int = 42,
                 progress: bool = True) -> WorkerBenchResult:
    """Throughput with 1 and 2 workers (``repeat`` runs each), the two baselines on the
    first 1-worker run's journal, then one latency run per offered rate."""
    from aosk.bench.latency import encoded
    from aosk.workload import generate_workload

    if repeat < 1:
        raise AoskError("--repeat must be at least 1")
    if any(r <= 0 for r in rates) or latency_seconds <= 0:
        raise AoskError("--rates and --latency-seconds must be positive")
    say = print if progress else (lambda *a, **k: None)
    say(f"workload: {events} events over {agents} agents ...", flush=True)
    w = generate_workload(agents=agents, events=events, seed=seed, garbage_every=1000)
    result = WorkerBenchResult(events=len(w.items), agents=agents, repeat=repeat,
                               latency_seconds=latency_seconds, load_before=os.getloadavg()[0])

    def baselines(run: _FreshRun, raw: list[Any]) -> None:
        say("  baseline: in-process decode + fold of the same journal ...", flush=True)
        result.fold = _fold_baseline(raw)
        say(f"    {result.fold.per_s:,.0f} records/s", flush=True)
        say("  baseline: pass-through consume -> produce of the same journal ...", flush=True)
        result.passthrough = _pass_through(run, len(raw))
        say(f"    {result.passthrough.per_s:,.0f} records/s", flush=True)

    for processes in (1, 2):
        for n in range(repeat):
            say(f"{processes} worker(s), run {n + 1}/{repeat}: journal written first ...", flush=True)
            then = baselines if processes == 1 and n == 0 else None
            run = _timed_workers(settings, w, processes=processes, say=say, then=then)
            result.runs.setdefault(processes, []).append(run)
    records = encoded(w.items)
    for rate in rates:
        say(f"latency, 1 worker, open loop at {rate:,.0f} events/s for up to {latency_seconds:.0f}s ...", flush=True)
        result.latency.append(_latency_run(settings, w, records, rate=rate, seconds=latency_seconds, say=say))
    return result


# --- the report ---------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return "n/a" if seconds != seconds else ("no verdict" if seconds == float("inf") else f"{seconds * 1e3:,.0f}")


def _us(cpu: float, records: int) -> str:
    return f"{cpu / records * 1e6:,.0f}" if records else "n/a"


def _ratio(num: int, den: int) -> str:
    return f"{num / den:.2f}" if den else "n/a"


def command_line(r: WorkerBenchResult) -> str:
    rates = ",".join(f"{x:g}" for x in (lt.offered for lt in r.latency))
    return (f"aosk bench worker --events {r.events} --agents {r.agents} --repeat {r.repeat} --rates {rates} "
            f"--latency-seconds {r.latency_seconds:g}")


def report_markdown(r: WorkerBenchResult, machine: str, *, plot: str | None = None) -> str:
    """``plot``: the latency plot's path relative to the report, or None when none was drawn."""
    if r.fold is None or r.passthrough is None:
        raise AoskError("the worker benchmark has no baseline figures; it did not finish")
    one, two, fold, pt = r.median(1), r.median(2), r.fold, r.passthrough
    lines = [
        "## Worker: journal -> verdicts, next to the in-process fold and a Kafka pass-through",
        "",
        f"`{command_line(r)}` on {machine}; the embedded dev stack (one broker, shared with anything else "
        f"running on the machine); load average {r.load_before:.2f} when the run started. Workload: "
        f"`aosk.workload`, {r.events:,} records over {r.agents} agents (children, messages, memories with 384-d "
        f"embeddings, illegal and undecodable records); the workers add derived records (spawns, deliveries) "
        f"to the journal, {one.records:,} records in all.",
        "",
        "| what | records | seconds | records/s | CPU µs/record (process) | CPU µs/record (broker) | "
        "snapshot bytes / journal byte |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| in-process: `record_from_message` + `fold_with_verdicts` (state hashing on), one core | "
        f"{fold.records:,} | {fold.decode_seconds + fold.fold_seconds:.2f} | {fold.per_s:,.0f} | "
        f"{_us(fold.decode_seconds + fold.fold_seconds, fold.records)} | | |",
        f"| pass-through: one confluent-kafka process, consume -> produce each record, from process start | "
        f"{pt.records:,} | {pt.seconds:.2f} | {pt.per_s:,.0f} | {_us(pt.cpu, pt.records)} | | |",
    ]
    for run in (one, two):
        lines.append(
            f"| AOSK: {run.processes} `aosk worker` process{'es' if run.processes > 1 else ''}, journal written "
            f"first, from process start to the last verdict (median of {len(r.runs[run.processes])}) | "
            f"{run.records:,} | {run.seconds:.2f} | **{run.per_s:,.0f}** | {_us(run.worker_cpu, run.records)} | "
            f"{_us(run.broker_cpu, run.records)} | {_ratio(run.snapshot_bytes, run.journal_bytes)} |")
    lines += [
        "",
        f"1 worker / in-process fold: **{one.per_s / fold.per_s:.2f}x**; 2 workers / 1 worker: "
        f"**{two.per_s / one.per_s:.2f}x**; 1 worker / pass-through: **{one.per_s / pt.per_s:.2f}x**; "
        f"2 workers / pass-through: {two.per_s / pt.per_s:.2f}x. "
        f"In-process split: decode {_us(fold.decode_seconds, fold.records)} µs, fold "
        f"{_us(fold.fold_seconds, fold.records)} µs per record.",
        "",
        "Every run (verdicts/s): " + "; ".join(
            f"{p} worker{'s' if p > 1 else ''}: " + ", ".join(f"{x.per_s:,.0f}" for x in runs)
            for p, runs in sorted(r.runs.items())) + ". "
        "Start-up (imports, group join, snapshot restore) is inside the timing; a run ends at the last new "
        "verdict, once the journal has stopped growing and every record has one. Broker CPU counts everything "
        "the broker did meanwhile.",
        "",
        f"Latency, produce -> verdict read back, **one worker process**, offered open-loop (sent at scheduled "
        f"times, measured from the scheduled time, never waiting for verdicts), for up to "
        f"{r.latency_seconds:g}s per rate, a fresh journal each, after a warm-up of {WARMUP_EVENTS} events:",
        "",
        "| offered events/s | sent | sending took s | p50 ms | p90 ms | p99 ms | no verdict | "
        "worker CPU µs/record | snapshot bytes / journal byte |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {lt.offered:,.0f} | {lt.sent:,} | {lt.send_seconds:.1f} | {_ms(lt.p50)} | {_ms(lt.p90)} | "
          f"{_ms(lt.p99)} | {lt.missing:,}{f' after {lt.waited:.0f}s' if lt.missing else ''} | "
          f"{_us(lt.worker_cpu, lt.records)} | {_ratio(lt.snapshot_bytes, lt.journal_bytes)} |" for lt in r.latency],
        "",
        "A rate above what one worker sustains shows up as latency growing over the run (queueing), not as a "
        "slower schedule; \"no verdict\" counts events still unanswered when the wait after the last send ended.",
        "",
        (f"![produce -> verdict latency vs offered rate]({plot})" if plot else
         "No latency plot: matplotlib is missing (`pip install -e '.[bench]'`)."),
    ]
    return "\n".join(lines) + "\n"
