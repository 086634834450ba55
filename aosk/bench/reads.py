"""``aosk bench reads``: point-in-time and current-state reads, in process, after warm-up.

The run: the realistic workload (``aosk.workload``; no agent terminates, so each one keeps
receiving records) of ``agents`` agents with about ``events_per_agent`` records each goes
to a fresh journal topic (the journal's partitions, 12 by default) and 2 ``aosk project``
processes project it into a fresh schema. Then, in this process, through one
``ProjectionReader`` (its connection pool warm, 100 reads of each kind first):

- ``state_at``: the state of a random agent after a random offset of its partition
  between its first record and the projected end (PostgreSQL: nearest checkpoint plus
  the ``events`` rows after it, folded with ``apply``);
- latest state: ``agent_state`` of a random agent (one row, the state decoded);
- the baseline, same run: the same ``state_at`` answered from the journal
  (``aosk.projectors.history.state_at`` on one reused ``JournalReader``), fewer
  samples; every one of its answers is compared with the PostgreSQL answer (state hash).

Each kind is timed ``repeat`` times over ``samples`` reads; the median of the repeats'
p50 and p99 is reported.
"""

from __future__ import annotations

import gc
import random
import time
from dataclasses import dataclass, field
from typing import Any

from aosk.config import Settings
from aosk.errors import AoskError

GOAL_STATE_AT_P50_MS = 4.0
GOAL_STATE_AT_P99_MS = 7.0
GOAL_LATEST_P99_MS = 5.0
WARMUP = 100


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    runs: list[tuple[float, float]]
    """(p50, p99) of each repeat."""
    cpu_ms: float = 0.0
    """This process's CPU per read (mean over every run): the work of a read, which a busy
    machine stretches less than the wall-clock figures."""


@dataclass
class ReadsResult:
    agents: int
    events: int
    partitions: int
    events_per_agent: int
    """The median agent's record count."""
    checkpoint_every: int
    checkpoint_given: bool
    """``checkpoint_every`` was asked for (else the schema's default)."""
    samples: int
    repeat: int
    project_seconds: float
    state_at: Latency
    latest: Latency
    journal: Latency
    journal_samples: int
    mean_folded: float
    max_folded: int
    equal: int
    """Random points whose journal answer equals the PostgreSQL answer (out of journal_samples * repeat)."""
    load_before: float
    checkpoint_bytes: int = 0
    """On disk: the ``checkpoints`` table with its indexes and TOAST."""
    events_bytes: int = 0
    """On disk: the ``events`` table with its indexes and TOAST."""
    notes: list[str] = field(default_factory=list)


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _median_latency(runs: list[list[float]], cpu: list[float]) -> Latency:
    pairs = [(_pct(r, 0.50) * 1000, _pct(r, 0.99) * 1000) for r in runs]
    p50 = sorted(p for p, _ in pairs)[len(pairs) // 2]
    p99 = sorted(p for _, p in pairs)[len(pairs) // 2]
    return Latency(p50, p99, pairs, sum(cpu) * 1000 / max(1, sum(len(r) for r in runs)))


def bench_reads(settings: Settings, *, agents: int = 12, events_per_agent: int = 10_000, samples: int = 1_000,
                journal_samples: int = 50, repeat: int = 3, checkpoint_every: int | None = None,
                processes: int = 2, seed: int = 42, progress: bool = True) -> ReadsResult:
    import psycopg

    from aosk.bench.project import _cleanup, _timed_projection, fresh_bench_journal
    from aosk.client.projections import ProjectionReader
    from aosk.journal import JournalReader
    from aosk.projectors.db import migrate
    from aosk.projectors.history import state_at as journal_state_at
    from aosk.projectors.runner import checkpoint_every_of
    from aosk.workload import generate_workload

    if repeat < 1 or samples < 1 or agents < 1 or events_per_agent < 1:
        raise AoskError("--agents, --events-per-agent, --samples and --repeat must be at least 1")
    say = print if progress else (lambda *a, **k: None)
    total = agents * events_per_agent
    say(f"workload: {total:,} events over {agents} agents ...", flush=True)
    w = generate_workload(agents=agents, events=total, seed=seed, garbage_every=1000, terminate_fraction=0.0,
                          children=False)
    bj = fresh_bench_journal(settings, kind="reads", events=total, agents=agents, seed=seed, say=say, workload=w)
    ep, schema, prefix, topic = bj.endpoints, bj.schema, bj.prefix, bj.settings.kafka.journal_topic
    load_before, partitions, agent_ids, n_items = (bj.load_before, bj.settings.kafka.journal_partitions, w.agents,
                                                   len(w.items))
    rng = random.Random(seed)
    try:
        with psycopg.connect(ep.dsn) as conn:
            migrate(conn, schema=schema, dimension=settings.memory.embedding_dimension,
                    checkpoint_every=checkpoint_every)
            every = checkpoint_every_of(conn, schema)
        say(f"projecting with {processes} projectors (a checkpoint every {every} records of an agent) ...",
            flush=True)
        timed = _timed_projection(settings, bj, processes=processes, written_first=True,
                                  without_vector_index=False, say=say)
        # Measured as in a process that serves reads: without the workload's records in memory
        # (their objects would make every cyclic collection of the reads walk them).
        del w, bj
        gc.collect()
        with psycopg.connect(ep.dsn) as conn:
            spans = _spans(conn, schema, agent_ids)
            sizes = conn.execute("select pg_total_relation_size(%s), pg_total_relation_size(%s)",
                                 (f"{schema}.checkpoints", f"{schema}.events")).fetchone()
            assert sizes is not None
        counts = sorted(n for _, _, _, n in spans.values())
        with ProjectionReader(ep.dsn, schema=schema, bootstrap=ep.bootstrap,
                              journal_topic=topic) as reader, \
                JournalReader(ep.bootstrap, topic) as journal:
            names = sorted(spans)

            def point() -> tuple[str, int]:
                a = rng.choice(names)
                _, first, end, _ = spans[a]
                return a, rng.randrange(first, end)

            say(f"warm-up: {WARMUP} reads of each kind ...", flush=True)
            for _ in range(WARMUP):
                a, off = point()
                reader.state_at(a, offset=off)
                reader.agent_state(a)
            at_runs: list[list[float]] = []
            latest_runs: list[list[float]] = []
            journal_runs: list[list[float]] = []
            folded: list[int] = []
            cpu = {"at": [0.0], "latest": [0.0], "journal": [0.0]}
            equal = 0
            for n in range(repeat):
                say(f"run {n + 1}/{repeat}: {samples} state_at, {samples} latest, {journal_samples} from the "
                    "journal ...", flush=True)
                times = []
                c0 = time.process_time()
                for _ in range(samples):
                    a, off = point()
                    t0 = time.perf_counter()
                    p = reader.state_at(a, offset=off)
                    times.append(time.perf_counter() - t0)
                    folded.append(p.folded)
                cpu["at"].append(time.process_time() - c0)
                at_runs.append(times)
                times = []
                c0 = time.process_time()
                for _ in range(samples):
                    a = rng.choice(names)
                    t0 = time.perf_counter()
                    v = reader.agent_state(a)
                    times.append(time.perf_counter() - t0)
                    assert v is not None
                cpu["latest"].append(time.process_time() - c0)
                latest_runs.append(times)
                times = []
                with psycopg.connect(ep.dsn) as conn:
                    for _ in range(journal_samples):
                        a, off = point()
                        c0 = time.process_time()
                        t0 = time.perf_counter()
                        j = journal_state_at(conn, schema, journal, a, offset=off)
                        times.append(time.perf_counter() - t0)
                        cpu["journal"].append(time.process_time() - c0)
                        equal += j.state_hash == reader.state_at(a, offset=off).state_hash
                journal_runs.append(times)
    finally:
        _cleanup(ep.dsn, ep.bootstrap, schema, prefix)
    checked = journal_samples * repeat
    if equal != checked:
        raise AoskError(f"{checked - equal} of {checked} random points: the journal's state differs from "
                        "PostgreSQL's")
    return ReadsResult(
        agents=agents, events=n_items, partitions=partitions,
        events_per_agent=counts[len(counts) // 2], checkpoint_every=every,
        checkpoint_given=checkpoint_every is not None, samples=samples, repeat=repeat,
        project_seconds=timed.seconds, state_at=_median_latency(at_runs, cpu["at"]),
        latest=_median_latency(latest_runs, cpu["latest"]), journal=_median_latency(journal_runs, cpu["journal"]),
        journal_samples=journal_samples,
        mean_folded=sum(folded) / len(folded), max_folded=max(folded), equal=equal, load_before=load_before,
        checkpoint_bytes=int(sizes[0]), events_bytes=int(sizes[1]))


def _spans(conn: Any, schema: str, agents: tuple[str, ...]) -> dict[str, tuple[int, int, int, int]]:
    """agent -> (partition, first offset, projected end of its partition, its record count)."""
    from aosk.projectors.rows import storage_key

    rows = conn.execute(
        f"select e.agent_id, min(e.journal_partition), min(e.journal_offset), count(*), o.next_offset "
        f"from {schema}.events e join {schema}.projector_offsets o on o.partition = e.journal_partition "
        "where e.agent_id = any(%s) group by e.agent_id, o.next_offset",
        ([storage_key(a) for a in agents],)).fetchall()
    out = {str(a): (int(p), int(first), int(end), int(n)) for a, p, first, n, end in rows}
    if len(out) != len(agents):
        raise AoskError(f"{len(agents) - len(out)} agents have no projected record")
    return out


def command_line(r: ReadsResult) -> str:
    return (f"aosk bench reads --agents {r.agents} --events-per-agent {r.events // max(r.agents, 1)} "
            f"--samples {r.samples} --journal-samples {r.journal_samples} --repeat {r.repeat}"
            + (f" --checkpoint-every {r.checkpoint_every}" if r.checkpoint_given else ""))


def report_markdown(r: ReadsResult, machine: str) -> str:
    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    at, latest, j = r.state_at, r.latest, r.journal
    lines = [
        f"## Reads: `state_at` and current state, in process (a checkpoint every {r.checkpoint_every} records)",
        "",
        f"`{command_line(r)}` on {machine}; the embedded dev stack; load average {r.load_before:.2f} when the run "
        f"started. {r.events:,} events (the `aosk bench project` workload, no agent terminating) over {r.agents} "
        f"agents and the journal's {r.partitions} partitions (the median agent has {r.events_per_agent:,} records), "
        f"projected by 2 `aosk project` processes in {r.project_seconds:.1f} s with a checkpoint every "
        f"{r.checkpoint_every} records of an agent (checkpoints on disk: {r.checkpoint_bytes / 2**20:.1f} MiB, "
        f"{r.checkpoint_bytes / max(r.events_bytes, 1):.2f}x the `events` table's {r.events_bytes / 2**20:.0f} MiB). "
        f"Then one `ProjectionReader`, warmed up by {WARMUP} reads of "
        f"each kind: `state_at` of a random agent at a random offset of its partition (PostgreSQL: the nearest "
        f"checkpoint plus the `events` rows after it, {r.mean_folded:.0f} records folded on average, at most "
        f"{r.max_folded}), `agent_state` of a random agent, and as the baseline the same `state_at` answered from "
        f"the journal (`aosk.projectors.history.state_at`, one reused `JournalReader`). {r.samples:,} reads of each "
        f"kind per run ({r.journal_samples} from the journal), {r.repeat} runs, the median run's figures; "
        f"{r.equal} of {r.journal_samples * r.repeat} random points gave the same state hash from both. "
        "CPU: this process's (its librdkafka threads included), not PostgreSQL's or the broker's.",
        "",
        "| read | p50 ms | p99 ms | CPU ms / read (this process) |",
        "|---|---:|---:|---:|",
        f"| `state_at`, PostgreSQL | **{at.p50_ms:.2f}** | **{at.p99_ms:.2f}** | {at.cpu_ms:.2f} |",
        f"| latest state (`agent_state`) | {latest.p50_ms:.2f} | **{latest.p99_ms:.2f}** | {latest.cpu_ms:.2f} |",
        f"| `state_at` from the journal (baseline) | {j.p50_ms:.2f} | {j.p99_ms:.2f} | {j.cpu_ms:.2f} |",
        "",
        f"`state_at` p50 < {GOAL_STATE_AT_P50_MS:g} ms: {met(at.p50_ms < GOAL_STATE_AT_P50_MS)}; "
        f"p99 < {GOAL_STATE_AT_P99_MS:g} ms: {met(at.p99_ms < GOAL_STATE_AT_P99_MS)}; latest state p99 < "
        f"{GOAL_LATEST_P99_MS:g} ms: {met(latest.p99_ms < GOAL_LATEST_P99_MS)}. PostgreSQL / journal at p50: "
        f"{at.p50_ms / j.p50_ms:.2f}x the time.",
    ]
    return "\n".join(lines + r.notes) + "\n"
