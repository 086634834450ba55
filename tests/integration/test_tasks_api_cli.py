"""Tasks through ``aosk api`` and ``aosk task`` on the real stack (a worker for verdicts, a
projector, uvicorn on a real port): submit (with a spawn or alone), read, list in pages,
cancel, idempotent retries, another tenant's tasks answered like missing ones; the CLI
submits, watches a task the way the runtime runs it (``task_steps``) to its end, and
says in one line what it cannot do."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aosk.client import KernelClient, ProjectionReader
from aosk.config import Settings
from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from api_harness import ApiProcess, api_process, store_key
from projector_harness import Projectors, projector_env, run_cli
from task_steps import run_agent
from worker_harness import Workers

pytestmark = pytest.mark.integration

MISSING = "no-such-task"
TOKEN = "AOSK-Consistency-Token"


@pytest.fixture(scope="module")
def stack(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiProcess, Settings]]:
    ensure_topics(settings.kafka.bootstrap_servers, settings.kafka, mark_new_journal=True)
    logs = tmp_path_factory.mktemp("tasks-api")
    projectors = Projectors(settings, logs, schema="aosk", args=("--poll-ms", "20"))
    try:
        with Workers(settings, logs) as workers:
            workers.start("w1")  # the worker and projector start while the API does
            projectors.start("p1")
            with api_process(settings, logs) as api:
                yield api, settings
    finally:
        projectors.close()


@pytest.fixture(scope="module")
def keys(stack: tuple[ApiProcess, Settings]) -> dict[str, str]:
    _, settings = stack
    return {"write": store_key(settings, "acme", "write")[1], "read": store_key(settings, "acme", "read")[1],
            "other": store_key(settings, "globex", "write")[1]}


def _agent(api: ApiProcess, key: str, **body: Any) -> httpx.Response:
    with api.client(key) as c:
        r = c.post("/api/v1/agents", json={"name": "worker", "capabilities": ["calc"], **body})
    assert r.status_code == 202, r.text
    return r


def _get(api: ApiProcess, key: str, path: str, token: str | None = None) -> httpx.Response:
    with api.client(key) as c:
        return c.get(path, headers={TOKEN: token} if token else {})


def _projected(api: ApiProcess, key: str, agent_id: str) -> None:
    wait_for(lambda: _get(api, key, f"/api/v1/agents/{agent_id}").json()["projected"], timeout=30,
             what=f"agent {agent_id} to be projected")


def test_submit_read_list_cancel(stack: tuple[ApiProcess, Settings], keys: dict[str, str]) -> None:
    api, settings = stack
    w, r = keys["write"], keys["read"]
    made = _agent(api, w, task="add 2 and 3")
    a, first = made.json()["agent_id"], made.json()["task_id"]
    got = _get(api, r, f"/api/v1/tasks/{first}", made.headers[TOKEN])
    assert got.status_code == 200, got.text
    t = got.json()
    # the queue was empty: the task started at submission (the agent is READY until the runtime starts it)
    assert (t["agent_id"], t["status"], t["input"], t["failure"], t["output"]) == (a, "running", "add 2 and 3",
                                                                                   None, None)
    assert t["started_at"] == t["submitted_at"] and t["journal"]["partition"] >= 0
    with ProjectionReader(settings.storage.postgresql.dsn) as reader:
        view = reader.agent_state(a)
        assert view is not None and view.state.budgets is not None
        b = view.state.budgets
        assert (b.tokens_per_hour, b.calls_per_hour, b.tokens_per_request) == (100_000, 1_000, 10_000)

    with api.client(w) as c:
        second = c.post("/api/v1/tasks?wait=verdict", json={"agent_id": a, "task": "second", "metadata": {"k": "v"}})
        assert second.status_code == 200, second.text
        s = second.json()
        assert (s["agent_id"], s["status"], s["verdict"]["verdict"]) == (a, "pending", "accepted")
        mine = c.post("/api/v1/tasks", json={"agent_id": a, "task": "third", "task_id": "mine-1"})
        assert mine.status_code == 202 and mine.json()["task_id"] == "mine-1", mine.text
        again = c.post("/api/v1/tasks?wait=verdict", json={"agent_id": a, "task": "x", "task_id": "mine-1"})
        assert again.status_code == 409 and again.json()["reason"] == "task_id_in_use", again.text
        other_agent = _agent(api, w).json()["agent_id"]
        _get(api, r, "/api/v1/tasks/mine-1", mine.headers[TOKEN])
        elsewhere = c.post("/api/v1/tasks", json={"agent_id": other_agent, "task": "x", "task_id": "mine-1"})
        assert elsewhere.status_code == 409 and elsewhere.json()["type"].endswith("/task-id-in-use"), elsewhere.text
        # an idempotent retry: one record, the first answer
        body = {"agent_id": a, "task": "once"}
        once = [c.post("/api/v1/tasks", json=body, headers={"Idempotency-Key": "k-once"}) for _ in range(2)]
        assert once[0].status_code == once[1].status_code == 202
        assert once[0].json() == once[1].json() and once[1].headers.get("Idempotent-Replayed") == "true"

    token = once[0].headers[TOKEN]
    listed = _get(api, r, f"/api/v1/tasks?agent_id={a}", token).json()
    assert [x["input"] for x in sorted(listed["tasks"], key=lambda x: x["submitted_at"])] == [
        "add 2 and 3", "second", "third", "once"]
    pages, cursor = [], None
    while True:
        page = _get(api, r, f"/api/v1/tasks?agent_id={a}&limit=1" + (f"&cursor={cursor}" if cursor else "")).json()
        pages += [x["task_id"] for x in page["tasks"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert pages == [x["task_id"] for x in listed["tasks"]] and len(pages) == 4
    pending = _get(api, r, f"/api/v1/tasks?agent_id={a}&status=pending").json()["tasks"]
    assert {x["input"] for x in pending} == {"second", "third", "once"}

    with api.client(w) as c:
        cancel = c.post(f"/api/v1/tasks/{s['task_id']}/cancel", json={"reason": "not needed"})
        assert cancel.status_code == 202 and cancel.json()["agent_id"] == a, cancel.text
        done = _get(api, r, f"/api/v1/tasks/{s['task_id']}", cancel.headers[TOKEN]).json()
        assert (done["status"], done["failure"]) == ("cancelled", {"reason": "cancelled", "message": "not needed"})
        twice = c.post(f"/api/v1/tasks/{s['task_id']}/cancel")
        assert twice.status_code == 409 and twice.json()["reason"] == "task_ended", twice.text
        # the ninth queued task of an agent: the fold's task_queue_full
        for i in range(8):
            assert c.post("/api/v1/tasks", json={"agent_id": other_agent, "task": f"q{i}"}).status_code == 202
        full = c.post("/api/v1/tasks?wait=verdict", json={"agent_id": other_agent, "task": "one too many"})
        assert full.status_code == 409 and full.json()["reason"] == "task_queue_full", full.text


def test_another_tenants_tasks_are_missing_ones(stack: tuple[ApiProcess, Settings], keys: dict[str, str]) -> None:
    api, _ = stack
    made = _agent(api, keys["write"], task="private")
    a, task_id = made.json()["agent_id"], made.json()["task_id"]
    assert _get(api, keys["read"], f"/api/v1/tasks/{task_id}", made.headers[TOKEN]).status_code == 200
    with api.client(keys["other"]) as c:
        def shape(resp: httpx.Response, name: str) -> tuple[int, str, str]:
            return resp.status_code, resp.headers["content-type"], resp.json()["detail"].replace(name, "X")

        assert shape(c.get(f"/api/v1/tasks/{task_id}"), task_id) == shape(c.get(f"/api/v1/tasks/{MISSING}"), MISSING)
        assert c.get(f"/api/v1/tasks/{task_id}").status_code == 404
        assert shape(c.post(f"/api/v1/tasks/{task_id}/cancel"), task_id) == shape(
            c.post(f"/api/v1/tasks/{MISSING}/cancel"), MISSING)
        assert c.get(f"/api/v1/tasks?agent_id={a}").json()["tasks"] == []
        assert all(t["tenant_id"] == "globex" for t in c.get("/api/v1/tasks").json()["tasks"])
        theirs = c.post("/api/v1/tasks", json={"agent_id": a, "task": "x"})
        absent = c.post("/api/v1/tasks", json={"agent_id": "00000000-0000-4000-8000-000000000000", "task": "x"})
        assert theirs.status_code == absent.status_code == 404
        assert theirs.json()["type"] == absent.json()["type"]


def _aosk(settings: Settings, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "aosk.cli", *args], env=projector_env(settings),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _one_line_error(out: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert out.returncode == code, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert all(w in out.stderr for w in words), out.stderr


def test_the_cli_submits_watches_and_cancels(stack: tuple[ApiProcess, Settings], keys: dict[str, str],
                                            tmp_path: Path) -> None:
    api, settings = stack
    made = _agent(api, keys["write"])
    a = made.json()["agent_id"]
    _projected(api, keys["read"], a)
    dsn = settings.storage.postgresql.dsn
    with KernelClient.from_settings(settings) as kernel, ProjectionReader(dsn) as reader:
        sub = run_cli(settings, "task", "submit", a, "add 2 and 3", "--task-id", "cli-1")
        assert sub.returncode == 0 and "task cli-1 submitted" in sub.stdout, sub.stdout + sub.stderr
        watch = _aosk(settings, "task", "watch", "cli-1", "--timeout", "60")
        wait_for(lambda: reader.task("cli-1") is not None, timeout=30, what="cli-1 to be projected")
        run_agent(kernel, reader, a)
        out, err = watch.communicate(timeout=60)
        assert watch.returncode == 0, out + err
        assert "cli-1 on" in out and "succeeded" in out and out.strip().endswith("output: answer to add 2 and 3")

        status = run_cli(settings, "task", "status", "cli-1", "--format", "json")
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert (doc["status"], doc["model_calls"], doc["tool_calls"], doc["steps"], doc["tokens"]) == (
            "succeeded", 2, 1, 3, 100)
        via_api = _get(api, keys["read"], "/api/v1/tasks/cli-1").json()
        assert (via_api["status"], via_api["output"], via_api["tokens"]) == ("succeeded", doc["output"], 100)

        failing = _aosk(settings, "task", "submit", a, "please fail", "--task-id", "cli-2", "--wait",
                        "--timeout", "60")
        wait_for(lambda: reader.task("cli-2") is not None, timeout=30, what="cli-2 to be projected")
        run_agent(kernel, reader, a)
        out, err = failing.communicate(timeout=60)
        assert failing.returncode == 1 and "failed: gave_up" in out, out + err

        run_cli(settings, "task", "submit", a, "stop me", "--task-id", "cli-3")
        wait_for(lambda: reader.task("cli-3") is not None, timeout=30, what="cli-3 to be projected")
        watch = _aosk(settings, "task", "watch", "cli-3", "--timeout", "60")
        cancel = run_cli(settings, "task", "cancel", "cli-3", "--reason", "stop")
        assert cancel.returncode == 0 and "TaskCancelled" in cancel.stdout, cancel.stdout + cancel.stderr
        out, err = watch.communicate(timeout=60)
        assert watch.returncode == 1 and out.strip().endswith("cancelled: cancelled: stop"), out + err

    listed = run_cli(settings, "task", "list", "--agent", a, "--status", "succeeded")
    assert listed.returncode == 0 and listed.stdout.count("\n") == 1 and "cli-1" in listed.stdout, listed.stdout
    _one_line_error(run_cli(settings, "task", "cancel", "cli-1"), 1, "already ended (succeeded)")
    _one_line_error(run_cli(settings, "task", "status", MISSING), 1, f"no task {MISSING}")
    _one_line_error(run_cli(settings, "task", "submit", "nobody", "x"), 1, "not in the projection", "--tenant")
    _one_line_error(run_cli(settings, "task", "list", "--status", "done"), 2, "invalid choice")
