"""The vector index over ``memories.embedding``: the kinds there are, their definitions,
and which one a schema has.

Every kind is an HNSW graph (so ``aosk replay`` defers it like any ``using hnsw`` index
and builds it once at the end); they differ in what the graph holds:

* ``halfvec`` (the default, migration 0009): ``embedding::halfvec(d)`` (16-bit floats,
  cosine distance); recall takes ``RERANK["halfvec"]`` times k candidates from it and
  orders them by the full vectors' exact cosine distance;
* ``hnsw``: the full ``vector(d)``, cosine distance (the index of migrations 0001-0008);
* ``hnsw_bq``: ``binary_quantize(embedding)::bit(d)`` (one bit per dimension, Hamming
  distance), re-ranked the same way.

Which one a schema has is read from the catalog (``present``), so recall always queries
the index that exists; ``memory.index`` (``aosk.config.MemorySettings``) picks the one
``migrate`` leaves in place (``ensure``). Measured side by side by ``aosk bench memory``
(docs/benchmarks.md, docs/projections.md "Memory recall").
"""

from __future__ import annotations

from typing import Any, Final, get_args

import psycopg
from psycopg import sql

from aosk.config import MemoryIndex

__all__ = ["MemoryIndex", "KINDS", "INDEX_NAMES", "RERANK", "EF_SEARCH", "DEFAULT_INDEX", "HNSW_OPTIONS",
           "order_expression", "index_sql", "present", "drop", "create", "ensure"]

KINDS: Final[tuple[MemoryIndex, ...]] = get_args(MemoryIndex)

DEFAULT_INDEX: Final[MemoryIndex] = "halfvec"
"""What migration 0009 creates and ``memory.index`` defaults to (figures in
docs/benchmarks.md, "Memory index")."""

INDEX_NAMES: Final[dict[MemoryIndex, str]] = {
    "hnsw": "memories_embedding_hnsw",
    "hnsw_bq": "memories_embedding_bq",
    "halfvec": "memories_embedding_halfvec",
}
"""The index's name in the projection schema, per kind (what a benchmark drops to measure
the pipeline without a vector index)."""

RERANK: Final[dict[MemoryIndex, int]] = {"hnsw": 1, "hnsw_bq": 10, "halfvec": 4}
"""Candidates taken from the index per result asked for, re-ranked by exact cosine
distance (1: the index's own order is already exact cosine)."""

EF_SEARCH: Final[dict[MemoryIndex, int]] = {"hnsw": 100, "hnsw_bq": 100, "halfvec": 200}
"""``hnsw.ef_search`` recall sets per kind (at least the candidates it takes)."""

HNSW_OPTIONS: Final = "m = 16, ef_construction = 64"


def _indexed(kind: MemoryIndex, dim: int) -> str:
    d = int(dim)
    return {"hnsw": "embedding", "hnsw_bq": f"(binary_quantize(embedding)::bit({d}))",
            "halfvec": f"(embedding::halfvec({d}))"}[kind]


_OPS: Final[dict[MemoryIndex, str]] = {"hnsw": "vector_cosine_ops", "hnsw_bq": "bit_hamming_ops",
                                       "halfvec": "halfvec_cosine_ops"}


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
    }[kind]


def index_sql(kind: MemoryIndex, schema: str, dim: int, *, name: str | None = None,
              table: str = "memories") -> sql.Composed:
    """``create index`` of ``kind`` on ``schema.table``."""
    return sql.SQL("create index {name} on {schema}.{table} using hnsw ({expr} {ops}) with ({opts})").format(
        name=sql.Identifier(name or INDEX_NAMES[kind]), schema=sql.Identifier(schema), table=sql.Identifier(table),
        expr=sql.SQL(_indexed(kind, dim)), ops=sql.SQL(_OPS[kind]), opts=sql.SQL(HNSW_OPTIONS))


def present(conn: psycopg.Connection[Any], schema: str) -> MemoryIndex | None:
    """The kind of vector index ``schema.memories`` has (None: none, e.g. while a replay
    has deferred it). Recognised by name; with several, the first of ``KINDS``."""
    names = {n for (n,) in conn.execute(
        "select indexname from pg_indexes where schemaname = %s and tablename = 'memories' "
        "and indexname = any(%s)", (schema, list(INDEX_NAMES.values())))}
    return next((k for k in KINDS if INDEX_NAMES[k] in names), None)


def drop(conn: psycopg.Connection[Any], schema: str) -> None:
    """Drop every memory vector index of ``schema``."""
    for name in INDEX_NAMES.values():
        conn.execute(sql.SQL("drop index if exists {}.{}").format(sql.Identifier(schema), sql.Identifier(name)))


def create(conn: psycopg.Connection[Any], schema: str, kind: MemoryIndex, dim: int) -> None:
    conn.execute(index_sql(kind, schema, dim))


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
