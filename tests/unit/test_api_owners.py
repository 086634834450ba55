"""The per-process ownership cache: owned pairs are remembered, misses are always asked."""

from __future__ import annotations

from aosk.api.owners import OwnerCache


def test_owned_pairs_are_remembered_and_misses_asked_again() -> None:
    asked: list[tuple[str, str]] = []
    owners = {("acme", "a1")}

    def lookup(tenant: str, agent: str) -> bool:
        asked.append((tenant, agent))
        return (tenant, agent) in owners

    cache = OwnerCache(lookup, size=2)
    assert cache.owns("acme", "a1") and cache.owns("acme", "a1")
    assert asked == [("acme", "a1")]
    assert not cache.owns("globex", "a1") and not cache.owns("globex", "a1")  # another tenant's: never cached
    assert asked.count(("globex", "a1")) == 2
    owners.add(("acme", "a2"))
    assert cache.owns("acme", "a2")  # created later (another process): found once it exists
    cache.add("acme", "a3")  # full: forgets, stays bounded
    assert cache.owns("acme", "a3") and len(asked) == 4
