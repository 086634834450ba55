"""A projection upgraded from before the ``events`` table, on the real stack.

A journal is projected, then the ``events`` rows below an offset of one partition are
deleted and migration 0006 is applied again, as on a database projected before 0005:
``events_coverage`` says where ``events`` is complete. Point-in-time states, history and
streams that need the missing rows refuse (``HistoryIncomplete``; 503
``history-incomplete`` from the API) instead of answering from part of the history, and
``aosk db status`` names the partition. After ``aosk replay`` the same reads answer, equal
to a plain fold of the journal. The migration's fill is checked on a complete schema (0
everywhere), the partial one, and a schema where 0005 and 0006 run together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aosk.errors import HistoryIncomplete
from aosk.kernel import fold_journal, state_hash
from aosk.projectors.db import migrate
from aosk.reads.coverage import events_gap
from aosk.reads.events import events_after, history, state_at
from aosk.topics import ensure_topics
from aosk.workload import generate_workload, produce_workload
from api_harness import api_process, store_key
from projection_oracle import end_offsets, read_journal
from projector_harness import Projectors, run_cli, wait_caught_up

pytestmark = pytest.mark.integration

SCHEMA = "aosk"


def _coverage(conn: psycopg.Connection[Any], schema: str) -> dict[int, int]:
    rows = conn.execute(f"select partition, complete_from from {schema}.events_coverage").fetchall()
    return {int(p): int(c) for p, c in rows}


def _rerun(conn: psycopg.Connection[Any], schema: str, *versions: int) -> dict[int, int]:
    """Apply migrations ``versions`` (0005 drops ``events``) again through ``migrate``."""
    conn.execute(f"delete from {schema}.schema_migrations where version = any(%s)", (list(versions),))
    conn.execute(f"drop table {schema}.events_coverage")
    if 5 in versions:
        conn.execute(f"drop table {schema}.events")
    conn.commit()
    migrate(conn, schema=schema)
    return _coverage(conn, schema)


@pytest.fixture(scope="module")
def upgraded(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    bootstrap, topic = settings.kafka.bootstrap_servers, settings.kafka.journal_topic
    dsn = settings.storage.postgresql.dsn
    ensure_topics(bootstrap, settings.kafka)
    produce_workload(bootstrap, topic, generate_workload(agents=10, events=1500, seed=31, embeddings=False,
                                                         terminate_fraction=0.0).items)
    with psycopg.connect(dsn) as conn:
        migrate(conn, schema=SCHEMA, checkpoint_every=20)
    procs = Projectors(settings, tmp_path_factory.mktemp("coverage"), schema=SCHEMA, args=("--poll-ms", "50"))
    try:
        procs.start("p1")
        wait_caught_up(dsn, SCHEMA, end_offsets(bootstrap, topic), timeout=120, procs=procs)
        assert procs.stop_all() == {"p1": 0}, procs.tails()
    finally:
        procs.close()
    records = read_journal(bootstrap, topic)
    # The agent with the most records, cut in the middle of them.
    counts: dict[str, int] = {}
    for r in records:
        if r.key is not None:
            counts[r.key] = counts.get(r.key, 0) + 1
    agent = max(counts, key=lambda k: counts[k])
    mine = [r for r in records if r.key == agent]
    partition = mine[0].partition
    cut = mine[len(mine) // 2].offset
    with psycopg.connect(dsn) as conn:
        partitions = {int(r[0]) for r in conn.execute(f"select partition from {SCHEMA}.projector_offsets")}
        complete = _rerun(conn, SCHEMA, 6)
        conn.execute(f"delete from {SCHEMA}.events where journal_partition = %s and journal_offset < %s",
                     (partition, cut))
        conn.commit()
        partial = _rerun(conn, SCHEMA, 6)
    return {"settings": settings, "records": records, "agent": agent, "mine": mine, "partition": partition,
            "cut": cut, "partitions": partitions, "complete": complete, "partial": partial}


def test_migration_fills_coverage_from_what_is_there(upgraded: dict[str, Any]) -> None:
    p, cut, records = upgraded["partition"], upgraded["cut"], upgraded["records"]
    partitions = upgraded["partitions"]
    assert {r.partition for r in records} <= partitions
    assert upgraded["complete"] == dict.fromkeys(partitions, 0)
    # One past the last record below the cut (offsets may skip transaction markers).
    last_missing = max(r.offset for r in records if r.partition == p and r.offset < cut)
    assert upgraded["partial"] == {**dict.fromkeys(partitions, 0), p: last_missing + 1}
    # 0005 and 0006 in one upgrade of an older schema: no events at all, complete from each end.
    dsn = upgraded["settings"].storage.postgresql.dsn
    with psycopg.connect(dsn) as conn:
        migrate(conn, schema="before_0005")
        for table in ("projector_offsets", "audit_log"):
            conn.execute(f"insert into before_0005.{table} select * from {SCHEMA}.{table}")
        conn.commit()
        together = _rerun(conn, "before_0005", 5, 6)
        assert conn.execute("select count(*) from before_0005.events").fetchone() == (0,)
    ends = {q: max((r.offset + 1 for r in records if r.partition == q), default=0) for q in partitions}
    assert together == ends
    # A fresh schema: nothing projected yet, complete from 0.
    with psycopg.connect(dsn) as conn:
        migrate(conn, schema="fresh")
        assert _coverage(conn, "fresh") == {}


def _plain(records: list[Any], partition: int, agent: str, offset: int) -> bytes:
    return state_hash(fold_journal([r for r in records if r.partition == partition and r.offset <= offset])[agent]
                      .state)


def test_reads_refuse_until_replay_then_equal_a_plain_fold(upgraded: dict[str, Any], tmp_path: Path) -> None:
    settings, records, agent, mine = upgraded["settings"], upgraded["records"], upgraded["agent"], upgraded["mine"]
    p, complete_from = upgraded["partition"], upgraded["partial"][upgraded["partition"]]
    dsn = settings.storage.postgresql.dsn
    early, late = mine[1].offset, mine[-1].offset
    other = next(r.key for r in records if r.key is not None and r.partition != p)
    with psycopg.connect(dsn) as conn:
        gap = events_gap(conn, SCHEMA, agent)
        assert gap is not None and (gap.partition, gap.complete_from) == (p, complete_from)
        assert gap.last_offset < complete_from <= next(r.offset for r in mine if r.offset >= complete_from)
        with pytest.raises(HistoryIncomplete) as refused:
            state_at(conn, SCHEMA, agent, offset=early)
        assert (refused.value.partition, refused.value.complete_from) == (p, complete_from)
        assert "aosk replay" in str(refused.value) and f"partition {p}" in str(refused.value)
        # By broker time: refused, or (records share milliseconds, the last one at or
        # before the time may lie above the gap) the state a plain fold gives; never another.
        t = mine[1].timestamp
        try:
            at_time = state_at(conn, SCHEMA, agent, time_ms=t)
        except HistoryIncomplete:
            pass
        else:
            part = [r for r in records if r.partition == p and r.timestamp <= t]
            assert at_time.state_hash == state_hash(fold_journal(part)[agent].state)
        with pytest.raises(HistoryIncomplete):
            history(conn, SCHEMA, agent)
        with pytest.raises(HistoryIncomplete):
            events_after(conn, SCHEMA, agent, after_offset=-1)
        # What lies wholly above complete_from still reads: the rest of the history, a
        # stream resumed past the gap, a state folded from a checkpoint above it.
        rest = history(conn, SCHEMA, agent, after_seq=gap.last_seq, limit=10_000).items
        assert [i.offset for i in rest] == [r.offset for r in mine if r.offset > gap.last_offset]
        assert [i.offset for i in events_after(conn, SCHEMA, agent, after_offset=gap.last_offset,
                                               limit=10_000)] == [i.offset for i in rest]
        assert state_at(conn, SCHEMA, agent, offset=late).state_hash == _plain(records, p, agent, late)
        assert history(conn, SCHEMA, other, limit=10_000).items  # another partition is complete

    status = run_cli(settings, "db", "status", "--schema", SCHEMA)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"partition {p} EVENTS INCOMPLETE below offset {complete_from}" in status.stdout
    assert "aosk replay" in status.stdout
    health = run_cli(settings, "health", "--format", "json", "--schema", SCHEMA)
    events_check = json.loads(health.stdout)["checks"]["events_history"]
    assert health.returncode == 1 and events_check["status"] == "incomplete", health.stdout + health.stderr
    assert {"partition": p, "complete_from": complete_from} in events_check["partitions"]

    _, key = store_key(settings, "readers", "read")
    with psycopg.connect(dsn) as conn:
        conn.execute("insert into aosk_api.agents (agent_id, tenant_id) values (%s, 'readers')", (agent,))
    with api_process(settings, tmp_path, name="api") as api, api.client(key) as c:
        base = f"/api/v1/agents/{agent}"
        for path, params in ((f"{base}/state", {"at_offset": early}), (f"{base}/events", {}),
                             (f"{base}/stream", {})):
            r = c.get(path, params=params)
            assert r.status_code == 503, (path, r.text)
            body = r.json()
            assert body["type"].endswith("/history-incomplete") and body["partition"] == p, body
            assert body["complete_from"] == complete_from and "aosk replay" in body["detail"]

        replay = run_cli(settings, "replay", "--no-progress", "--schema", SCHEMA, "--drop-old", timeout=180)
        assert replay.returncode == 0, replay.stdout + replay.stderr

        with psycopg.connect(dsn) as conn:
            assert _coverage(conn, SCHEMA) == {} and events_gap(conn, SCHEMA, agent) is None
            point = state_at(conn, SCHEMA, agent, offset=early)
            assert point.state_hash == _plain(records, p, agent, early)
            assert [i.offset for i in history(conn, SCHEMA, agent, limit=10_000).items] == [r.offset for r in mine]
        r = c.get(f"{base}/state", params={"at_offset": early})
        assert r.status_code == 200 and r.json()["state_hash"] == point.state_hash.hex(), r.text
        page = c.get(f"{base}/events", params={"limit": 500}).json()
        assert [e["offset"] for e in page["events"]] == [r.offset for r in mine][:500]
        with c.stream("GET", f"{base}/stream") as s:
            assert s.status_code == 200
    status = run_cli(settings, "db", "status", "--schema", SCHEMA)
    assert status.returncode == 0 and "EVENTS INCOMPLETE" not in status.stdout, status.stdout
    health = run_cli(settings, "health", "--format", "json", "--schema", SCHEMA)
    assert json.loads(health.stdout)["checks"]["events_history"] == {"status": "ok", "partitions": []}
