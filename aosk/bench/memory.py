"""``aosk bench memory``: the memory vector index candidates side by side.

One table of ``vectors`` memories (the projection's own ``memories`` table, made by the
migrations in a schema of its own) is loaded once per data set; then, for each candidate
index (``aosk.projectors.memory_index``), the index is built over it (timed), its size
read, ``queries`` recalls timed and compared with an exact scan (recall@10), and
``inserts`` more memories inserted into the built index as a projector does (the
PostgreSQL backend's CPU per vector, read from /proc when the server is local). A row
with no vector index gives the insert baseline; ratios are to today's ``hnsw`` measured
in the same run.

Data sets: ``clustered`` has the shape of ``aosk.workload``'s embeddings (64 topic
directions, noise 0.06 per dimension, unit length); ``uniform`` is directions drawn
uniformly on the sphere, the worst case for any index. Memories belong to 10 tenants
and one agent per 100 memories. Filters: ``none`` (every tenant: not something recall
allows, but the index's own quality), ``tenant`` (one tenant, 1/10 of the rows) and
``agent`` (one agent of a tenant, ~100 rows: recall's lineage scope).
"""

from __future__ import annotations

import math
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from aosk.config import Settings
from aosk.projectors.memory_index import EF_SEARCH, RERANK, MemoryIndex, probes_for
from aosk.reads.memory import MAX_EF_SEARCH

__all__ = ["Variant", "VARIANTS", "MemoryResult", "bench_memory", "report_markdown", "command_line"]

SCHEMA_PREFIX: Final = "aosk_bench_memory"
TENANTS: Final = 10
MEMORIES_PER_AGENT: Final = 100
TOPICS: Final = 64
NOISE: Final = 0.06
K: Final = 10
FILTERS: Final = ("none", "tenant", "agent")
DATA: Final = ("clustered", "uniform")
MAINTENANCE_WORK_MEM: Final = "2GB"
PARALLEL_WORKERS: Final = 2
INSERT_BATCH: Final = 500
_AT: Final = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Variant:
    """One way of querying one index: the index ``kind``, candidates per result and
    ``hnsw.ef_search`` (raised to the candidates) or, for IVFFlat, ``probes_factor`` times
    the probes recall scans (``memory_index.probes_for`` of the index's lists)."""

    kind: MemoryIndex
    rerank: int
    ef_search: int = 0
    probes_factor: float = 1.0

    def probes(self, lists: int | None) -> int | None:
        if self.kind != "ivfflat":
            return None
        return max(1, min(lists or 1, round(self.probes_factor * probes_for(lists or 1))))

    def label(self, lists: int | None = None) -> str:
        x = "" if self.rerank == 1 else f" x{self.rerank}"
        if self.kind == "ivfflat":
            mark = " (recall's)" if (self.rerank, self.probes_factor) == (RERANK[self.kind], 1.0) else ""
            return f"{self.kind}{x} probes {self.probes(lists)}/{lists}{mark}"
        ef = min(MAX_EF_SEARCH, max(self.ef_search, K * self.rerank))
        mark = " (recall's)" if (self.rerank, self.ef_search) == (RERANK[self.kind], EF_SEARCH[self.kind]) else ""
        return f"{self.kind}{x} ef{ef}{mark}"


VARIANTS: Final[dict[MemoryIndex, tuple[Variant, ...]]] = {
    "hnsw": (Variant("hnsw", 1, 100), Variant("hnsw", 1, 200)),
    "hnsw_bq": (Variant("hnsw_bq", 4, 100), Variant("hnsw_bq", 10, 100), Variant("hnsw_bq", 40, 400)),
    "halfvec": (Variant("halfvec", 1, 100), Variant("halfvec", 4, 100), Variant("halfvec", 4, 200),
                Variant("halfvec", 4, 400)),
    "ivfflat": (Variant("ivfflat", 4, probes_factor=0.5), Variant("ivfflat", 4),
                Variant("ivfflat", 4, probes_factor=2)),
}
"""The ways each index is queried: candidates per result and ``hnsw.ef_search`` or
IVFFlat probes."""


@dataclass
class IndexFigures:
    build_s: float
    size_bytes: int
    insert_cpu_ms: float | None
    insert_wall_ms: float
    queries: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)
    """variant label -> filter -> (recall@10, p50 ms, p99 ms)."""


@dataclass
class DataSet:
    name: str
    load_s: float
    table_bytes: int
    no_index_insert_cpu_ms: float | None
    no_index_insert_wall_ms: float
    indexes: dict[str, IndexFigures] = field(default_factory=dict)


@dataclass
class MemoryResult:
    vectors: int
    queries: int
    inserts: int
    dim: int
    candidates: tuple[MemoryIndex, ...]
    data: tuple[str, ...]
    load_before: float
    server: str
    sets: list[DataSet] = field(default_factory=list)
    load_after: float = 0.0


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / n for x in v]


class _Vectors:
    """Deterministic embeddings of one data set."""

    def __init__(self, name: str, dim: int, seed: int) -> None:
        self.name, self.dim = name, dim
        trng = random.Random(f"topics-{seed}")
        self.topics = [_unit([trng.gauss(0, 1) for _ in range(dim)]) for _ in range(TOPICS)]

    def make(self, rng: random.Random) -> list[float]:
        g = rng.gauss
        if self.name == "uniform":
            return _unit([g(0, 1) for _ in range(self.dim)])
        topic = self.topics[rng.randrange(TOPICS)]
        return _unit([t + g(0, NOISE) for t in topic])


def _backend_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a local PostgreSQL backend (None: not readable here)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_COLUMNS: Final = ("agent_id, memory_id, tenant_id, source, text, embedding, journal_partition, journal_offset, seq, "
                   "stored_at")


def _copy_rows(conn: Any, schema: str, vecs: _Vectors, rng: random.Random, first: int, count: int, agents: int) -> None:
    from aosk.projectors.db import pack_vector, register_vector_dumper

    oid = register_vector_dumper(conn)
    at = _AT
    with conn.cursor() as cur, cur.copy(
            f"copy {schema}.memories ({_COLUMNS}) from stdin (format binary)") as cp:
        cp.set_types(["text", "text", "text", "text", "text", oid, "int4", "int8", "int8", "timestamptz"])
        for i in range(first, first + count):
            a = rng.randrange(agents)
            cp.write_row((f"agent-{a}", f"m{i}", f"tenant-{a % TENANTS}", "stored", f"memory {i} of agent {a}",
                          pack_vector(vecs.make(rng)), 0, i, i, at))


def _vector_text(v: Sequence[float]) -> str:
    return "[" + ",".join(repr(x) for x in v) + "]"


@dataclass(frozen=True)
class _Query:
    vector: str
    tenant: str
    agent: str


def _params(q: _Query, flt: str) -> tuple[int, dict[str, Any]]:
    """(lineage size, parameters) of a recall with filter ``flt``."""
    p: dict[str, Any] = {"q": q.vector, "tenant": q.tenant, "k": K}
    if flt == "agent":
        p.update(a0=q.agent, b0=2**63 - 1)
        return 1, p
    return 0, p


def _truth(conn: Any, schema: str, queries: list[_Query]) -> dict[str, list[set[str]]]:
    """The exact top k of each query under each filter (a sequential scan: no vector index exists yet)."""
    where = {"none": "true", "tenant": "tenant_id = %(tenant)s",
             "agent": "tenant_id = %(tenant)s and agent_id = %(a0)s"}
    out: dict[str, list[set[str]]] = {}
    for flt in FILTERS:
        rows = []
        for q in queries:
            _, p = _params(q, flt)
            rows.append({r[0] for r in conn.execute(
                f"select memory_id from {schema}.memories where {where[flt]} and embedding is not null"
                " order by embedding <=> %(q)s::vector limit %(k)s", p).fetchall()})
            conn.commit()
        out[flt] = rows
    return out


def _time_queries(conn: Any, schema: str, dim: int, variant: Variant, lists: int | None, queries: list[_Query],
                  truth: dict[str, list[set[str]]], warmup: int) -> dict[str, tuple[float, float, float]]:
    from aosk.reads.memory import answer

    out = {}
    for flt in FILTERS:
        times, hits = [], 0
        for i, q in enumerate([*queries[:warmup], *queries]):
            size, p = _params(q, flt)
            t = time.perf_counter()
            with conn.transaction():
                rows = answer(conn, schema, variant.kind, dim, size, p, rerank=variant.rerank,
                              ef_search=variant.ef_search or None, probes=variant.probes(lists), tenant=flt != "none")
            dt = time.perf_counter() - t
            if i >= warmup:
                times.append(dt * 1000)
                hits += len({r[1] for r in rows} & truth[flt][i - warmup])
        out[flt] = (hits / (K * len(queries)), _pct(times, 50), _pct(times, 99))
    return out


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def _insert_cost(conn: Any, schema: str, vecs: _Vectors, first: int, count: int,
                 agents: int) -> tuple[float | None, float]:
    """(backend CPU ms, wall ms) per vector of inserting ``count`` memories in batches of
    ``INSERT_BATCH`` (one transaction each, as the projector's batches), then removed again."""
    pid = _one(conn, "select pg_backend_pid()")
    conn.commit()
    rng = random.Random(f"inserts-{vecs.name}")
    rows = [(vecs.make(rng), rng.randrange(agents)) for _ in range(count)]
    c0, t0 = _backend_cpu_s(pid), time.perf_counter()
    from aosk.projectors.db import pack_vector, register_vector_dumper

    oid = register_vector_dumper(conn)
    for b in range(0, count, INSERT_BATCH):
        with conn.transaction(), conn.cursor() as cur, cur.copy(
                f"copy {schema}.memories ({_COLUMNS}) from stdin (format binary)") as cp:
            cp.set_types(["text", "text", "text", "text", "text", oid, "int4", "int8", "int8", "timestamptz"])
            for i, (v, a) in enumerate(rows[b:b + INSERT_BATCH], start=first + b):
                cp.write_row((f"agent-{a}", f"m{i}", f"tenant-{a % TENANTS}", "stored", f"memory {i}",
                              pack_vector(v), 0, i, i, _AT))
    wall = (time.perf_counter() - t0) * 1000 / count
    c1 = _backend_cpu_s(pid)
    conn.execute(f"delete from {schema}.memories where journal_offset >= %s", (first,))
    conn.commit()
    return (None if c0 is None or c1 is None else (c1 - c0) * 1000 / count), wall


def _prewarm(conn: Any, index: str) -> bool:
    """Read ``index`` into shared buffers (``pg_prewarm``, where the server has it), as
    on a server that has been answering recalls: the queries then time the index, not
    the first reads of its pages. False if the extension is not there."""
    import psycopg

    try:
        conn.execute("create extension if not exists pg_prewarm")
        conn.execute("select pg_prewarm(%s::regclass)", (index,))
        conn.commit()
        return True
    except psycopg.Error:
        conn.rollback()
        return False


def _one(conn: Any, query: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _vacuum(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"vacuum analyze {schema}.memories")


def bench_memory(settings: Settings, *, vectors: int = 100_000, queries: int = 200, inserts: int = 2_000,
                 candidates: Sequence[MemoryIndex] = ("hnsw", "hnsw_bq", "halfvec", "ivfflat"),
                 data: Sequence[str] = DATA,
                 seed: int = 42, progress: bool = True) -> MemoryResult:
    import psycopg

    from aosk.endpoints import resolve_endpoints
    from aosk.projectors import memory_index
    from aosk.projectors.db import migrate

    say: Callable[..., None] = print if progress else (lambda *a, **k: None)
    dsn = resolve_endpoints(settings).dsn
    dim = settings.memory.embedding_dimension
    agents = max(1, vectors // MEMORIES_PER_AGENT)
    warmup = min(20, queries)
    schema = f"{SCHEMA_PREFIX}_{os.getpid()}"
    with psycopg.connect(dsn) as conn:
        server = str(_one(conn, "select 'PostgreSQL ' || current_setting('server_version') || ' + pgvector ' "
                                "|| extversion from pg_extension where extname = 'vector'"))
    result = MemoryResult(vectors, queries, inserts, dim, tuple(candidates), tuple(data), os.getloadavg()[0],
                          server)
    for name in data:
        vecs = _Vectors(name, dim, seed)
        with psycopg.connect(dsn) as conn:
            conn.execute(f"drop schema if exists {schema} cascade")
            conn.commit()
            migrate(conn, schema=schema, dimension=dim)
            memory_index.drop(conn, schema)
            conn.commit()
            say(f"{name}: loading {vectors:,} memories ...", flush=True)
            t = time.perf_counter()
            rng = random.Random(f"{name}-{seed}")
            for first in range(0, vectors, 50_000):
                _copy_rows(conn, schema, vecs, rng, first, min(50_000, vectors - first), agents)
                conn.commit()
            load_s = time.perf_counter() - t
            _vacuum(dsn, schema)
            table_bytes = int(_one(conn, f"select pg_table_size('{schema}.memories')"))
            qrng = random.Random(f"queries-{name}-{seed}")
            qs = []
            for _ in range(queries):
                a = qrng.randrange(agents)
                qs.append(_Query(_vector_text(vecs.make(qrng)), f"tenant-{a % TENANTS}", f"agent-{a}"))
            say(f"{name}: exact top {K} of {queries} queries x {len(FILTERS)} filters ...", flush=True)
            truth = _truth(conn, schema, qs)
            cpu0, wall0 = _insert_cost(conn, schema, vecs, vectors, inserts, agents)
            ds = DataSet(name, load_s, table_bytes, cpu0, wall0)
            _vacuum(dsn, schema)
            for kind in candidates:
                say(f"{name}: building {kind} ...", flush=True)
                conn.execute(f"set maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
                conn.execute(f"set max_parallel_maintenance_workers = {PARALLEL_WORKERS}")
                t = time.perf_counter()
                memory_index.create(conn, schema, kind, dim)
                conn.commit()
                build_s = time.perf_counter() - t
                size = int(_one(conn, "select pg_relation_size(%s::regclass)",
                                (f"{schema}.{memory_index.INDEX_NAMES[kind]}",)))
                conn.commit()
                figures = IndexFigures(build_s, size, None, 0.0)
                _prewarm(conn, f"{schema}.{memory_index.INDEX_NAMES[kind]}")
                lists = memory_index.ivfflat_lists(conn, schema)
                conn.commit()
                for v in VARIANTS[kind]:
                    if v.label(lists) in figures.queries:  # a small index: the same probes
                        continue
                    say(f"{name}: {v.label(lists)}: {queries} queries x {len(FILTERS)} filters ...", flush=True)
                    figures.queries[v.label(lists)] = _time_queries(conn, schema, dim, v, lists, qs, truth, warmup)
                say(f"{name}: {kind}: inserting {inserts:,} more ...", flush=True)
                cpu, wall = _insert_cost(conn, schema, vecs, vectors, inserts, agents)
                figures.insert_cpu_ms, figures.insert_wall_ms = cpu, wall
                memory_index.drop(conn, schema)
                conn.commit()
                _vacuum(dsn, schema)
                ds.indexes[kind] = figures
            result.sets.append(ds)
        say(report_table(result, ds), flush=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"drop schema if exists {schema} cascade")
    result.load_after = os.getloadavg()[0]
    return result


def command_line(r: MemoryResult) -> str:
    cmd = "aosk bench memory"
    if r.vectors != 100_000:
        cmd += f" --vectors {r.vectors}"
    if r.queries != 200:
        cmd += f" --queries {r.queries}"
    if r.inserts != 2_000:
        cmd += f" --inserts {r.inserts}"
    if r.candidates != ("hnsw", "hnsw_bq", "halfvec", "ivfflat"):
        cmd += f" --candidates {','.join(r.candidates)}"
    if r.data != DATA:
        cmd += f" --data {','.join(r.data)}"
    return cmd


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def report_table(r: MemoryResult, ds: DataSet) -> str:
    base = ds.indexes.get("hnsw")
    lines = [
        f"**{ds.name}** ({r.vectors:,} vectors, loaded in {ds.load_s:.1f} s; table {ds.table_bytes / 2**20:,.0f} MiB)",
        "",
        "| index | build s | index MiB | insert CPU ms/vector | query | recall@10 none / tenant / agent "
        "| p50 ms none / tenant / agent | p99 ms none / tenant / agent |",
        "|---|---:|---:|---:|---|---|---|---|",
        f"| no vector index | | | {_ms(ds.no_index_insert_cpu_ms)} | | | | |",
    ]
    for kind, f in ds.indexes.items():
        ratio = ""
        if base is not None and kind != "hnsw":
            ratio = f" ({f.build_s / base.build_s:.2f}x)"
        size_ratio = f" ({f.size_bytes / base.size_bytes:.2f}x)" if base is not None and kind != "hnsw" else ""
        cpu = _ms(f.insert_cpu_ms)
        if base is not None and kind != "hnsw" and f.insert_cpu_ms and base.insert_cpu_ms:
            cpu += f" ({f.insert_cpu_ms / base.insert_cpu_ms:.2f}x)"
        for j, (label, q) in enumerate(f.queries.items()):
            rec = " / ".join(f"{q[flt][0]:.3f}" for flt in FILTERS)
            p50 = " / ".join(f"{q[flt][1]:.1f}" for flt in FILTERS)
            p99 = " / ".join(f"{q[flt][2]:.1f}" for flt in FILTERS)
            head = (f"| {kind} | {f.build_s:.1f}{ratio} | {f.size_bytes / 2**20:,.1f}{size_ratio} | {cpu} "
                    if j == 0 else "| | | | ")
            lines.append(f"{head}| {label} | {rec} | {p50} | {p99} |")
    return "\n".join(lines)


def report_markdown(r: MemoryResult, machine: str) -> str:
    title = "## Memory index: candidates side by side" + (
        f" ({r.vectors:,} vectors)" if r.vectors != 100_000 else "")
    med = statistics.median([r.load_before, r.load_after])
    parts = [
        title,
        "",
        f"`{command_line(r)}` on {machine}; the embedded dev stack ({r.server}); load average {r.load_before:.2f} "
        f"when the run started, {r.load_after:.2f} at its end (median {med:.2f}; the 2 cores are shared). "
        f"{r.dim}-d embeddings in the projection's `memories` table, {TENANTS} tenants, one agent per "
        f"{MEMORIES_PER_AGENT} memories. Each index built with `maintenance_work_mem = {MAINTENANCE_WORK_MEM}`, "
        f"`max_parallel_maintenance_workers = {PARALLEL_WORKERS}`, HNSW `m = 16, ef_construction = 64`, IVFFlat with "
        "the lists `aosk.projectors.memory_index.lists_for` gives the table. Each index read into shared buffers "
        "once built (`pg_prewarm`), as on a server answering recalls. Queries: "
        f"{r.queries} per filter (after {min(20, r.queries)} untimed), k = {K}, through `aosk.reads.memory`'s own "
        "recall query (iterative scans `relaxed_order`, `hnsw.ef_search` as labelled (efN, at least the candidates), "
        "`max_scan_tuples` 50,000; IVFFlat `probes` as labelled (probes N/lists), `max_probes` twice that; "
        "candidates re-ranked by exact cosine distance, exact scan when the filter starves the index "
        "scan or the agent's scope is small); recall@10 against an exact scan with the same filter. Filters: "
        f"*none* (all rows), *tenant* (1/{TENANTS} of the rows), *agent* (one agent, ~{MEMORIES_PER_AGENT} rows). "
        f"Insert CPU: the PostgreSQL backend's CPU per vector inserting {r.inserts:,} more memories into the built "
        f"index in COPY batches of {INSERT_BATCH}. Ratios in brackets: to `hnsw` in the same run. Query labels: "
        "xN takes N x k candidates from the index and re-ranks them; *(recall's)* marks what recall does by "
        "default for that index.",
        "",
    ]
    for ds in r.sets:
        parts += [report_table(r, ds), ""]
    return "\n".join(parts)
