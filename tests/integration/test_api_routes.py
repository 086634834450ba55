"""The audit, fork, context and memory routes of ``aosk api`` on the real stack (uvicorn on
a real port, a real worker and projector): each answers its documented shape, and another
tenant's agent id gets the same 404 as a missing one."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from api_harness import ApiProcess, api_process, store_key
from projector_harness import Projectors
from worker_harness import Workers

pytestmark = pytest.mark.integration

MISSING = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def stack(settings, tmp_path_factory) -> Iterator[tuple[ApiProcess, Any]]:
    ensure_topics(settings.kafka.bootstrap_servers, settings.kafka)
    logs = tmp_path_factory.mktemp("routes")
    projectors = Projectors(settings, logs, schema="aosk")
    try:
        with Workers(settings, logs) as workers:
            workers.start("w1")  # the worker and projector start while the API does
            projectors.start("p1")
            with api_process(settings, logs) as api:
                yield api, settings
    finally:
        projectors.stop_all()
        projectors.close()


@pytest.fixture(scope="module")
def agent(stack) -> dict[str, Any]:
    """An agent of tenant acme with a 10-token window, projected, then started."""
    api, settings = stack
    _, write = store_key(settings, "acme", "write")
    _, read = store_key(settings, "acme", "read")
    _, other = store_key(settings, "globex", "write")
    with api.client(write) as c:
        made = c.post("/api/v1/agents", json={"name": "ctx", "budgets": {"context_window_tokens": 10}}).json()
    wait_for(lambda: _get(api, read, f"/api/v1/agents/{made['agent_id']}").get("projected"), timeout=30,
             what="the agent to be projected")
    with api.client(write) as c:  # context appends need a RUNNING agent
        started = c.post(f"/api/v1/agents/{made['agent_id']}/events?wait=verdict",
                         json={"type": "AgentStarted", "payload": {}})
        assert started.status_code == 200, started.text
    return {**made, "write": write, "read": read, "other": other}


def _get(api: ApiProcess, key: str, path: str) -> dict[str, Any]:
    with api.client(key) as c:
        return c.get(path).json()


def _same_404(theirs: httpx.Response, missing: httpx.Response, agent_id: str) -> None:
    assert theirs.status_code == missing.status_code == 404, (theirs.text, missing.text)
    a, b = theirs.json(), missing.json()
    assert (a["type"], a["title"], a["detail"].replace(agent_id, "X")) == (
        b["type"], b["title"], b["detail"].replace(MISSING, "X"))


def test_context_window_and_paged_out_entries(stack, agent) -> None:
    api, _ = stack
    aid = agent["agent_id"]
    with api.client(agent["write"]) as c:
        for i in range(3):  # 4 tokens each in a 10-token window: the third pages out the first
            r = c.post("/api/v1/context?wait=verdict", json={"agent_id": aid, "role": "user", "content": f"entry {i}",
                                                             "tokens": 4, "entry_id": f"e{i}"})
            assert r.status_code == 200 and r.json()["verdict"]["verdict"] == "accepted", r.text
        bad = c.post("/api/v1/context", json={"agent_id": aid, "content": "x", "importance": 2})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.importance"
        _same_404(c.post("/api/v1/context", json={"agent_id": aid, "content": "x"},
                         headers={"X-API-Key": agent["other"]}),
                  c.post("/api/v1/context", json={"agent_id": MISSING, "content": "x"}), aid)

    def window() -> dict[str, Any]:
        w = _get(api, agent["read"], f"/api/v1/context/{aid}")
        return w if w["seq"] >= 5 else {}

    wait_for(lambda: bool(window()), timeout=30, what="the appends to be projected")
    w = window()
    assert [e["entry_id"] for e in w["entries"]] == ["e1", "e2"]
    assert (w["tokens_used"], w["tokens_limit"], w["projected"]) == (8, 10, True)
    assert [(p["entry_id"], p["summary"], p["tokens"]) for p in w["paged_out"]] == [("e0", "entry 0", 4)]
    with api.client(agent["other"]) as c:
        _same_404(c.get(f"/api/v1/context/{aid}"), c.get(f"/api/v1/context/{MISSING}"), aid)


def test_memory_search_and_bad_embeddings(stack, agent) -> None:
    api, settings = stack
    aid = agent["agent_id"]
    dim = settings.memory.embedding_dimension
    near, far = [1.0] + [0.0] * (dim - 1), [0.0] * (dim - 1) + [1.0]
    with api.client(agent["write"]) as c:
        for mid, emb in (("m-near", near), ("m-far", far)):
            r = c.post(f"/api/v1/agents/{aid}/events?wait=verdict", json={"type": "MemoryStored", "payload": {
                "memory_id": mid, "text": mid, "embedding": emb, "importance": 0.5, "metadata": {}}})
            assert r.status_code == 200, r.text
    search = {"agent_id": aid, "query_embedding": near, "k": 2}

    def found() -> list[str]:
        with api.client(agent["read"]) as c:
            return [m["memory_id"] for m in c.post("/api/v1/memories/search", json=search).json()["memories"]]

    wait_for(lambda: len(found()) == 2, timeout=30, what="the memories to be projected")
    assert found() == ["m-near", "m-far"]
    with api.client(agent["read"]) as c:
        hit = c.post("/api/v1/memories/search", json={**search, "k": 1}).json()
        assert hit["agent_id"] == aid and hit["memories"][0]["distance"] == pytest.approx(0.0, abs=1e-6)
        for vec in ([1.0] * (dim + 1), [0.0] * dim, [math.nan] + [1.0] * (dim - 1), [math.inf] * dim):
            r = c.post("/api/v1/memories/search", content=_json({**search, "query_embedding": vec}),
                       headers={"content-type": "application/json"})
            assert r.status_code == 422, (vec[:2], r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert "query_embedding" in r.json()["detail"], r.text
        _same_404(c.post("/api/v1/memories/search", json=search, headers={"X-API-Key": agent["other"]}),
                  c.post("/api/v1/memories/search", json={**search, "agent_id": MISSING}), aid)


def _json(body: dict[str, Any]) -> str:
    import json

    return json.dumps(body)  # NaN and Infinity as JavaScript literals, as some clients send them


def test_audit_verify(stack, agent) -> None:
    api, _ = stack
    aid = agent["agent_id"]
    r = _get(api, agent["read"], f"/api/v1/agents/{aid}/audit/verify")
    assert set(r) == {"agent_id", "intact", "records", "seq", "head", "first_break"}
    assert r["intact"] is True and r["first_break"] is None and r["records"] == r["seq"] >= 1, r
    assert len(r["head"]) == 64
    with api.client(agent["other"]) as c:
        _same_404(c.get(f"/api/v1/agents/{aid}/audit/verify"), c.get(f"/api/v1/agents/{MISSING}/audit/verify"), aid)


def test_fork_allocates_the_child_and_records_its_owner(stack, agent) -> None:
    api, _ = stack
    aid = agent["agent_id"]
    view = _get(api, agent["read"], f"/api/v1/agents/{aid}")
    with api.client(agent["write"]) as c:
        assert c.post(f"/api/v1/agents/{aid}/fork", json={}, headers={"X-API-Key": agent["read"]}).status_code == 403
        too_far = c.post(f"/api/v1/agents/{aid}/fork", json={"at_offset": view["last_offset"] + 10_000})
        assert too_far.status_code == 409 and too_far.json()["type"].endswith("/offset-not-projected"), too_far.text
        early = c.post(f"/api/v1/agents/{aid}/fork", json={"at_offset": 0})
        assert early.status_code in (202, 422), early.text  # 422 unless the agent's spawn is offset 0
        r = c.post(f"/api/v1/agents/{aid}/fork", json={"at_offset": view["last_offset"]})
        assert r.status_code == 202, r.text
        made = r.json()
        assert set(made) == {"agent_id", "event_id", "partition", "offset"} and made["agent_id"] != aid
        _same_404(c.post(f"/api/v1/agents/{aid}/fork", json={}, headers={"X-API-Key": agent["other"]}),
                  c.post(f"/api/v1/agents/{MISSING}/fork", json={}), aid)
    child = made["agent_id"]
    wait_for(lambda: _get(api, agent["read"], f"/api/v1/agents/{child}").get("projected"), timeout=30,
             what="the fork to be projected")
    got = _get(api, agent["read"], f"/api/v1/agents/{child}")
    assert (got["tenant_id"], got["seq"]) == ("acme", 1)
    assert _get(api, agent["other"], f"/api/v1/agents/{child}")["status"] == 404
