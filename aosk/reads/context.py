"""An agent's context window as projected: the entries in it (in append order), its token
use against ``context_window_tokens``, and the entries paged out of it (the memories
``source = 'paged_out'`` the projectors made of them; ``aosk.kernel.paging``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from aosk.projectors.db import qualified
from aosk.projectors.rows import storage_key
from aosk.reads.agents import stored_state

__all__ = ["WindowEntry", "PagedOut", "ContextWindow", "context_window"]


@dataclass(frozen=True)
class WindowEntry:
    entry_id: str
    role: str
    content: str
    tokens: int
    importance: float
    seq: int
    """The agent seq of the ``ContextAppended`` that added it."""
    pinned: bool


@dataclass(frozen=True)
class PagedOut:
    """An entry evicted from the window; it lives on as the memory with the same id."""

    entry_id: str
    role: str | None
    summary: str
    """The start of its content (empty once the memory is forgotten)."""
    tokens: int | None
    importance: float | None
    seq: int
    """The agent seq of the record whose verdict paged it out."""
    journal_offset: int
    forgotten: bool


@dataclass(frozen=True)
class ContextWindow:
    agent_id: str
    seq: int
    entries: list[WindowEntry]
    tokens_used: int
    tokens_limit: int
    paged_out: list[PagedOut]


SUMMARY_CHARS = 200
"""How much of a paged-out entry's content its summary keeps."""


def context_window(conn: psycopg.Connection[Any], schema: str, agent_id: str, *,
                   paged_out_limit: int = 100) -> ContextWindow | None:
    """``agent_id``'s window and its last ``paged_out_limit`` paged-out entries, newest
    first (None: the agent is not projected)."""
    from aosk.kernel import decode_state
    from aosk.kernel.paging import is_pinned
    from aosk.kernel.params import params_for

    blob = stored_state(conn, schema, storage_key(agent_id))
    if blob is None:
        return None
    state = decode_state(blob)
    params = params_for(state.fold_version)
    entries = [WindowEntry(e.entry_id, e.role, e.content, e.tokens, e.importance, e.seq, is_pinned(e, params))
               for e in state.window.entries]
    rows = conn.execute(
        sql.SQL("select memory_id, role, left(coalesce(text, ''), %s), metadata->>'tokens', importance, seq, "
                "journal_offset, forgotten from {} where agent_id = %s and source = 'paged_out' "
                "order by journal_offset desc, memory_id limit %s").format(qualified(schema, "memories")),
        (SUMMARY_CHARS, storage_key(agent_id), paged_out_limit)).fetchall()
    paged = [PagedOut(r[0], r[1], r[2], None if r[3] is None else int(r[3]), r[4], int(r[5]), int(r[6]), bool(r[7]))
             for r in rows]
    limit = state.budgets.context_window_tokens if state.budgets is not None else 0
    return ContextWindow(agent_id, state.seq, entries, state.window.tokens, limit, paged)
