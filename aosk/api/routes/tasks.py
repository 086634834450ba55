"""``/api/v1/tasks``: give an agent a task (``TaskSubmitted``), read tasks as projected, cancel one.

Writes go through ``POST /api/v1/agents/{id}/events``'s code path (ownership, stamping,
``?wait=verdict``, idempotency keys). Task ids are unique per agent in the fold; routes
that take a task id alone find its agent in the ``tasks`` projection, within the key's
tenant (another tenant's task is the same 404 as a missing one). The ids the API makes
are UUIDs, unique everywhere; a client-given id already held by another agent of the
tenant is refused (409 ``task-id-in-use``). That check reads the projection, so two
submissions racing with one id to two agents can both pass it: the fold judges each
agent alone, and a read by id then answers the one submitted last.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from aosk.api.auth import require
from aosk.api.consistency import READ_RESPONSES, WRITE_RESPONSES, consistent_read
from aosk.api.idempotency import Idempotency, idempotency
from aosk.api.keys import ApiKey
from aosk.api.problems import Problem, projections_unavailable
from aosk.api.routes.agents import EventIn, VerdictOut, check_client_event, send_client_event
from aosk.reads.tasks import TASK_STATUSES, TaskView

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])

TASK_ID_PATTERN: Final = r"^[^\x00#]+$"
TaskId = Annotated[str, Path(min_length=1, max_length=128, pattern=TASK_ID_PATTERN,
                             description="the task's id, as POST /api/v1/tasks answered it")]
_CANCEL_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    **WRITE_RESPONSES,
    504: {"description": "the consistency token's position was not projected in time",
          "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}},
}


class TaskCreate(BaseModel):
    agent_id: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00]+$")
    task: str = Field(min_length=1, max_length=1_000_000, description="what the agent is asked to do")
    task_id: str | None = Field(None, min_length=1, max_length=128, pattern=TASK_ID_PATTERN,
                                description="default: a new UUID; unique among the tenant's tasks")
    metadata: dict[Annotated[str, Field(max_length=100)], Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=dict, max_length=50)


class JournalPosition(BaseModel):
    partition: int
    offset: int


class TaskAccepted(BaseModel):
    task_id: str
    agent_id: str
    status: str = "pending"
    """What the API knows when it answers: written; GET /api/v1/tasks/{id} says how it goes."""
    event_id: str
    journal: JournalPosition
    verdict: VerdictOut | None = None


class TaskCancelIn(BaseModel):
    reason: str = Field("", max_length=1000)


class CancelAccepted(BaseModel):
    task_id: str
    agent_id: str
    event_id: str
    journal: JournalPosition
    verdict: VerdictOut | None = None


class TaskFailure(BaseModel):
    reason: str | None = None
    message: str | None = None


class TaskOut(BaseModel):
    task_id: str
    agent_id: str
    tenant_id: str | None
    status: str
    """pending | running | succeeded | failed | cancelled"""
    input: str | None
    metadata: dict[str, str] | None
    output: str | None
    """The final answer, once succeeded."""
    failure: TaskFailure | None
    """Why it did not succeed (failed or cancelled)."""
    turns: int | None
    steps: int | None
    model_calls: int | None
    tool_calls: int | None
    tokens: int | None
    """Tokens the model server reported for the task's calls (prompt + completion)."""
    submitted_at: str | None
    started_at: str | None
    ended_at: str | None
    updated_at: str
    journal: JournalPosition | None
    """Where the submission is in the journal."""


class TaskPage(BaseModel):
    tasks: list[TaskOut]
    has_more: bool
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next page (tasks are ordered by id, then agent)."""


def _out(v: TaskView) -> TaskOut:
    j = v.to_json()
    failure = TaskFailure(reason=v.reason, message=v.message) if v.status in ("failed", "cancelled") else None
    journal = None if v.journal_partition is None or v.journal_offset is None else JournalPosition(
        partition=v.journal_partition, offset=v.journal_offset)
    return TaskOut(task_id=v.task_id, agent_id=v.agent_id, tenant_id=v.tenant_id, status=v.status, input=v.input,
                   metadata=v.metadata, output=v.output, failure=failure, turns=v.turns, steps=v.steps,
                   model_calls=v.model_calls, tool_calls=v.tool_calls, tokens=v.tokens,
                   submitted_at=j["submitted_at"], started_at=j["started_at"], ended_at=j["ended_at"],
                   updated_at=j["updated_at"], journal=journal)


def task_not_found(task_id: str) -> Problem:
    """The one answer for a missing task and another tenant's."""
    return Problem(404, "task-not-found", "Task not found", f"no task {task_id} for this key's tenant")


def _lookup(request: Request, task_id: str, tenant_id: str) -> TaskView | None:
    import psycopg

    from aosk.projectors.db import DEFAULT_SCHEMA
    from aosk.reads.tasks import task

    try:
        with request.app.state.pool.connection() as conn:
            return task(conn, DEFAULT_SCHEMA, task_id, tenant_id=tenant_id)
    except psycopg.errors.UndefinedTable as e:
        raise projections_unavailable(DEFAULT_SCHEMA) from e


def _held_elsewhere(request: Request, task_id: str, tenant_id: str, agent_id: str) -> str | None:
    """Another agent of the tenant holding ``task_id`` in the projection (None: none)."""
    import psycopg
    from psycopg import sql

    from aosk.projectors.db import DEFAULT_SCHEMA, qualified
    from aosk.projectors.rows import storage_key

    try:
        with request.app.state.pool.connection() as conn:
            row = conn.execute(sql.SQL("select agent_id from {} where tenant_id = %s and task_id = %s and "
                                       "agent_id <> %s limit 1").format(qualified(DEFAULT_SCHEMA, "tasks")),
                               (tenant_id, task_id, storage_key(agent_id))).fetchone()
    except psycopg.errors.UndefinedTable:
        return None  # no projection yet: no task is known
    return None if row is None else str(row[0])


async def submit(request: Request, caller: ApiKey, *, agent_id: str, text: str, task_id: str, event_id: str,
                 metadata: dict[str, str], wait: str | None) -> tuple[TaskAccepted, int, dict[str, str]]:
    """Produce ``TaskSubmitted`` through the events route's code path (checked by the caller)."""
    body = EventIn(type="TaskSubmitted", payload={"task_id": task_id, "input": text, "metadata": metadata})
    out, status, headers = await send_client_event(agent_id, body, request, caller, wait, event_id, "")
    return TaskAccepted(task_id=task_id, agent_id=agent_id, event_id=out.event_id,
                        journal=JournalPosition(partition=out.partition, offset=out.offset),
                        verdict=out.verdict), status, headers


@router.post("", status_code=202, response_model=TaskAccepted, responses=WRITE_RESPONSES,
             summary="Give an agent a task (TaskSubmitted; ?wait=verdict as for events)")
async def submit_task(body: TaskCreate, request: Request, caller: Annotated[ApiKey, Depends(require("write"))],
                      idem: Annotated[Idempotency, Depends(idempotency)], wait: str | None = None) -> Any:
    from fastapi.responses import JSONResponse

    probe = EventIn(type="TaskSubmitted", payload={"task_id": body.task_id or "-", "input": body.task,
                                                   "metadata": body.metadata})
    await check_client_event(body.agent_id, probe, request, caller, wait)
    if body.task_id is not None:
        try:
            body.task_id.encode("utf-8")
        except UnicodeEncodeError as e:
            raise Problem(422, "invalid-request", "Invalid request", "task_id: not valid Unicode text",
                          errors=[{"field": "body.task_id", "problem": "not valid Unicode text"}]) from e
        other = await run_in_threadpool(_held_elsewhere, request, body.task_id, caller.tenant_id, body.agent_id)
        if other is not None:
            raise Problem(409, "task-id-in-use", "Task id in use",
                          f"another agent of this tenant holds a task {body.task_id}; use a new task id "
                          "(or leave task_id out: the API makes a unique one)")

    async def produce(event_id: str, new_id: str) -> JSONResponse:
        out, status, headers = await submit(request, caller, agent_id=body.agent_id, text=body.task,
                                            task_id=body.task_id or new_id, event_id=event_id,
                                            metadata=body.metadata, wait=wait)
        return JSONResponse(out.model_dump(), status_code=status, headers=headers)

    return await idem.run(produce)


@router.get("", response_model=TaskPage, summary="The caller's tenant's tasks, a page at a time",
            dependencies=[Depends(consistent_read)], responses=READ_RESPONSES)
def list_tasks(request: Request, caller: Annotated[ApiKey, Depends(require("read"))],
               agent_id: Annotated[str | None, Query(min_length=1, max_length=256, pattern=r"^[^\x00]+$")] = None,
               status: Annotated[str | None, Query(pattern="^(" + "|".join(TASK_STATUSES) + ")$")] = None,
               cursor: Annotated[str | None, Query(max_length=1024, pattern=r"^[A-Za-z0-9_-]*$")] = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 50) -> TaskPage:
    """The tenant's tasks (of one agent with ``agent_id``; another tenant's agent lists
    nothing, like a missing one), ordered by task id; page with ``cursor`` until
    ``has_more`` is false."""
    import psycopg

    from aosk.projectors.db import DEFAULT_SCHEMA
    from aosk.reads.tasks import decode_cursor, encode_cursor, tasks

    after = None
    if cursor:
        try:
            after = decode_cursor(cursor)
        except ValueError as e:
            raise Problem(422, "invalid-request", "Invalid request", f"cursor: {e}") from e
    try:
        with request.app.state.pool.connection() as conn:
            rows = tasks(conn, DEFAULT_SCHEMA, tenant_id=caller.tenant_id, agent_id=agent_id, status=status,
                         after=after, limit=limit + 1)
    except psycopg.errors.UndefinedTable as e:
        raise projections_unavailable(DEFAULT_SCHEMA) from e
    more = len(rows) > limit
    page = rows[:limit]
    return TaskPage(tasks=[_out(v) for v in page], has_more=more, next_cursor=encode_cursor(page[-1]) if more else None)


@router.get("/{task_id}", response_model=TaskOut, summary="One task of the caller's tenant, as projected",
            dependencies=[Depends(consistent_read)], responses=READ_RESPONSES)
def get_task(task_id: TaskId, request: Request, caller: Annotated[ApiKey, Depends(require("read"))]) -> TaskOut:
    found = _lookup(request, task_id, caller.tenant_id)
    if found is None:
        raise task_not_found(task_id)
    return _out(found)


@router.post("/{task_id}/cancel", status_code=202, response_model=CancelAccepted, responses=_CANCEL_RESPONSES,
             dependencies=[Depends(consistent_read)],
             summary="Cancel a queued or running task (TaskCancelled; ?wait=verdict as for events)")
async def cancel_task(task_id: TaskId, request: Request, caller: Annotated[ApiKey, Depends(require("write"))],
                      idem: Annotated[Idempotency, Depends(idempotency)],
                      body: Annotated[TaskCancelIn | None, Body()] = None, wait: str | None = None) -> Any:
    """The task is found in the projection (send the submission's ``AOSK-Consistency-Token``
    to cancel a task just submitted); one that has ended is 409 ``task-ended``."""
    from fastapi.responses import JSONResponse

    found = await run_in_threadpool(_lookup, request, task_id, caller.tenant_id)
    if found is None:
        raise task_not_found(task_id)
    reason = body.reason if body is not None else ""
    event = EventIn(type="TaskCancelled", payload={"task_id": task_id, "reason": reason})
    await check_client_event(found.agent_id, event, request, caller, wait)

    async def produce(event_id: str, new_id: str) -> JSONResponse:
        # here, not before the key is claimed: a retry of a cancel that went through finds
        # the task cancelled, and must get the first answer
        now = await run_in_threadpool(_lookup, request, task_id, caller.tenant_id)
        if now is not None and now.ended:
            raise Problem(409, "task-ended", "Task ended", f"task {task_id} already ended ({now.status})",
                          reason="task_ended", task_status=now.status)
        out, status, headers = await send_client_event(found.agent_id, event, request, caller, wait, event_id,
                                                       new_id)
        done = CancelAccepted(task_id=task_id, agent_id=found.agent_id, event_id=out.event_id,
                              journal=JournalPosition(partition=out.partition, offset=out.offset),
                              verdict=out.verdict)
        return JSONResponse(done.model_dump(), status_code=status, headers=headers)

    return await idem.run(produce)
