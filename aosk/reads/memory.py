"""Memory recall: the ``k`` memories nearest to a query embedding (pgvector, cosine).

Recall asks the schema's vector index (``aosk.projectors.memory_index``: IVFFlat over
halfvecs, or HNSW over halfvecs, full vectors or binary-quantized vectors) for
candidates with pgvector's iterative index scans, so a query filtered by tenant (and agent) still finds
enough of them, and orders the candidates by the full vectors' exact cosine distance;
when the filter leaves fewer candidates than asked for within the scan limit, an exact
scan of the filtered rows answers instead. A fork also recalls its source's memories up
to the fork point (``lineage``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

from aosk.errors import RecallError
from aosk.projectors.db import embedding_dimension, qualified
from aosk.projectors.memory_index import (
    EF_SEARCH,
    RERANK,
    MemoryIndex,
    ivfflat_lists,
    order_expression,
    present,
    probes_for,
)
from aosk.projectors.rows import storage_key
from aosk.reads.agents import stored_state, tenant_of
from aosk.reads.audit import offset_of_seq

__all__ = ["Recalled", "recall", "explain_recall", "check_query", "lineage", "memory_embedding", "DEFAULT_EF_SEARCH",
           "MAX_SCAN_TUPLES", "MAX_EF_SEARCH", "EXACT_BELOW", "recall_queries", "candidates", "recall_settings",
           "answer"]


DEFAULT_EF_SEARCH: Final = 100
"""``hnsw.ef_search`` for recall without an index kind's own (``memory_index.EF_SEARCH``;
pgvector's default is 40): the candidate list size, raised for more candidates. With
iterative scans the search goes on past it when filters discard candidates."""
MAX_SCAN_TUPLES: Final = 50_000
"""``hnsw.max_scan_tuples``: how far an iterative scan may go before giving up."""
MAX_EF_SEARCH: Final = 1000
"""pgvector's upper bound for ``hnsw.ef_search``; iterative scans go on past it."""


@dataclass(frozen=True)
class Recalled:
    agent_id: str
    memory_id: str
    tenant_id: str
    source: str
    role: str | None
    text: str | None
    metadata: dict[str, Any]
    importance: float | None
    distance: float
    """Cosine distance to the query (0 = same direction, 2 = opposite)."""
    journal_partition: int
    journal_offset: int
    seq: int


def check_query(query: Sequence[float], dimension: int) -> list[float]:
    try:
        q = [float(x) for x in query]
    except (TypeError, ValueError) as e:
        raise RecallError(f"the query embedding must be a sequence of numbers ({e})") from e
    if len(q) != dimension:
        raise RecallError(
            f"the query embedding has dimension {len(q)}, but this cluster's memories have dimension {dimension} "
            "(memory.embedding_dimension); embed the query with the same model as the memories"
        )
    if not all(math.isfinite(x) for x in q):
        raise RecallError("the query embedding holds NaN or infinity")
    if not any(q):
        raise RecallError("the query embedding is all zeros: cosine distance is undefined for it")
    return q


def _vector_text(q: list[float]) -> str:
    return "[" + ",".join(repr(x) for x in q) + "]"


_SELECT: Final = (
    "agent_id, memory_id, tenant_id, source, role, text, metadata, importance, journal_partition, journal_offset, seq"
)


def _where(lineage_size: int, tenant: bool) -> sql.Composable:
    where: sql.Composable = sql.SQL("embedding is not null")
    if tenant:
        where = sql.SQL("tenant_id = %(tenant)s and ") + where
    if lineage_size:
        # The agent's own memories up to a bound, and a fork's ancestors' up to the fork point.
        each = [sql.SQL(f"(agent_id = %(a{i})s and journal_offset <= %(b{i})s)") for i in range(lineage_size)]
        where += sql.SQL(" and (") + sql.SQL(" or ").join(each) + sql.SQL(")")
    return where


def recall_queries(schema: str, lineage_size: int, kind: MemoryIndex | None, dim: int, *, tenant: bool = True,
                   ) -> tuple[sql.Composed, sql.Composed]:
    """The index query and the exact fallback. ``lineage_size`` agents (0: the whole
    tenant), each bounded by a journal offset. Plain OR'ed conditions rather than a join
    with the lineage, so the planner still orders by the vector index and filters.
    ``tenant=False`` leaves the tenant out (benchmarks only: recall is always scoped).

    The index query takes ``%(n)s`` candidates in the order of ``kind``'s index (exact
    cosine for ``hnsw`` and without an index), orders them by exact cosine distance and
    keeps ``%(k)s``; each row also carries how many candidates the scan found, so the
    caller can tell a scan the filter starved (fewer than ``n``) and ask the exact query."""
    t = qualified(schema, "memories")
    where = _where(lineage_size, tenant)
    order = sql.SQL(order_expression(kind or "hnsw", dim))
    ann = sql.SQL(
        "with candidates as materialized (select {cols}, embedding from {t} where {w} order by {order} limit %(n)s)"
        " select {cols}, embedding <=> %(q)s::vector as distance, count(*) over () from candidates"
        " order by distance, agent_id, memory_id limit %(k)s"
    ).format(cols=sql.SQL(_SELECT), t=t, w=where, order=order)
    exact = sql.SQL(
        "with scoped as materialized (select {cols}, embedding from {t} where {w})"
        " select {cols}, embedding <=> %(q)s::vector as distance from scoped"
        " order by distance, agent_id, memory_id limit %(k)s"
    ).format(cols=sql.SQL(_SELECT), t=t, w=where)
    return ann, exact


EXACT_BELOW: Final = 2_000
"""An agent's scope (its lineage) with at most this many embedded memories is answered
by the exact scan at once: cheaper than an index scan that has to walk past every other
agent's memories (and then fall back anyway)."""


def answer(conn: psycopg.Connection[Any], schema: str, kind: MemoryIndex | None, dim: int, lineage_size: int,
           params: dict[str, Any], *, rerank: int | None = None, ef_search: int | None = None,
           probes: int | None = None, tenant: bool = True) -> list[tuple[Any, ...]]:
    """The rows of a recall (inside a transaction): ``params`` has ``q``, ``k``, ``tenant``
    and the lineage's ``a<i>``/``b<i>``. ``kind`` is the schema's vector index (None: none).
    ``ef_search`` (HNSW) and ``probes`` (IVFFlat) override the kind's own."""
    k = int(params["k"])
    n = candidates(kind, k, rerank)
    p = {**params, "n": n}
    ann, exact = recall_queries(schema, lineage_size, kind, dim, tenant=tenant)
    if lineage_size:
        scope = sql.SQL("select count(*) from (select 1 from {} where {} limit %(cap)s) s").format(
            qualified(schema, "memories"), _where(lineage_size, tenant))
        found = conn.execute(scope, {**p, "cap": EXACT_BELOW + 1}).fetchone()
        if found is not None and int(found[0]) <= EXACT_BELOW:
            return conn.execute(exact, p).fetchall()
    recall_settings(conn, n, ef_search or (EF_SEARCH[kind] if kind is not None else None),
                    probes=_probes(conn, schema, kind, probes))
    rows = conn.execute(ann, p).fetchall()
    if not rows or int(rows[0][-1]) < n:  # the filter left fewer candidates than the scan could reach
        rows = conn.execute(exact, p).fetchall()
    return rows


def candidates(kind: MemoryIndex | None, k: int, rerank: int | None = None) -> int:
    """How many candidates the index query takes for ``k`` results."""
    return k * (rerank if rerank is not None else RERANK[kind] if kind is not None else 1)


def _lineage_params(agents: list[str], bounds: list[int]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for i, (a, b) in enumerate(zip(agents, bounds, strict=True)):
        params[f"a{i}"], params[f"b{i}"] = a, b
    return params


def _scope(
    conn: psycopg.Connection[Any], schema: str, tenant_id: str | None, agent_id: str | None
) -> tuple[str, str | None]:
    if agent_id is None:
        if tenant_id is None:
            raise RecallError("recall needs a tenant_id or an agent_id: memories are scoped by tenant")
        return tenant_id, None
    owner = tenant_of(conn, schema, agent_id)
    if tenant_id is None:
        if owner is None:
            raise RecallError(f"agent {agent_id} is not known to this projection; pass tenant_id too")
        tenant_id = owner
    return tenant_id, storage_key(agent_id)


_NO_BOUND: Final = 2**63 - 1
_MAX_LINEAGE: Final = 32


def lineage(conn: psycopg.Connection[Any], schema: str, agent_key: str,
            as_of_offset: int | None = None) -> tuple[list[str], list[int]]:
    """The agents whose memories ``agent_key`` recalls, each with the last journal offset
    that counts: itself (up to ``as_of_offset``), and for a fork its source up to the
    record the fork was taken at, and so on up the chain of forks."""
    from aosk.kernel import decode_state

    agents, bounds = [agent_key], [_NO_BOUND if as_of_offset is None else as_of_offset]
    key = agent_key
    for _ in range(_MAX_LINEAGE):
        blob = stored_state(conn, schema, key)
        ident = decode_state(blob).identity if blob is not None else None
        if ident is None or ident.forked_from is None or ident.fork_seq is None:
            break
        source = storage_key(ident.forked_from)
        at = offset_of_seq(conn, schema, source, ident.fork_seq)
        if at is None or source in agents:
            break
        agents.append(source)
        bounds.append(at)
        key = source
    return agents, bounds


def _probes(conn: psycopg.Connection[Any], schema: str, kind: MemoryIndex | None, probes: int | None) -> int | None:
    if kind != "ivfflat":
        return None
    return probes or probes_for(ivfflat_lists(conn, schema) or 1)


def recall_settings(conn: psycopg.Connection[Any], n: int, ef_search: int | None, *,
                    probes: int | None = None) -> None:
    """The session settings of an index query taking ``n`` candidates (in a transaction);
    ``probes``: an IVFFlat index's lists to scan (an iterative scan goes on to twice as
    many when the filter leaves too few candidates)."""
    if probes is not None:
        conn.execute(f"set local ivfflat.probes = {int(probes)}")
        conn.execute("set local ivfflat.iterative_scan = relaxed_order")
        conn.execute(f"set local ivfflat.max_probes = {2 * int(probes)}")
        return
    ef = min(MAX_EF_SEARCH, max(ef_search or DEFAULT_EF_SEARCH, n))
    conn.execute(f"set local hnsw.ef_search = {int(ef)}")
    conn.execute("set local hnsw.iterative_scan = relaxed_order")
    conn.execute(f"set local hnsw.max_scan_tuples = {MAX_SCAN_TUPLES}")


def recall(
    conn: psycopg.Connection[Any],
    schema: str,
    query: Sequence[float],
    *,
    k: int = 10,
    tenant_id: str | None = None,
    agent_id: str | None = None,
    ef_search: int | None = None,
    as_of_offset: int | None = None,
) -> list[Recalled]:
    """The ``k`` memories nearest to ``query`` (cosine), within ``tenant_id`` and, if
    given, ``agent_id`` (an agent alone scopes to its own tenant). Forgotten memories and
    memories without an embedding yet are not candidates.

    With ``agent_id``: a fork also recalls its source's memories up to the fork point
    (and so on up its chain of forks); ``as_of_offset`` leaves out what the agent stored
    after that offset of its partition (recall "as of" a point in its history)."""
    if as_of_offset is not None and agent_id is None:
        raise RecallError("as_of_offset needs an agent_id: offsets are positions in one agent's partition")
    if not 1 <= k <= 1000:
        raise RecallError(f"k must be in 1..1000, got {k}")
    q = check_query(query, embedding_dimension(conn, schema))
    with conn.transaction():
        tenant, agent = _scope(conn, schema, tenant_id, agent_id)
        agents, bounds = lineage(conn, schema, agent, as_of_offset) if agent is not None else ([], [])
        params = {"q": _vector_text(q), "tenant": tenant, "k": k, **_lineage_params(agents, bounds)}
        rows = answer(conn, schema, present(conn, schema), len(q), len(agents), params, ef_search=ef_search)
    return [_recalled(r) for r in rows]


def _recalled(r: tuple[Any, ...]) -> Recalled:
    return Recalled(
        agent_id=r[0], memory_id=r[1], tenant_id=r[2], source=r[3], role=r[4], text=r[5], metadata=r[6],
        importance=r[7], journal_partition=r[8], journal_offset=r[9], seq=r[10], distance=float(r[11]),
    )


def explain_recall(
    conn: psycopg.Connection[Any],
    schema: str,
    query: Sequence[float],
    *,
    k: int = 10,
    tenant_id: str,
    agent_id: str | None = None,
    ef_search: int | None = None,
    analyze: bool = False,
) -> str:
    """The plan PostgreSQL picks for ``recall``'s index query (to check the vector index
    is used)."""
    q = check_query(query, embedding_dimension(conn, schema))
    with conn.transaction():
        kind = present(conn, schema)
        n = candidates(kind, k)
        recall_settings(conn, n, ef_search or (EF_SEARCH[kind] if kind is not None else None),
                        probes=_probes(conn, schema, kind, None))
        agents, bounds = lineage(conn, schema, storage_key(agent_id)) if agent_id is not None else ([], [])
        ann, _ = recall_queries(schema, len(agents), kind, len(q))
        params = {"q": _vector_text(q), "tenant": tenant_id, "k": k, "n": n, **_lineage_params(agents, bounds)}
        prefix = sql.SQL("explain (analyze, costs off) ") if analyze else sql.SQL("explain ")
        plan = conn.execute(prefix + ann, params).fetchall()
    return "\n".join(str(r[0]) for r in plan)


def memory_embedding(conn: psycopg.Connection[Any], schema: str, agent_id: str, memory_id: str) -> list[float] | None:
    """The embedding of ``agent_id``'s memory ``memory_id`` (None: no such memory, or not embedded)."""
    row = conn.execute(
        sql.SQL("select embedding::text from {} where agent_id = %s and memory_id = %s").format(
            qualified(schema, "memories")), (storage_key(agent_id), memory_id)).fetchone()
    if row is None or row[0] is None:
        return None
    return [float(x) for x in row[0].strip("[]").split(",")]
