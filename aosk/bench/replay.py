"""``aosk bench replay``: ``aosk replay``'s rebuild next to live projection and to its own limit.

The run: the workload of ``aosk bench project`` (``aosk.workload``) is written to a fresh
journal topic FIRST, in one Kafka transaction. Then, ``repeat`` times, the three figures
are measured one after the other on that same journal, each timed the same way, from
the start of the processes to the end of the work (process start-up included):

- *live*: N ``aosk project`` processes started on a schema that does not exist yet
  (they migrate it), timed until the last record is committed;
- *rebuild*: ``aosk replay --schema <that schema> --drop-old`` started as a process,
  timed until it exits: catch-up from offset 0, index build, swap. Its digests (``aosk
  db digest``) are checked against the live schema's;
- *limit*: the rebuild's own limit: the rows the rebuild wrote, read into memory
  beforehand (not timed), COPYed (binary) in one session into tables with no index,
  then every index of the schema (primary keys and the vector index included) built
  with the settings the rebuild builds its indexes with.

Each figure is the median of its ``repeat`` runs; the load average is recorded at the
start of each run (other work on the machine skews single figures: the ratios are what
to read).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Final

from aosk.config import Settings
from aosk.errors import AoskError

GOAL_LIVE: Final = 2.5
"""Rebuild / live, both timed with process start-up (issue 16)."""
GOAL_LIMIT: Final = 0.5
"""Rebuild / its limit (raw COPY into unindexed tables, then every index built)."""


@dataclass
class LimitRun:
    copy_s: float
    index_s: float

    @property
    def seconds(self) -> float:
        return self.copy_s + self.index_s


@dataclass
class ReplayBenchResult:
    events: int
    agents: int
    processes: int
    replay_processes: int
    replay_batch_max: int
    live_runs: list[float] = field(default_factory=list)
    rebuild_runs: list[float] = field(default_factory=list)
    limit_runs: list[LimitRun] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    """1-minute load average at the start of each repeat."""
    digests_equal: bool = True
    rows: dict[str, int] = field(default_factory=dict)
    indexes: int = 0
    vector_index: str = ""
    rebuild_log: str = ""
    """The last rebuild's own summary line (``aosk replay`` prints it)."""

    @property
    def live_seconds(self) -> float:
        return median(self.live_runs)

    @property
    def rebuild_seconds(self) -> float:
        return median(self.rebuild_runs)

    @property
    def limit_seconds(self) -> float:
        return median(r.seconds for r in self.limit_runs)

    @property
    def ratio_live(self) -> float:
        """Rebuild rate / live rate."""
        return self.live_seconds / self.rebuild_seconds

    @property
    def ratio_limit(self) -> float:
        """Rebuild rate / the limit's rate."""
        return self.limit_seconds / self.rebuild_seconds


def bench_replay(settings: Settings, *, events: int = 200_000, agents: int = 800, processes: int = 2,
                 batch_max: int | None = None, replay_processes: int | None = None, repeat: int = 3,
                 seed: int = 42, progress: bool = True) -> ReplayBenchResult:
    """``batch_max`` and ``replay_processes``: ``aosk replay``'s (``ReplayOptions``) unless given."""
    import psycopg

    from aosk.bench.project import _cleanup, fresh_bench_journal
    from aosk.projectors.digest import digest_schema
    from aosk.projectors.replay import ReplayOptions
    from aosk.workload import produce_workload

    if repeat < 1:
        raise AoskError("--repeat must be at least 1")
    say: Callable[..., None] = print if progress else (lambda *a, **k: None)
    defaults = ReplayOptions()
    result = ReplayBenchResult(events=0, agents=agents, processes=processes,
                               replay_processes=replay_processes or defaults.processes,
                               replay_batch_max=batch_max or defaults.batch_max)
    bj = fresh_bench_journal(settings, kind="replay", events=events, agents=agents, seed=seed, say=say)
    ep, prefix = bj.endpoints, bj.prefix
    total = result.events = len(bj.workload.items)
    schemas: list[str] = []
    try:
        say(f"journal: writing {total} records first ...", flush=True)
        produce_workload(ep.bootstrap, bj.settings.kafka.journal_topic, bj.workload.items,
                         transactional_id=f"{prefix}-workload")
        for n in range(repeat):
            schema = f"{bj.schema}_{n}"
            schemas.append(schema)
            result.loads.append(os.getloadavg()[0])
            say(f"run {n + 1}/{repeat} (load {result.loads[-1]:.2f}): live, {processes} aosk project ...", flush=True)
            live_s = _timed_live(bj, schema, processes, total)
            result.live_runs.append(live_s)
            say(f"  live {live_s:.2f}s: {total / live_s:,.0f} events/s", flush=True)
            with psycopg.connect(ep.dsn) as conn:
                live_digest = digest_schema(conn, schema)
            rebuild_s, line = _timed_rebuild(bj, schema, result.replay_processes, result.replay_batch_max)
            result.rebuild_runs.append(rebuild_s)
            result.rebuild_log = line
            say(f"  rebuild {rebuild_s:.2f}s: {total / rebuild_s:,.0f} events/s ({line})", flush=True)
            with psycopg.connect(ep.dsn) as conn:
                equal = digest_schema(conn, schema) == live_digest
            result.digests_equal = result.digests_equal and equal
            if not equal:
                say("  the rebuild's digests DIFFER from the live schema's", flush=True)
            limit = _timed_limit(ep.dsn, schema, f"{schema}_limit", result)
            result.limit_runs.append(limit)
            say(f"  limit {limit.seconds:.2f}s (copy {limit.copy_s:.2f}s + indexes {limit.index_s:.2f}s): "
                f"{total / limit.seconds:,.0f} events/s", flush=True)
            with psycopg.connect(ep.dsn, autocommit=True) as conn:
                for s in (schema, f"{schema}_limit", f"{schema}_shadow"):
                    conn.execute(f"drop schema if exists {s} cascade")
    finally:
        with psycopg.connect(ep.dsn, autocommit=True) as conn:
            for s in schemas:
                for x in (s, f"{s}_limit", f"{s}_shadow"):
                    conn.execute(f"drop schema if exists {x} cascade")
        _cleanup(ep.dsn, ep.bootstrap, bj.schema, prefix)
    return result


def _env(bj: Any) -> dict[str, str]:
    ep, s = bj.endpoints, bj.settings
    return dict(os.environ, AOSK_KAFKA_BOOTSTRAP=ep.bootstrap, AOSK_POSTGRESQL_DSN=ep.dsn,
                AOSK_TOPIC_PREFIX=bj.prefix, AOSK_KAFKA_PARTITIONS=str(s.kafka.journal_partitions))


def _projected_or_zero(conn: Any, schema: str) -> int:
    import psycopg

    try:
        row = conn.execute(f"select coalesce(sum(next_offset), 0) from {schema}.projector_offsets").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def _timed_live(bj: Any, schema: str, processes: int, total: int) -> float:
    """``processes`` ``aosk project`` on a schema that does not exist yet, the journal
    already written: seconds from starting them to the commit of the last record."""
    import psycopg

    from aosk.bench.project import _stop_all

    logdir = Path(tempfile.mkdtemp(prefix="aosk-bench-replay-live-"))
    env = _env(bj)
    procs: list[subprocess.Popen[bytes]] = []
    ok = False
    t0 = time.perf_counter()
    try:
        for i in range(processes):
            procs.append(subprocess.Popen([sys.executable, "-m", "aosk.cli", "project", "--schema", schema], env=env,
                                          stdout=open(logdir / f"projector-{i}.log", "wb"), stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 1800
        with psycopg.connect(bj.endpoints.dsn, autocommit=True) as poll:
            while _projected_or_zero(poll, schema) < total:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise AoskError(f"live projection did not finish; see the logs in {logdir}")
                time.sleep(0.02)
        seconds = time.perf_counter() - t0
        ok = True
    finally:
        _stop_all(procs)
        if ok:
            shutil.rmtree(logdir, ignore_errors=True)
    return seconds


def _timed_rebuild(bj: Any, schema: str, processes: int, batch_max: int) -> tuple[float, str]:
    """``aosk replay`` of ``schema`` as a process: seconds from its start to its exit, and
    its summary line."""
    cmd = [sys.executable, "-m", "aosk.cli", "replay", "--schema", schema, "--drop-old", "--no-progress",
           "--processes", str(processes), "--batch-max", str(batch_max)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=_env(bj), capture_output=True, text=True, timeout=1800, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise AoskError(f"aosk replay failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


BUILD_SETTINGS: Final = ("set maintenance_work_mem = '1GB'", "set max_parallel_maintenance_workers = 2")
"""What the limit builds its indexes with: what ``aosk replay`` builds its deferred indexes with."""


def _timed_limit(dsn: str, source: str, target: str, result: ReplayBenchResult) -> LimitRun:
    """Every table of ``source`` read into memory (binary COPY, not timed); then, timed:
    binary COPY into tables of the same shape with no index, and every index of
    ``source`` built (one session)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn) as conn:
        tables = [r[0] for r in conn.execute(
            "select tablename from pg_tables where schemaname = %s order by tablename", (source,)).fetchall()]
        indexes = [r[0] for r in conn.execute(
            "select indexdef from pg_indexes where schemaname = %s order by indexname", (source,)).fetchall()]
        data: dict[str, list[bytes]] = {}
        rows: dict[str, int] = {}
        for t in tables:
            chunks: list[bytes] = []
            with conn.cursor() as cur:
                with cur.copy(sql.SQL("copy {} to stdout (format binary)").format(sql.Identifier(source, t))) as cp:
                    for chunk in cp:
                        chunks.append(bytes(chunk))
            data[t] = chunks
            rows[t] = int(conn.execute(sql.SQL("select count(*) from {}").format(
                sql.Identifier(source, t))).fetchone()[0])  # type: ignore[index]
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(target)))
        for t in tables:
            conn.execute(sql.SQL("create table {} (like {} including defaults including compression "
                                 "including storage)").format(sql.Identifier(target, t), sql.Identifier(source, t)))
        conn.commit()
        for s in BUILD_SETTINGS:
            conn.execute(s)
        conn.commit()
        t0 = time.perf_counter()
        for t in tables:
            with conn.cursor() as cur:
                with cur.copy(sql.SQL("copy {} from stdin (format binary)").format(sql.Identifier(target, t))) as cp:
                    for chunk in data[t]:
                        cp.write(chunk)
        conn.commit()
        t1 = time.perf_counter()
        on = f" ON {source}."
        for d in indexes:
            if on not in d:
                raise AoskError(f"unexpected index definition in {source}: {d}")
            conn.execute(d.replace(on, f" ON {target}.", 1).encode())
        conn.commit()
        t2 = time.perf_counter()
    result.rows = rows
    result.indexes = len(indexes)
    from aosk.projectors.memory_index import INDEX_NAMES

    names = {f" {n} ON " for n in INDEX_NAMES.values()}
    result.vector_index = next((d.split(" USING ", 1)[-1] for d in indexes if any(n in d for n in names)), "")
    return LimitRun(copy_s=t1 - t0, index_s=t2 - t1)


def report_markdown(r: ReplayBenchResult, machine: str) -> str:
    def verdict(x: float, goal: float) -> str:
        return "met" if x >= goal else "**not met**"

    e = r.events
    loads = ", ".join(f"{x:.2f}" for x in r.loads)
    rows = ", ".join(f"{t} {n:,}" for t, n in sorted(r.rows.items()) if n)
    copy_s = median(x.copy_s for x in r.limit_runs)
    index_s = median(x.index_s for x in r.limit_runs)
    lines = [
        "## Replay: rebuilding every projection from offset 0, vs. live projection and vs. its own limit",
        "",
        f"`aosk bench replay --events {e} --agents {r.agents} --processes {r.processes} "
        f"--replay-processes {r.replay_processes} --batch-max {r.replay_batch_max} --repeat {len(r.live_runs)}` "
        f"on {machine}; the embedded dev stack; the `aosk bench project` workload (memories with 384-d "
        f"embeddings, vector index `{r.vector_index}`). The journal is written first; then, per run, on that "
        "journal: live, rebuild, limit, each timed from starting its processes (start-up included) to the end "
        f"of its work; median of {len(r.live_runs)} runs; load average at the start of each run: {loads}. "
        f"Rows: {rows}; {r.indexes} indexes. "
        f"Digests of every rebuild equal the live schema's: {'yes' if r.digests_equal else '**NO**'}.",
        "",
        "| what | seconds (median) | events/s | runs (s) |",
        "|---|---:|---:|---|",
        f"| live: {r.processes} `aosk project` processes from empty tables | {r.live_seconds:.2f} | "
        f"{e / r.live_seconds:,.0f} | {', '.join(f'{x:.1f}' for x in r.live_runs)} |",
        f"| rebuild: `aosk replay --processes {r.replay_processes}` from offset 0: catch-up + index build + swap | "
        f"{r.rebuild_seconds:.2f} | **{e / r.rebuild_seconds:,.0f}** | "
        f"{', '.join(f'{x:.1f}' for x in r.rebuild_runs)} |",
        f"| limit: raw binary COPY of the same rows into unindexed tables + building every index | "
        f"{r.limit_seconds:.2f} | {e / r.limit_seconds:,.0f} | "
        f"{', '.join(f'{x.seconds:.1f}' for x in r.limit_runs)} |",
        f"| of which the COPY | {copy_s:.2f} | | |",
        f"| of which the index builds | {index_s:.2f} | | |",
        "",
        f"Rebuild / live: **{r.ratio_live:.2f}x** (goal: at least {GOAL_LIVE}x, {verdict(r.ratio_live, GOAL_LIVE)}). "
        f"Rebuild / limit: **{r.ratio_limit:.2f}x** (goal: at least {GOAL_LIMIT}x, "
        f"{verdict(r.ratio_limit, GOAL_LIMIT)}). The last rebuild's own line: `{r.rebuild_log}`.",
    ]
    return "\n".join(lines) + "\n"
