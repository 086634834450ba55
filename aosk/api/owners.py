"""Which tenant owns an agent, remembered per process.

The owner is recorded once, before the agent's spawn is produced, and never changes; so
a pair found owned can be kept for the life of the process, and the ownership check of
every route that takes an agent id costs no database round trip after the first.
A pair not found is never remembered: the agent may be created a moment later, through
another API process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["OwnerCache", "owner_cache"]


class OwnerCache:
    """(tenant, agent) pairs known to be owned; ``lookup`` asks the database otherwise."""

    def __init__(self, lookup: Callable[[str, str], bool], *, size: int = 100_000) -> None:
        self._lookup = lookup
        self._size = size
        self._owned: set[tuple[str, str]] = set()

    def known(self, tenant_id: str, agent_id: str) -> bool:
        """Whether the pair is remembered (no lookup)."""
        return (tenant_id, agent_id) in self._owned

    def owns(self, tenant_id: str, agent_id: str) -> bool:
        pair = (tenant_id, agent_id)
        if pair in self._owned:
            return True
        if not self._lookup(tenant_id, agent_id):
            return False
        self.add(tenant_id, agent_id)
        return True

    def add(self, tenant_id: str, agent_id: str) -> None:
        """Remember a pair just recorded (by this process's own create)."""
        if len(self._owned) >= self._size:
            self._owned.clear()  # bounded; forgetting only costs a lookup
        self._owned.add((tenant_id, agent_id))


def owner_cache(pool: Any, schema: str) -> OwnerCache:
    """A process's cache of ownership, looking up misses in ``schema``'s agents table through ``pool``."""
    from aosk.reads.agents import is_owned

    def lookup(tenant_id: str, agent_id: str) -> bool:
        with pool.connection() as conn:
            return is_owned(conn, schema, agent_id, tenant_id)

    return OwnerCache(lookup)
