"""``create_app(settings)``: the FastAPI application, one router per resource."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from aosk.api.auth import key_cache
from aosk.api.limits import BodyCap, RateLimiter, RedisRateLimiter
from aosk.api.openapi import install_openapi
from aosk.api.problems import Problem, http_problem, problem_response, validation_problem
from aosk.config import Settings

__all__ = ["create_app", "app_from_environment"]


def create_app(settings: Settings) -> FastAPI:
    """The API for ``settings``; its PostgreSQL pool opens at start-up and closes at shutdown."""
    from aosk.api.routes import agents, audit, context, forks, health, history, memories, status, stream, tasks

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from aosk.api.idempotency import IdempotencyStore
        from aosk.api.idempotency import ensure_schema as ensure_idempotency_schema
        from aosk.api.keys import ensure_schema
        from aosk.api.owners import owner_cache
        from aosk.endpoints import resolve_endpoints
        from aosk.projectors.db import connect, open_async_pool, open_pool

        ep = resolve_endpoints(settings)
        with connect(ep.dsn) as conn:
            ensure_schema(conn, settings.api.schema_name)
            ensure_idempotency_schema(conn, settings.api.schema_name)
        from aosk.client import KernelClient

        # autocommit: the API's statements stand alone (an idempotency claim, an owner row,
        # a read); the few multi-statement reads open their own transaction
        pool = open_pool(ep.dsn, settings.storage.postgresql, name="aosk-api", min_size=1, max_size=4,
                         autocommit=True)
        app.state.pool = pool
        app.state.keys = key_cache(pool, settings.api.schema_name)
        # the writes' hot path (an idempotency claim, then its answer) stays on the event loop
        apool = await open_async_pool(ep.dsn, name="aosk-api-writes", min_size=1, max_size=4)
        app.state.idempotency = IdempotencyStore(apool, settings.api.schema_name,
                                                 ttl_s=settings.api.idempotency_ttl_s,
                                                 lease_s=settings.api.idempotency_lease_s)
        app.state.owners = owner_cache(pool, settings.api.schema_name)
        app.state.endpoints = ep
        from aosk.api.wakeups import ProjectionWakeups
        from aosk.projectors.db import DEFAULT_SCHEMA

        app.state.wakeups = ProjectionWakeups(ep.dsn, DEFAULT_SCHEMA)
        # verdicts are read from the first ?wait=verdict on (KernelClient.watch_verdicts):
        # a process that only writes does not decode every verdict of the cluster
        app.state.kernel = KernelClient.from_settings(settings, client_id=f"aosk-api-{settings.node_id}")
        try:
            yield
        finally:
            app.state.wakeups.close()
            app.state.kernel.close(10)
            pool.close()
            await apool.close()
            if isinstance(app.state.rate_limiter, RedisRateLimiter):
                await app.state.rate_limiter.close()
            if settings.api.metrics_port is not None:
                from aosk.api.metrics import mark_dead

                mark_dead()

    app = FastAPI(title="AOSK API", version="1", lifespan=lifespan,
                  description="The Agent OS Kernel's front door. Every /api/v1 route needs an X-API-Key.")
    app.state.settings = settings
    app.state.started = time.monotonic()
    rate, burst = settings.api.rate_limit_per_s, settings.api.rate_limit_burst
    # cache.backend redis: one bucket per key for the whole cluster (docs/api.md "Rate limits")
    app.state.rate_limiter = (RedisRateLimiter(rate, burst, settings.cache.redis)
                              if settings.cache.backend == "redis" else RateLimiter(rate, burst))
    app.add_middleware(BodyCap, max_bytes=settings.api.max_body_bytes)
    app.add_exception_handler(Problem, problem_response)
    app.add_exception_handler(RequestValidationError, validation_problem)
    app.add_exception_handler(StarletteHTTPException, http_problem)
    app.include_router(health.router)
    app.include_router(status.router)
    app.include_router(agents.router)
    for router in (audit.router, forks.router, context.router, memories.router, history.router, stream.router,
                   tasks.router):
        app.include_router(router)
    install_openapi(app)
    if settings.api.metrics_port is not None:
        from aosk.api.metrics import install

        install(app)
    return app


def app_from_environment() -> Any:
    """The app for the settings of this process's environment (``AOSK_CONFIG``,
    ``AOSK_*``): what each uvicorn worker process builds (``aosk api --workers N``)."""
    from aosk.config import load_settings

    return create_app(load_settings())
