"""``/health`` (liveness) and ``/api/health`` (readiness), the deployment guide's names."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process answers (no dependency is asked)")
def liveness() -> dict[str, str]:
    return {"status": "healthy"}


@router.get("/api/health", summary="Readiness: Kafka, PostgreSQL, lag and stopped partitions")
def readiness(request: Request) -> dict[str, Any]:
    """``healthy`` or ``degraded`` with the checks (``aosk.status.health``). A shared
    dependency's trouble is ``degraded`` with status 200: one bad database must not take
    every replica out of its load balancer at once."""
    from aosk.projectors.db import DEFAULT_SCHEMA
    from aosk.status import health
    from aosk.streams.kafka import group_id

    settings = request.app.state.settings
    ep = request.app.state.endpoints
    answer = health(bootstrap=ep.bootstrap, dsn=ep.dsn, topic=settings.kafka.journal_topic,
                    worker_group=group_id(settings.kafka.topic_prefix), schema=DEFAULT_SCHEMA, timeout=3.0).to_json()
    # where rate limits are kept (no Redis call; Redis never makes the API unready)
    answer["rate_limits"] = request.app.state.rate_limiter.describe()
    return answer
