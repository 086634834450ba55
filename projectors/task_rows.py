"""Rows of the ``tasks`` projection, from the fold's state before and after a record (pure).

The fold keeps each agent's queued and running tasks with their counters
(``aosk.kernel.state.Task``) and how recent ones ended; a task that ends leaves the
queue. So an accepted record that changed ``state.tasks`` says everything the table
needs: a task in the queue after it but not before was submitted by it (a full row); a
task whose fold entry changed (started, a turn, a tool call, tokens) is a patch of its
row; a task that left the queue ended, as ``tasks.ended`` records, with its counters as
they were before the record and its output, reason and message from the event that
ended it (``TaskCompleted``, ``TaskFailed``, ``TaskCancelled``, or the agent's own end:
killed or terminated tasks are cancelled, a failed agent's tasks failed).

A patch holds None in the columns the record does not set (the submission's time,
position and metadata are not in the state); ``TaskChanges`` merges a batch's rows per
task so that applying its result once equals applying every row in order, and the writer
upserts full rows and patches existing ones with ``coalesce``. Times are the records'
LogAppendTime, so a rebuild writes identical rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final, NamedTuple

from aosk.kernel.state import AgentState, Task, Tasks
from aosk.projectors.rows import storable, storage_key

__all__ = ["TASK_COLUMNS", "TASK_TYPES", "TaskRow", "TaskChanges", "task_rows", "task_status", "ended_reason"]

TASK_COLUMNS: Final = (
    "agent_id", "task_id", "tenant_id", "status", "input", "metadata", "output", "reason", "message",
    "submitted_at", "started_at", "ended_at", "turns", "model_calls", "tool_calls", "steps", "tokens",
    "journal_partition", "journal_offset", "submitted_seq", "updated_at",
)
TASK_TYPES: Final = (
    "text", "text", "text", "text", "text", "jsonb", "text", "text", "text",
    "timestamptz", "timestamptz", "timestamptz", "int4", "int4", "int4", "int4", "int8",
    "int4", "int8", "int8", "timestamptz",
)
KEY_COLUMNS: Final = ("agent_id", "task_id")
_I: Final = {name: i for i, name in enumerate(TASK_COLUMNS)}
METADATA: Final = _I["metadata"]


class TaskRow(NamedTuple):
    full: bool
    """True: the whole row (a submission); False: a patch whose None columns keep their value."""
    row: tuple[Any, ...]

    @property
    def key(self) -> tuple[str, str]:
        return self.row[0], self.row[1]


def task_status(task: Task) -> str:
    """``running`` once the fold started the task (the queue's head), else ``pending``."""
    return "running" if task.started else "pending"


def ended_reason(event: Any, after: AgentState) -> tuple[str | None, str | None]:
    """(reason, message) of a task that ended without succeeding, from the event that ended it."""
    name = type(event).__name__
    if name == "TaskFailed":
        return event.reason, event.message
    if name == "TaskCancelled":
        return "cancelled", event.reason
    if name == "TaskCompleted":
        return None, None
    # the agent reached a final status (AgentKilled, AgentTerminated, AgentFailed): the
    # same label the fold gives the calls it abandons then
    return f"agent_{after.status.lower()}", f"{name} ended the agent"


def _counters(t: Task) -> tuple[int, int, int, int, int]:
    return t.turn, t.model_calls, t.tool_calls, t.model_calls + t.tool_calls, t.tokens


def task_rows(before: Tasks, after: AgentState, event: Any, *, partition: int, offset: int,
              at: datetime) -> tuple[TaskRow, ...]:
    """The task rows an accepted record writes, given the agent's ``before`` tasks and
    its state ``after`` the record; ``at`` is the record's LogAppendTime."""
    now = after.tasks
    if now is before:
        return ()
    agent = storage_key(after.agent_id)
    tenant = after.tenant_id
    prev = {t.task_id: t for t in before.queue}
    out: list[TaskRow] = []
    for t in now.queue:
        old = prev.pop(t.task_id, None)
        if old is None:  # submitted by this record
            meta = dict(event.metadata) if type(event).__name__ == "TaskSubmitted" and \
                event.task_id == t.task_id else {}
            out.append(TaskRow(True, (
                agent, t.task_id, tenant, task_status(t), storable(t.input), meta, None, None, None,
                at, at if t.started else None, None, *_counters(t),
                partition, offset, t.submitted_seq, at)))
        elif old is not t and old != t:
            out.append(TaskRow(False, (
                agent, t.task_id, tenant, task_status(t), None, None, None, None, None,
                None, at if t.started and not old.started else None, None, *_counters(t),
                None, None, None, at)))
    for t in prev.values():  # left the queue: ended by this record
        how = now.ended_as(t.task_id) or "cancelled"
        output = storable(t.output) if how == "succeeded" else None
        reason, message = (None, None) if how == "succeeded" else ended_reason(event, after)
        out.append(TaskRow(False, (
            agent, t.task_id, tenant, how, None, None, output, storable(reason), storable(message),
            None, None, at, *_counters(t), None, None, None, at)))
    return tuple(out)


class TaskChanges:
    """A batch's task rows merged per (agent, task): a full row replaces whatever came
    before it; a patch overwrites the columns it sets."""

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], TaskRow] = {}

    def add(self, changes: Iterable[TaskRow]) -> None:
        rows = self.rows
        for c in changes:
            old = rows.get(c.key)
            if old is None or c.full:
                rows[c.key] = c
            else:
                rows[c.key] = TaskRow(old.full, tuple(o if n is None else n for o, n in zip(old.row, c.row,
                                                                                             strict=True)))

    def full(self) -> list[tuple[Any, ...]]:
        return [c.row for c in self.rows.values() if c.full]

    def patches(self) -> list[tuple[Any, ...]]:
        return [c.row for c in self.rows.values() if not c.full]

    def __bool__(self) -> bool:
        return bool(self.rows)
