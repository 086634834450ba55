"""History, point-in-time state and the SSE stream of ``aosk api``, on the real stack
(broker, PostgreSQL, a worker, a projector, two API processes under uvicorn): pages by
seq, states at offsets equal to ``aosk state --at-offset``'s, and a stream read in part
from one API process, then resumed with ``Last-Event-ID`` from another, yielding every
record of the agent exactly once, in order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aosk.projectors.db import migrate
from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from api_harness import ApiProcess, api_process, enter_all, store_key
from projector_harness import Projectors, run_cli
from worker_harness import Workers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiProcess, ApiProcess, Any]]:
    ensure_topics(settings.kafka.bootstrap_servers, settings.kafka)
    with psycopg.connect(settings.storage.postgresql.dsn) as conn:
        migrate(conn, schema="aosk")
    logs = tmp_path_factory.mktemp("history")
    projectors = Projectors(settings, logs, schema="aosk", args=("--poll-ms", "50"))
    try:
        with Workers(settings, logs) as workers:
            workers.start("w1")
            projectors.start("p1")
            with ExitStack() as es:
                one, two = enter_all(es, [api_process(settings, logs, name="api1"),
                                          api_process(settings, logs, name="api2")])
                yield one, two, settings
    finally:
        projectors.stop_all()
        projectors.close()


def _post(api: ApiProcess, key: str, agent_id: str, n: int, start: int) -> int:
    """``n`` ContextAppended events; the journal offset of the last."""
    offset = -1
    with api.client(key) as c:
        for i in range(start, start + n):
            r = c.post(f"/api/v1/agents/{agent_id}/events", json={"type": "ContextAppended", "payload": {
                "entry_id": f"e{i}", "role": "user", "content": f"note {i}", "tokens": 2, "importance": 0.5}})
            assert r.status_code == 202, r.text
            offset = r.json()["offset"]
    return offset


def _projected_to(api: ApiProcess, key: str, agent_id: str, offset: int) -> None:
    def done() -> bool:
        r = api.client(key).get(f"/api/v1/agents/{agent_id}/state")
        return r.status_code == 200 and r.json()["offset"] >= offset

    wait_for(done, timeout=60, what=f"{agent_id} to be projected up to offset {offset}")


def _history(api: ApiProcess, key: str, agent_id: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = 0
    with api.client(key) as c:
        while True:
            page = c.get(f"/api/v1/agents/{agent_id}/events", params={"after_seq": after, "limit": limit}).json()
            items += page["events"]
            if not page["has_more"]:
                assert page["next_cursor"] is None
                return items
            assert len(page["events"]) == limit
            after = page["next_cursor"]


def _read_stream(api: ApiProcess, key: str, agent_id: str, *, last_id: int | None, stop: Any) -> list[dict]:
    """SSE messages (id, event, data) until ``stop(messages)``; then the client hangs up."""
    got: list[dict[str, Any]] = []
    headers = {} if last_id is None else {"Last-Event-ID": str(last_id)}
    with api.client(key, timeout=30) as c, c.stream("GET", f"/api/v1/agents/{agent_id}/stream",
                                                     headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        msg: dict[str, Any] = {}
        for line in r.iter_lines():
            if line == "":
                if "id" in msg:
                    got.append(msg)
                    if stop(got):
                        return got
                msg = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                msg[field] = json.loads(value) if field == "data" else value
    raise AssertionError(f"the stream ended after {len(got)} messages")


def test_history_state_and_a_stream_resumed_on_another_api_process(stack, tmp_path: Path) -> None:
    one, two, settings = stack
    _, write = store_key(settings, "acme", "write")
    _, read = store_key(settings, "acme", "read")
    _, other = store_key(settings, "globex", "read")
    made = one.client(write).post("/api/v1/agents", json={"name": "historian"}).json()
    agent_id = made["agent_id"]
    with one.client(write) as c:
        assert c.post(f"/api/v1/agents/{agent_id}/events", json={"type": "AgentStarted", "payload": {}}
                      ).status_code == 202
    first_batch_end = _post(one, write, agent_id, 12, 0)
    _projected_to(one, read, agent_id, first_batch_end)

    # A client reads part of the stream from API process 1 and hangs up mid-stream.
    part = _read_stream(one, read, agent_id, last_id=None, stop=lambda got: len(got) == 7)
    assert part[0]["event"] == "AgentSpawned" and part[0]["data"]["verdict"] == "accepted"

    # More records are written; the client resumes with Last-Event-ID against API process 2
    # at once, so the tail arrives live (woken by the projector's commits).
    last_end = _post(two, write, agent_id, 15, 12)
    rest = _read_stream(two, read, agent_id, last_id=int(part[-1]["id"]),
                        stop=lambda got: int(got[-1]["id"]) >= last_end)
    _projected_to(two, read, agent_id, last_end)

    # History: every record once, by seq, in pages.
    records = _history(two, read, agent_id, limit=5)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert len(records) >= 1 + 1 + 27 and records[-1]["offset"] >= last_end
    assert set(records[0]) == {"seq", "partition", "offset", "event_id", "type", "payload", "verdict", "reason",
                               "broker_time"}
    assert records[0]["event_id"] == made["event_id"] and records[0]["payload"]["name"] == "historian"
    assert records[2]["type"] == "ContextAppended" and records[2]["payload"]["content"] == "note 0"

    # The union of the two streams: every record exactly once, in order.
    streamed = part + rest
    upto = [r for r in records if r["offset"] <= last_end]
    assert [int(m["id"]) for m in streamed] == [r["offset"] for r in upto]
    assert [m["data"] for m in streamed] == upto
    assert [m["event"] for m in streamed] == [r["type"] for r in upto]

    # The state at an offset is what `aosk state --at-offset` folds from Kafka.
    offsets = [records[0]["offset"], records[len(records) // 2]["offset"], records[-1]["offset"]]
    for off in offsets:
        api = two.client(read).get(f"/api/v1/agents/{agent_id}/state", params={"at_offset": off}).json()
        cli = run_cli(settings, "state", agent_id, "--at-offset", str(off), "--format", "json")
        assert cli.returncode == 0, cli.stderr
        want = json.loads(cli.stdout)
        assert (api["state_hash"], api["state"], api["offset"]) == (want["state_hash"], want["state"], off)
    now = two.client(read).get(f"/api/v1/agents/{agent_id}/state").json()
    assert now["state_hash"] == api["state_hash"] and now["seq"] == records[-1]["seq"]
    middle = records[len(records) // 2]
    at_time = two.client(read).get(f"/api/v1/agents/{agent_id}/state", params={"at_time": middle["broker_time"]})
    assert at_time.status_code == 200 and at_time.json()["seq"] >= middle["seq"], at_time.text

    # Points that do not exist are problems naming the parameter, never a 500.
    state = f"/api/v1/agents/{agent_id}/state"
    past = two.client(read).get(state, params={"at_offset": 10**9})
    assert past.status_code == 422 and past.json()["detail"].startswith("at_offset"), past.text
    before = two.client(read).get(state, params={"at_time": "2001-01-01T00:00:00Z"})
    assert before.status_code == 404 and before.json()["detail"].startswith("at_time"), before.text
    future = two.client(read).get(state, params={"at_time": "2999-01-01T00:00:00Z"})
    assert future.status_code == 422 and "at_time" in future.json()["detail"]
    assert two.client(read).get(state, params={"at_offset": 1, "at_time": "0"}).status_code == 422
    bad_id = two.client(read).get(f"/api/v1/agents/{agent_id}/stream", headers={"Last-Event-ID": "x"})
    assert bad_id.status_code == 422 and "Last-Event-ID" in bad_id.json()["detail"]

    # Another tenant's agent and a missing one: the same 404 on every route.
    missing = "00000000-0000-4000-8000-000000000000"
    for route in ("events", "state", "stream"):
        theirs = one.client(other).get(f"/api/v1/agents/{agent_id}/{route}")
        none = one.client(other).get(f"/api/v1/agents/{missing}/{route}")
        assert theirs.status_code == none.status_code == 404
        assert theirs.json()["detail"].replace(agent_id, "X") == none.json()["detail"].replace(missing, "X")
