"""The API's write path on the real stack (broker, PostgreSQL, a worker, a projector and
``aosk api`` processes under uvicorn): one ``Idempotency-Key`` sent to two API processes
writes one journal record and answers the same every time; a write's consistency token
makes the first read see it; per-key rate limits and the body cap answer 429 and 413."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest

from aosk.api.idempotency import request_hash
from aosk.topics import ensure_topics
from api_harness import ApiProcess, api_process, enter_all
from projector_harness import Projectors
from worker_harness import Workers, read_journal

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    settings: Any
    api1: ApiProcess
    api2: ApiProcess
    tight: ApiProcess
    """An API process with a tiny rate limit and consistency wait."""
    write: str
    other: str


def _keys(settings: Any, *wanted: tuple[str, str]) -> list[str]:
    """New keys (tenant, scope) straight from the key store (``aosk keys`` is tested in test_api.py)."""
    from aosk.api.keys import KeyStore

    with psycopg.connect(settings.storage.postgresql.dsn) as conn:
        store = KeyStore(conn, settings.api.schema_name)
        return [store.create(tenant_id=t, scope=scope)[1] for t, scope in wanted]


@pytest.fixture(scope="module")
def stack(settings, tmp_path_factory) -> Iterator[Stack]:
    ensure_topics(settings.kafka.bootstrap_servers, settings.kafka)
    logs = tmp_path_factory.mktemp("writes")
    with ExitStack() as es:
        projectors = Projectors(settings, logs, schema="aosk")
        es.callback(projectors.close)
        projectors.start("p1")
        workers = es.enter_context(Workers(settings, logs / "workers"))
        workers.start("w1")
        tight_env = {"AOSK_API_RATE_LIMIT_PER_S": "0.5", "AOSK_API_RATE_LIMIT_BURST": "2",
                     "AOSK_API_CONSISTENCY_WAIT_S": "0.3"}
        starting = [api_process(settings, logs, name="api1"), api_process(settings, logs, name="api2"),
                    api_process(settings, logs, name="tight", env=tight_env)]
        api1, api2, tight = enter_all(es, starting)
        write, other = _keys(settings, ("acme", "write"), ("acme", "read"))
        yield Stack(settings, api1, api2, tight, write, other)


def _post(api: ApiProcess, path: str, body: Any, key: str, idem: str | None = None) -> httpx.Response:
    headers = {"X-API-Key": key, **({"Idempotency-Key": idem} if idem else {})}
    return httpx.post(api.base + path, content=json.dumps(body),
                      headers={**headers, "content-type": "application/json"}, timeout=30)


def _same(a: httpx.Response, b: httpx.Response) -> bool:
    return (a.status_code, a.content, a.headers["content-type"], a.headers["aosk-consistency-token"]) == (
        b.status_code, b.content, b.headers["content-type"], b.headers["aosk-consistency-token"])


def test_one_key_to_two_api_processes_writes_once_and_answers_the_same(stack: Stack) -> None:
    s = stack
    made = [_post(api, "/api/v1/agents", {"name": "idem"}, s.write, "create-1") for api in (s.api1, s.api2)]
    assert made[0].status_code == 202 and _same(*made), [m.text for m in made]
    assert "idempotent-replayed" not in made[0].headers and made[1].headers["idempotent-replayed"] == "true"
    agent_id = made[0].json()["agent_id"]

    # Read-your-writes: the create's token makes the FIRST read (on the other process) see the agent.
    token = made[0].headers["aosk-consistency-token"]
    first = httpx.get(f"{s.api2.base}/api/v1/agents/{agent_id}",
                      headers={"X-API-Key": s.other, "AOSK-Consistency-Token": token}, timeout=30)
    assert first.status_code == 200, first.text
    assert (first.json()["projected"], first.json()["status"]) == (True, "READY")
    partition, offset = map(int, token.split(":"))
    p, projected = first.headers["aosk-projected-offset"].split(":")
    assert int(p) == partition and int(projected) > offset

    path = f"/api/v1/agents/{agent_id}/events"
    started = {"type": "AgentStarted", "payload": {}}
    answers = [_post(api, path, started, s.write, "start-1") for api in (s.api1, s.api2, s.api1)]
    assert answers[0].status_code == 202, answers[0].text
    assert _same(answers[0], answers[1]) and _same(answers[0], answers[2])
    assert [a.headers.get("idempotent-replayed") for a in answers] == [None, "true", "true"]
    event_id = answers[0].json()["event_id"]

    reused = _post(s.api2, path, {"type": "AgentStarted", "payload": {"correlation_id": "x"}}, s.write, "start-1")
    assert reused.status_code == 422 and reused.json()["type"].endswith("/idempotency-key-reused"), reused.text

    # Once projected: one journal record, one audit row for the event.
    seen = httpx.get(f"{s.api1.base}/api/v1/agents/{agent_id}", timeout=30, headers={
        "X-API-Key": s.other, "AOSK-Consistency-Token": answers[0].headers["aosk-consistency-token"]})
    assert seen.json()["status"] == "RUNNING", seen.text
    k = s.settings.kafka
    journal = [r for r in read_journal(k.bootstrap_servers, k.journal_topic)
               if r.event is not None and r.event.event_id == event_id]
    assert len(journal) == 1
    with psycopg.connect(s.settings.storage.postgresql.dsn) as conn:
        rows = conn.execute("select count(*) from aosk.audit_log where event_id = %s", (event_id,)).fetchone()
    assert rows == (1,)

    killed = [httpx.delete(f"{api.base}/api/v1/agents/{agent_id}", timeout=30,
                           headers={"X-API-Key": s.write, "Idempotency-Key": "kill-1"}) for api in (s.api2, s.api1)]
    assert killed[0].status_code == 202 and _same(*killed)


def test_a_pending_key_is_409_while_leased_and_taken_over_with_its_event_id_after(stack: Stack) -> None:
    s = stack
    agent_id = _post(s.api1, "/api/v1/agents", {"name": "crash"}, s.write).json()["agent_id"]
    path = f"/api/v1/agents/{agent_id}/events"
    body = {"type": "AgentStarted", "payload": {}}
    digest = request_hash("POST", "/api/v1/agents/{agent_id}/events", {"agent_id": agent_id}, [],
                          json.dumps(body).encode())
    crashed_event = "6f1c1d2e-0000-4000-8000-000000000001"
    insert = ("insert into aosk_api.idempotency_keys (tenant_id, key, request_sha256, state, lease_until, event_id, "
              "resource_id, expires_at) values ('acme', %s, %s, 'pending', now() + make_interval(secs => %s), %s, "
              "'', now() + interval '1 hour')")
    with psycopg.connect(s.settings.storage.postgresql.dsn, autocommit=True) as conn:
        conn.execute(insert, ("leased", digest, 60, crashed_event))
        conn.execute(insert, ("crashed", digest, -1, crashed_event))
        conn.execute(insert.replace("now() + interval '1 hour'", "now()"), ("expired", b"another request", 60,
                                                                             crashed_event))
    fresh = _post(s.api1, path, body, s.write, "expired")  # past its ttl: the key is new again
    assert fresh.status_code == 202 and fresh.json()["event_id"] != crashed_event, fresh.text
    busy = _post(s.api2, path, body, s.write, "leased")
    assert busy.status_code == 409 and busy.json()["type"].endswith("/idempotency-in-progress"), busy.text
    assert 1 <= int(busy.headers["retry-after"]) <= 60
    took = _post(s.api2, path, body, s.write, "crashed")
    assert took.status_code == 202 and took.json()["event_id"] == crashed_event, took.text
    assert _same(took, _post(s.api1, path, body, s.write, "crashed"))

    # The id of a new agent an event names is allocated once per key, like the event id.
    spec = {"name": "child", "priority": 50, "capabilities": [], "metadata": {}, "budgets": {
        "max_tokens": 100, "max_tool_calls": 1, "max_steps": 10, "context_window_tokens": 100}}
    spawns = [_post(api, path, {"type": "SpawnRequested", "payload": spec}, s.write, "spawn-1")
              for api in (s.api1, s.api2)]
    assert spawns[0].status_code == 202 and _same(*spawns), spawns[0].text
    assert spawns[0].json()["new_agent_id"] not in (None, agent_id)


def test_consistency_tokens_that_cannot_be_met_or_read(stack: Stack) -> None:
    s = stack
    h = {"X-API-Key": s.other}
    token = _post(s.api1, "/api/v1/agents", {"name": "listed"}, s.write).headers["aosk-consistency-token"]
    listed = httpx.get(f"{s.api2.base}/api/v1/agents", headers={**h, "AOSK-Consistency-Token": token}, timeout=30)
    assert listed.status_code == 200 and "listed" not in listed.text, listed.text  # names are not in the view
    projected = dict(pair.split(":") for pair in listed.headers["aosk-projected-offset"].split(","))
    partition, offset = token.split(":")
    assert int(projected[partition]) > int(offset)
    far = httpx.get(f"{s.tight.base}/api/v1/agents", headers={**h, "AOSK-Consistency-Token": "0:999999999"})
    assert far.status_code == 504 and far.json()["type"].endswith("/not-yet-projected"), far.text
    bad = httpx.get(f"{s.api1.base}/api/v1/agents", headers={**h, "AOSK-Consistency-Token": "zero"})
    assert bad.status_code == 422 and "AOSK-Consistency-Token" in bad.json()["detail"]


def test_a_key_over_its_rate_is_429_with_retry_after(stack: Stack) -> None:
    s = stack
    [key] = _keys(s.settings, ("limited", "read"))
    codes = [httpx.get(f"{s.tight.base}/api/v1/agents", headers={"X-API-Key": key}) for _ in range(3)]
    assert [c.status_code for c in codes[:2]] == [200, 200]
    assert codes[2].status_code == 429 and codes[2].json()["type"].endswith("/rate-limited")
    assert int(codes[2].headers["retry-after"]) >= 1
    assert httpx.get(f"{s.api1.base}/api/v1/agents", headers={"X-API-Key": key}).status_code == 200


def test_a_body_over_the_cap_is_413_with_or_without_a_length(stack: Stack) -> None:
    s = stack
    big = json.dumps({"name": "x" * (1024 * 1024)}).encode()
    h = {"X-API-Key": s.write, "content-type": "application/json"}
    r = httpx.post(s.api1.base + "/api/v1/agents", content=big, headers=h, timeout=30)
    assert r.status_code == 413 and r.json()["type"].endswith("/body-too-large"), r.text

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    r = httpx.post(s.api1.base + "/api/v1/agents", content=chunks(), headers=h, timeout=30)
    assert r.status_code == 413 and "at most 1048576 bytes" in r.json()["detail"], r.text
