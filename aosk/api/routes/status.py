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

    from aosk.api.problems import projections_unavailable
    from aosk.projectors.db import DEFAULT_SCHEMA
    from aosk.reads.status import agents_by_status, projected_records

    try:
        with request.app.state.pool.connection() as conn:
            by_status = agents_by_status(conn, DEFAULT_SCHEMA, caller.tenant_id)
            projected = projected_records(conn, DEFAULT_SCHEMA)
    except psycopg.errors.UndefinedTable as e:
        raise projections_unavailable(DEFAULT_SCHEMA) from e
    return {
        "tenant_id": caller.tenant_id,
        "agents_by_status": by_status,
        "projected_records": projected,
        "uptime_s": round(time.monotonic() - request.app.state.started, 1),
    }
