"""``/api/v1/agents``: create an agent (the API allocates its id) and read it back."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from aosk.api.auth import require
from aosk.api.keys import ApiKey
from aosk.api.metrics import produce_timer
from aosk.api.problems import Problem
from aosk.events import EVENT_TYPES
from aosk.kernel import KERNEL_ONLY, event_from_plain

router = APIRouter(prefix="/api/v1/agents", tags=["agents"])

AgentId = Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[^\x00]+$",
                              description="the agent's id, as POST /api/v1/agents allocated it")]


class BudgetsIn(BaseModel):
    max_tokens: int = Field(100_000, ge=0, le=2**62)
    max_tool_calls: int = Field(1_000, ge=0, le=2**62)
    max_steps: int = Field(10_000, ge=0, le=2**62)
    context_window_tokens: int = Field(8_000, ge=1, le=2**62)


class AgentCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    priority: int = Field(50, ge=0, le=100)
    capabilities: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(default_factory=list,
                                                                                   max_length=100)
    budgets: BudgetsIn = Field(default_factory=BudgetsIn)
    metadata: dict[Annotated[str, Field(max_length=100)], Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=dict, max_length=50)


class Accepted(BaseModel):
    agent_id: str
    event_id: str
    partition: int
    offset: int


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


def _journal_unavailable(what: str, error: Exception) -> Problem:
    return Problem(503, "journal-unavailable", "Journal unavailable", f"the {what} was not written: {error}",
                   headers={"Retry-After": "5"})


def _not_found(agent_id: str) -> Problem:
    # The same answer for a missing agent and another tenant's: ids reveal nothing.
    return Problem(404, "agent-not-found", "Agent not found", f"no agent {agent_id} for this key's tenant")


@router.post("", status_code=202, response_model=Accepted, summary="Create an agent (READY once judged)")
def create_agent(body: AgentCreate, request: Request,
                 caller: Annotated[ApiKey, Depends(require("write"))]) -> Accepted:
    from psycopg import sql

    from aosk.errors import AoskError
    from aosk.events import Budgets

    settings = request.app.state.settings
    agent_id = str(uuid.uuid4())
    with request.app.state.pool.connection() as conn:
        conn.execute(sql.SQL("insert into {} (agent_id, tenant_id) values (%s, %s)").format(
            sql.Identifier(settings.api.schema_name, "agents")), (agent_id, caller.tenant_id))
    request.app.state.owners.add(caller.tenant_id, agent_id)
    try:
        with produce_timer(request, "spawn"):
            pending = request.app.state.kernel.spawn(
                agent_id=agent_id, tenant_id=caller.tenant_id, name=body.name, priority=body.priority,
                capabilities=body.capabilities, budgets=Budgets(**body.budgets.model_dump()),
                metadata=body.metadata)
            d = pending.result(10)
    except AoskError as e:
        raise _journal_unavailable("spawn", e) from e
    except TimeoutError as e:
        raise _journal_unavailable("spawn", TimeoutError("the broker did not acknowledge it within 10 s")) from e
    return Accepted(agent_id=agent_id, event_id=pending.event_id, partition=d.partition, offset=d.offset)


class AgentPage(BaseModel):
    agents: list[AgentOut]
    has_more: bool
    next_cursor: str | None = None
    """Pass as ``cursor`` for the next page (agents are ordered by id)."""


@router.get("", response_model=AgentPage, summary="The caller's tenant's agents, a page at a time")
def list_agents(request: Request, caller: Annotated[ApiKey, Depends(require("read"))],
                status: Annotated[str | None, Query(max_length=32, pattern=r"^[A-Z]+$")] = None,
                cursor: Annotated[str | None, Query(max_length=256, pattern=r"^[^\x00]*$")] = None,
                limit: Annotated[int, Query(ge=1, le=500)] = 50) -> AgentPage:
    """Every agent the API created for this tenant (no hidden cap: page with ``cursor``
    until ``has_more`` is false); ``status`` filters on the projected status."""
    import psycopg
    from psycopg import sql

    from aosk.projectors.db import DEFAULT_SCHEMA, qualified

    settings = request.app.state.settings
    owners = sql.Identifier(settings.api.schema_name, "agents")
    q = sql.SQL(
        "select o.agent_id, s.status, s.seq, s.journal_partition, s.last_offset, s.tokens_used, s.tokens_left, "
        "s.tool_calls_left, s.steps_left, s.capabilities from {} o left join {} s on s.agent_id = o.agent_id "
        "where o.tenant_id = %s and o.agent_id > %s and (%s::text is null or s.status = %s) "
        "order by o.agent_id limit %s").format(owners, qualified(DEFAULT_SCHEMA, "agent_state"))
    try:
        with request.app.state.pool.connection() as conn:
            rows = conn.execute(q, (caller.tenant_id, cursor or "", status, status, limit + 1)).fetchall()
    except psycopg.errors.UndefinedTable as e:
        raise Problem(503, "projections-unavailable", "Projections unavailable",
                      f"the projection schema {DEFAULT_SCHEMA} does not exist yet (start `aosk project`)",
                      headers={"Retry-After": "5"}) from e
    page = [_view(caller.tenant_id, r[0], r[1:] if r[1] is not None else None) for r in rows[:limit]]
    more = len(rows) > limit
    return AgentPage(agents=page, has_more=more, next_cursor=page[-1].agent_id if more else None)


def _view(tenant_id: str, agent_id: str, row: Any) -> AgentOut:
    if row is None:
        return AgentOut(agent_id=agent_id, tenant_id=tenant_id, projected=False)
    status, seq, partition, last_offset, used, left, calls_left, steps_left, caps = row
    return AgentOut(agent_id=agent_id, tenant_id=tenant_id, projected=True, status=status, seq=seq,
                    partition=partition, last_offset=last_offset, tokens_used=used, tokens_left=left,
                    tool_calls_left=calls_left, steps_left=steps_left, capabilities=list(caps))


@router.delete("/{agent_id}", status_code=202, response_model=EventAcceptedBrief,
               summary="Kill the agent (AgentKilled; TERMINATED once judged)")
def kill_agent(agent_id: AgentId, request: Request, caller: Annotated[ApiKey, Depends(require("write"))]) -> Any:
    from aosk.errors import AoskError
    from aosk.events import AgentKilled

    _owned(request, caller, agent_id)
    kernel = request.app.state.kernel
    try:
        with produce_timer(request, "kill"):
            pending = kernel.emit(AgentKilled, agent_id=agent_id, tenant_id=caller.tenant_id, signal="SIGKILL",
                                  by=f"api-key:{caller.key_id}")
            d = pending.result(10)
    except (AoskError, TimeoutError) as e:
        raise _journal_unavailable("kill", e) from e
    return EventAcceptedBrief(event_id=pending.event_id, partition=d.partition, offset=d.offset)


@router.get("/{agent_id}", response_model=AgentOut, summary="One agent of the caller's tenant, as projected")
def get_agent(agent_id: AgentId, request: Request, caller: Annotated[ApiKey, Depends(require("read"))]) -> AgentOut:
    import psycopg
    from psycopg import sql

    from aosk.projectors.db import DEFAULT_SCHEMA, qualified
    from aosk.projectors.rows import storage_key

    _owned(request, caller, agent_id)
    with request.app.state.pool.connection() as conn:
        try:
            row: Any = conn.execute(
                sql.SQL("select status, seq, journal_partition, last_offset, tokens_used, tokens_left, "
                        "tool_calls_left, steps_left, capabilities from {} where agent_id = %s").format(
                    qualified(DEFAULT_SCHEMA, "agent_state")), (storage_key(agent_id),)).fetchone()
        except psycopg.errors.UndefinedTable:
            row = None  # no projection yet: known to the API, not projected
    return _view(caller.tenant_id, agent_id, row)


# Types a client may send here: not the kernel's own (derived events, partition markers),
# not the ones the runtime owns (model and tool calls), and not a spawn (POST /agents).
_RUNTIME_TYPES = frozenset({"LlmCallRequested", "LlmCallCompleted", "ToolCallRequested", "ToolCallCompleted"})
_HEADER_FIELDS = frozenset({"event_id", "agent_id", "tenant_id", "occurred_at", "origin"})
_REJECTION_STATUS = {"illegal_transition": 409, "budget_exhausted": 409, "not_spawned": 409,
                     "capability_denied": 403, "tenant_mismatch": 404}


def client_event_types() -> frozenset[str]:
    return frozenset(EVENT_TYPES) - KERNEL_ONLY - _RUNTIME_TYPES - {"AgentSpawned"}


class EventIn(BaseModel):
    type: str = Field(min_length=1, max_length=100, description="an event type a client may send")
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
    verdict: VerdictOut | None = None


def _owned(request: Request, caller: ApiKey, agent_id: str) -> None:
    if not request.app.state.owners.owns(caller.tenant_id, agent_id):
        raise _not_found(agent_id)


@router.post("/{agent_id}/events", status_code=202, response_model=EventAccepted,
             summary="Append an event to the agent's journal (?wait=verdict: answer with the kernel's verdict)")
def append_event(agent_id: AgentId, body: EventIn, request: Request,
                 caller: Annotated[ApiKey, Depends(require("write"))], wait: str | None = None) -> Any:
    import time

    from fastapi.responses import JSONResponse

    from aosk.errors import AoskError, EventRejected

    if wait not in (None, "verdict"):
        raise Problem(422, "invalid-request", "Invalid request", "wait must be `verdict` or absent")
    _owned(request, caller, agent_id)
    if body.type not in EVENT_TYPES:
        raise Problem(422, "unknown-event-type", "Unknown event type",
                      f"{body.type!r} is not an event type; clients may send {sorted(client_event_types())}")
    if body.type not in client_event_types():
        raise Problem(403, "event-type-not-allowed", "Event type not allowed",
                      f"{body.type} is written by the kernel or the runtime, not by clients")
    stray = sorted(_HEADER_FIELDS & set(body.payload))
    if stray:
        raise Problem(422, "invalid-event", "Invalid event", f"payload must not set {stray}: the API stamps them")
    plain = {"type": body.type, **body.payload, "event_id": str(body.event_id or uuid.uuid4()), "agent_id": agent_id,
             "tenant_id": caller.tenant_id, "occurred_at": time.time_ns() // 1000, "origin": "client",
             "correlation_id": body.payload.get("correlation_id"), "causation_id": body.payload.get("causation_id")}
    try:
        event = event_from_plain(plain)
    except (TypeError, ValueError, KeyError) as e:
        raise Problem(422, "invalid-event", "Invalid event", f"{body.type}: {e}") from e
    kernel = request.app.state.kernel
    try:
        with produce_timer(request, "event"):
            pending = kernel.send(event)
            d = pending.result(10)
    except EventRejected as e:
        raise Problem(422, "invalid-event", "Invalid event", str(e)) from e
    except (AoskError, TimeoutError) as e:
        raise _journal_unavailable("event", e) from e
    out = EventAccepted(event_id=event.event_id, partition=d.partition, offset=d.offset)
    if wait is None:
        return out
    try:
        t = kernel.wait_for_verdict(event.event_id, timeout=10)
    except TimeoutError:
        return out  # 202 without a verdict: written, not judged yet (is a worker running?)
    out.verdict = VerdictOut(verdict=t.verdict, reason=t.reason, message=t.message, status=t.status, seq=t.seq)
    if t.verdict == "rejected":
        status = _REJECTION_STATUS.get(t.reason, 422)
        if status == 404:
            raise _not_found(agent_id)
        raise Problem(status, "rejected", "Rejected by the kernel", t.message, reason=t.reason,
                      event_id=event.event_id, partition=d.partition, offset=d.offset)
    return JSONResponse(out.model_dump(), status_code=200)
