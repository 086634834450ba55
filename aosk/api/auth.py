"""The one authentication dependency: ``X-API-Key`` -> the caller's key (tenant, scope)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from aosk.api.keys import ApiKey, KeyCache, KeyStore
from aosk.api.problems import Problem

__all__ = ["api_key_header", "require", "key_cache", "owned_agent", "agent_not_found"]

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="An AOSK API key (`aosk keys create --tenant T --scope S`)")


def key_cache(pool: Any, schema: str) -> KeyCache:
    """A process's cache of authenticated keys, looking up misses in ``pool``."""

    def lookup(key: str) -> ApiKey | None:
        with pool.connection() as conn:
            return KeyStore(conn, schema).authenticate(key)

    return KeyCache(lookup)


def _caller(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> ApiKey:
    if not key:
        raise Problem(401, "unauthenticated", "Unauthenticated", "send an API key in the X-API-Key header",
                      headers={"WWW-Authenticate": "X-API-Key"})
    found = request.app.state.keys.get(key)
    if found is None:
        raise Problem(401, "unauthenticated", "Unauthenticated", "the API key is unknown or revoked",
                      headers={"WWW-Authenticate": "X-API-Key"})
    return found


def require(scope: str) -> Callable[..., ApiKey]:
    """A dependency: the caller's key, which must allow ``scope``."""

    def dependency(caller: Annotated[ApiKey, Depends(_caller)]) -> ApiKey:
        if not caller.allows(scope):
            raise Problem(403, "forbidden", "Forbidden", f"this route needs a key with scope {scope}; "
                          f"this key has {caller.scope}")
        return caller

    return dependency


def agent_not_found(agent_id: str) -> Problem:
    """The one answer for a missing agent and another tenant's: ids reveal nothing."""
    return Problem(404, "agent-not-found", "Agent not found", f"no agent {agent_id} for this key's tenant")


def owned_agent(request: Request, caller: ApiKey, agent_id: str) -> None:
    """The check every route that takes an agent id makes first: ``agent_id`` was created
    through the API for the caller's tenant, else ``agent_not_found``."""
    from psycopg import sql

    settings = request.app.state.settings
    with request.app.state.pool.connection() as conn:
        owned = conn.execute(sql.SQL("select 1 from {} where agent_id = %s and tenant_id = %s").format(
            sql.Identifier(settings.api.schema_name, "agents")), (agent_id, caller.tenant_id)).fetchone()
    if owned is None:
        raise agent_not_found(agent_id)
