"""``aosk bench replay``: rebuild rate of ``aosk replay`` next to the live projection rate.

The run: the same realistic workload as ``aosk bench project`` (``aosk.workload``)
goes to a fresh journal topic while N live ``aosk project`` processes (already in
their consumer group) project it into a fresh schema -- timed from the first produced
record to the commit of the last, exactly as ``aosk bench project`` times it. Then
``aosk replay`` (its first process in process here, plus helper processes) rebuilds that schema from offset 0 over
the same journal and swaps it in; its rate is records / (catch-up + swap). Both figures
come from the same run on the same machine, so their ratio is what to read. The
rebuild's digests are checked against the live schema's (``aosk db digest``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from aosk.config import Settings
from aosk.errors import AoskError

GOAL_RATIO = 1.5


@dataclass
class ReplayBenchResult:
    events: int
    agents: int
    processes: int
    live_seconds: float
    replay_seconds: float
    replay_batch_max: int
    replay_processes: int
    swap_records: int
    lock_ms: float
    digests_equal: bool
    load_before: float

    @property
    def live_per_s(self) -> float:
        return self.events / self.live_seconds

    @property
    def replay_per_s(self) -> float:
        return self.events / self.replay_seconds

    @property
    def ratio(self) -> float:
        return self.replay_per_s / self.live_per_s


def bench_replay(settings: Settings, *, events: int = 50_000, agents: int = 200, processes: int = 2,
                 batch_max: int | None = None, replay_processes: int | None = None, seed: int = 42,
                 progress: bool = True,
                 replay_progress: Callable[[int, int], None] | None = None) -> ReplayBenchResult:
    """``batch_max`` and ``replay_processes``: ``aosk replay``'s (``ReplayOptions``) unless given.
    ``progress``: print what is being done; ``replay_progress``: the rebuild's
    ``progress(done, total)`` (the CLI draws a bar with it)."""
    import psycopg

    from aosk.bench.project import _cleanup, _timed_projection, fresh_bench_journal
    from aosk.projectors.digest import digest_schema
    from aosk.projectors.replay import ReplayOptions, replay

    say = print if progress else (lambda *a, **k: None)
    bj = fresh_bench_journal(settings, kind="replay", events=events, agents=agents, seed=seed, say=say)
    ep, s, prefix, schema, load_before, w = bj.endpoints, bj.settings, bj.prefix, bj.schema, bj.load_before, bj.workload
    total = len(w.items)
    try:
        say(f"live: {processes} projectors ...", flush=True)
        live_s = _timed_projection(settings, bj, processes=processes, written_first=False, without_hnsw=False,
                                   say=say).seconds
        with psycopg.connect(ep.dsn) as conn:
            live_digest = digest_schema(conn, schema)
        say("replay: rebuilding the same journal from offset 0 ...", flush=True)
        options = ReplayOptions(schema=schema, drop_old=True)
        if batch_max is not None:
            options = replace(options, batch_max=batch_max)
        if replay_processes is not None:
            options = replace(options, processes=replay_processes)
        r = replay(s, options, progress=replay_progress)
        if r.records != total:
            raise AoskError(f"the replay folded {r.records} records, the journal has {total}")
        with psycopg.connect(ep.dsn) as conn:
            equal = digest_schema(conn, schema) == live_digest
        say(f"  {total} events in {r.seconds:.1f}s: {r.events_per_s:,.0f} events/s", flush=True)
    finally:
        _cleanup(ep.dsn, ep.bootstrap, schema, prefix)
        with psycopg.connect(ep.dsn, autocommit=True) as conn:
            conn.execute(f"drop schema if exists {schema}_shadow cascade")
    return ReplayBenchResult(events=total, agents=agents, processes=processes, live_seconds=live_s,
                             replay_seconds=r.seconds, replay_batch_max=options.batch_max,
                             replay_processes=options.processes, swap_records=r.swap_records,
                             lock_ms=r.lock_ms, digests_equal=equal, load_before=load_before)


def report_markdown(r: ReplayBenchResult, machine: str) -> str:
    verdict = "met" if r.ratio >= GOAL_RATIO else "**not met**"
    lines = [
        "## Replay: rebuilding every projection from offset 0 vs. live projection",
        "",
        f"`aosk bench replay --events {r.events} --agents {r.agents} --processes {r.processes} "
        f"--replay-processes {r.replay_processes}` on {machine}; "
        f"the embedded dev stack; the `aosk bench project` workload (memories with 384-d embeddings, HNSW-indexed); "
        f"load average {r.load_before:.2f} when the run started. Same journal, same run: first {r.processes} live "
        f"`aosk project` processes project it as it is produced, then `aosk replay` ({r.replay_processes} processes, "
        f"batches of {r.replay_batch_max:,}, HNSW index built once at the end) rebuilds it into a shadow schema and "
        "swaps it in "
        f"({r.swap_records:,} records folded under the exclusive lock, held {r.lock_ms:.0f} ms). "
        f"Digests of the rebuild equal the live schema's: {'yes' if r.digests_equal else '**NO**'}.",
        "",
        "| what | seconds | events/s |",
        "|---|---:|---:|",
        f"| live: {r.processes} `aosk project` processes, produce + project | {r.live_seconds:.2f} | "
        f"{r.live_per_s:,.0f} |",
        f"| rebuild: `aosk replay`, {r.replay_processes} processes, catch-up + index build + swap | "
        f"{r.replay_seconds:.2f} | "
        f"**{r.replay_per_s:,.0f}** |",
        "",
        f"Rebuild / live: **{r.ratio:.2f}x** (goal: at least {GOAL_RATIO}x, {verdict}).",
    ]
    return "\n".join(lines) + "\n"
