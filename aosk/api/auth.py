"""The one authentication dependency: ``X-API-Key`` -> the caller's key (tenant, scope)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from aosk.api.keys import ApiKey, KeyCache, KeyStore
from aosk.api.metrics import count_rate_limit_fallback
from aosk.api.problems import Problem

__all__ = ["api_key_header", "require", "key_cache", "owned", "owned_async", "not_found"]

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="An AOSK API key (`aosk keys create --tenant T --scope S`)")


def key_cache(pool: Any, schema: str) -> KeyCache:
    """A process's cache of authenticated keys, looking up misses in ``pool``."""

    def lookup(key: str) -> ApiKey | None:
        with pool.connection() as conn:
            return KeyStore(conn, schema).authenticate(key)

    return KeyCache(lookup)


async def _caller(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> ApiKey:
    # async: a sync dependency would cost a threadpool round trip on every request; a key
    # remembered is answered here, a miss (a database lookup) goes to the threadpool.
    if not key:
        raise Problem(401, "unauthenticated", "Unauthenticated", "send an API key in the X-API-Key header",
                      headers={"WWW-Authenticate": "X-API-Key"})
    cache = request.app.state.keys
    hit, found = cache.cached(key)
    if not hit:
        found = await run_in_threadpool(cache.get, key)
    if found is None:
        raise Problem(401, "unauthenticated", "Unauthenticated", "the API key is unknown or revoked",
                      headers={"WWW-Authenticate": "X-API-Key"})
    # 429 rate-limited (aosk/api/limits.py); counted when Redis was down and this process decided
    await request.app.state.rate_limiter.acquire(found.key_id, lambda: count_rate_limit_fallback(request))
    return found


def require(scope: str) -> Callable[..., Awaitable[ApiKey]]:
    """A dependency: the caller's key, which must allow ``scope``."""

    async def dependency(caller: Annotated[ApiKey, Depends(_caller)]) -> ApiKey:
        if not caller.allows(scope):
            raise Problem(403, "forbidden", "Forbidden", f"this route needs a key with scope {scope}; "
                          f"this key has {caller.scope}")
        return caller

    return dependency


def not_found(agent_id: str) -> Problem:
    """The one answer for a missing agent and another tenant's: ids reveal nothing."""
    return Problem(404, "agent-not-found", "Agent not found", f"no agent {agent_id} for this key's tenant")


def owned(request: Request, caller: ApiKey, agent_id: str) -> None:
    """Raise ``not_found`` unless the caller's tenant owns ``agent_id``: every route that
    takes an agent id calls this first (``aosk.api.owners``: found once, remembered)."""
    if not request.app.state.owners.owns(caller.tenant_id, agent_id):
        raise not_found(agent_id)



async def owned_async(request: Request, caller: ApiKey, agent_id: str) -> None:
    """``owned`` for async routes: a remembered pair costs no thread; a miss looks it up
    in the threadpool."""
    if not request.app.state.owners.known(caller.tenant_id, agent_id):
        await run_in_threadpool(owned, request, caller, agent_id)
