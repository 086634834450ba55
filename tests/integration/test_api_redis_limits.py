"""``cache.backend: redis``: two ``aosk api`` processes share each key's rate limit through
a real ``redis-server``, so the limit holds for both together (without Redis each process
would allow the burst on its own). Redis SIGKILLed: requests are still answered, each
process limits with its own buckets, the fallback is logged and counted
(``aosk_api_rate_limit_fallbacks_total``); Redis back on its port: shared again."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aosk.api.keys import KeyStore
from aosk.config import Settings
from aosk.waiting import wait_for
from api_harness import ApiProcess, api_process, enter_all, free_port
from redis_harness import redis_server

pytestmark = pytest.mark.integration

BURST = 8


def _statuses(apis: list[ApiProcess], key: str, n: int) -> list[int]:
    """``n`` requests, alternating between the processes; their status codes."""
    missing = "00000000-0000-4000-8000-000000000000"
    out = []
    for i in range(n):
        r = httpx.get(f"{apis[i % len(apis)].base}/api/v1/agents/{missing}", headers={"X-API-Key": key}, timeout=10)
        out.append(r.status_code)
    return out


def _fallbacks(metrics_port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "aosk_api_rate_limit_fallbacks_total":
                return s.value
    return 0.0


def _new_key(settings: Settings) -> str:
    """A fresh read key (the API processes made the schema at start)."""
    assert settings.storage.postgresql.dsn is not None
    with psycopg.connect(settings.storage.postgresql.dsn) as conn:
        return KeyStore(conn, settings.api.schema_name).create(tenant_id="acme", scope="read")[1]


def test_two_api_processes_share_a_key_limit_through_redis(settings: Settings, tmp_path: Path) -> None:
    with redis_server(tmp_path) as redis:
        env = {"AOSK_CACHE_BACKEND": "redis", "AOSK_REDIS_HOST": "127.0.0.1", "AOSK_REDIS_PORT": str(redis.port),
               "AOSK_REDIS_KEY_PREFIX": f"{settings.kafka.topic_prefix}:", "AOSK_REDIS_RETRY_S": "0.5",
               # one token per 100 s: nothing refills while the test runs
               "AOSK_API_RATE_LIMIT_PER_S": "0.01", "AOSK_API_RATE_LIMIT_BURST": str(BURST)}
        metrics_port = free_port()
        with ExitStack() as es:
            a, b = enter_all(es, [api_process(settings, tmp_path, name="api-a", env=env,
                                              args=("--metrics-port", str(metrics_port))),
                                  api_process(settings, tmp_path, name="api-b", env=env)])
            key, key2, key3 = (_new_key(settings) for _ in range(3))
            # 1. One bucket for both processes: the burst, then 429 from either.
            codes = _statuses([a, b], key, 3 * BURST)
            assert set(codes) <= {404, 429}, codes
            assert codes.count(404) == BURST and codes[:BURST] == [404] * BURST, codes
            limited = httpx.get(f"{b.base}/api/v1/agents/x", headers={"X-API-Key": key}, timeout=10)
            assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
            assert "whole cluster" in limited.json()["detail"]
            assert _fallbacks(metrics_port) == 0
            assert httpx.get(f"{a.base}/api/health", timeout=30).json()["rate_limits"] == (
                f"cluster-wide in Redis at 127.0.0.1:{redis.port}/0")

            # 2. Redis gone: never a 5xx; each process limits on its own (a fresh key: a
            # burst in each), logged and counted.
            redis.kill()
            codes = _statuses([a, b], key2, 4 * BURST)
            assert set(codes) <= {404, 429}, codes
            assert codes.count(404) == 2 * BURST, codes
            assert _fallbacks(metrics_port) >= 2 * BURST
            assert "rate limits are per API process until it does" in a.log()
            assert "rate limits are per API process until it does" in b.log()
            assert httpx.get(f"{b.base}/api/health", timeout=30).json()["rate_limits"] == (
                f"per API process: Redis at 127.0.0.1:{redis.port}/0 did not answer")

            # 3. Redis back (empty): the cluster shares one bucket again.
            redis.start()

            def shared_again() -> bool:
                return "shared by the cluster again" in a.log() and "shared by the cluster again" in b.log()

            def poke() -> bool:  # requests of another key wake both processes up
                _statuses([a, b], key2, 2)
                return shared_again()

            wait_for(poke, timeout=20, interval=0.3, what="both API processes to use Redis again")
            codes = _statuses([a, b], key3, 3 * BURST)
            assert codes.count(404) == BURST, codes
