"""``aosk bench growth``: does the cost per event stay flat as the journal grows?

For each journal size (10k, 100k by default; 1M in the documented longer run) the same
workload shape (``aosk.workload``, ``events_per_agent`` records per agent, so the agents
scale with the journal) goes to a fresh journal topic, written first, and two ``aosk
project`` processes project it into a fresh schema, as ``aosk bench project`` times it.
Then, on the result:

- events/s (journal committed -> last record projected);
- PostgreSQL bytes per event: every relation of the schema (heap, TOAST, indexes);
- ``agent_state`` on disk (heap + TOAST + indexes) against its live rows (the sum of
  ``pg_column_size`` of each row, as stored: compressed, out of line or not), twice:
  right after the last commit (a projector that ran out of records first may have done
  its upkeep already: the upkeep lines say), and once each projector has
  logged its upkeep when idle after its last commit (``ProjectionWriter.idle``: VACUUM,
  compaction above 1.5x; ``idle_timeout`` at most), with the dead tuples PostgreSQL
  counts in it, its parts (heap, TOAST, TOAST index, indexes), the state writes per
  event and the VACUUMs' count and time (``total_vacuum_time``, PostgreSQL 18);
- ``state_at`` latency (``aosk.reads.events.state_at``, nearest checkpoint + ``events``
  rows) at random accepted records, after warm-up.

``compare_untuned``: each size is projected a second time from the same workload into a
schema whose ``agent_state`` has its storage settings reset to what they were before
migration 0008 (fill factor 100, PostgreSQL's autovacuum defaults, the server's default
TOAST compression), so the effect of those settings is measured in the same run (the
writer's own VACUUM of ``agent_state``, ``aosk.projectors.writer.VACUUM_SHARE``, runs in
both).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from aosk.config import Settings
from aosk.errors import AoskError

__all__ = ["GrowthPoint", "GrowthResult", "bench_growth", "report_markdown", "growth_plot", "UNTUNED_AGENT_STATE",
           "agent_state_bytes", "schema_bytes", "state_compression"]

UNTUNED_AGENT_STATE = (
    "alter table {t} reset (fillfactor, autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,"
    " autovacuum_vacuum_insert_scale_factor, autovacuum_vacuum_cost_delay, toast.autovacuum_vacuum_scale_factor,"
    " toast.autovacuum_vacuum_threshold, toast.autovacuum_vacuum_cost_delay);"
    " alter table {t} alter column state set compression default"
)
"""``agent_state``'s storage as migrations 0001-0007 left it (``{t}``: the qualified table)."""


@dataclass
class GrowthPoint:
    events: int
    agents: int
    storage: str
    """"tuned" (the migrations' settings) or "untuned" (``UNTUNED_AGENT_STATE``)."""
    seconds: float
    pg_bytes: int
    """Every relation of the projection schema, heap + TOAST + indexes."""
    tables: dict[str, int]
    """table -> bytes (with its TOAST and indexes)."""
    agent_state: dict[str, int]
    """``agent_state_bytes`` once the projectors' upkeep when idle is done (``idle``):
    disk, live, raw_state, stored_state, rows, dead, toast_dead, autovacuums, vacuums, writes,
    vacuum_ms, heap, toast, toast_index, indexes."""
    at_last_commit: dict[str, int] = field(default_factory=dict)
    """The same, measured as soon as the last record was projected."""
    idle: list[str] = field(default_factory=list)
    """What each projector's upkeep when idle did (its log line), after the last commit."""
    state_at_ms: list[float] = field(default_factory=list)
    load_before: float = 0.0
    load_after: float = 0.0
    """Load averages (1 min) before the journal was written and once the point was measured."""

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def bytes_per_event(self) -> float:
        return self.pg_bytes / self.events

    @property
    def bloat(self) -> float:
        """``agent_state`` on disk / its live rows, after the projectors' upkeep when idle."""
        return self.agent_state["disk"] / max(1, self.agent_state["live"])

    @property
    def bloat_at_last_commit(self) -> float:
        a = self.at_last_commit or self.agent_state
        return a["disk"] / max(1, a["live"])

    def state_at_pct(self, q: float) -> float:
        xs = sorted(self.state_at_ms)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


@dataclass
class GrowthResult:
    points: list[GrowthPoint]
    events_per_agent: int
    processes: int
    compression: str
    """What ``agent_state.state`` is compressed with on this server."""

    def tuned(self) -> list[GrowthPoint]:
        return [p for p in self.points if p.storage == "tuned"]

    def untuned(self) -> list[GrowthPoint]:
        return [p for p in self.points if p.storage == "untuned"]


def schema_bytes(conn: Any, schema: str) -> tuple[int, dict[str, int]]:
    """(all relations of ``schema``, bytes by table) -- tables with their TOAST and indexes."""
    rows = conn.execute(
        "select c.relname, pg_total_relation_size(c.oid) from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = %s and c.relkind in ('r', 'm', 'p')", (schema,)).fetchall()
    tables = {str(name): int(size) for name, size in rows}
    return sum(tables.values()), tables


def agent_state_bytes(conn: Any, schema: str) -> dict[str, int]:
    """``agent_state``: on disk (heap + TOAST + indexes), live (sum of the rows as stored),
    raw_state / stored_state (the state column before / after compression), rows, the
    dead tuples of the heap and of its TOAST table, and how often autovacuum processed them."""
    from psycopg import sql

    from aosk.projectors.db import qualified

    t = qualified(schema, "agent_state")
    disk, live, raw, stored, rows = conn.execute(sql.SQL(
        "select pg_total_relation_size({r}::regclass), coalesce(sum(pg_column_size(a.*)), 0),"
        " coalesce(sum(octet_length(a.state)), 0), coalesce(sum(pg_column_size(a.state)), 0), count(*) from {t} a"
    ).format(r=sql.Literal(f"{schema}.agent_state"), t=t)).fetchone()
    dead = conn.execute(
        "select coalesce(max(s.n_dead_tup) filter (where s.relid = c.oid), 0),"
        " coalesce(max(s.n_dead_tup) filter (where s.relid = c.reltoastrelid), 0),"
        " coalesce(sum(s.autovacuum_count), 0),"
        " coalesce(max(s.vacuum_count) filter (where s.relid = c.oid), 0),"
        " coalesce(max(s.n_tup_ins + s.n_tup_upd) filter (where s.relid = c.oid), 0),"
        " coalesce(sum((to_jsonb(s) ->> 'total_vacuum_time')::float8), 0)::bigint,"
        " pg_relation_size(c.oid), pg_relation_size(c.reltoastrelid), pg_indexes_size(c.reltoastrelid),"
        " pg_indexes_size(c.oid)"
        " from pg_class c join pg_namespace n on n.oid = c.relnamespace, pg_stat_all_tables s"
        " where n.nspname = %s and c.relname = 'agent_state' and s.relid in (c.oid, c.reltoastrelid)"
        " group by c.oid, c.reltoastrelid",
        (schema,)).fetchone()
    d = [int(x) for x in dead] if dead else [0] * 10
    return {"disk": int(disk), "live": int(live), "raw_state": int(raw), "stored_state": int(stored),
            "rows": int(rows), "dead": d[0], "toast_dead": d[1], "autovacuums": d[2], "vacuums": d[3],
            "writes": d[4], "vacuum_ms": d[5], "heap": d[6], "toast": d[7], "toast_index": d[8], "indexes": d[9]}


def state_compression(conn: Any, schema: str) -> str:
    """What ``agent_state.state`` values are compressed with when written (pglz, lz4)."""
    row = conn.execute(
        "select coalesce(nullif(a.attcompression::text, ''), current_setting('default_toast_compression'))"
        " from pg_attribute a where a.attrelid = %s::regclass and a.attname = 'state'",
        (f"{schema}.agent_state",)).fetchone()
    return {"p": "pglz", "l": "lz4"}.get(str(row[0]), str(row[0])) if row else ""


IDLE_LINE = "idle: agent_state "
"""What ``aosk project`` logs after its upkeep of agent_state when idle."""


def _idle_lines(conn: Any, schema: str, procs: Sequence[Any], logdir: Path, timeout: float) -> list[str]:
    """Wait (up to ``timeout`` s) until each projector has logged its upkeep when idle
    after its last commit (``projector_offsets.committed_at`` of the partitions it owns);
    returns those lines (fewer when a projector had nothing to do: under
    ``VACUUM_MIN_ROWS`` rows rewritten since its last VACUUM)."""
    from datetime import datetime

    from psycopg import sql

    from aosk.projectors.db import qualified

    last = {str(owner).rsplit("/", 1)[-1]: at.timestamp() for owner, at in conn.execute(sql.SQL(
        "select owner, max(committed_at) from {} where owner is not null group by owner"
    ).format(qualified(schema, "projector_offsets"))).fetchall() if at is not None}
    deadline = time.monotonic() + timeout
    while True:
        found: dict[int, str] = {}
        for i, p in enumerate(procs):
            since = last.get(str(p.pid))
            path = logdir / f"projector-{i}.log"
            if since is None or not path.exists():
                continue
            for line in path.read_text(errors="replace").splitlines():
                if IDLE_LINE not in line:
                    continue
                try:
                    at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                except ValueError:
                    continue
                if at >= since:
                    found[i] = line.split(IDLE_LINE, 1)[1]
        if len(found) == len(last) or time.monotonic() > deadline:
            return [f"projector {i}: {text}" for i, text in sorted(found.items())]
        time.sleep(0.2)


def _at_end(dsn: str, schema: str, idle_timeout: float, out: dict[str, Any], procs: list[Any],
            logdir: Path) -> None:
    """Once the last record is projected: agent_state as it is then, and the projectors'
    upkeep when idle (into ``out``)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        out["at_last_commit"] = agent_state_bytes(conn, schema)
        out["idle"] = _idle_lines(conn, schema, procs, logdir, idle_timeout)


def _state_at_ms(dsn: str, schema: str, samples: int, seed: int) -> list[float]:
    """``state_at`` at ``samples`` random accepted records (after 10 warm-up reads)."""
    import psycopg
    from psycopg import sql

    from aosk.projectors.db import qualified
    from aosk.reads.events import state_at

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(sql.SQL(
            "select agent_id, journal_offset from {} where verdict = 'accepted' and agent_id not like '~%%'"
        ).format(qualified(schema, "events"))).fetchall()
        if not rows:
            raise AoskError(f"no accepted events rows in {schema} to read states at")
        rng = random.Random(seed)
        picks = [rng.choice(rows) for _ in range(samples + 10)]
        out = []
        for i, (agent, offset) in enumerate(picks):
            t = time.perf_counter()
            state_at(conn, schema, agent, offset=int(offset))
            if i >= 10:
                out.append((time.perf_counter() - t) * 1e3)
    return out


def bench_growth(settings: Settings, *, sizes: Sequence[int] = (10_000, 100_000), events_per_agent: int = 250,
                 processes: int = 2, seed: int = 42, compare_untuned: bool = False, state_at_samples: int = 200,
                 idle_timeout: float = 20.0, progress: bool = True) -> GrowthResult:
    """``idle_timeout``: how long to wait after the last record is projected for the
    projectors' upkeep of agent_state when idle (``ProjectionWriter.idle``) before the
    sizes are measured again."""
    import psycopg
    from psycopg import sql

    from aosk.bench.project import _cleanup, _timed_projection, fresh_bench_journal
    from aosk.projectors.db import migrate, qualified

    if not sizes or any(n < events_per_agent for n in sizes):
        raise AoskError(f"give journal sizes of at least --events-per-agent ({events_per_agent}) events")
    say: Callable[..., None] = print if progress else (lambda *a, **k: None)
    points: list[GrowthPoint] = []
    compression = ""
    for n in sizes:
        agents = max(1, n // events_per_agent)
        workload = None
        for storage in ("tuned", "untuned") if compare_untuned else ("tuned",):
            bj = fresh_bench_journal(settings, kind="growth", events=n, agents=agents, seed=seed, say=say,
                                     workload=workload)
            workload = bj.workload
            dsn = bj.endpoints.dsn
            try:
                with psycopg.connect(dsn) as conn:
                    migrate(conn, schema=bj.schema, dimension=settings.memory.embedding_dimension)
                    if storage == "untuned":
                        conn.execute(sql.SQL(UNTUNED_AGENT_STATE).format(t=qualified(bj.schema, "agent_state")))
                        conn.commit()
                say(f"{n:,} events over {agents} agents, agent_state {storage}: projecting ...", flush=True)
                ends: dict[str, Any] = {}
                timed = _timed_projection(settings, bj, processes=processes, written_first=True,
                                          without_vector_index=False,
                                          say=say, at_end=partial(_at_end, dsn, bj.schema, idle_timeout, ends),
                                          timeout=max(900.0, n / 100))  # 1M events: up to ~3 h on a busy machine
                total = len(bj.workload.items)
                for line in ends["idle"]:
                    say(f"  idle upkeep, {line}", flush=True)
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("select pg_stat_force_next_flush()")
                    pg, tables = schema_bytes(conn, bj.schema)
                    ast = agent_state_bytes(conn, bj.schema)
                    if storage == "tuned":
                        compression = state_compression(conn, bj.schema)
                end = ends["at_last_commit"]
                say(f"  at the last commit agent_state was {end['disk'] / 1e6:.1f} MB on disk for "
                    f"{end['live'] / 1e6:.1f} MB of live rows", flush=True)
                say(f"  {pg / total:,.0f} PostgreSQL bytes/event; agent_state {ast['disk'] / 1e6:.1f} MB on disk for "
                    f"{ast['live'] / 1e6:.1f} MB of live rows (states {ast['raw_state'] / 1e6:.1f} MB, "
                    f"{ast['stored_state'] / 1e6:.1f} MB compressed); heap / TOAST / TOAST index / indexes "
                    f"{ast['heap'] / 1e6:.1f} / {ast['toast'] / 1e6:.1f} / {ast['toast_index'] / 1e6:.1f} / "
                    f"{ast['indexes'] / 1e6:.1f} MB; {ast['writes'] / total:.2f} state writes per event, "
                    f"{ast['vacuums']} VACUUMs ({ast['vacuum_ms'] / 1e3:.2f}s); state_at ...", flush=True)
                lat = _state_at_ms(dsn, bj.schema, state_at_samples, seed)
            finally:
                _cleanup(dsn, bj.endpoints.bootstrap, bj.schema, bj.prefix)
            points.append(GrowthPoint(events=total, agents=agents, storage=storage, seconds=timed.seconds,
                                      pg_bytes=pg, tables=tables, agent_state=ast,
                                      at_last_commit=ends["at_last_commit"], idle=ends["idle"], state_at_ms=lat,
                                      load_before=bj.load_before, load_after=os.getloadavg()[0]))
    return GrowthResult(points, events_per_agent, processes, compression)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def report_markdown(r: GrowthResult, machine: str, *, command: str, plot: str | None = None) -> str:
    tuned = r.tuned()
    first, last = tuned[0], tuned[-1]
    bpe = [p.bytes_per_event for p in tuned]
    spread = (max(bpe) - min(bpe)) / min(bpe)
    loads = ", ".join(f"{p.load_before:.1f} / {p.load_after:.1f}" for p in r.points)
    lines = [
        "## Growth: cost per event against journal size",
        "",
        f"`{command}` on {machine}; the embedded dev stack (one broker, 12 partitions; PostgreSQL 18 + pgvector "
        f"0.8), {r.processes} `aosk project` processes, journal written first. Workload: `aosk.workload`, "
        f"{r.events_per_agent} records per agent (agents scale with the journal), memories with 384-d embeddings "
        f"(the memories' vector index maintained). `agent_state.state` compressed with {r.compression or '?'} "
        "(the server has no lz4). "
        f"Load average (1 min) before each run / once it was measured: {loads}. events/s: journal committed -> "
        "last record projected. agent_state on disk / live rows twice: as soon as the last record was projected "
        "(the writer vacuums it as it goes, docs/projections.md; a projector that ran out of records first may "
        "have done its upkeep already), and once each projector's upkeep when idle (VACUUM, compaction above "
        "1.5x) is done, the state the table is left in; dead tuples and the other sizes are the latter.",
        "",
        "| events | agents | agent_state storage | events/s | PostgreSQL bytes/event | agent_state on disk / live "
        "rows: last commit -> after idle upkeep | agent_state MB on disk / live rows / states (stored / "
        "uncompressed) | state writes per event | VACUUMs of agent_state (s) | dead tuples heap / TOAST "
        "(autovacuums) | state_at p50 / p99 ms |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in r.points:
        a = p.agent_state
        lines.append(
            f"| {p.events:,} | {p.agents:,} | {p.storage} | {p.events_per_s:,.0f} | {p.bytes_per_event:,.0f} | "
            f"{p.bloat_at_last_commit:.2f}x -> {p.bloat:.2f}x | {a['disk'] / 1e6:.1f} / {a['live'] / 1e6:.1f} / "
            f"{a['stored_state'] / 1e6:.1f} ({a['raw_state'] / 1e6:.1f}) | {a.get('writes', 0) / p.events:.3f} | "
            f"{a.get('vacuums', 0)} ({a.get('vacuum_ms', 0) / 1e3:.2f}) | {a['dead']:,} / {a['toast_dead']:,} "
            f"({a['autovacuums']}) | {p.state_at_pct(0.5):.1f} / {p.state_at_pct(0.99):.1f} |")
    lines += [
        "",
        f"Tuned, largest against smallest journal ({last.events:,} / {first.events:,} events): events/s "
        f"**{_ratio(last.events_per_s, first.events_per_s)}** (goal >= 0.8x); PostgreSQL bytes per event within "
        f"**{spread:.0%}** across sizes (goal 15%); agent_state on disk / live rows after the largest run "
        f"**{last.bloat:.2f}x** once idle ({last.bloat_at_last_commit:.2f}x at its last commit; goal <= 1.5x).",
    ]
    idle = [f"{p.events:,} events: " + "; ".join(p.idle) for p in r.points if p.idle]
    if idle:
        lines += ["", "Upkeep when idle, as the projectors logged it: " + " / ".join(idle) + "."]
    un = {p.events: p for p in r.untuned()}
    if un:
        lines += ["", "Same run, same workload, agent_state storage tuned / untuned: " + "; ".join(
            f"{p.events:,} events: bytes/event {_ratio(p.bytes_per_event, un[p.events].bytes_per_event)}, "
            f"agent_state on disk {_ratio(p.agent_state['disk'], un[p.events].agent_state['disk'])}, "
            f"events/s {_ratio(p.events_per_s, un[p.events].events_per_s)}"
            for p in tuned if p.events in un) + "."]
    biggest = max(tuned, key=lambda p: p.events)
    lines += ["", f"Bytes by table at {biggest.events:,} events (with TOAST and indexes, per event): " + ", ".join(
        f"{name} {size / biggest.events:,.0f}" for name, size in sorted(biggest.tables.items(), key=lambda x: -x[1])
        if size) + "."]
    if plot:
        lines += ["", f"![events/s, bytes per event and state_at latency against journal size]({plot})"]
    return "\n".join(lines) + "\n"


def growth_plot(r: GrowthResult, path: Path, *, title: str) -> bool:
    """events/s, PostgreSQL bytes per event and state_at p50/p99 against journal size
    (log x), as a PNG at ``path``; False (nothing written) without matplotlib."""
    from aosk.bench.plot import have_matplotlib

    if not have_matplotlib():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11.0, 3.6), dpi=120)
    for storage, style in (("tuned", "-o"), ("untuned", "--s")):
        pts = sorted((p for p in r.points if p.storage == storage), key=lambda p: p.events)
        if not pts:
            continue
        xs = [p.events for p in pts]
        axes[0].plot(xs, [p.events_per_s for p in pts], style, label=storage)
        axes[1].plot(xs, [p.bytes_per_event for p in pts], style, label=storage)
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            axes[2].plot(xs, [p.state_at_pct(q) for p in pts], style, label=f"{name} ({storage})")
    for ax, ylabel in zip(axes, ("events/s", "PostgreSQL bytes per event", "state_at latency (ms)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("journal size (events)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
