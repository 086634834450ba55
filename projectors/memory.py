"""The ``memories`` projection: what each record changes, and recall.

Changes (all from accepted records, last write wins, the same whatever the batching):

* ``MemoryStored``: the memory row (text, metadata, importance, embedding if given);
  storing an id again replaces the row;
* a paged-out context entry (listed in a verdict): the memory with the entry's id, its
  content as text, embedding NULL;
* ``MemoryEmbedded``: sets the embedding of an existing, not forgotten memory;
* ``MemoryForgotten``: removes text, metadata and embedding (and when it was embedded)
  and keeps a tombstone.

Every full row carries ``content_hash`` (``rows.memory_hash``: its content, or once
forgotten its tombstone); each op carries the hash it leaves, so the record's audit row
can list them (``memory_hashes``) for ``aosk audit verify``.

Recall uses the HNSW cosine index with pgvector's iterative index scans, so a query
filtered by tenant (and agent) still returns k rows; when the filter leaves fewer than k
candidates within the scan limit, an exact scan of the filtered rows answers instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg import sql

from aosk.errors import RecallError
from aosk.kernel import Verdict
from aosk.projectors.db import embedding_dimension, pack_vector, qualified
from aosk.projectors.rows import MEMORY_COLUMNS, memory_hash, storage_key, ts

__all__ = [
    "MemoryOp",
    "memory_ops",
    "op_hashes",
    "MemoryChanges",
    "RecallError",
    "Recalled",
    "recall",
    "explain_recall",
    "DEFAULT_EF_SEARCH",
]

# An op: ("full", key, row list) | ("embed", key, vector, at, offset)
#       | ("forget", key, at, offset, tombstone hash)
MemoryOp = tuple[Any, ...]

_I: Final = {name: i for i, name in enumerate(MEMORY_COLUMNS)}
_HASH: Final = _I["content_hash"]


def memory_ops(v: Verdict, event: Any, tenant_id: str | None, *, at: datetime | None = None) -> tuple[MemoryOp, ...]:
    """The memory changes of one accepted record (``v`` its verdict). ``at``:
    ``ts(v.timestamp)`` if the caller has it already."""
    if tenant_id is None:  # only spawned agents accept memory events or page out
        return ()
    agent = storage_key(v.agent_id)
    if at is None:
        at = ts(v.timestamp)
    ops: list[MemoryOp] = []
    name = v.event_type
    if name == "MemoryStored":
        emb = None if event.embedding is None else pack_vector(event.embedding)
        row = [
            agent, event.memory_id, tenant_id, "stored", None, event.text, dict(event.metadata), event.importance,
            emb, v.partition, v.offset, v.seq, at, at if emb is not None else None,
            v.offset if emb is not None else None, False, None, None, None,
        ]
        row[_HASH] = memory_hash(row)
        ops.append(("full", (agent, event.memory_id), row))
    elif name == "MemoryEmbedded":
        ops.append(("embed", (agent, event.memory_id), pack_vector(event.embedding), at, v.offset))
    elif name == "MemoryForgotten":
        tomb = memory_hash({"forgotten": True, "agent_id": agent, "memory_id": event.memory_id, "tenant_id": tenant_id,
                            "journal_partition": v.partition, "forgotten_offset": v.offset})
        ops.append(("forget", (agent, event.memory_id), at, v.offset, tomb))
    for e in v.paged_out:
        row = [
            agent, e.entry_id, tenant_id, "paged_out", e.role, e.content, {"tokens": e.tokens}, e.importance,
            None, v.partition, v.offset, v.seq, at, None, None, False, None, None, None,
        ]
        row[_HASH] = memory_hash(row)
        ops.append(("full", (agent, e.entry_id), row))
    return tuple(ops)


def op_hashes(ops: tuple[MemoryOp, ...]) -> list[bytes] | None:
    """The content hashes the ops leave on their rows (the audit row's ``memory_hashes``)."""
    out = [op[2][_HASH] if op[0] == "full" else op[4] for op in ops if op[0] != "embed"]
    return out or None


class MemoryChanges:
    """The ops of a run of records merged into full rows (inserted or replacing) and
    patches of rows written by earlier batches, in journal order semantics."""

    __slots__ = ("full", "patches")

    def __init__(self) -> None:
        self.full: dict[tuple[str, str], list[Any]] = {}
        self.patches: dict[tuple[str, str], list[Any]] = {}
        """key -> [embedding or None, embedded_at, embedded_offset, forgotten_at, forgotten_offset,
        tombstone hash]"""

    def add(self, ops: Iterable[MemoryOp]) -> None:
        for op in ops:
            kind, key = op[0], op[1]
            if kind == "full":
                self.full[key] = list(op[2])
                self.patches.pop(key, None)
                continue
            row = self.full.get(key)
            if row is not None:
                if kind == "embed":
                    if not row[_I["forgotten"]]:
                        row[_I["embedding"]] = op[2]
                        row[_I["embedded_at"]] = op[3]
                        row[_I["embedded_offset"]] = op[4]
                else:
                    _forget_row(row, op[2], op[3], op[4])
                continue
            patch = self.patches.setdefault(key, [None, None, None, None, None, None])
            if kind == "embed":
                if patch[3] is None:  # an embedding after forgetting does nothing
                    patch[0], patch[1], patch[2] = op[2], op[3], op[4]
            else:
                patch[0] = patch[1] = patch[2] = None
                patch[3], patch[4], patch[5] = op[2], op[3], op[4]

    def __bool__(self) -> bool:
        return bool(self.full or self.patches)


def _forget_row(row: list[Any], at: Any, offset: int, tombstone: bytes) -> None:
    row[_I["text"]] = None
    row[_I["metadata"]] = {}
    row[_I["embedding"]] = None
    row[_I["embedded_at"]] = None
    row[_I["embedded_offset"]] = None
    row[_I["forgotten"]] = True
    row[_I["forgotten_at"]] = at
    row[_I["forgotten_offset"]] = offset
    row[_HASH] = tombstone


def patch_statements(schema: str) -> tuple[sql.Composed, sql.Composed]:
    """(embed, forget) UPDATE statements for rows written by earlier batches."""
    t = qualified(schema, "memories")
    embed = sql.SQL(
        "update {} set embedding = %b, embedded_at = %s, embedded_offset = %s "
        "where agent_id = %s and memory_id = %s and not forgotten"
    ).format(t)
    forget = sql.SQL(
        "update {} set text = null, metadata = '{{}}', embedding = null, embedded_at = null, embedded_offset = null, "
        "forgotten = true, forgotten_at = %s, "
        "forgotten_offset = %s, content_hash = %s where agent_id = %s and memory_id = %s"
    ).format(t)
    return embed, forget


# --- recall --------------------------------------------------------------------------------

DEFAULT_EF_SEARCH: Final = 100
"""``hnsw.ef_search`` for recall (pgvector's default is 40): the candidate list size,
raised for k above it. With iterative scans the search goes on past it when filters
discard candidates."""
MAX_SCAN_TUPLES: Final = 50_000
"""``hnsw.max_scan_tuples``: how far an iterative scan may go before giving up."""


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


def _queries(schema: str, lineage_size: int) -> tuple[sql.Composed, sql.Composed]:
    """The index query and the exact fallback. ``lineage_size`` agents (0: the whole
    tenant), each bounded by a journal offset. Plain OR'ed conditions rather than a join
    with the lineage, so the planner still orders by the HNSW index and filters."""
    t = qualified(schema, "memories")
    where: sql.Composable = sql.SQL("tenant_id = %(tenant)s and embedding is not null")
    if lineage_size:
        # The agent's own memories up to a bound, and a fork's ancestors' up to the fork point.
        each = [sql.SQL(f"(agent_id = %(a{i})s and journal_offset <= %(b{i})s)") for i in range(lineage_size)]
        where += sql.SQL(" and (") + sql.SQL(" or ").join(each) + sql.SQL(")")
    ann = sql.SQL(
        "with nearest as materialized (select {cols}, embedding <=> %(q)s::vector as distance from {t} where {w}"
        " order by embedding <=> %(q)s::vector limit %(k)s)"
        " select * from nearest order by distance, agent_id, memory_id"
    ).format(cols=sql.SQL(_SELECT), t=t, w=where)
    exact = sql.SQL(
        "with scoped as materialized (select {cols}, embedding from {t} where {w})"
        " select {cols}, embedding <=> %(q)s::vector as distance from scoped"
        " order by distance, agent_id, memory_id limit %(k)s"
    ).format(cols=sql.SQL(_SELECT), t=t, w=where)
    return ann, exact


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
    row = conn.execute(
        sql.SQL("select tenant_id from {} where agent_id = %s").format(qualified(schema, "agent_state")),
        (storage_key(agent_id),),
    ).fetchone()
    owner = None if row is None else row[0]
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
        row = conn.execute(
            sql.SQL("select state from {} where agent_id = %s").format(qualified(schema, "agent_state")), (key,)
        ).fetchone()
        ident = decode_state(bytes(row[0])).identity if row is not None else None
        if ident is None or ident.forked_from is None or ident.fork_seq is None:
            break
        source = storage_key(ident.forked_from)
        at = conn.execute(
            sql.SQL("select journal_offset from {} where agent_id = %s and seq = %s").format(
                qualified(schema, "audit_log")), (source, ident.fork_seq),
        ).fetchone()
        if at is None or source in agents:
            break
        agents.append(source)
        bounds.append(int(at[0]))
        key = source
    return agents, bounds


def _settings(conn: psycopg.Connection[Any], k: int, ef_search: int | None) -> None:
    ef = max(ef_search or DEFAULT_EF_SEARCH, k)
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
        _settings(conn, k, ef_search)
        agents, bounds = lineage(conn, schema, agent, as_of_offset) if agent is not None else ([], [])
        ann, exact = _queries(schema, len(agents))
        params = {"q": _vector_text(q), "tenant": tenant, "k": k, **_lineage_params(agents, bounds)}
        rows = conn.execute(ann, params).fetchall()
        if len(rows) < k:  # the filter left fewer candidates than the scan could reach
            rows = conn.execute(exact, params).fetchall()
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
    """The plan PostgreSQL picks for ``recall``'s index query (to check the HNSW index
    is used)."""
    q = check_query(query, embedding_dimension(conn, schema))
    with conn.transaction():
        _settings(conn, k, ef_search)
        agents, bounds = lineage(conn, schema, storage_key(agent_id)) if agent_id is not None else ([], [])
        ann, _ = _queries(schema, len(agents))
        params = {"q": _vector_text(q), "tenant": tenant_id, "k": k, **_lineage_params(agents, bounds)}
        prefix = sql.SQL("explain (analyze, costs off) ") if analyze else sql.SQL("explain ")
        plan = conn.execute(prefix + ann, params).fetchall()
    return "\n".join(str(r[0]) for r in plan)
