"""``/api/v1/status``: the caller's tenant at a glance (admin scope)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from aosk.api.auth import require
from aosk.api.keys import ApiKey

router = APIRouter(prefix="/api/v1", tags=["status"])


@router.get("/status", summary="Agents of the caller's tenant by status, uptime, projection lag")
def status(request: Request, caller: Annotated[ApiKey, Depends(require("admin"))]) -> dict[str, Any]:
    import psycopg
    from psycopg import sql

    from aosk.api.problems import Problem
    from aosk.projectors.db import DEFAULT_SCHEMA, qualified

    try:
        with request.app.state.pool.connection() as conn:
            rows = conn.execute(
                sql.SQL("select status, agents from {} where tenant_id = %s order by status").format(
                    qualified(DEFAULT_SCHEMA, "agents_by_status")), (caller.tenant_id,)).fetchall()
            projected = conn.execute(sql.SQL("select coalesce(sum(next_offset), 0) from {}").format(
                qualified(DEFAULT_SCHEMA, "projector_offsets"))).fetchone()
    except psycopg.errors.UndefinedTable as e:
        raise Problem(503, "projections-unavailable", "Projections unavailable",
                      f"the projection schema {DEFAULT_SCHEMA} does not exist yet (start `aosk project`)",
                      headers={"Retry-After": "5"}) from e
    return {
        "tenant_id": caller.tenant_id,
        "agents_by_status": {s: int(n) for s, n in rows},
        "projected_records": int(projected[0]) if projected else 0,
        "uptime_s": round(time.monotonic() - request.app.state.started, 1),
    }
