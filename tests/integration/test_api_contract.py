"""The API's contract on the real stack (broker, PostgreSQL, a worker, a projector and
``aosk api`` under uvicorn): schemathesis against ``/openapi.json`` (every phase, the
stateful one included), and tenant isolation on every route that takes an agent id."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from aosk.projectors.db import migrate
from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from api_harness import ApiProcess, api_process, store_key
from projector_harness import Projectors, run_cli
from worker_harness import Workers, read_topic

pytestmark = pytest.mark.integration

FUZZ_EXAMPLES = 50
"""Examples per operation in `make test`; `make chaos` runs 500 (AOSK_FUZZ_EXAMPLES) with a new seed."""


@pytest.fixture(scope="module")
def stack(settings, tmp_path_factory) -> Iterator[tuple[ApiProcess, Any]]:
    ensure_topics(settings.kafka.bootstrap_servers, settings.kafka)
    with psycopg.connect(settings.storage.postgresql.dsn) as conn:
        migrate(conn, schema="aosk")
    logs = tmp_path_factory.mktemp("contract")
    projectors = Projectors(settings, logs, schema="aosk")
    try:
        with Workers(settings, logs) as workers:
            workers.start("w1")
            projectors.start("p1")
            with api_process(settings, logs) as api:
                yield api, settings
    finally:
        projectors.close()


def _fuzz(api: ApiProcess, settings: Any, cwd: Path, *, examples: int, seed: str) -> None:
    _, key = store_key(settings, "fuzz", "admin")
    cli = Path(sys.executable).parent / "schemathesis"
    out = subprocess.run(
        [str(cli), "run", api.base + "/openapi.json", "-H", f"X-API-Key: {key}", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance,use_after_free", "--max-examples", str(examples),
         "--exclude-path", "/api/health", "--exclude-path-regex", ".*/stream$", "--no-color",
         "--seed", seed, "--request-timeout", "30"],
        capture_output=True, text=True, timeout=3600, cwd=cwd)
    report = out.stdout[-6000:] + out.stderr[-2000:]
    assert out.returncode == 0, report
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in out.stdout, (phase, report)  # ran, and passed: not skipped
    assert "Tested: " in out.stdout, report


def test_schemathesis_finds_nothing(stack, tmp_path) -> None:
    """Every phase (examples, coverage, fuzzing, stateful), with a valid admin key: no 5xx
    but the documented 503s, no answer outside the schema (status, content type, body,
    headers), nothing accepted without a key (``ignored_auth``), no schema-violating
    request accepted. Two checks do not apply: ``use_after_free`` (DELETE kills an agent,
    which stays readable as TERMINATED with its history) and ``positive_data_acceptance``
    (a schema-valid event can be one the kernel refuses for this agent's state). The
    stream is left out: it never ends for an agent that exists (test_api_history covers it).
    A fixed seed keeps `make test` reproducible; `make chaos` draws a new one."""
    api, settings = stack
    _fuzz(api, settings, tmp_path, examples=FUZZ_EXAMPLES, seed="20261202")


@pytest.mark.chaos
def test_schemathesis_finds_nothing_in_a_long_run(stack, tmp_path) -> None:
    import os
    import random

    api, settings = stack
    seed = os.environ.get("AOSK_FUZZ_SEED") or str(random.getrandbits(64))
    print(f"schemathesis seed {seed} (AOSK_FUZZ_SEED={seed} repeats it)")
    _fuzz(api, settings, tmp_path, examples=int(os.environ.get("AOSK_FUZZ_EXAMPLES", 500)), seed=seed)


def _agent(api: ApiProcess, key: str, name: str) -> str:
    with api.client(key) as c:
        r = c.post("/api/v1/agents", json={"name": name, "capabilities": ["search"]})
        assert r.status_code == 202, r.text
        return str(r.json()["agent_id"])


# A valid request for every operation that names an agent, so ownership (not validation)
# decides the answer. A new such route without an entry here fails the test.
_BODIES: dict[str, Any] = {
    "POST /api/v1/agents/{agent_id}/events": {"type": "AgentStarted", "payload": {}},
    "POST /api/v1/agents/{agent_id}/fork": {},
}
_BODY_ID_ROUTES: dict[str, Any] = {
    # routes whose body names the agent: the body with AGENT for its id
    "POST /api/v1/context": {"agent_id": "AGENT", "role": "user", "content": "hello", "tokens": 2},
    "POST /api/v1/memories/search": {"agent_id": "AGENT", "query_embedding": [0.5] * 384, "k": 3},
    "POST /api/v1/tasks": {"agent_id": "AGENT", "task": "hello"},
}


def _operations(api: ApiProcess) -> list[tuple[str, str]]:
    doc = httpx.get(api.base + "/openapi.json").json()
    ops = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            names_agent = "{agent_id}" in path or f"{method.upper()} {path}" in _BODY_ID_ROUTES
            if path.startswith("/api/v1") and names_agent:
                ops.append((method.upper(), path))
            elif path.startswith("/api/v1") and "requestBody" in op:
                schema = json.dumps(op["requestBody"])
                assert "agent_id" not in schema or f"{method.upper()} {path}" in _BODY_ID_ROUTES, (
                    f"{method.upper()} {path} takes an agent id in its body: add it to _BODY_ID_ROUTES")
    return ops


def _call(api: ApiProcess, key: str | None, method: str, path: str, agent_id: str) -> httpx.Response:
    op = f"{method} {path}"
    body = None
    if op in _BODY_ID_ROUTES:
        body = json.loads(json.dumps(_BODY_ID_ROUTES[op]).replace('"AGENT"', json.dumps(agent_id)))
    elif method in ("POST", "PUT", "PATCH"):
        assert op in _BODIES, f"no sample body for {op}: add one to _BODIES"
        body = _BODIES[op]
    with api.client(key, timeout=30) as c:
        return c.request(method, path.replace("{agent_id}", agent_id), json=body)


def _shape(r: httpx.Response, agent_id: str) -> tuple[int, str, str]:
    """What a caller sees, with the id it asked about blanked out."""
    return r.status_code, r.headers.get("content-type", ""), r.text.replace(agent_id, "<id>")


def test_no_route_tells_one_tenants_agents_from_missing_ones(stack) -> None:
    api, settings = stack
    _, mine = store_key(settings, "iso-a", "admin")
    _, theirs = store_key(settings, "iso-b", "admin")
    revoked_id, revoked = store_key(settings, "iso-a", "admin")
    assert run_cli(settings, "keys", "revoke", revoked_id).returncode == 0
    agent = _agent(api, mine, "private")
    bootstrap, topic = settings.kafka.bootstrap_servers, settings.kafka.journal_topic

    def journal_of(agent_id: str) -> int:
        return sum(1 for m in read_topic(bootstrap, topic, raw=True) if m.key == agent_id.encode())

    wait_for(lambda: httpx.get(f"{api.base}/api/v1/agents/{agent}", headers={"X-API-Key": mine}).json()["projected"],
             timeout=120, what="the agent to be projected")
    before = journal_of(agent)
    ops = _operations(api)
    assert len(ops) >= 3, ops
    tried = []
    for method, path in ops:
        missing = str(uuid.uuid4())
        # Another tenant's key: the same answer as for an id that does not exist.
        other = _shape(_call(api, theirs, method, path, agent), agent)
        absent = _shape(_call(api, theirs, method, path, missing), missing)
        assert other == absent, (method, path, other, absent)
        assert other[0] == 404, (method, path, other)
        # No key, a malformed key, an unknown and a revoked one: 401, whatever the id.
        for key in (None, "not-a-key", "aosk_0123456789abcdef_" + "x" * 43, revoked):
            got = _shape(_call(api, key, method, path, agent), agent)
            assert got == _shape(_call(api, key, method, path, missing), missing), (method, path, key)
            assert got[0] == 401, (method, path, key, got)
        tried.append(f"{method} {path}")
    # An event of the other tenant's own agent that names this one: the same 404 as a missing agent.
    sender = _agent(api, theirs, "sender")
    with api.client(theirs) as c:
        def message_to(to: str) -> tuple[int, str, str]:
            body = {"type": "MessageSent", "payload": {"message_id": str(uuid.uuid4()), "to_agent_id": to,
                                                       "body": "hi"}}
            return _shape(c.post(f"/api/v1/agents/{sender}/events", json=body), to)

        missing = str(uuid.uuid4())
        assert message_to(agent) == message_to(missing) and message_to(agent)[0] == 404
        # Ids of new agents are the API's to give: a client cannot name (and so collide with) one.
        named = c.post(f"/api/v1/agents/{sender}/events",
                       json={"type": "SpawnRequested", "payload": {"child_id": agent, "name": "x"}})
        assert named.status_code == 422 and "child_id" in named.json()["detail"], named.text
        child_spec = {"name": "x", "priority": 50, "capabilities": [], "metadata": {}, "budgets": {
            "max_tokens": 100, "max_tool_calls": 1, "max_steps": 10, "context_window_tokens": 100}}
        spawned = c.post(f"/api/v1/agents/{sender}/events", json={"type": "SpawnRequested", "payload": child_spec})
        assert spawned.status_code == 202, spawned.text
        child = spawned.json()["new_agent_id"]
        assert c.get(f"/api/v1/agents/{child}").status_code == 200
    # Nothing any of that sent reached the agent's journal.
    assert journal_of(agent) == before, tried
