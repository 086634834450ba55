"""The ``tasks`` projection on the real broker and PostgreSQL: tasks submitted through the
SDK and run step by step the way the runtime writes them (``task_steps``), cancelled, and
ended by a kill, projected by a live ``aosk project``; the table equals what a fold of the
journal read back says, and ``aosk replay`` rebuilds identical digests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aosk.client import KernelClient, ProjectionReader
from aosk.config import Settings
from aosk.events import AgentKilled
from aosk.kernel import apply, fold_args, fold_key, partition_state
from aosk.kernel.state import Task
from aosk.projectors.digest import digest_schema
from aosk.projectors.rows import ms_of
from aosk.topics import ensure_topics
from projection_oracle import end_offsets, read_journal
from projector_harness import Projectors, run_cli, wait_caught_up
from task_steps import BUDGETS, run_agent

pytestmark = pytest.mark.integration

TENANT = "acme"


@pytest.fixture(scope="module")
def journal(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    ensure_topics(settings.kafka.bootstrap_servers, settings.kafka, mark_new_journal=True)
    dsn = settings.storage.postgresql.dsn
    procs = Projectors(settings, tmp_path_factory.mktemp("tasks"), schema="aosk", args=("--poll-ms", "20"))
    procs.start("p1")
    try:
        with KernelClient.from_settings(settings) as kernel, ProjectionReader(dsn) as reader:
            for agent, caps in (("a-1", ("calc",)), ("a-2", ()), ("a-3", ())):
                kernel.spawn(agent_id=agent, tenant_id=TENANT, name=agent, budgets=BUDGETS, capabilities=caps)
            kernel.submit_task("a-1", "add 2 and 3", tenant_id=TENANT, task_id="t-1", metadata={"who": "me"})
            kernel.submit_task("a-1", "then fail", tenant_id=TENANT, task_id="t-2")
            d = kernel.submit_task("a-2", "a queued one", tenant_id=TENANT, task_id="x-1").result()
            reader.wait_for(kernel.submit_task("a-2", "cancelled", tenant_id=TENANT, task_id="x-2").result())
            reader.wait_for(kernel.cancel_task("a-2", "x-2", "not needed", tenant_id=TENANT).result())
            kernel.submit_task("a-3", "killed before it runs", tenant_id=TENANT, task_id="k-1")
            reader.wait_for(kernel.submit_task("a-3", "queued", tenant_id=TENANT, task_id="k-2").result())
            running = reader.task("x-1", tenant_id=TENANT)
            for agent in ("a-1", "a-2"):
                run_agent(kernel, reader, agent)
            kernel.emit(AgentKilled, agent_id="a-3", tenant_id=TENANT, signal="SIGKILL", by="test").result()
            kernel.flush()
        wait_caught_up(dsn, "aosk", end_offsets(settings.kafka.bootstrap_servers, settings.kafka.journal_topic),
                       timeout=60, procs=procs)
        yield {"submitted": d, "running": running}
    finally:
        procs.close()


def _rows(dsn: str) -> dict[tuple[str, str], dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("select * from aosk.tasks")
        names = [c.name for c in cur.description or ()]
        return {(r[0], r[1]): dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def test_the_table_equals_the_fold(settings: Settings, journal: dict[str, Any]) -> None:
    dsn = settings.storage.postgresql.dsn
    rows = _rows(dsn)
    records = read_journal(settings.kafka.bootstrap_servers, settings.kafka.journal_topic)
    last: dict[tuple[str, str], Task] = {}
    submitted: dict[tuple[str, str], tuple[int, int, int]] = {}
    ended: dict[tuple[str, str], int] = {}
    slots: dict[str, Any] = {}
    for r in records:
        ps = partition_state(slots, r.partition)
        k = fold_key(r, ps)
        before = {t.task_id for t in slots[k].state.tasks.queue} if k in slots else set()
        slots[k], _ = apply(slots.get(k), r, **fold_args(ps)._asdict())
        after = slots[k].state.tasks.queue
        for t in after:
            last[(k, t.task_id)] = t
            if t.task_id not in before:
                submitted[(k, t.task_id)] = (r.partition, r.offset, r.timestamp)
        for gone in before - {t.task_id for t in after}:
            ended[(k, gone)] = r.timestamp
    assert set(rows) == set(last) and len(rows) == 6
    for key, t in last.items():
        row = rows[key]
        how = slots[key[0]].state.tasks.ended_as(key[1])
        assert row["status"] == (how or ("running" if t.started else "pending")), key
        assert (row["turns"], row["model_calls"], row["tool_calls"], row["steps"], row["tokens"]) == (
            t.turn, t.model_calls, t.tool_calls, t.model_calls + t.tool_calls, t.tokens), key
        p, o, at = submitted[key]
        assert (row["journal_partition"], row["journal_offset"], ms_of(row["submitted_at"])) == (p, o, at)
        assert (ms_of(row["ended_at"]) if row["ended_at"] else None) == ended.get(key)
        assert row["tenant_id"] == TENANT and row["input"] == t.input
    t1 = rows[("a-1", "t-1")]
    assert (t1["status"], t1["output"], t1["metadata"]) == ("succeeded", "answer to add 2 and 3", {"who": "me"})
    assert (t1["model_calls"], t1["tool_calls"], t1["tokens"]) == (2, 1, 100)  # 40 + 10 reported per call
    assert (rows[("a-1", "t-2")]["status"], rows[("a-1", "t-2")]["reason"]) == ("failed", "gave_up")
    assert (rows[("a-2", "x-2")]["status"], rows[("a-2", "x-2")]["message"]) == ("cancelled", "not needed")
    assert [rows[("a-3", k)]["reason"] for k in ("k-1", "k-2")] == ["agent_terminated"] * 2
    running = journal["running"]
    assert running is not None and running.status == "running" and running.started_at == running.submitted_at
    with psycopg.connect(dsn) as conn:
        stats = {r[0]: r[1:] for r in conn.execute(
            "select status, tasks, tokens, latency_avg_s from aosk.task_stats where tenant_id = %s", (TENANT,))}
    assert stats["succeeded"][0] == 2 and stats["succeeded"][1] == 100 + 50 and stats["succeeded"][2] > 0
    assert stats["cancelled"][0] == 3 and stats["failed"][0] == 1


def test_replay_rebuilds_identical_digests(settings: Settings, journal: dict[str, Any], tmp_path: Path) -> None:
    dsn = settings.storage.postgresql.dsn
    with psycopg.connect(dsn) as conn:
        before = digest_schema(conn, "aosk")
    assert before["tasks"]["rows"] == 6
    r = run_cli(settings, "replay", "--no-progress", "--schema", "aosk", "--batch-max", "5", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    with psycopg.connect(dsn) as conn:
        assert digest_schema(conn, "aosk") == before
