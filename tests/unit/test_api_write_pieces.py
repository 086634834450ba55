"""The pure pieces of the API's write path: consistency tokens, the per-key token bucket
(an injected clock), the canonical request hash, and the body cap middleware."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from aosk.api.consistency import format_positions, parse_token, write_token
from aosk.api.idempotency import request_hash
from aosk.api.limits import BodyCap, RateLimiter, TokenBucket
from aosk.errors import Problem


def test_consistency_tokens_parse_and_format() -> None:
    assert parse_token("3:1234") == {3: 1234}
    assert parse_token(" 0:5, 2:7 ,0:3") == {0: 5, 2: 7}  # the highest offset per partition wins
    assert format_positions({2: 7, 0: 5}) == "0:5,2:7"
    assert parse_token(format_positions({1: 0, 11: 99})) == {1: 0, 11: 99}
    assert write_token(4, 42) == {"AOSK-Consistency-Token": "4:42"}
    for bad in ("", "3", "3:", ":4", "a:1", "1:-2", "1:2:3", "1:2,", "1:" + "9" * 19 + "9",
                "1:" + str(2**63), ",".join(["1:1"] * 1025)):
        with pytest.raises(ValueError):
            parse_token(bad)


def test_the_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    b = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [b.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(0.0) == pytest.approx(0.5)  # empty: one token comes in half a second
    assert b.take(0.5) == 0.0
    assert b.take(100.0) == 0.0  # a long idle spell banks at most `burst`
    assert [b.take(100.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]


def test_the_rate_limiter_is_per_key_and_says_when_to_retry() -> None:
    now = [0.0]
    limiter = RateLimiter(0.5, 2, clock=lambda: now[0])
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(Problem) as e:
        limiter.check("a")
    assert (e.value.status, e.value.slug, e.value.headers) == (429, "rate-limited", {"Retry-After": "2"})
    limiter.check("b")  # another key has its own bucket
    now[0] = 2.0
    limiter.check("a")
    off = RateLimiter(0, 1, clock=lambda: now[0])
    for _ in range(100):
        off.check("a")


def test_the_request_hash_is_canonical_in_the_body_and_exact_in_the_rest() -> None:
    base = request_hash("POST", "/api/v1/agents/{agent_id}/events", {"agent_id": "a"}, [],
                        b'{"type": "AgentStarted", "payload": {"x": 1, "y": 2}}')
    same = request_hash("post", "/api/v1/agents/{agent_id}/events", {"agent_id": "a"}, [],
                        b'{"payload":{"y":2,"x":1},"type":"AgentStarted"}')
    assert base == same and len(base) == 32
    others = [
        request_hash("POST", "/api/v1/agents/{agent_id}/events", {"agent_id": "b"}, [],
                     b'{"type": "AgentStarted", "payload": {"x": 1, "y": 2}}'),
        request_hash("POST", "/api/v1/agents/{agent_id}/events", {"agent_id": "a"}, [("wait", "verdict")],
                     b'{"type": "AgentStarted", "payload": {"x": 1, "y": 2}}'),
        request_hash("POST", "/api/v1/agents/{agent_id}/events", {"agent_id": "a"}, [],
                     b'{"type": "AgentStarted", "payload": {"x": 1, "y": 3}}'),
        request_hash("DELETE", "/api/v1/agents/{agent_id}", {"agent_id": "a"}, [], b""),
        request_hash("POST", "/api/v1/agents/{agent_id}/events", {"agent_id": "a"}, [], b"not json"),
    ]
    assert len({base, *others}) == 6


def _call(cap: BodyCap, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[int, Any]:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(cap({"type": "http", "path": "/x", "headers": headers}, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


def test_the_body_cap_refuses_long_and_chunked_bodies_before_the_app_sees_them() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        got = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps({"len": len(got["body"])}).encode()})

    cap = BodyCap(app, max_bytes=10)
    assert _call(cap, [b"12345", b"67890"], []) == (200, {"len": 10})
    status, problem = _call(cap, [b"1" * 11], [(b"content-length", b"11")])
    assert status == 413 and problem["type"].endswith("/body-too-large") and "Content-Length 11" in problem["detail"]
    status, problem = _call(cap, [b"123456", b"789012"], [])  # chunked: no length, counted as received
    assert status == 413 and "at most 10 bytes" in problem["detail"]


class _Store:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def claim(self, tenant_id: str, key: str, digest: bytes, event_id: str, resource_id: str) -> Any:
        from aosk.api.idempotency import Claimed

        self.calls.append("claim")
        return Claimed("stored-event", "stored-id")

    async def finish(self, tenant_id: str, key: str, response: Any) -> Any:
        self.calls.append(f"finish {response.status_code}")
        return response

    async def release(self, tenant_id: str, key: str) -> None:
        self.calls.append("release")


def _idem(key: str | None) -> tuple[Any, _Store]:
    from types import SimpleNamespace

    from starlette.requests import Request

    from aosk.api.idempotency import Idempotency

    store = _Store()
    request = Request({"type": "http", "method": "POST", "path": "/x", "headers": [], "query_string": b"",
                       "app": SimpleNamespace(state=SimpleNamespace(idempotency=store))})
    return Idempotency(request, "acme", key, b"d"), store


def test_run_produces_with_the_claimed_ids_stores_results_and_releases_on_a_5xx() -> None:
    from fastapi.responses import JSONResponse

    idem, store = _idem("k")
    seen: list[tuple[str, str]] = []

    async def ok(event_id: str, new_id: str) -> JSONResponse:
        seen.append((event_id, new_id))
        return JSONResponse({"ok": True}, status_code=202)

    assert asyncio.run(idem.run(ok, event_id="mine")).status_code == 202
    assert seen == [("stored-event", "stored-id")] and store.calls == ["claim", "finish 202"]

    async def rejected(event_id: str, new_id: str) -> JSONResponse:
        raise Problem(409, "rejected", "Rejected", "illegal transition")

    idem, store = _idem("k")
    answer = asyncio.run(idem.run(rejected))  # a result of producing: stored and answered, not raised
    assert answer.status_code == 409 and json.loads(bytes(answer.body))["type"].endswith("/rejected")
    assert store.calls == ["claim", "finish 409"]

    async def unavailable(event_id: str, new_id: str) -> JSONResponse:
        raise Problem(503, "journal-unavailable", "Journal unavailable", "broker down")

    idem, store = _idem("k")
    with pytest.raises(Problem):
        asyncio.run(idem.run(unavailable))
    assert store.calls == ["claim", "release"]  # the next retry takes the key over

    idem, store = _idem(None)
    assert asyncio.run(idem.run(ok, event_id="mine")).status_code == 202
    assert seen[-1][0] == "mine" and store.calls == []
