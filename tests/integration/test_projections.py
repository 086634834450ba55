"""Projections on the real broker and PostgreSQL: migrations, read-your-writes through
the SDK, memories (store, embed, forget, paging), checkpoints, the operators' views, a
row PostgreSQL refuses (bisected out, the partition goes on), keys PostgreSQL cannot
index, and a second schema rebuilt from the journal with other batch sizes giving the
same rows."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer

from aosk.client import KernelClient, ProjectionReader
from aosk.config import Settings
from aosk.events import (
    AgentStarted,
    AgentSuspended,
    Budgets,
    CheckpointRequested,
    ContextAppended,
    MemoryEmbedded,
    MemoryForgotten,
    MemoryStored,
    ToolCallRequested,
    encode,
)
from aosk.projectors.db import BATCH_LOCK_KEY, MigrationError, ProjectionConfigError, migrate, migrations
from aosk.projectors.memory import RecallError
from aosk.projectors.runner import ensure_journal
from aosk.waiting import wait_for
from aosk.workload import generate_workload, produce_workload
from projection_oracle import assert_projection_matches, end_offsets, read_journal
from projector_harness import Projectors, run_cli, wait_caught_up

pytestmark = pytest.mark.integration

BUDGETS = Budgets(max_tokens=100_000, max_tool_calls=100, max_steps=1_000, context_window_tokens=200)
DIM = 384


def unit(i: int) -> tuple[float, ...]:
    v = [0.0] * DIM
    v[i % DIM] = 1.0
    v[(i * 7 + 3) % DIM] = 0.5
    return tuple(v)


@pytest.fixture(scope="module")
def live(settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    """Two projectors on the module's journal, schema ``aosk``, for the whole module."""
    ensure_journal(settings.kafka.bootstrap_servers, settings)
    procs = Projectors(settings, tmp_path_factory.mktemp("live"), schema="aosk", args=("--poll-ms", "20"))
    procs.start("p1")
    procs.start("p2")
    try:
        yield procs
    finally:
        procs.close()


@pytest.fixture(scope="module")
def reader(settings: Settings, live: Projectors):
    with ProjectionReader.from_settings(settings) as r:
        yield r


def test_migrations_are_versioned_idempotent_and_in_their_schema(settings: Settings, database: str) -> None:
    with psycopg.connect(database) as conn:
        applied = migrate(conn, schema="m_test")
        assert applied == [f"{m.version:04d}_{m.name}" for m in migrations()]
        assert applied == ["0001_projections", "0002_views", "0003_audit_hashes", "0004_partition_stops", "0005_events",
                           "0006_events_coverage", "0007_tasks", "0008_agent_state_storage",
                           "0009_memory_index", "0010_memory_ivfflat"]
        assert migrate(conn, schema="m_test") == []
        listed = conn.execute("select table_name from information_schema.tables where table_schema = 'm_test'")
        tables = {r[0] for r in listed}
        assert {"agent_state", "audit_log", "events", "events_coverage", "checkpoints", "memories", "tasks",
                "projector_offsets", "recent_audit", "projector_lag", "agents_by_status", "task_stats"} <= tables
        assert not conn.execute("select 1 from information_schema.tables where table_schema = 'public'"
                                " and table_name = 'audit_log'").fetchone()
        with pytest.raises(ProjectionConfigError, match="dimension 384"):
            migrate(conn, schema="m_test", dimension=768)
        conn.execute("update m_test.schema_migrations set checksum = 'x' where version = 1")
        conn.commit()
        with pytest.raises(MigrationError, match="changed after it was applied"):
            migrate(conn, schema="m_test")
    out = run_cli(settings, "db", "migrate", "--schema", "m_cli", "--checkpoint-every", "50")
    assert out.returncode == 0, out.stderr
    assert "0002_views" in out.stdout
    status = run_cli(settings, "db", "status", "--schema", "m_cli")
    assert "checkpoint every 50 records" in status.stdout


def test_read_your_writes_memories_and_checkpoints(settings: Settings, reader: ProjectionReader) -> None:
    with KernelClient.from_settings(settings) as kernel:
        kernel.spawn(agent_id="mem-1", tenant_id="acme", name="m", budgets=BUDGETS, capabilities=["search"])
        kernel.emit(AgentStarted, agent_id="mem-1", tenant_id="acme")
        for i in range(5):
            kernel.emit(MemoryStored, agent_id="mem-1", tenant_id="acme", memory_id=f"m{i}", text=f"fact {i}",
                        embedding=unit(i) if i != 2 else None, importance=0.5, metadata={"i": str(i)})
        kernel.emit(MemoryEmbedded, agent_id="mem-1", tenant_id="acme", memory_id="m2", embedding=unit(2))
        kernel.emit(MemoryForgotten, agent_id="mem-1", tenant_id="acme", memory_id="m4")
        for i in range(8):  # 8 x 40 tokens through a 200-token window: entries page out
            kernel.emit(ContextAppended, agent_id="mem-1", tenant_id="acme", entry_id=f"ctx{i}", role="user",
                        content=f"context {i}", tokens=40, importance=0.3)
        kernel.emit(ToolCallRequested, agent_id="mem-1", tenant_id="acme", call_id="c1", tool="browse",
                    arguments="{}", timeout_ms=1000)
        kernel.emit(CheckpointRequested, agent_id="mem-1", tenant_id="acme")
        last = kernel.emit(AgentSuspended, agent_id="mem-1", tenant_id="acme", reason="operator").result()
    reader.wait_until_projected(last.partition, last.offset, timeout=60)

    view = reader.agent_state("mem-1")
    assert view is not None and view.status == "SUSPENDED" and view.tenant_id == "acme"
    assert view.state.seq == view.seq == 20

    hits = reader.recall(unit(1), k=3, agent_id="mem-1")
    assert hits[0].memory_id == "m1" and hits[0].distance < 1e-6
    ids = {h.memory_id for h in reader.recall(unit(2), k=10, tenant_id="acme")}
    assert "m2" in ids and "m4" not in ids  # embedded later; forgotten
    assert reader.recall(unit(1), k=3, tenant_id="other-tenant") == []
    with pytest.raises(RecallError, match="dimension 3, but this cluster's memories have dimension 384"):
        reader.recall([1.0, 0.0, 0.0], k=3, tenant_id="acme")
    with pytest.raises(RecallError, match="tenant_id or an agent_id"):
        reader.recall(unit(1), k=3)

    with psycopg.connect(settings.storage.postgresql.dsn) as conn:
        rows = dict(conn.execute("select memory_id, forgotten from aosk.memories where agent_id = 'mem-1'").fetchall())
        paged = [m for m in rows if m.startswith("ctx")]
        assert rows["m4"] is True and paged, rows
        cps = [r[0] for r in conn.execute("select reason from aosk.checkpoints where agent_id = 'mem-1' order by seq")]
        assert cps == ["requested", "suspended"]
        denied = conn.execute("select agent_id, tool, seq from aosk.denied_tool_calls").fetchall()
        assert ("mem-1", "browse", 18) in denied
        assert conn.execute("select agents from aosk.agents_by_status where tenant_id = 'acme'"
                            " and status = 'SUSPENDED'").fetchone() == (1,)
        assert conn.execute("select count(*) from aosk.recent_audit where agent_id = 'mem-1'").fetchone() == (20,)
        for view_name in ("token_spend_per_tenant", "token_spend_per_agent", "projector_lag", "verdicts_by_reason",
                          "refused_records"):
            conn.execute(f"select * from aosk.{view_name}").fetchall()

    # later batches patch rows written by earlier ones (UPDATE, not the in-batch merge)
    with KernelClient.from_settings(settings) as kernel:
        kernel.emit(MemoryEmbedded, agent_id="mem-1", tenant_id="acme", memory_id="ctx0", embedding=unit(40))
        last = kernel.emit(MemoryForgotten, agent_id="mem-1", tenant_id="acme", memory_id="m1").result()
    reader.wait_for(last, timeout=60)
    hits = reader.recall(unit(40), k=1, agent_id="mem-1")
    assert hits[0].memory_id == "ctx0" and hits[0].source == "paged_out" and hits[0].distance < 1e-6
    assert "m1" not in {h.memory_id for h in reader.recall(unit(1), k=10, agent_id="mem-1")}
    with psycopg.connect(settings.storage.postgresql.dsn) as conn:
        gone = conn.execute("select text, embedding, embedded_at, forgotten_offset is not null from aosk.memories"
                            " where agent_id = 'mem-1' and memory_id = 'm1'").fetchone()
        assert gone == (None, None, None, True)

    out = run_cli(settings, "memory", "search", "--agent", "mem-1", "--like", "m3", "-k", "2", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[0])["memory_id"] == "m3"
    bad = run_cli(settings, "memory", "search", "--tenant", "acme", "--vector", "[1, 0]")
    assert bad.returncode == 1 and "dimension 2" in bad.stderr

    # --text: the query embedded by the embeddings server (the dev stack's stand-in), the
    # same one that embeds memories: texts sharing words are near.
    texts = {"q3": "quarterly revenue grew twelve percent in the third quarter",
             "ops": "the kafka broker restarted after a disk filled up"}
    with KernelClient.from_settings(settings) as kernel:
        kernel.spawn(agent_id="mem-text", tenant_id="acme", name="t", budgets=BUDGETS)
        kernel.emit(AgentStarted, agent_id="mem-text", tenant_id="acme")
        for memory_id, text in texts.items():
            last = kernel.emit(MemoryStored, agent_id="mem-text", tenant_id="acme", memory_id=memory_id, text=text,
                               embedding=tuple(_standin_embedding(settings, text)), importance=0.5,
                               metadata={}).result()
    reader.wait_for(last, timeout=60)
    for query, nearest in (("how much did revenue grow in the third quarter", "q3"),
                           ("why did the kafka broker restart", "ops")):
        out = run_cli(settings, "memory", "search", "--agent", "mem-text", "--text", query, "-k", "1",
                      "--format", "json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.splitlines()[0])["memory_id"] == nearest, out.stdout


def test_refused_row_is_bisected_out_and_the_partition_goes_on(settings: Settings, reader: ProjectionReader) -> None:
    dsn = settings.storage.postgresql.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:  # a constraint the fold knows nothing about
        conn.execute(
            "alter table aosk.memories add constraint no_poison check (text is null or text not like '%poison%')"
        )
    try:
        with KernelClient.from_settings(settings) as kernel:
            kernel.spawn(agent_id="poisoned", tenant_id="acme", name="p", budgets=BUDGETS)
            kernel.emit(AgentStarted, agent_id="poisoned", tenant_id="acme")
            for i in range(30):
                text = "poison pill" if i == 17 else f"fine {i}"
                kernel.emit(MemoryStored, agent_id="poisoned", tenant_id="acme", memory_id=f"p{i}", text=text,
                            embedding=None, importance=0.1, metadata={})
            last = kernel.emit(AgentSuspended, agent_id="poisoned", tenant_id="acme", reason="x").result()
        reader.wait_until_projected(last.partition, last.offset, timeout=60)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("alter table aosk.memories drop constraint no_poison")
    with psycopg.connect(dsn) as conn:
        refused = conn.execute(
            "select seq, event_type, refusal from aosk.refused_records where agent_id = 'poisoned'"
        ).fetchall()
        assert len(refused) == 1
        seq, event_type, refusal = refused[0]
        assert (seq, event_type) == (20, "MemoryStored") and "no_poison" in refusal
        kind = conn.execute("select kind from aosk.audit_log where agent_id = 'poisoned' and seq = 20").fetchone()
        assert kind == ("accepted",)  # the fold's verdict is kept
        n = conn.execute("select count(*) from aosk.memories where agent_id = 'poisoned'").fetchone()[0]
        assert n == 29
    view = reader.agent_state("poisoned")
    assert view is not None and view.seq == 33 and view.status == "SUSPENDED"
    ok = run_cli(settings, "audit", "verify", "--agent", "poisoned")
    assert ok.returncode == 0, ok.stderr


def test_keys_postgres_cannot_index_and_garbage(settings: Settings, reader: ProjectionReader) -> None:
    topic = settings.kafka.journal_topic
    p = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "partitioner": "murmur2_random"})
    long_key = b"k" * 5000
    p.produce(topic, key=long_key, value=b"garbage")
    p.produce(topic, key=b"nul\x00key", value=encode(_started("x"))[:12])  # known schema, broken body
    p.produce(topic, key=None, value=b"no key at all")
    p.produce(topic, key=long_key, value=b"more garbage")
    assert p.flush(30) == 0
    ends = end_offsets(settings.kafka.bootstrap_servers, topic)
    wait_caught_up(settings.storage.postgresql.dsn, "aosk", ends, timeout=60)
    with psycopg.connect(settings.storage.postgresql.dsn) as conn:
        rows = conn.execute("select agent_id, seq, reason, verdict_bytes is not null from aosk.audit_log"
                            " where reason = 'undecodable' and (agent_id like '~h:%%' or agent_id like '~p%%')"
                            " order by agent_id, seq").fetchall()
        assert [r[2] for r in rows] == ["undecodable"] * 4
        hashed = [r for r in rows if r[0].startswith("~h:")]
        assert sorted(r[1] for r in hashed) == [1, 1, 2] and all(r[3] for r in hashed)
    ok = run_cli(settings, "audit", "verify")
    assert ok.returncode == 0, ok.stderr


def test_batches_wait_for_the_exclusive_swap_lock(settings: Settings, reader: ProjectionReader) -> None:
    """What `aosk replay` relies on: while BATCH_LOCK_KEY is held exclusively, no batch
    commits; released, the projection catches up."""
    dsn = settings.storage.postgresql.dsn
    with psycopg.connect(dsn, autocommit=True) as lock:
        lock.execute("select pg_advisory_lock(%s)", (BATCH_LOCK_KEY,))
        try:
            with KernelClient.from_settings(settings) as kernel:
                d = kernel.send(_started("locked-out")).result()
            waiting = ("select count(*) from pg_locks where locktype = 'advisory' and not granted"
                       " and objid = %s")
            wait_for(lambda: lock.execute(waiting, (BATCH_LOCK_KEY & 0xFFFFFFFF,)).fetchone()[0] > 0,
                     timeout=30, what="a projector batch waiting for the swap lock")
            assert reader.projected_offsets()[d.partition] <= d.offset
        finally:
            lock.execute("select pg_advisory_unlock(%s)", (BATCH_LOCK_KEY,))
    reader.wait_for(d, timeout=30)


def _columns_but(conn: psycopg.Connection, schema: str, table: str, *left_out: str) -> str:
    rows = conn.execute("select column_name from information_schema.columns where table_schema = %s"
                        " and table_name = %s order by ordinal_position", (schema, table)).fetchall()
    return ", ".join(c for (c,) in rows if c not in left_out)


def _started(agent: str) -> AgentStarted:
    return KernelClient.new_event(AgentStarted, agent_id=agent, tenant_id="acme")


def test_unknown_fingerprint_stops_its_partition_only(settings: Settings, tmp_path: Path) -> None:
    s = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"topic_prefix": f"{settings.kafka.topic_prefix}-fp"})})
    bootstrap, topic, dsn = s.kafka.bootstrap_servers, s.kafka.journal_topic, s.storage.postgresql.dsn
    ensure_journal(bootstrap, s)
    with KernelClient.from_settings(s) as kernel:
        first = [kernel.send(_started(f"fp-{i}")).result() for i in range(40)]
    victim = first[0]
    p = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    p.produce(topic, key=b"fp-0", value=b"\xc3\x01" + b"\xee" * 8 + b"from a newer producer")
    assert p.flush(30) == 0
    with KernelClient.from_settings(s) as kernel:
        after = kernel.send(_started("fp-0")).result()
        others = [kernel.send(_started(f"fp-{i}")).result() for i in range(1, 40)]
    assert after.partition == victim.partition
    procs = Projectors(s, tmp_path, schema="fp")
    try:
        procs.start("p")
        ends = end_offsets(bootstrap, topic)
        ends[victim.partition] = after.offset - 1  # stops at the unknown record, never skips it
        wait_caught_up(dsn, "fp", ends, timeout=120, procs=procs)
        wait_for(lambda: "STOPPED at offset" in procs.log("p"), timeout=30, what="the loud stop")
        assert "unknown schema fingerprint eeeeeeeeeeeeeeee" in procs.log("p")
        assert procs.procs["p"].poll() is None
        assert {o.partition for o in others} - {victim.partition}
    finally:
        procs.close()
    with psycopg.connect(dsn) as conn:
        (n,) = conn.execute("select next_offset from fp.projector_offsets where partition = %s",
                            (victim.partition,)).fetchone()
    assert n == after.offset - 1


def test_rebuild_in_another_schema_gives_identical_rows(settings: Settings, tmp_path: Path) -> None:
    """Live (two processes, while the journal grows) and rebuilt afterwards (one process,
    tiny batches, a cache of 5 agents so states are re-read from agent_state all the
    time): the same rows, column for column."""
    s = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"topic_prefix": f"{settings.kafka.topic_prefix}-rb"})})
    bootstrap, topic, dsn = s.kafka.bootstrap_servers, s.kafka.journal_topic, s.storage.postgresql.dsn
    ensure_journal(bootstrap, s)
    w = generate_workload(agents=20, events=4000, seed=3, garbage_every=150)
    live = Projectors(s, tmp_path, schema="rb_live", args=("--batch-max", "500", "--poll-ms", "20"))
    rebuilt = Projectors(s, tmp_path, schema="rb_rebuilt", args=("--batch-max", "37", "--max-cached-agents", "5"))
    try:
        live.start("l1")
        live.start("l2")
        for i in range(0, len(w.items), 1000):
            produce_workload(bootstrap, topic, w.items[i : i + 1000])
        ends = end_offsets(bootstrap, topic)
        wait_caught_up(dsn, "rb_live", ends, timeout=120, procs=live)
        rebuilt.start("r")
        wait_caught_up(dsn, "rb_rebuilt", ends, timeout=180, procs=rebuilt)
    finally:
        assert live.stop_all() == {"l1": 0, "l2": 0}
        assert rebuilt.stop_all() == {"r": 0}
    digests = {}
    with psycopg.connect(dsn) as conn:
        for schema in ("rb_live", "rb_rebuilt"):
            digests[schema] = {
                t: conn.execute(f"select count(*), md5(string_agg(r::text, '|' order by {order})) from"
                                f" (select {cols} from {schema}.{t}) r").fetchone()
                for t, cols, order in (
                    # state_hash: on each agent's last record of a batch, so batch-dependent
                    # (projectors/digest.py DIGEST_EXCLUDED); audit verify checks it
                    ("audit_log", _columns_but(conn, schema, "audit_log", "state_hash"),
                     "journal_partition, journal_offset"),
                    ("agent_state", "*", "agent_id"),
                    ("checkpoints", "*", "agent_id, seq"),
                    ("memories", "*", "agent_id, memory_id"),
                    ("events", "*", "journal_partition, journal_offset"),
                    ("projector_offsets", "partition, next_offset", "partition"),
                )
            }
    assert digests["rb_live"] == digests["rb_rebuilt"]
    assert digests["rb_live"]["memories"][0] > 100
    assert_projection_matches(dsn, "rb_rebuilt", read_journal(bootstrap, topic))

    thin = run_cli(s, "db", "thin-checkpoints", "--schema", "rb_rebuilt", "--keep-last", "1", "--keep-every", "1000")
    assert thin.returncode == 0, thin.stderr
    with psycopg.connect(dsn) as conn:
        left = conn.execute("select count(*) from rb_rebuilt.checkpoints").fetchone()[0]
        latest_kept = conn.execute(
            "select bool_and(c.seq is not null) from (select agent_id, max(seq) s from rb_live.checkpoints"
            " group by agent_id) l left join rb_rebuilt.checkpoints c on c.agent_id = l.agent_id and c.seq = l.s"
        ).fetchone()[0]
    assert 0 < left < digests["rb_live"]["checkpoints"][0] and latest_kept
    assert f"deleted {digests['rb_live']['checkpoints'][0] - left} checkpoints" in thin.stdout
    verified = run_cli(s, "audit", "verify", "--schema", "rb_rebuilt")  # thinned checkpoints are noted
    assert verified.returncode == 0, verified.stderr


def _standin_embedding(settings: Settings, text: str) -> list[float]:
    import asyncio

    from aosk.runtime.models import provider_from_settings

    async def embed() -> list[float]:
        async with provider_from_settings(settings) as provider:
            return (await provider.embed([text]))[0]

    return asyncio.run(embed())
