"""``POST /api/v1/memories/search``: an agent's nearest memories to a query embedding
(pgvector cosine recall, ``aosk.reads.memory``; a fork also recalls its source's)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from aosk.api.auth import owned, require
from aosk.api.consistency import READ_RESPONSES, consistent_read
from aosk.api.keys import ApiKey
from aosk.api.problems import Problem, projections_unavailable
from aosk.reads.memory import Recalled

router = APIRouter(prefix="/api/v1/memories", tags=["memories"])


class SearchIn(BaseModel):
    agent_id: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00]+$")
    query_embedding: list[float] = Field(min_length=1, max_length=16_000,
                                         description="memory.embedding_dimension finite numbers, not all zero")
    k: int = Field(10, ge=1, le=1000, strict=True)
    as_of_offset: int | None = Field(None, ge=0, le=2**62, strict=True,
                                     description="leave out what the agent stored after this offset of its partition")


class SearchOut(BaseModel):
    agent_id: str
    memories: list[Recalled]
    """Nearest first."""


def _invalid_embedding(detail: str) -> Problem:
    return Problem(422, "invalid-embedding", "Invalid query embedding", f"query_embedding: {detail}")


@router.post("/search", response_model=SearchOut, summary="The agent's k memories nearest to a query embedding",
             dependencies=[Depends(consistent_read)], responses=READ_RESPONSES)
def search_memories(body: SearchIn, request: Request,
                    caller: Annotated[ApiKey, Depends(require("read"))]) -> SearchOut:
    import psycopg

    from aosk.errors import RecallError
    from aosk.projectors.db import DEFAULT_SCHEMA
    from aosk.reads.memory import check_query, recall

    owned(request, caller, body.agent_id)
    try:
        query = check_query(body.query_embedding, request.app.state.settings.memory.embedding_dimension)
    except RecallError as e:
        raise _invalid_embedding(str(e)) from e
    try:
        with request.app.state.pool.connection() as conn:
            found = recall(conn, DEFAULT_SCHEMA, query, k=body.k, tenant_id=caller.tenant_id, agent_id=body.agent_id,
                           as_of_offset=body.as_of_offset)
    except psycopg.errors.UndefinedTable as e:
        raise projections_unavailable(DEFAULT_SCHEMA) from e
    except RecallError as e:  # the projection's dimension differs from this process's settings
        raise _invalid_embedding(str(e)) from e
    return SearchOut(agent_id=body.agent_id, memories=found)
