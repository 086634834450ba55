"""The vector index over ``memories.embedding``: the kinds there are, their definitions,
and which one a schema has.

Each kind indexes the embeddings as one of these (``aosk replay`` defers every one and
builds it once at the end):

* ``ivfflat`` (the default, migration 0010): IVFFlat over ``embedding::halfvec(d)``
  (16-bit floats, cosine distance). The rows are split into ``lists`` by k-means
  centroids; an insert only finds its nearest centroid (0.02-0.08 ms of backend CPU at
  100 to 1,000 lists, growing with the lists, where an HNSW insert walks a graph:
  milliseconds, growing with it), a query scans the ``probes`` lists nearest to it. The
  centroids are learnt when the index is built, so it is built again as the table grows
  (``stale``/``rebuild``: each projector checks every 30 s, beside its projection, and
  one of them builds it again once the table has doubled; ``aosk.projectors.index_upkeep``);
* ``halfvec`` (the default of migration 0009): an HNSW graph over ``embedding::halfvec(d)``;
* ``hnsw``: an HNSW graph over the full ``vector(d)`` (the index of migrations 0001-0008);
* ``hnsw_bq``: an HNSW graph over ``binary_quantize(embedding)::bit(d)`` (one bit per
  dimension, Hamming distance).

Recall takes ``RERANK[kind]`` times k candidates from the index and orders them by the
full vectors' exact cosine distance.

Which one a schema has is read from the catalog (``present``), so recall always queries
the index that exists; ``memory.index`` (``aosk.config.MemorySettings``) picks the one
``migrate`` leaves in place (``ensure``). Measured side by side by ``aosk bench memory``
(docs/benchmarks.md, docs/projections.md "Memory recall").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, get_args

import psycopg
from psycopg import sql

from aosk.config import MemoryIndex

__all__ = ["MemoryIndex", "KINDS", "INDEX_NAMES", "RERANK", "EF_SEARCH", "DEFAULT_INDEX", "HNSW_OPTIONS",
           "order_expression", "index_sql", "present", "drop", "create", "ensure", "lists_for", "probes_for",
           "ivfflat_lists", "Stale", "stale", "rebuild"]

KINDS: Final[tuple[MemoryIndex, ...]] = get_args(MemoryIndex)

DEFAULT_INDEX: Final[MemoryIndex] = "ivfflat"
"""What migration 0010 creates and ``memory.index`` defaults to (figures in
docs/benchmarks.md, "Memory index")."""

INDEX_NAMES: Final[dict[MemoryIndex, str]] = {
    "hnsw": "memories_embedding_hnsw",
    "hnsw_bq": "memories_embedding_bq",
    "halfvec": "memories_embedding_halfvec",
    "ivfflat": "memories_embedding_ivfflat",
}
"""The index's name in the projection schema, per kind (what a benchmark drops to measure
the pipeline without a vector index)."""

RERANK: Final[dict[MemoryIndex, int]] = {"hnsw": 1, "hnsw_bq": 10, "halfvec": 4, "ivfflat": 4}
"""Candidates taken from the index per result asked for, re-ranked by exact cosine
distance (1: the index's own order is already exact cosine)."""

EF_SEARCH: Final[dict[MemoryIndex, int]] = {"hnsw": 100, "hnsw_bq": 100, "halfvec": 200, "ivfflat": 0}
"""``hnsw.ef_search`` recall sets per kind (at least the candidates it takes; 0: not an
HNSW graph)."""

HNSW_OPTIONS: Final = "m = 16, ef_construction = 64"

IVFFLAT_EXACT_BELOW: Final = 10_000
"""Below this many rows an IVFFlat index has one list: every query scans all of it (an
exact scan, a few milliseconds), and no centroids are learnt from too few rows."""
ROWS_PER_LIST: Final = 1_000
"""Rows per IVFFlat list up to a million rows; past that ``sqrt(rows)`` lists (pgvector's
own advice)."""
REBUILD_GROWTH: Final = 2
"""An IVFFlat index is built again once the table would have this many times its lists."""


def lists_for(rows: int) -> int:
    """IVFFlat lists for a table of ``rows`` rows."""
    if rows < IVFFLAT_EXACT_BELOW:
        return 1
    return rows // ROWS_PER_LIST if rows <= ROWS_PER_LIST**2 else math.isqrt(rows)


PROBES_FACTOR: Final = 0.4
"""IVFFlat lists scanned per query: this times ``sqrt(lists)``."""


def probes_for(lists: int) -> int:
    """IVFFlat lists a query scans (``ivfflat.probes``) in an index of ``lists`` lists."""
    return max(1, min(lists, math.ceil(PROBES_FACTOR * math.sqrt(lists))))


def _indexed(kind: MemoryIndex, dim: int) -> str:
    d = int(dim)
    return {"hnsw": "embedding", "hnsw_bq": f"(binary_quantize(embedding)::bit({d}))",
            "halfvec": f"(embedding::halfvec({d}))", "ivfflat": f"(embedding::halfvec({d}))"}[kind]


_OPS: Final[dict[MemoryIndex, str]] = {"hnsw": "vector_cosine_ops", "hnsw_bq": "bit_hamming_ops",
                                       "halfvec": "halfvec_cosine_ops", "ivfflat": "halfvec_cosine_ops"}


def order_expression(kind: MemoryIndex, dim: int, query: str = "%(q)s") -> str:
    """The ``order by`` expression the kind's index answers, for the query parameter
    ``query`` (a ``vector`` literal); it must match the index expression exactly."""
    d = int(dim)
    return {
        "hnsw": f"embedding <=> {query}::vector",
        "hnsw_bq": f"binary_quantize(embedding)::bit({d}) <~> binary_quantize({query}::vector)::bit({d})",
        # the parameter is cast to vector first: the same parameter is the full-precision
        # vector the candidates are re-ranked by, and its first use fixes its type
        "halfvec": f"embedding::halfvec({d}) <=> {query}::vector::halfvec({d})",
        "ivfflat": f"embedding::halfvec({d}) <=> {query}::vector::halfvec({d})",
    }[kind]


def index_sql(kind: MemoryIndex, schema: str, dim: int, *, name: str | None = None,
              table: str = "memories", lists: int = 1, concurrently: bool = False) -> sql.Composed:
    """``create index`` of ``kind`` on ``schema.table`` (``lists``: an IVFFlat index's)."""
    method, opts = ("ivfflat", f"lists = {int(lists)}") if kind == "ivfflat" else ("hnsw", HNSW_OPTIONS)
    return sql.SQL("create index {how}{name} on {schema}.{table} using {method} ({expr} {ops}) with ({opts})").format(
        how=sql.SQL("concurrently " if concurrently else ""),
        name=sql.Identifier(name or INDEX_NAMES[kind]), schema=sql.Identifier(schema), table=sql.Identifier(table),
        method=sql.SQL(method), expr=sql.SQL(_indexed(kind, dim)), ops=sql.SQL(_OPS[kind]), opts=sql.SQL(opts))


def present(conn: psycopg.Connection[Any], schema: str) -> MemoryIndex | None:
    """The kind of vector index ``schema.memories`` has (None: none, e.g. while a replay
    has deferred it). Recognised by name; with several, the first of ``KINDS``."""
    names = {n for (n,) in conn.execute(
        "select indexname from pg_indexes where schemaname = %s and tablename = 'memories' "
        "and indexname = any(%s)", (schema, list(INDEX_NAMES.values())))}
    return next((k for k in KINDS if INDEX_NAMES[k] in names), None)


def drop(conn: psycopg.Connection[Any], schema: str) -> None:
    """Drop every memory vector index of ``schema``."""
    for name in (*INDEX_NAMES.values(), INDEX_NAMES["ivfflat"] + REBUILT_SUFFIX):
        conn.execute(sql.SQL("drop index if exists {}.{}").format(sql.Identifier(schema), sql.Identifier(name)))


def create(conn: psycopg.Connection[Any], schema: str, kind: MemoryIndex, dim: int) -> None:
    """Build ``kind`` over ``schema.memories`` (an IVFFlat index with the lists its rows
    call for, counted)."""
    lists = 1
    if kind == "ivfflat":
        row = conn.execute(sql.SQL("select count(*) from {}.memories where embedding is not null").format(
            sql.Identifier(schema))).fetchone()
        lists = lists_for(int(row[0]) if row else 0)
    conn.execute(index_sql(kind, schema, dim, lists=lists))


def ivfflat_lists(conn: psycopg.Connection[Any], schema: str) -> int | None:
    """The lists of ``schema``'s IVFFlat memory index (None: it has none)."""
    row = conn.execute(
        "select c.reloptions from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.relname = %s", (schema, INDEX_NAMES["ivfflat"])).fetchone()
    return None if row is None else _lists(row[0])


def _lists(reloptions: list[str] | None) -> int:
    """An IVFFlat index's lists from its ``pg_class.reloptions``."""
    opts = dict(o.split("=", 1) for o in reloptions or ())
    return int(opts.get("lists", 100))  # pgvector's default when built without the option


@dataclass(frozen=True)
class Stale:
    """An IVFFlat memory index built for fewer rows than the table has."""

    lists: int
    rows: int
    """The table's rows with an embedding (PostgreSQL's estimates)."""

    @property
    def wanted(self) -> int:
        return lists_for(self.rows)


def stale(conn: psycopg.Connection[Any], schema: str) -> Stale | None:
    """Whether ``schema``'s IVFFlat memory index is due to be built again: the table
    calls for ``REBUILD_GROWTH`` times its lists or more (None: not due, or no IVFFlat)."""
    # The rows the index holds, estimated without reading the table: the larger of the
    # planner's estimate (set by (auto)vacuum and analyze) and the statistics' live rows
    # (counted as rows are written; a growing table's reltuples lags), times the share of
    # rows with an embedding (analyze's null_frac: memories paged out have none)
    row = conn.execute(
        "select i.reloptions, greatest(t.reltuples, coalesce(pg_stat_get_live_tuples(t.oid), 0)) * (1 - coalesce("
        "(select s.null_frac from pg_stats s where s.schemaname = n.nspname and s.tablename = t.relname "
        "and s.attname = 'embedding'), 0)) "
        "from pg_class i join pg_namespace n on n.oid = i.relnamespace "
        "join pg_index x on x.indexrelid = i.oid join pg_class t on t.oid = x.indrelid "
        "where n.nspname = %s and i.relname = %s", (schema, INDEX_NAMES["ivfflat"])).fetchone()
    if row is None:
        return None
    s = Stale(_lists(row[0]), max(0, int(row[1])))
    return s if s.wanted >= REBUILD_GROWTH * s.lists else None


REBUILT_SUFFIX: Final = "_next"
"""The name (the kind's plus this) an IVFFlat index is built under again before it
replaces the old one."""


def rebuild(conn: psycopg.Connection[Any], schema: str, dim: int, lists: int, *, lock_timeout_s: float = 5.0) -> bool:
    """Build ``schema``'s IVFFlat memory index again with ``lists`` lists, its centroids
    learnt from the rows there are now: ``create index concurrently`` under another name
    (writers and readers go on meanwhile), then one short transaction swaps it in for the
    old one (giving up after ``lock_timeout_s`` behind other transactions). ``conn`` is
    in autocommit. One process at a time per schema: False if another is at it, or the
    swap did not get its lock (the new index is dropped again; the old one stays)."""
    name = INDEX_NAMES["ivfflat"]
    built = name + REBUILT_SUFFIX
    key = ("aosk-memory-index", schema)
    got = conn.execute("select pg_try_advisory_lock(hashtext(%s), hashtext(%s))", key).fetchone()
    if not got or not got[0]:
        return False
    try:
        drop_built = sql.SQL("drop index concurrently if exists {}").format(sql.Identifier(schema, built))
        conn.execute(drop_built)  # what an interrupted rebuild left (invalid, but written to)
        conn.execute("set maintenance_work_mem = '512MB'")
        conn.execute(index_sql("ivfflat", schema, dim, name=built, lists=lists, concurrently=True))
        try:
            with conn.transaction():
                timeout = sql.Literal(f"{int(lock_timeout_s * 1000)}ms")
                conn.execute(sql.SQL("set local lock_timeout = {}").format(timeout))
                conn.execute(sql.SQL("drop index if exists {}").format(sql.Identifier(schema, name)))
                conn.execute(sql.SQL("alter index {} rename to {}").format(sql.Identifier(schema, built),
                                                                           sql.Identifier(name)))
        except psycopg.errors.LockNotAvailable:
            conn.execute(drop_built)
            return False
    finally:
        if not conn.closed and not conn.broken:
            conn.execute("reset maintenance_work_mem")
            conn.execute("select pg_advisory_unlock(hashtext(%s), hashtext(%s))", key)
    return True


def ensure(conn: psycopg.Connection[Any], schema: str, kind: MemoryIndex, dim: int) -> bool:
    """Make ``schema``'s memory vector index ``kind`` when it has one of another kind
    (building it over every row: minutes at a million memories); True if it changed. A
    schema without one (a replay's shadow with its indexes deferred, or dropped on
    purpose) is left alone."""
    if kind not in KINDS:
        raise ValueError(f"unknown memory index {kind!r}; one of {', '.join(KINDS)}")
    have = present(conn, schema)
    if have is None or have == kind:
        return False
    drop(conn, schema)
    create(conn, schema, kind, dim)
    return True
