"""``POST /api/v1/agents/{agent_id}/fork``: a new agent from the agent's state at a journal
offset: a ``ForkRequested`` at the matching seq through ``POST /api/v1/agents/{id}/events``'s
code path (which allocates the child's id and records its owner before producing); a
worker writes the child's ``AgentForked`` (docs/time-travel.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from aosk.api.auth import owned_async, require
from aosk.api.consistency import WRITE_RESPONSES
from aosk.api.idempotency import Idempotency, idempotency
from aosk.api.keys import ApiKey
from aosk.api.problems import Problem, projections_unavailable
from aosk.api.routes.agents import Accepted, AgentId, EventIn, check_client_event, send_client_event

router = APIRouter(prefix="/api/v1/agents", tags=["forks"])


class ForkIn(BaseModel):
    at_offset: int | None = Field(None, ge=0, le=2**62, strict=True, description=(
        "fork the state after the agent's last record at or before this offset of its partition "
        "(default: its latest projected state)"))


def _fork_seq(request: Request, agent_id: str, at_offset: int | None) -> int:
    """The source's seq to fork at: its projected seq, or its last record at or before ``at_offset``."""
    import psycopg

    from aosk.projectors.db import DEFAULT_SCHEMA
    from aosk.reads.agents import agent_summary
    from aosk.reads.audit import seq_at_offset
    from aosk.reads.status import projected_offsets

    try:
        with request.app.state.pool.connection() as conn:
            summary = agent_summary(conn, DEFAULT_SCHEMA, agent_id)
            if summary is None:
                raise Problem(409, "agent-not-projected", "Agent not projected yet",
                              f"agent {agent_id} has no projected state yet; retry once its spawn is projected",
                              headers={"Retry-After": "1"})
            if at_offset is None:
                return summary.seq
            projected = projected_offsets(conn, DEFAULT_SCHEMA).get(summary.partition, 0)
            if at_offset >= projected:
                raise Problem(409, "offset-not-projected", "Offset not projected yet",
                              f"at_offset {at_offset} is not projected yet (partition {summary.partition} is "
                              f"projected below {projected})", headers={"Retry-After": "1"})
            seq = seq_at_offset(conn, DEFAULT_SCHEMA, agent_id, at_offset)
    except psycopg.errors.UndefinedTable as e:
        raise projections_unavailable(DEFAULT_SCHEMA) from e
    if seq is None:
        raise Problem(422, "invalid-request", "Invalid request",
                      f"at_offset: {at_offset} is before agent {agent_id}'s first record")
    return seq


@router.post("/{agent_id}/fork", status_code=202, response_model=Accepted, responses=WRITE_RESPONSES,
             summary="Fork the agent at a journal offset into a new agent (its id allocated by the API)")
async def fork_agent(agent_id: AgentId, request: Request, caller: Annotated[ApiKey, Depends(require("write"))],
                     idem: Annotated[Idempotency, Depends(idempotency)], body: ForkIn | None = None) -> Any:
    from fastapi.responses import JSONResponse

    await owned_async(request, caller, agent_id)
    at_seq = await run_in_threadpool(_fork_seq, request, agent_id, (body or ForkIn()).at_offset)
    event = EventIn(type="ForkRequested", payload={"at_seq": at_seq})
    await check_client_event(agent_id, event, request, caller, None)

    async def produce(event_id: str, new_id: str) -> JSONResponse:
        out, status, headers = await send_client_event(agent_id, event, request, caller, None, event_id, new_id)
        accepted = Accepted(agent_id=new_id, event_id=out.event_id, partition=out.partition, offset=out.offset)
        return JSONResponse(accepted.model_dump(), status_code=status, headers=headers)

    return await idem.run(produce)
