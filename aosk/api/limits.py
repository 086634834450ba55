"""Per-key rate limits and the request body cap.

``RateLimiter`` keeps one token bucket per API key in this process: ``rate`` tokens a
second up to ``burst``; a request takes one. The buckets live in each API process, so N
processes behind a load balancer allow a key N times the rate (docs/api.md "Rate limits").

``BodyCap`` is an ASGI middleware: a request whose ``Content-Length`` or whose received
bytes (chunked bodies have no length) pass ``max_bytes`` is answered 413 before any of it
is parsed. It buffers the body it let through (the app buffers it anyway to parse JSON)
and hands later messages (``http.disconnect`` for streams) straight through.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from aosk.api.problems import TYPE_BASE, Problem

__all__ = ["TokenBucket", "RateLimiter", "BodyCap"]


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
            retry = max(1, math.ceil(wait))
            raise Problem(429, "rate-limited", "Rate limited",
                          f"this API key may send {self._rate:g} requests a second (burst {self._burst}) to each "
                          f"API process; retry after {retry} s", headers={"Retry-After": str(retry)})


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
