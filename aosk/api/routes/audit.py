"""``/api/v1/agents/{agent_id}/audit/verify``: the agent's audit chain, verified."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from aosk.api.auth import owned, require
from aosk.api.consistency import READ_RESPONSES, consistent_read
from aosk.api.keys import ApiKey
from aosk.api.problems import projections_unavailable
from aosk.api.routes.agents import AgentId

router = APIRouter(prefix="/api/v1/agents", tags=["audit"])


class BreakOut(BaseModel):
    seq: int
    """The first audit row that does not hold (0: a journal record with no audit row)."""
    offset: int | None
    """Its journal offset (null when the row itself is missing)."""
    problem: str


class AuditVerified(BaseModel):
    agent_id: str
    intact: bool
    records: int
    """Audit rows of the agent (one per journal record of its key)."""
    seq: int
    """The agent's projected seq (the chain should end there)."""
    head: str | None
    """The chain's head hash (hex) as ``agent_state.audit_head`` records it; null until projected."""
    first_break: BreakOut | None


@router.get("/{agent_id}/audit/verify", response_model=AuditVerified,
            summary="Recompute the agent's audit chain: its head, and intact or the first break",
            dependencies=[Depends(consistent_read)], responses=READ_RESPONSES)
def verify_audit(agent_id: AgentId, request: Request,
                 caller: Annotated[ApiKey, Depends(require("read"))]) -> AuditVerified:
    import psycopg

    from aosk.projectors.db import DEFAULT_SCHEMA
    from aosk.reads.audit import chain_report

    owned(request, caller, agent_id)
    try:
        with request.app.state.pool.connection() as conn:
            r = chain_report(conn, DEFAULT_SCHEMA, agent_id)
    except psycopg.errors.UndefinedTable as e:
        raise projections_unavailable(DEFAULT_SCHEMA) from e
    first = None if r.first_break is None else BreakOut(seq=r.first_break.seq, offset=r.break_offset,
                                                        problem=r.first_break.problem)
    return AuditVerified(agent_id=agent_id, intact=r.intact, records=r.records, seq=r.seq,
                         head=None if r.head is None else r.head.hex(), first_break=first)

