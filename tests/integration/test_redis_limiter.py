"""``RedisRateLimiter`` against a real ``redis-server``: the Lua token bucket has the
per-process bucket's semantics (starts full, refills at its rate up to the burst,
``Retry-After`` the time until the next token), keys are separate and prefixed, an idle
bucket expires; and with no Redis answering, requests fall back to the process's own
buckets (counted, never an error), and Redis is asked again after ``retry_s``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from aosk.api.limits import RedisRateLimiter
from aosk.api.problems import Problem
from aosk.config import RedisSettings
from api_harness import free_port
from redis_harness import RedisServer, redis_server

pytestmark = pytest.mark.integration


async def _take(limiter: RedisRateLimiter, key: str, n: int, counted: list[int] | None = None) -> list[str]:
    """``n`` requests of ``key``: "ok" or the 429's Retry-After."""
    out = []
    for _ in range(n):
        try:
            await limiter.acquire(key, None if counted is None else (lambda: counted.append(1)))
            out.append("ok")
        except Problem as e:
            assert e.status == 429 and e.slug == "rate-limited"
            out.append(e.headers["Retry-After"])
    return out


def _exists(port: int, key: str) -> bool:
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as r:
        return bool(r.exists(key))


def test_the_lua_bucket_matches_the_process_bucket(tmp_path: Path) -> None:
    with redis_server(tmp_path) as server:
        settings = RedisSettings(host="127.0.0.1", port=server.port, key_prefix="t1:")

        async def run() -> None:
            limiter = RedisRateLimiter(0.5, 3, settings)  # a token every 2 s
            try:
                assert await _take(limiter, "a", 5) == ["ok", "ok", "ok", "2", "2"]
                assert await _take(limiter, "b", 4) == ["ok", "ok", "ok", "2"]  # its own bucket
                # a second process (another client) sees the same, spent bucket
                other = RedisRateLimiter(0.5, 3, settings)
                assert await _take(other, "a", 1) == ["2"]
                await other.close()
                fast = RedisRateLimiter(20, 2, settings.model_copy(update={"key_prefix": "t2:"}))
                assert await _take(fast, "a", 3) == ["ok", "ok", "1"]  # another prefix: fresh; 50 ms -> 1 s
                await asyncio.sleep(0.12)  # 2.4 tokens' worth of time passes (the rate under test)
                assert await _take(fast, "a", 3) == ["ok", "ok", "1"]  # refilled, but never above the burst
                await fast.close()
            finally:
                await limiter.close()

        asyncio.run(run())
        with redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2) as r:
            ttl = r.pttl("t1:ratelimit:a")
        assert 1000 < ttl <= 7000  # expires once it would be full again (3 tokens at 0.5/s) + 1 s
        assert _exists(server.port, "t2:ratelimit:a")


def test_no_redis_falls_back_to_the_process_buckets_and_retries(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path / "redis.log")  # nothing listens on its port yet
    settings = RedisSettings(host="127.0.0.1", port=server.port, timeout_s=0.2, retry_s=5)
    now = [1000.0]
    counted: list[int] = []

    async def run() -> None:
        limiter = RedisRateLimiter(0.5, 2, settings, clock=lambda: now[0])
        try:
            # no Redis: this process's own bucket decides, each request counted, no error
            assert await _take(limiter, "a", 3, counted) == ["ok", "ok", "2"]
            assert len(counted) == 3
            server.start()
            now[0] += 1  # within retry_s: Redis is not asked yet
            assert await _take(limiter, "b", 1, counted) == ["ok"] and len(counted) == 4
            assert not _exists(server.port, "aosk:ratelimit:b")
            now[0] += 5  # past it: Redis decides again (a fresh, shared bucket)
            assert await _take(limiter, "a", 3, counted) == ["ok", "ok", "2"] and len(counted) == 4
            assert _exists(server.port, "aosk:ratelimit:a")
        finally:
            await limiter.close()

    try:
        asyncio.run(run())
    finally:
        server.kill()
