"""``/api/v1/context``: append to an agent's context window (a ``ContextAppended`` through
``POST /api/v1/agents/{id}/events``'s code path) and read the window as projected, with
the entries the kernel paged out of it (``aosk.kernel.paging``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from aosk.api.auth import owned, require
from aosk.api.consistency import READ_RESPONSES, WRITE_RESPONSES, consistent_read
from aosk.api.idempotency import Idempotency, idempotency
from aosk.api.keys import ApiKey
from aosk.api.problems import projections_unavailable
from aosk.api.routes.agents import AgentId, EventAccepted, EventIn, check_client_event, send_client_event
from aosk.reads.context import PagedOut, WindowEntry

router = APIRouter(prefix="/api/v1/context", tags=["context"])


class ContextIn(BaseModel):
    agent_id: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00]+$")
    role: str = Field("user", min_length=1, max_length=64)
    content: str = Field(max_length=1_000_000)
    tokens: int | None = Field(None, ge=0, le=2**31, strict=True,
                               description="default: the content's UTF-8 bytes / 4, rounded up")
    importance: float = Field(0.5, ge=0, le=1, description=">= 0.95 pins the entry (never paged out)")
    entry_id: str | None = Field(None, min_length=1, max_length=256, pattern=r"^[^\x00]+$",
                                 description="default: the event id (a new UUID)")


class ContextOut(BaseModel):
    agent_id: str
    projected: bool
    """False until a projector has folded the agent's first record."""
    seq: int
    entries: list[WindowEntry]
    tokens_used: int
    tokens_limit: int
    paged_out: list[PagedOut]
    """Newest first."""


@router.post("", status_code=202, response_model=EventAccepted, responses=WRITE_RESPONSES,
             summary="Append an entry to the agent's context window (ContextAppended; ?wait=verdict as for events)")
async def append_context(body: ContextIn, request: Request, caller: Annotated[ApiKey, Depends(require("write"))],
                         idem: Annotated[Idempotency, Depends(idempotency)], wait: str | None = None) -> Any:
    from fastapi.responses import JSONResponse

    tokens = body.tokens if body.tokens is not None else -(-len(body.content.encode()) // 4)
    payload = {"role": body.role, "content": body.content, "tokens": tokens, "importance": body.importance}
    await check_client_event(body.agent_id, EventIn(type="ContextAppended", payload=payload), request, caller, wait)

    async def produce(event_id: str, new_id: str) -> JSONResponse:
        event = EventIn(type="ContextAppended", payload={**payload, "entry_id": body.entry_id or event_id})
        out, status, headers = await send_client_event(body.agent_id, event, request, caller, wait, event_id, new_id)
        return JSONResponse(out.model_dump(), status_code=status, headers=headers)

    return await idem.run(produce)


@router.get("/{agent_id}", response_model=ContextOut, dependencies=[Depends(consistent_read)],
            responses=READ_RESPONSES,
            summary="The agent's context window in order, its token use, and the entries paged out of it")
def get_context(agent_id: AgentId, request: Request, caller: Annotated[ApiKey, Depends(require("read"))],
                paged_out_limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> ContextOut:
    import psycopg

    from aosk.projectors.db import DEFAULT_SCHEMA
    from aosk.reads.context import context_window

    owned(request, caller, agent_id)
    try:
        with request.app.state.pool.connection() as conn:
            w = context_window(conn, DEFAULT_SCHEMA, agent_id, paged_out_limit=paged_out_limit)
    except psycopg.errors.UndefinedTable as e:
        raise projections_unavailable(DEFAULT_SCHEMA) from e
    if w is None:
        return ContextOut(agent_id=agent_id, projected=False, seq=0, entries=[], tokens_used=0, tokens_limit=0,
                          paged_out=[])
    return ContextOut(agent_id=agent_id, projected=True, seq=w.seq, tokens_used=w.tokens_used,
                      tokens_limit=w.tokens_limit,
                      entries=w.entries, paged_out=w.paged_out)
