"""API keys without a database: their shape, scopes, and the 1-second cache."""

from __future__ import annotations

from aosk.api.keys import SCOPES, ApiKey, KeyCache, parse_key


def test_key_shape() -> None:
    assert parse_key("aosk_0123456789abcdef_" + "A" * 43) == "0123456789abcdef"
    for bad in ("", "aosk_", "aosk_0123456789abcdef_short", "aosk_XYZ3456789abcdef_" + "A" * 43,
                "bearer aosk_0123456789abcdef_" + "A" * 43):
        assert parse_key(bad) is None, bad


def test_scopes_are_ordered() -> None:
    keys = {s: ApiKey("id", "t", s, "") for s in SCOPES}
    assert keys["admin"].allows("read") and keys["admin"].allows("write") and keys["admin"].allows("admin")
    assert keys["write"].allows("read") and not keys["write"].allows("admin")
    assert keys["read"].allows("read") and not keys["read"].allows("write")


def test_the_cache_asks_again_after_its_ttl_so_a_revocation_takes_effect() -> None:
    now = [0.0]
    live = {"k": ApiKey("id", "t", "read", "")}
    asked: list[str] = []

    def lookup(key: str) -> ApiKey | None:
        asked.append(key)
        return live.get(key)

    cache = KeyCache(lookup, ttl_s=1.0, clock=lambda: now[0])
    assert cache.get("k") is not None and cache.get("k") is not None and asked == ["k"]
    del live["k"]  # revoked
    now[0] = 0.9
    assert cache.get("k") is not None
    now[0] = 1.0
    assert cache.get("k") is None and asked == ["k", "k"]
    assert cache.get("unknown") is None  # misses are cached too (no lookup storm from a bad client)
    assert cache.get("unknown") is None and asked.count("unknown") == 1
