"""``/api/v1/agents``: create an agent (the API allocates its id) and read it back."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from aosk.api.auth import not_found, owned, owned_async, require
from aosk.api.consistency import READ_RESPONSES, WRITE_RESPONSES, consistent_read, write_token
from aosk.api.idempotency import Idempotency, idempotency
from aosk.api.keys import ApiKey
from aosk.api.metrics import produce_timer
from aosk.api.problems import Problem, projections_unavailable
from aosk.events import EVENT_TYPES
from aosk.kernel import KERNEL_ONLY, event_from_plain
from aosk.reads.agents import AgentSummary

router = APIRouter(prefix="/api/v1/agents", tags=["agents"])

AgentId = Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[^\x00]+$",
                              description="the agent's id, as POST /api/v1/agents allocated it")]


DEFAULT_TOKENS_PER_HOUR: Final = 100_000
"""Window quota of a new agent's model tokens per hour (fold version 4; 0: no limit)."""
DEFAULT_CALLS_PER_HOUR: Final = 1_000
"""Window quota of a new agent's model calls per hour (fold version 4; 0: no limit)."""
DEFAULT_TOKENS_PER_REQUEST: Final = 10_000
"""Largest estimated prompt of one model call of a new agent (fold version 4; 0: no limit)."""


class BudgetsIn(BaseModel):
    max_tokens: int = Field(100_000, ge=0, le=2**62, strict=True)
    max_tool_calls: int = Field(1_000, ge=0, le=2**62, strict=True)
    max_steps: int = Field(10_000, ge=0, le=2**62, strict=True)
    context_window_tokens: int = Field(8_000, ge=1, le=2**62, strict=True)
    tokens_per_hour: int = Field(DEFAULT_TOKENS_PER_HOUR, ge=0, le=2**62, strict=True,
                                 description="model tokens per quota window (0: no limit)")
    calls_per_hour: int = Field(DEFAULT_CALLS_PER_HOUR, ge=0, le=2**62, strict=True,
                                description="model calls per quota window (0: no limit)")
    tokens_per_request: int = Field(DEFAULT_TOKENS_PER_REQUEST, ge=0, le=2**62, strict=True,
                                    description="largest estimated prompt of one model call (0: no limit)")
    quota_window_ms: int = Field(0, ge=0, le=2**62, strict=True,
                                 description="the quota window in ms of broker time (0: one hour)")


class AgentCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    priority: int = Field(50, ge=0, le=100, strict=True)
    capabilities: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(default_factory=list,
                                                                                   max_length=100)
    budgets: BudgetsIn = Field(default_factory=BudgetsIn)
    metadata: dict[Annotated[str, Field(max_length=100)], Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=dict, max_length=50)
    task: str | None = Field(None, min_length=1, max_length=1_000_000,
                             description="a first task for the agent (TaskSubmitted after the spawn)")


class Accepted(BaseModel):
    agent_id: str
    event_id: str
    partition: int
    offset: int


class AgentCreated(Accepted):
    task_id: str | None = None
    """The id of the first task, when one was given (its TaskSubmitted follows the spawn:
    ``offset`` is the spawn's, the consistency token the task's)."""


class EventAcceptedBrief(BaseModel):
    event_id: str
    partition: int
    offset: int


class AgentOut(BaseModel):
    agent_id: str
    tenant_id: str
    projected: bool
    """False until a projector has folded the agent's first record."""
    status: str | None = None
    seq: int | None = None
    partition: int | None = None
    last_offset: int | None = None
    tokens_used: int | None = None
    tokens_left: int | None = None
    tool_calls_left: int | None = None
    steps_left: int | None = None
    capabilities: list[str] | None = None


def journal_unavailable(what: str, error: Exception) -> Problem:
    return Problem(503, "journal-unavailable", "Journal unavailable", f"the {what} was not written: {error}",
                   headers={"Retry-After": "5"})


def new_agent(request: Request, caller: ApiKey, agent_id: str | None = None) -> str:
    """A new agent id (a UUID, or ``agent_id`` the API drew), recorded as the caller's
    tenant's before anything names it in the journal: ids are the API's to give, so they
    reveal nothing across tenants."""
    from psycopg import sql

    agent_id = agent_id or str(uuid.uuid4())
    with request.app.state.pool.connection() as conn:  # a retry taking over an Idempotency-Key finds its row
        conn.execute(sql.SQL("insert into {} (agent_id, tenant_id) values (%s, %s) on conflict do nothing").format(
            sql.Identifier(request.app.state.settings.api.schema_name, "agents")), (agent_id, caller.tenant_id))
    request.app.state.owners.add(caller.tenant_id, agent_id)
    return agent_id


@router.post("", status_code=202, response_model=AgentCreated, summary="Create an agent (READY once judged)",
             responses=WRITE_RESPONSES)
async def create_agent(body: AgentCreate, request: Request, caller: Annotated[ApiKey, Depends(require("write"))],
                       idem: Annotated[Idempotency, Depends(idempotency)]) -> Any:
    from fastapi.responses import JSONResponse

    from aosk.errors import AoskError
    from aosk.events import Budgets

    async def produce(event_id: str, agent_id: str) -> JSONResponse:
        await run_in_threadpool(new_agent, request, caller, agent_id)
        try:
            with produce_timer(request, "spawn"):
                pending = request.app.state.kernel.spawn(
                    agent_id=agent_id, tenant_id=caller.tenant_id, name=body.name, priority=body.priority,
                    capabilities=body.capabilities, budgets=Budgets(**body.budgets.model_dump()),
                    metadata=body.metadata, event_id=event_id)
                d = await pending.delivered(10)
        except AoskError as e:
            raise journal_unavailable("spawn", e) from e
        except TimeoutError as e:
            raise journal_unavailable("spawn", TimeoutError("the broker did not acknowledge it within 10 s")) from e
        out = AgentCreated(agent_id=agent_id, event_id=pending.event_id, partition=d.partition, offset=d.offset)
        token = write_token(d.partition, d.offset)
        if body.task is not None:
            from aosk.api.routes.tasks import submit

            # ids derived from the spawn's event id: a retry taking over the key writes the
            # same task (a duplicate), and they are unique as that UUID is
            task_id, task_event_id = first_task_ids(pending.event_id)
            sent, _, token = await submit(request, caller, agent_id=agent_id, text=body.task, task_id=task_id,
                                          event_id=task_event_id, metadata={}, wait=None)
            out.task_id = sent.task_id
        return JSONResponse(out.model_dump(), status_code=202, headers=token)

    return await idem.run(produce)


_FIRST_TASK: Final = uuid.UUID("b7f4d3c2-5a61-4e0b-9c8d-2f1e0a9b7c6d")


def first_task_ids(spawn_event_id: str) -> tuple[str, str]:
    """(task id, event id) of the first task ``POST /api/v1/agents`` submits with a spawn."""
    return (str(uuid.uuid5(_FIRST_TASK, f"task\x00{spawn_event_id}")),
            str(uuid.uuid5(_FIRST_TASK, f"event\x00{spawn_event_id}")))


class AgentPage(BaseModel):
    agents: list[AgentOut]
    has_more: bool
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next page (agents are ordered by id)."""


@router.get("", response_model=AgentPage, summary="The caller's tenant's agents, a page at a time",
            dependencies=[Depends(consistent_read)], responses=READ_RESPONSES)
def list_agents(request: Request, caller: Annotated[ApiKey, Depends(require("read"))],
                status: Annotated[str | None, Query(max_length=32, pattern=r"^[A-Z]+$")] = None,
                cursor: Annotated[str | None, Query(max_length=256, pattern=r"^[^\x00]*$")] = None,
                limit: Annotated[int, Query(ge=1, le=500)] = 50) -> AgentPage:
    """Every agent the API created for this tenant (no hidden cap: page with ``cursor``
    until ``has_more`` is false); ``status`` filters on the projected status."""
    import psycopg

    from aosk.projectors.db import DEFAULT_SCHEMA
    from aosk.reads.agents import owned_agents

    settings = request.app.state.settings
    try:
        with request.app.state.pool.connection() as conn:
            rows = owned_agents(conn, DEFAULT_SCHEMA, settings.api.schema_name, caller.tenant_id, after=cursor or "",
                                status=status, limit=limit + 1)
    except psycopg.errors.UndefinedTable as e:
        raise projections_unavailable(DEFAULT_SCHEMA) from e
    page = [_view(caller.tenant_id, agent_id, summary) for agent_id, summary in rows[:limit]]
    more = len(rows) > limit
    return AgentPage(agents=page, has_more=more, next_cursor=page[-1].agent_id if more else None)


def _view(tenant_id: str, agent_id: str, summary: AgentSummary | None) -> AgentOut:
    if summary is None:
        return AgentOut(agent_id=agent_id, tenant_id=tenant_id, projected=False)
    return AgentOut(agent_id=agent_id, tenant_id=tenant_id, projected=True, **dataclasses.asdict(summary))


@router.delete("/{agent_id}", status_code=202, response_model=EventAcceptedBrief,
               summary="Kill the agent (AgentKilled; TERMINATED once judged)", responses=WRITE_RESPONSES)
async def kill_agent(agent_id: AgentId, request: Request, caller: Annotated[ApiKey, Depends(require("write"))],
                     idem: Annotated[Idempotency, Depends(idempotency)]) -> Any:
    from fastapi.responses import JSONResponse

    from aosk.errors import AoskError
    from aosk.events import AgentKilled

    await owned_async(request, caller, agent_id)
    kernel = request.app.state.kernel

    async def produce(event_id: str, _: str) -> JSONResponse:
        try:
            with produce_timer(request, "kill"):
                pending = kernel.emit(AgentKilled, agent_id=agent_id, tenant_id=caller.tenant_id, signal="SIGKILL",
                                      by=f"api-key:{caller.key_id}", event_id=event_id)
                d = await pending.delivered(10)
        except (AoskError, TimeoutError) as e:
            raise journal_unavailable("kill", e) from e
        out = EventAcceptedBrief(event_id=pending.event_id, partition=d.partition, offset=d.offset)
        return JSONResponse(out.model_dump(), status_code=202, headers=write_token(d.partition, d.offset))

    return await idem.run(produce)


@router.get("/{agent_id}", response_model=AgentOut, summary="One agent of the caller's tenant, as projected",
            dependencies=[Depends(consistent_read)], responses=READ_RESPONSES)
def get_agent(agent_id: AgentId, request: Request, caller: Annotated[ApiKey, Depends(require("read"))]) -> AgentOut:
    from aosk.projectors.db import DEFAULT_SCHEMA
    from aosk.reads.agents import agent_summary

    owned(request, caller, agent_id)
    with request.app.state.pool.connection() as conn:
        summary = agent_summary(conn, DEFAULT_SCHEMA, agent_id)  # None: known to the API, not projected yet
    return _view(caller.tenant_id, agent_id, summary)


# Types a client may send here: not the kernel's own (derived events, partition markers),
# not the ones the runtime owns (model and tool calls), and not a spawn (POST /agents).
_RUNTIME_TYPES = frozenset({"LlmCallRequested", "LlmCallCompleted", "ToolCallRequested", "ToolCallCompleted"})
_HEADER_FIELDS = frozenset({"event_id", "agent_id", "tenant_id", "occurred_at", "origin"})
_NEW_AGENT_FIELD = {"SpawnRequested": "child_id", "ForkRequested": "new_agent_id"}
"""Events that name a new agent: the API allocates its id (and records its owner) first."""
_REJECTION_STATUS = {"illegal_transition": 409, "budget_exhausted": 409, "not_spawned": 409,
                     "capability_denied": 403, "tenant_mismatch": 404, "task_queue_full": 409,
                     "task_id_in_use": 409, "task_ended": 409, "needs_fold_version": 409}


def client_event_types() -> frozenset[str]:
    return frozenset(EVENT_TYPES) - KERNEL_ONLY - _RUNTIME_TYPES - {"AgentSpawned"}


def _client_type_enum() -> dict[str, Any]:
    return {"enum": sorted(client_event_types())}


class EventIn(BaseModel):
    type: str = Field(min_length=1, max_length=100, description="an event type a client may send",
                      json_schema_extra=_client_type_enum())
    payload: dict[str, Any] = Field(default_factory=dict, description="the event's own fields (docs/events.md)")
    event_id: uuid.UUID | None = Field(None, description="the idempotency key of the event (default: a new UUID)")


class VerdictOut(BaseModel):
    verdict: str
    reason: str
    message: str
    status: str
    seq: int


class EventAccepted(BaseModel):
    event_id: str
    partition: int
    offset: int
    new_agent_id: str | None = None
    """The id the API allocated for the agent a SpawnRequested or ForkRequested names."""
    verdict: VerdictOut | None = None


@router.post("/{agent_id}/events", status_code=202, response_model=EventAccepted,
             summary="Append an event to the agent's journal (?wait=verdict: answer with the kernel's verdict)",
             responses=WRITE_RESPONSES)
async def append_event(agent_id: AgentId, body: EventIn, request: Request,
                       caller: Annotated[ApiKey, Depends(require("write"))],
                       idem: Annotated[Idempotency, Depends(idempotency)], wait: str | None = None) -> Any:
    # async, like every write route: on the hot path (a remembered owner, an idempotency
    # claim and answer, a produce) nothing leaves the event loop for a thread
    from fastapi.responses import JSONResponse

    await check_client_event(agent_id, body, request, caller, wait)

    async def produce(event_id: str, new_id: str) -> JSONResponse:
        out, status, headers = await send_client_event(agent_id, body, request, caller, wait, event_id, new_id)
        return JSONResponse(out.model_dump(), status_code=status, headers=headers)

    return await idem.run(produce, event_id=str(body.event_id) if body.event_id else None)


async def check_client_event(agent_id: str, body: EventIn, request: Request, caller: ApiKey, wait: str | None) -> None:
    """What ``POST .../events`` refuses before anything is produced (and before an
    Idempotency-Key is claimed): an agent not the caller's, a type clients may not send,
    header fields or new agents' ids set by the client, a message to an agent not the caller's."""

    if wait not in (None, "verdict"):
        raise Problem(422, "invalid-request", "Invalid request", "wait must be `verdict` or absent")
    await owned_async(request, caller, agent_id)
    if body.type not in EVENT_TYPES:
        raise Problem(422, "unknown-event-type", "Unknown event type",
                      f"{body.type!r} is not an event type; clients may send {sorted(client_event_types())}")
    if body.type not in client_event_types():
        raise Problem(403, "event-type-not-allowed", "Event type not allowed",
                      f"{body.type} is written by the kernel or the runtime, not by clients")
    stray = sorted(_HEADER_FIELDS & set(body.payload))
    if stray:
        raise Problem(422, "invalid-event", "Invalid event", f"payload must not set {stray}: the API stamps them")
    new_field = _NEW_AGENT_FIELD.get(body.type)
    if new_field is not None and new_field in body.payload:
        raise Problem(422, "invalid-event", "Invalid event",
                      f"payload must not set {new_field}: the API allocates new agents' ids")
    to = body.payload.get("to_agent_id") if body.type == "MessageSent" else None
    if isinstance(to, str):
        await owned_async(request, caller, to)  # a message to another tenant's agent never reaches its journal


async def send_client_event(agent_id: str, body: EventIn, request: Request, caller: ApiKey, wait: str | None,
                            event_id: str, new_id: str) -> tuple[EventAccepted, int, dict[str, str]]:
    """Produce a checked client event (``check_client_event``) as ``event_id``, stamped with
    the caller's tenant and ``origin=client``; with ``wait``, wait (bounded) for its verdict.
    Answers the body, the status (202 written, 200 judged) and the consistency header.
    ``new_id``: the id of the agent a SpawnRequested / ForkRequested names, stable across
    retries of one Idempotency-Key; recorded as the caller's once the event is valid."""
    import time

    from aosk.errors import AoskError, EventRejected

    kernel = request.app.state.kernel
    new_field = _NEW_AGENT_FIELD.get(body.type)
    payload = {**body.payload, new_field: new_id} if new_field is not None else dict(body.payload)
    plain = {"type": body.type, **payload, "event_id": event_id, "agent_id": agent_id,
             "tenant_id": caller.tenant_id, "occurred_at": time.time_ns() // 1000, "origin": "client",
             "correlation_id": body.payload.get("correlation_id"), "causation_id": body.payload.get("causation_id")}
    try:
        event = event_from_plain(plain)
    except (TypeError, ValueError, KeyError) as e:
        raise Problem(422, "invalid-event", "Invalid event", f"{body.type}: {e}") from e
    if new_field is not None:
        await run_in_threadpool(new_agent, request, caller, new_id)
    if wait is not None and not kernel.watching_verdicts:
        await run_in_threadpool(kernel.watch_verdicts)  # before producing: its verdict is seen
    try:
        with produce_timer(request, "event"):
            pending = kernel.send(event)
            d = await pending.delivered(10)
    except EventRejected as e:
        raise Problem(422, "invalid-event", "Invalid event", str(e)) from e
    except (AoskError, TimeoutError) as e:
        raise journal_unavailable("event", e) from e
    token = write_token(d.partition, d.offset)
    out = EventAccepted(event_id=event.event_id, partition=d.partition, offset=d.offset,
                        new_agent_id=new_id if new_field is not None else None)
    if wait is None:
        return out, 202, token
    try:
        t = await run_in_threadpool(kernel.wait_for_verdict, event.event_id, 10)
    except TimeoutError:
        return out, 202, token  # written, not judged yet (is a worker running?)
    out.verdict = VerdictOut(verdict=t.verdict, reason=t.reason, message=t.message, status=t.status, seq=t.seq)
    if t.verdict == "rejected":
        status = _REJECTION_STATUS.get(t.reason, 422)
        if status == 404:
            raise not_found(agent_id)
        raise Problem(status, "rejected", "Rejected by the kernel", t.message, reason=t.reason,
                      event_id=event.event_id, partition=d.partition, offset=d.offset, headers=token)
    return out, 200, token
