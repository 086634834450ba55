"""Per-key rate limits and the request body cap.

``RateLimiter`` keeps one token bucket per API key in this process: ``rate`` tokens a
second up to ``burst``; a request takes one. The buckets live in each API process, so N
processes behind a load balancer allow a key N times the rate (docs/api.md "Rate limits").

``RedisRateLimiter`` (``cache.backend: redis``) keeps the same bucket per key in Redis,
updated by one Lua script (atomic on the server, timed by the server's clock), so every
API process of the cluster takes from the same bucket. When Redis does not answer within
``cache.redis.timeout_s`` the request is checked against this process's own buckets
instead (never refused or failed for that): a warning is logged once per outage, each such
request is counted (``aosk_api_rate_limit_fallbacks_total``), and Redis is asked again
after ``cache.redis.retry_s``.

``BodyCap`` is an ASGI middleware: a request whose ``Content-Length`` or whose received
bytes (chunked bodies have no length) pass ``max_bytes`` is answered 413 before any of it
is parsed. It buffers the body it let through (the app buffers it anyway to parse JSON)
and hands later messages (``http.disconnect`` for streams) straight through.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from aosk.api.problems import TYPE_BASE, Problem
from aosk.config import RedisSettings

__all__ = ["TokenBucket", "RateLimiter", "RedisRateLimiter", "BodyCap"]

log = logging.getLogger(__name__)


def _limited(rate: float, burst: int, wait: float, where: str) -> Problem:
    """The 429 problem; ``Retry-After`` in whole seconds, at least 1."""
    retry = max(1, math.ceil(wait))
    return Problem(429, "rate-limited", "Rate limited",
                   f"this API key may send {rate:g} requests a second (burst {burst}) {where}; "
                   f"retry after {retry} s", headers={"Retry-After": str(retry)})


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` banked; starts full."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate, self._burst = rate, float(burst)
        self._tokens, self._at = float(burst), now

    def take(self, now: float) -> float:
        """0 if a token was taken, else the seconds until one will be there."""
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self._rate


class RateLimiter:
    """A token bucket per key id; ``rate`` 0 turns limiting off."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 size: int = 100_000) -> None:
        self._rate, self._burst, self._clock, self._size = rate, burst, clock, size
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, key_id: str) -> None:
        """Take a token for ``key_id`` or raise the 429 problem (``Retry-After`` in whole seconds)."""
        if self._rate <= 0:
            return
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key_id)
            if bucket is None:
                if len(self._buckets) >= self._size:
                    self._buckets.clear()  # many idle keys: they start full again, which is what idle means
                bucket = self._buckets[key_id] = TokenBucket(self._rate, self._burst, now)
            wait = bucket.take(now)
        if wait > 0:
            raise _limited(self._rate, self._burst, wait, "to each API process")

    async def acquire(self, key_id: str, on_fallback: Callable[[], None] | None = None) -> None:
        """``check`` on the request path (the same interface as ``RedisRateLimiter``)."""
        self.check(key_id)

    def describe(self) -> str:
        return "off" if self._rate <= 0 else "per API process"


# KEYS[1] the key's bucket (a hash: tokens, at in microseconds of the server's clock);
# ARGV rate (tokens/s), burst. Returns "0" when a token was taken, else the seconds until
# one will be there: TokenBucket.take, run inside Redis so concurrent takes serialise.
# An idle bucket expires once it would be full again (idle means full, as in RateLimiter).
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisRateLimiter:
    """A token bucket per key id in Redis, shared by every API process using the same
    server and ``key_prefix``; this process's ``fallback`` buckets while Redis is down."""

    def __init__(self, rate: float, burst: int, redis: RedisSettings, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate, self._burst, self._settings, self._clock = rate, burst, redis, clock
        self.fallback = RateLimiter(rate, burst, clock=clock)
        self._client: Any = None
        self._script: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._down_until: float | None = None
        self.where = f"{redis.host}:{redis.port}/{redis.db}"

    def _connect(self) -> Any:
        # redis.asyncio connections belong to the event loop that opened them
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            s = self._settings
            # no retries inside the client: a failed call falls back to this process's buckets at once
            self._client = Redis(host=s.host or "", port=s.port, db=s.db,
                                 password=s.password.get_secret_value() if s.password else None,
                                 max_connections=s.pool_size, socket_timeout=s.timeout_s,
                                 socket_connect_timeout=s.timeout_s, retry=Retry(NoBackoff(), 0))
            self._script = self._client.register_script(TOKEN_BUCKET_LUA)
            self._loop = loop
        return self._script

    async def acquire(self, key_id: str, on_fallback: Callable[[], None] | None = None) -> None:
        """Take a token for ``key_id`` or raise the 429 problem. When Redis does not
        answer, this process's own bucket decides, after ``on_fallback()`` (a count)."""
        if self._rate <= 0:
            return
        if self._down_until is not None and self._clock() < self._down_until:
            self._fall_back(key_id, on_fallback)
            return
        from redis.exceptions import RedisError

        try:
            script = self._connect()
            answer = await asyncio.wait_for(
                script(keys=[f"{self._settings.key_prefix}ratelimit:{key_id}"], args=[self._rate, self._burst]),
                timeout=self._settings.timeout_s * 2)
            wait = float(answer)
        except (RedisError, OSError, TimeoutError, ValueError) as e:
            if self._down_until is None:
                log.warning("Redis at %s did not answer (%s: %s); rate limits are per API process until it does",
                            self.where, type(e).__name__, e)
            self._down_until = self._clock() + self._settings.retry_s
            self._fall_back(key_id, on_fallback)
            return
        if self._down_until is not None:
            log.warning("Redis at %s answers again; rate limits are shared by the cluster again", self.where)
            self._down_until = None
        if wait > 0:
            raise _limited(self._rate, self._burst, wait, "to the whole cluster")

    def describe(self) -> str:
        """Where the buckets are now, for ``/api/health``."""
        if self._rate <= 0:
            return "off"
        if self._down_until is not None:
            return f"per API process: Redis at {self.where} did not answer"
        return f"cluster-wide in Redis at {self.where}"

    def _fall_back(self, key_id: str, on_fallback: Callable[[], None] | None) -> None:
        if on_fallback is not None:
            on_fallback()
        self.fallback.check(key_id)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class BodyCap:
    """ASGI middleware: 413 ``body-too-large`` for a request body over ``max_bytes``."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, send, f"Content-Length {int(length)}")
            return
        chunks: list[bytes] = []
        size, first = 0, None
        while True:
            message = await receive()
            if message["type"] != "http.request":
                first = message  # the client left before sending it all
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._refuse(scope, send, f"more than {self.max_bytes} bytes received")
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        pending = [first or {"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Any:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict[str, Any], send: Any, seen: str) -> None:
        body = json.dumps({"type": TYPE_BASE + "body-too-large", "title": "Body too large", "status": 413,
                           "detail": f"the request body may be at most {self.max_bytes} bytes ({seen})",
                           "instance": scope.get("path", "")}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/problem+json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
