"""Tasks as projected (the ``tasks`` table, ``aosk.projectors.task_rows``): the reads behind
``/api/v1/tasks``, ``ProjectionReader.task`` / ``tasks`` and ``aosk task``.

Task ids are unique per agent (the fold's rule), not across agents: a lookup by id alone
takes a tenant (the API's is the key's) and, should two of its agents hold the same id,
answers the one submitted last.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg import sql

from aosk.projectors.db import qualified
from aosk.projectors.rows import storage_key

__all__ = ["TASK_STATUSES", "ENDED_STATUSES", "TaskView", "task", "tasks", "encode_cursor", "decode_cursor",
           "submission_verdict"]

TASK_STATUSES: Final = ("pending", "running", "succeeded", "failed", "cancelled")
ENDED_STATUSES: Final = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class TaskView:
    """A task as projected. Times are broker times (None until they happen); ``reason``
    and ``message`` say why a task did not succeed."""

    task_id: str
    agent_id: str
    tenant_id: str | None
    status: str
    input: str | None
    metadata: dict[str, str] | None
    output: str | None
    reason: str | None
    message: str | None
    submitted_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    turns: int | None
    model_calls: int | None
    tool_calls: int | None
    steps: int | None
    tokens: int | None
    journal_partition: int | None
    journal_offset: int | None
    updated_at: datetime

    @property
    def ended(self) -> bool:
        return self.status in ENDED_STATUSES

    def to_json(self) -> dict[str, Any]:
        """The task as JSON-ready values (times in ISO 8601, UTC)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.isoformat().replace("+00:00", "Z") if isinstance(v, datetime) else v
        return out


_COLUMNS: Final = tuple(f.name for f in fields(TaskView))


def _select(schema: str) -> sql.Composed:
    return sql.SQL("select {} from {}").format(sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)),
                                               qualified(schema, "tasks"))


def _view(row: tuple[Any, ...]) -> TaskView:
    return TaskView(*row)


def task(conn: psycopg.Connection[Any], schema: str, task_id: str, *, tenant_id: str | None = None,
         agent_id: str | None = None) -> TaskView | None:
    """The task ``task_id`` (of ``tenant_id``, of ``agent_id`` when given); None if not
    projected. Raises ``UndefinedTable`` while the schema has no ``tasks`` table."""
    q = sql.SQL("{} where task_id = %s and (%s::text is null or tenant_id = %s) and (%s::text is null or "
                "agent_id = %s) order by submitted_at desc nulls last, agent_id limit 1").format(_select(schema))
    key = None if agent_id is None else storage_key(agent_id)
    row = conn.execute(q, (task_id, tenant_id, tenant_id, key, key)).fetchone()
    return None if row is None else _view(row)


def tasks(conn: psycopg.Connection[Any], schema: str, *, tenant_id: str | None = None, agent_id: str | None = None,
          status: str | None = None, after: tuple[str, str] | None = None, limit: int = 50) -> list[TaskView]:
    """Up to ``limit`` tasks ordered by (task id, agent id), after ``after`` (the last
    page's last pair: ``decode_cursor``), filtered by tenant, agent and status."""
    key = None if agent_id is None else storage_key(agent_id)
    after_task, after_agent = after if after is not None else ("", "")
    q = sql.SQL("{} where (%s::text is null or tenant_id = %s) and (%s::text is null or agent_id = %s) "
                "and (%s::text is null or status = %s) and (task_id, agent_id) > (%s, %s) "
                "order by task_id, agent_id limit %s").format(_select(schema))
    rows = conn.execute(q, (tenant_id, tenant_id, key, key, status, status, after_task, after_agent,
                            limit)).fetchall()
    return [_view(r) for r in rows]


def submission_verdict(conn: psycopg.Connection[Any], schema: str, partition: int,
                       offset: int) -> tuple[str, str, str] | None:
    """(kind, reason, message) of the fold's verdict on the journal record at
    (``partition``, ``offset``), e.g. a ``TaskSubmitted``; None if not projected."""
    row = conn.execute(sql.SQL("select kind, reason, message from {} where journal_partition = %s and "
                               "journal_offset = %s").format(qualified(schema, "audit_log")),
                       (partition, offset)).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def encode_cursor(view: TaskView) -> str:
    """An opaque page cursor after ``view`` (URL-safe)."""
    return base64.urlsafe_b64encode(json.dumps([view.task_id, view.agent_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """``encode_cursor``'s pair; ``ValueError`` for anything else."""
    try:
        pair = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError) as e:
        raise ValueError("not a cursor this API gave") from e
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
        raise ValueError("not a cursor this API gave")
    return pair[0], pair[1]
