"""``aosk api`` under uvicorn on a real port, with keys made by ``aosk keys`` in the real
PostgreSQL (the key tests; the others take theirs from the key store): liveness,
readiness, the key check (missing, malformed, unknown, revoked, too narrow a scope) as
problem documents, and tenant scoping of ``/api/v1/status``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from aosk.projectors.db import migrate
from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from api_harness import api_process, make_key, store_key
from projector_harness import Projectors, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(settings, tmp_path_factory) -> Iterator[tuple[str, object]]:
    ensure_topics(settings.kafka.bootstrap_servers, settings.kafka)
    with psycopg.connect(settings.storage.postgresql.dsn) as conn:
        migrate(conn, schema="aosk")
        conn.execute("insert into aosk.agent_state (agent_id, journal_partition, tenant_id, status, fold_version, "
                     "seq, last_offset, state_hash, audit_head, tokens_used, tool_calls_used, steps_used, tokens_left, "
                     "tool_calls_left, steps_left, window_entries, window_tokens, inbox_messages, open_calls, "
                     "capabilities, memories_stored, memories_forgotten, messages_sent, messages_received, "
                     "messages_bounced, children_requested, accepted, rejected, duplicates, updated_at, state) "
                     "select 'a' || t, 0, t, 'READY', 3, 1, 0, '', '', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '{}', "
                     "0, 0, 0, 0, 0, 0, 1, 0, 0, now(), '' from unnest(array['acme', 'acme2', 'globex']) t")
    with api_process(settings, tmp_path_factory.mktemp("api")) as api:
        yield api.base, settings


def test_liveness_and_readiness(api) -> None:
    base, _ = api
    assert httpx.get(base + "/health").json() == {"status": "healthy"}
    answers: list[dict[str, Any]] = []

    def dependencies_ok() -> bool:
        # polled like a readiness probe: a check may time out once while the machine is busy
        r = httpx.get(base + "/api/health", timeout=30)
        assert r.status_code == 200 and r.json()["status"] in ("healthy", "degraded"), r.text
        answers.append(r.json())
        return all(answers[-1]["checks"][c]["status"] == "ok" for c in ("kafka", "postgresql"))

    wait_for(dependencies_ok, timeout=60, what="/api/health to find Kafka and PostgreSQL")


@pytest.mark.parametrize("header", [None, "", "not-a-key", "aosk_0123456789abcdef_" + "A" * 43])
def test_a_missing_malformed_or_unknown_key_is_a_401_problem(api, header) -> None:
    base, _ = api
    headers = {} if header is None else {"X-API-Key": header}
    r = httpx.get(base + "/api/v1/status", headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"].endswith("/unauthenticated") and r.json()["status"] == 401


def test_scopes_and_tenants(api) -> None:
    base, settings = api
    _, read = make_key(settings, "acme", "read")
    _, admin = make_key(settings, "acme", "admin")
    _, other = make_key(settings, "globex", "admin")
    r = httpx.get(base + "/api/v1/status", headers={"X-API-Key": read})
    assert r.status_code == 403 and "scope admin" in r.json()["detail"]
    mine = httpx.get(base + "/api/v1/status", headers={"X-API-Key": admin}).json()
    assert mine["tenant_id"] == "acme" and mine["agents_by_status"] == {"READY": 1}
    theirs = httpx.get(base + "/api/v1/status", headers={"X-API-Key": other}).json()
    assert theirs["tenant_id"] == "globex" and theirs["agents_by_status"] == {"READY": 1}


def test_a_revoked_key_is_refused_within_a_second_or_two(api) -> None:
    base, settings = api
    key_id, admin = make_key(settings, "acme", "admin")
    assert httpx.get(base + "/api/v1/status", headers={"X-API-Key": admin}).status_code == 200
    out = run_cli(settings, "keys", "revoke", key_id)
    assert out.returncode == 0, out
    wait_for(lambda: httpx.get(base + "/api/v1/status", headers={"X-API-Key": admin}).status_code == 401,
             timeout=3, what="the revoked key to be refused")
    listed = run_cli(settings, "keys", "list", "--tenant", "acme")
    assert key_id in listed.stdout and admin not in listed.stdout  # ids only, never a key
    again = run_cli(settings, "keys", "revoke", key_id)
    assert again.returncode == 1 and "no live key" in again.stderr


def test_the_openapi_schema_declares_the_key(api) -> None:
    base, _ = api
    spec = httpx.get(base + "/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert spec["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": "An AOSK API key (`aosk keys create --tenant T --scope S`)"}
    assert spec["paths"]["/api/v1/status"]["get"]["security"] == [{"APIKeyHeader": []}]


def test_create_an_agent_then_read_it_back_only_from_its_tenant(api, tmp_path) -> None:
    base, settings = api
    _, write = store_key(settings, "acme", "write")
    _, read = store_key(settings, "acme", "read")
    _, other = store_key(settings, "globex", "admin")
    body = {"name": "researcher", "priority": 70, "capabilities": ["search"],
            "budgets": {"max_tokens": 5000, "max_tool_calls": 10, "max_steps": 100, "context_window_tokens": 2000}}
    assert httpx.post(base + "/api/v1/agents", json=body, headers={"X-API-Key": read}).status_code == 403
    bad = httpx.post(base + "/api/v1/agents", json={**body, "priority": 500}, headers={"X-API-Key": write})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
    assert bad.json()["errors"][0]["field"] == "body.priority" and "priority" in bad.json()["detail"]
    r = httpx.post(base + "/api/v1/agents", json=body, headers={"X-API-Key": write}, timeout=30)
    assert r.status_code == 202, r.text
    made = r.json()
    agent_id = made["agent_id"]
    assert set(made) == {"agent_id", "event_id", "partition", "offset", "task_id"} and made["task_id"] is None

    projectors = Projectors(settings, tmp_path, schema="aosk")
    try:
        projectors.start("p1")

        def projected() -> dict:
            got = httpx.get(f"{base}/api/v1/agents/{agent_id}", headers={"X-API-Key": read}).json()
            return got if got.get("projected") else {}

        wait_for(lambda: bool(projected()), timeout=120, what="the new agent to be projected")
    finally:
        projectors.stop_all()
        projectors.close()
    view = projected()
    assert (view["tenant_id"], view["status"], view["seq"], view["tokens_left"], view["capabilities"]) == (
        "acme", "READY", 1, 5000, ["search"])
    assert (view["partition"], view["last_offset"]) == (made["partition"], made["offset"])

    # Another tenant's agent and an agent that does not exist: the same 404, word for word.
    theirs = httpx.get(f"{base}/api/v1/agents/{agent_id}", headers={"X-API-Key": other})
    missing_id = "00000000-0000-4000-8000-000000000000"
    missing = httpx.get(f"{base}/api/v1/agents/{missing_id}", headers={"X-API-Key": other})
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["detail"].replace(agent_id, "X") == missing.json()["detail"].replace(missing_id, "X")


def test_append_events_with_the_kernels_verdict(api, tmp_path) -> None:
    from aosk.events import decode_transition
    from worker_harness import Workers, read_topic

    base, settings = api
    _, write = store_key(settings, "acme", "write")
    _, other = store_key(settings, "globex", "write")
    h = {"X-API-Key": write}
    made = httpx.post(base + "/api/v1/agents", json={"name": "doer"}, headers=h, timeout=30).json()
    agent_id = made["agent_id"]
    events = f"{base}/api/v1/agents/{agent_id}/events"
    with Workers(settings, tmp_path) as workers:
        workers.start("w1")
        started = {"type": "AgentStarted", "payload": {}}
        # The worker judges the spawn first; then one AgentStarted gets its verdict within the wait.
        k = settings.kafka

        def spawn_judged() -> bool:
            return any(decode_transition(m.value).event_id == made["event_id"]
                       for m in read_topic(k.bootstrap_servers, k.transitions_topic))

        wait_for(spawn_judged, timeout=120, what="the worker to judge the spawn")
        r = httpx.post(events + "?wait=verdict", json=started, headers=h, timeout=30)
        assert r.status_code == 200, r.text
        v = r.json()["verdict"]
        assert (v["verdict"], v["reason"], v["status"], v["seq"]) == ("accepted", "ok", "RUNNING", 2)
        again = httpx.post(events + "?wait=verdict", json=started, headers=h, timeout=30)
        assert again.status_code == 409 and again.json()["reason"] == "illegal_transition", again.text
        assert again.headers["content-type"].startswith("application/problem+json")
        ctx = {"type": "ContextAppended", "payload": {"entry_id": "e1", "role": "user", "content": "hello",
                                                      "tokens": 3, "importance": 0.5}}
        ok = httpx.post(events + "?wait=verdict", json=ctx, headers=h, timeout=30)
        assert ok.status_code == 200 and ok.json()["verdict"]["seq"] >= 3, ok.text
        plain = httpx.post(events, json={**ctx, "payload": {**ctx["payload"], "entry_id": "e2"}}, headers=h)
        assert plain.status_code == 202 and set(plain.json()) >= {"event_id", "partition", "offset"}
        assert workers.stop("w1") == 0
    for body, status in (({"type": "CallTimedOut", "payload": {"call_id": "c"}}, 403),
                         ({"type": "LlmCallRequested", "payload": {}}, 403),
                         ({"type": "NoSuchType", "payload": {}}, 422),
                         ({"type": "ContextAppended", "payload": {"entry_id": "e3"}}, 422),
                         ({"type": "ContextAppended", "payload": {"tenant_id": "globex"}}, 422)):
        r = httpx.post(events, json=body, headers=h)
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    theirs = httpx.post(events, json={"type": "AgentStarted", "payload": {}}, headers={"X-API-Key": other})
    assert theirs.status_code == 404


def test_list_pages_through_the_tenants_agents_and_delete_kills(api) -> None:
    base, settings = api
    _, write = store_key(settings, "pager", "write")
    _, other = store_key(settings, "pager2", "write")
    h = {"X-API-Key": write}
    made = sorted(httpx.post(base + "/api/v1/agents", json={"name": f"a{i}"}, headers=h, timeout=30).json()["agent_id"]
                  for i in range(3))
    first = httpx.get(base + "/api/v1/agents?limit=2", headers=h).json()
    assert [a["agent_id"] for a in first["agents"]] == made[:2] and first["has_more"]
    rest = httpx.get(base + f"/api/v1/agents?limit=2&cursor={first['next_cursor']}", headers=h).json()
    assert [a["agent_id"] for a in rest["agents"]] == made[2:] and not rest["has_more"]
    assert httpx.get(base + "/api/v1/agents", headers={"X-API-Key": other}).json() == {
        "agents": [], "has_more": False, "next_cursor": None}
    assert httpx.get(base + "/api/v1/agents?limit=0", headers=h).status_code == 422
    assert httpx.delete(f"{base}/api/v1/agents/{made[0]}", headers={"X-API-Key": other}).status_code == 404
    killed = httpx.delete(f"{base}/api/v1/agents/{made[0]}", headers=h, timeout=30)
    assert killed.status_code == 202 and set(killed.json()) == {"event_id", "partition", "offset"}


def test_ids_that_cannot_exist_are_client_errors_not_server_errors(api) -> None:
    base, settings = api
    _, write = store_key(settings, "acme", "write")
    h = {"X-API-Key": write}
    for path in ("/api/v1/agents/%00", "/api/v1/agents/" + "x" * 300, "/api/v1/agents?cursor=%00",
                 "/api/v1/agents?status=%00"):
        assert httpx.get(base + path, headers=h).status_code == 422, path
    assert httpx.delete(base + "/api/v1/agents/a%00b", headers=h).status_code == 422
