"""Agents as projected (``agent_state``), and which tenant owns which agent (the API's
``agents`` table): the reads behind ``GET /api/v1/agents``, ``ProjectionReader.agent_state``
and every ownership check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg import sql

from aosk.projectors.db import qualified
from aosk.projectors.rows import storage_key

if TYPE_CHECKING:
    from aosk.kernel import AgentState

__all__ = ["AgentView", "AgentSummary", "agent_view", "agent_summary", "owned_agents", "is_owned", "stored_state",
           "first_offset", "tenant_of"]


@dataclass(frozen=True)
class AgentView:
    """An agent as projected: the queryable columns and the full fold state."""

    agent_id: str
    tenant_id: str | None
    status: str
    seq: int
    partition: int
    last_offset: int
    tokens_used: int
    tokens_left: int
    tool_calls_used: int
    tool_calls_left: int
    steps_used: int
    steps_left: int
    state_hash: bytes
    audit_head: bytes
    state: AgentState


@dataclass(frozen=True)
class AgentSummary:
    """The columns the API shows of an agent (no fold state)."""

    status: str
    seq: int
    partition: int
    last_offset: int
    tokens_used: int
    tokens_left: int
    tool_calls_left: int
    steps_left: int
    capabilities: list[str]


_SUMMARY: Final = ("status", "seq", "journal_partition", "last_offset", "tokens_used", "tokens_left",
                   "tool_calls_left", "steps_left", "capabilities")


def _summary(row: tuple[Any, ...]) -> AgentSummary:
    status, seq, partition, last_offset, used, left, calls_left, steps_left, caps = row
    return AgentSummary(status=status, seq=seq, partition=partition, last_offset=last_offset, tokens_used=used,
                        tokens_left=left, tool_calls_left=calls_left, steps_left=steps_left, capabilities=list(caps))


def agent_view(conn: psycopg.Connection[Any], schema: str, agent_id: str) -> AgentView | None:
    """The projected state of ``agent_id`` (None if the projection has never seen it)."""
    from aosk.kernel import decode_state

    row = conn.execute(
        sql.SQL("select tenant_id, status, seq, journal_partition, last_offset, tokens_used, tokens_left,"
                " tool_calls_used, tool_calls_left, steps_used, steps_left, state_hash, audit_head, state"
                " from {} where agent_id = %s").format(qualified(schema, "agent_state")),
        (storage_key(agent_id),),
    ).fetchone()
    if row is None:
        return None
    *cols, state_hash, head, state = row
    # the row's columns in AgentView's field order (mypy cannot count a starred row)
    return AgentView(agent_id, *cols, bytes(state_hash), bytes(head), decode_state(bytes(state)))  # type: ignore[call-arg]


def agent_summary(conn: psycopg.Connection[Any], schema: str, agent_id: str) -> AgentSummary | None:
    """``agent_id``'s summary columns; None if not projected (or no projection schema yet)."""
    q = sql.SQL("select {} from {} where agent_id = %s").format(
        sql.SQL(", ").join(map(sql.Identifier, _SUMMARY)), qualified(schema, "agent_state"))
    try:
        row = conn.execute(q, (storage_key(agent_id),)).fetchone()
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return None
    return None if row is None else _summary(row)


def owned_agents(conn: psycopg.Connection[Any], schema: str, owners_schema: str, tenant_id: str, *,
                 after: str = "", status: str | None = None, limit: int = 50
                 ) -> list[tuple[str, AgentSummary | None]]:
    """Up to ``limit`` agents ``tenant_id`` owns (``owners_schema.agents``) with ids after
    ``after``, in id order, each with its summary (None: not projected yet); ``status``
    keeps only agents projected with that status. Raises ``UndefinedTable`` while
    ``schema`` does not exist."""
    q = sql.SQL(
        "select o.agent_id, {} from {} o left join {} s on s.agent_id = o.agent_id "
        "where o.tenant_id = %s and o.agent_id > %s and (%s::text is null or s.status = %s) "
        "order by o.agent_id limit %s").format(
        sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in _SUMMARY),
        sql.Identifier(owners_schema, "agents"), qualified(schema, "agent_state"))
    rows = conn.execute(q, (tenant_id, after, status, status, limit)).fetchall()
    return [(r[0], None if r[1] is None else _summary(r[1:])) for r in rows]


def is_owned(conn: psycopg.Connection[Any], owners_schema: str, agent_id: str, tenant_id: str) -> bool:
    """Whether the API recorded ``tenant_id`` as ``agent_id``'s owner."""
    q = sql.SQL("select 1 from {} where agent_id = %s and tenant_id = %s").format(
        sql.Identifier(owners_schema, "agents"))
    return conn.execute(q, (agent_id, tenant_id)).fetchone() is not None


def stored_state(conn: psycopg.Connection[Any], schema: str, key: str) -> bytes | None:
    """The stored fold state of the agent with storage key ``key`` (None: not projected)."""
    row = conn.execute(sql.SQL("select state from {} where agent_id = %s").format(qualified(schema, "agent_state")),
                       (key,)).fetchone()
    return None if row is None else bytes(row[0])


def first_offset(conn: psycopg.Connection[Any], schema: str, agent_id: str) -> int | None:
    """The journal offset of ``agent_id``'s first record (None: no audit row of it)."""
    row = conn.execute(
        sql.SQL("select journal_offset from {} where agent_id = %s order by seq limit 1").format(
            qualified(schema, "audit_log")), (storage_key(agent_id),)).fetchone()
    return None if row is None else int(row[0])


def tenant_of(conn: psycopg.Connection[Any], schema: str, agent_id: str) -> str | None:
    """The tenant ``agent_id`` is projected under (None: not projected)."""
    row = conn.execute(sql.SQL("select tenant_id from {} where agent_id = %s").format(
        qualified(schema, "agent_state")), (storage_key(agent_id),)).fetchone()
    return None if row is None else row[0]
