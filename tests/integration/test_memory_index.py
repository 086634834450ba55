"""The memories' vector index kinds (``aosk.projectors.memory_index``): recall through
each returns the exact scan's top k with a tenant and an agent filter, ``migrate`` with
``memory_index`` switches the kind, migrations 0009 and 0010 move a database created at
0008 from the HNSW over full vectors to the default, and an IVFFlat index outgrown by its
table is built again.

The set is small and built so its answer is unambiguous: for each query, 10 memories
near it (cosine ~0.9) in each of three scopes (two agents of tenant t1, one of t2) among
~2,600 random directions (cosine ~0 to everything), so any index worth having must
return exactly the exact scan's rows in the exact scan's order."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import sql

from aosk.config import Settings
from aosk.projectors import memory_index
from aosk.projectors.db import migrate, pack_vector, qualified, register_vector_dumper
from aosk.reads.memory import EXACT_BELOW, answer, explain_recall, recall

pytestmark = pytest.mark.integration

DIM = 384
SCHEMA = "mem_idx"
QUERIES = 5
BIG = EXACT_BELOW + 100  # agent "big" has more memories than the exact-scan shortcut takes


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _text(v: list[float]) -> str:
    return "[" + ",".join(map(repr, v)) + "]"


@pytest.fixture(scope="module")
def loaded(settings: Settings) -> tuple[str, list[list[float]]]:
    rng = random.Random(16)
    queries = [_unit([rng.gauss(0, 1) for _ in range(DIM)]) for _ in range(QUERIES)]
    rows: list[tuple[str, str, list[float]]] = []  # (tenant, agent, vector)
    for q in queries:
        for tenant, agent in (("t1", "big"), ("t1", "small"), ("t2", "other")):
            rows += [(tenant, agent, _unit([x + rng.gauss(0, 0.025) for x in q])) for _ in range(10)]
    for tenant, agent, n in (("t1", "big", BIG), ("t1", "small", 200), ("t2", "other", 300)):
        rows += [(tenant, agent, _unit([rng.gauss(0, 1) for _ in range(DIM)])) for _ in range(n)]
    dsn = settings.storage.postgresql.dsn
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with psycopg.connect(dsn) as conn:
        migrate(conn, schema=SCHEMA, dimension=DIM)
        oid = register_vector_dumper(conn)
        with conn.cursor() as cur, cur.copy(sql.SQL(
                "copy {} (agent_id, memory_id, tenant_id, source, text, embedding, journal_partition, journal_offset,"
                " seq, stored_at) from stdin (format binary)").format(qualified(SCHEMA, "memories"))) as cp:
            cp.set_types(["text", "text", "text", "text", "text", oid, "int4", "int8", "int8", "timestamptz"])
            for i, (tenant, agent, v) in enumerate(rows):
                cp.write_row((agent, f"m{i}", tenant, "stored", f"memory {i}", pack_vector(v), 0, i, i, at))
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"analyze {SCHEMA}.memories")
    return dsn, queries


def _exact(conn: psycopg.Connection[Any], q: list[float], tenant: str, agent: str | None) -> list[tuple[str, float]]:
    where = "tenant_id = %s" + (" and agent_id = %s" if agent else "")
    with conn.transaction():
        conn.execute("set local enable_indexscan = off")
        return [(r[0], float(r[1])) for r in conn.execute(
            f"select memory_id, embedding <=> %s::vector as d from {SCHEMA}.memories where {where}"
            " order by d limit 10", (_text(q), tenant, *([agent] if agent else [])))]


@pytest.mark.parametrize("kind", memory_index.KINDS)
def test_recall_through_each_index_is_the_exact_top_k(loaded: tuple[str, list[list[float]]], kind: str) -> None:
    dsn, queries = loaded
    with psycopg.connect(dsn) as conn:
        migrate(conn, schema=SCHEMA, dimension=DIM, memory_index=kind)  # type: ignore[arg-type]
        assert memory_index.present(conn, SCHEMA) == kind
        # the set is small: make the planner take the vector index, as it does at scale
        conn.execute("set enable_seqscan = off; set enable_bitmapscan = off; set enable_sort = off")
        plan = explain_recall(conn, SCHEMA, queries[0], k=10, tenant_id="t1")
        assert memory_index.INDEX_NAMES[kind] in plan, plan[:200]  # type: ignore[index]
        for q in queries:
            got = recall(conn, SCHEMA, q, k=10, tenant_id="t1")
            want = _exact(conn, q, "t1", None)
            assert [m.memory_id for m in got] == [w[0] for w in want]
            assert [m.distance for m in got] == pytest.approx([w[1] for w in want], abs=1e-6)
            for agent in ("big", "small"):  # "big" through the index, "small" by the exact shortcut
                with conn.transaction():
                    rows = answer(conn, SCHEMA, kind, DIM, 1,  # type: ignore[arg-type]
                                  {"q": _text(q), "k": 10, "tenant": "t1", "a0": agent, "b0": 2**62})
                assert [r[1] for r in rows] == [w[0] for w in _exact(conn, q, "t1", agent)]
                assert {r[0] for r in rows} == {agent}


def test_a_schema_without_a_vector_index_is_left_alone(loaded: tuple[str, list[list[float]]]) -> None:
    """What a replay's deferred indexes rely on: migrate does not build one back."""
    dsn, queries = loaded
    with psycopg.connect(dsn) as conn:
        memory_index.drop(conn, SCHEMA)
        conn.commit()
        assert migrate(conn, schema=SCHEMA, dimension=DIM, memory_index="hnsw") == []
        assert memory_index.present(conn, SCHEMA) is None
        got = recall(conn, SCHEMA, queries[0], k=10, tenant_id="t1")  # still exact, by a scan
        assert [m.memory_id for m in got] == [w[0] for w in _exact(conn, queries[0], "t1", None)]
        memory_index.create(conn, SCHEMA, memory_index.DEFAULT_INDEX, DIM)
        conn.commit()


def test_migrations_0009_and_0010_move_a_database_at_0008_to_the_default(settings: Settings) -> None:
    dsn, schema = settings.storage.postgresql.dsn, "mem_idx_0008"
    rng = random.Random(9)
    with psycopg.connect(dsn) as conn:
        migrate(conn, schema=schema, dimension=DIM)
        # back to 0008: the HNSW over full vectors of 0001, 0009 and 0010 not recorded
        memory_index.drop(conn, schema)
        conn.execute(sql.SQL("create index memories_embedding_hnsw on {} using hnsw (embedding vector_cosine_ops)"
                             " with (m = 16, ef_construction = 64)").format(qualified(schema, "memories")))
        conn.execute(sql.SQL("delete from {} where version >= 9").format(qualified(schema, "schema_migrations")))
        oid = register_vector_dumper(conn)
        at = datetime(2026, 1, 1, tzinfo=UTC)
        vectors = [_unit([rng.gauss(0, 1) for _ in range(DIM)]) for _ in range(50)]
        for i, v in enumerate(vectors):
            conn.execute(sql.SQL(
                "insert into {} (agent_id, memory_id, tenant_id, source, embedding, journal_partition, "
                "journal_offset, seq, stored_at) values ('a', %s, 't', 'stored', %s, 0, %s, %s, %s)").format(
                qualified(schema, "memories")), (f"m{i}", pack_vector(v), i, i, at))
        conn.commit()
        assert memory_index.present(conn, schema) == "hnsw"
        assert oid

        assert migrate(conn, schema=schema, dimension=DIM) == ["0009_memory_index", "0010_memory_ivfflat"]
        assert memory_index.present(conn, schema) == memory_index.DEFAULT_INDEX
        names = {r[0] for r in conn.execute("select indexname from pg_indexes where schemaname = %s", (schema,))}
        assert "memories_embedding_hnsw" not in names or memory_index.DEFAULT_INDEX == "hnsw"
        got = recall(conn, schema, vectors[7], k=3, tenant_id="t")
        assert got[0].memory_id == "m7" and got[0].distance == pytest.approx(0, abs=1e-6)
        assert migrate(conn, schema=schema, dimension=DIM) == []


def test_bench_memory_tiny(settings: Settings) -> None:
    """``aosk bench memory`` stays runnable (its figures are not asserted, but on 1,500
    clustered vectors recall's re-ranked halfvec finds the exact top 10 of an agent's
    scope, which is answered by an exact scan, and an IVFFlat index of one list the exact
    top 10 of all)."""
    from aosk.bench.memory import bench_memory, report_markdown

    r = bench_memory(settings, vectors=1_500, queries=5, inserts=50, candidates=("hnsw", "halfvec", "ivfflat"),
                     data=("clustered",), progress=False)
    (ds,) = r.sets
    assert set(ds.indexes) == {"hnsw", "halfvec", "ivfflat"}
    assert all(f.size_bytes > 0 and f.build_s > 0 for f in ds.indexes.values())
    assert ds.indexes["halfvec"].queries["halfvec x4 ef200 (recall's)"]["agent"][0] == 1.0
    # 1,500 rows: one list, every query scans all of it: exact
    assert ds.indexes["ivfflat"].queries["ivfflat x4 probes 1/1 (recall's)"]["none"][0] == 1.0
    text = report_markdown(r, "test machine")
    assert ("aosk bench memory --vectors 1500 --queries 5 --inserts 50 --candidates hnsw,halfvec,ivfflat "
            "--data clustered") in text
    with psycopg.connect(settings.storage.postgresql.dsn) as conn:  # the bench's schema is gone
        assert conn.execute("select count(*) from pg_namespace where nspname like 'aosk_bench_memory%'"
                            ).fetchone() == (0,)


def test_an_outgrown_ivfflat_index_is_built_again_beside_the_projection(settings: Settings) -> None:
    """The projectors' upkeep (``MemoryIndexUpkeep``): an IVFFlat index made on an empty
    table has one list; once the table calls for twice as many, it is built again with
    the lists its rows call for, what an interrupted rebuild left is dropped, and one
    process at a time does it."""
    from aosk.projectors.index_upkeep import MemoryIndexUpkeep
    from aosk.waiting import wait_for

    dsn, schema, rows = settings.storage.postgresql.dsn, "mem_idx_grow", 12_000
    rng = random.Random(12)
    vectors = [_unit([rng.gauss(0, 1) for _ in range(DIM)]) for _ in range(rows)]
    with psycopg.connect(dsn) as conn:
        conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))
        migrate(conn, schema=schema, dimension=DIM, memory_index="ivfflat")
        assert memory_index.ivfflat_lists(conn, schema) == 1
        oid = register_vector_dumper(conn)
        at = datetime(2026, 1, 1, tzinfo=UTC)
        with conn.cursor() as cur, cur.copy(sql.SQL(
                "copy {} (agent_id, memory_id, tenant_id, source, text, embedding, journal_partition, journal_offset,"
                " seq, stored_at) from stdin (format binary)").format(qualified(schema, "memories"))) as cp:
            cp.set_types(["text", "text", "text", "text", "text", oid, "int4", "int8", "int8", "timestamptz"])
            for i, v in enumerate(vectors):
                cp.write_row((f"a{i % 40}", f"m{i}", "t", "stored", f"memory {i}", pack_vector(v), 0, i, i, at))
        conn.commit()
    leftover = memory_index.INDEX_NAMES["ivfflat"] + memory_index.REBUILT_SUFFIX
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("analyze {}").format(qualified(schema, "memories")))
        due = memory_index.stale(conn, schema)
        assert due == memory_index.Stale(lists=1, rows=rows) and due.wanted == 12
        conn.execute(sql.SQL("create index {} on {} using ivfflat ((embedding::halfvec({})) halfvec_cosine_ops) "
                             "with (lists = 3)").format(sql.Identifier(leftover), qualified(schema, "memories"),
                                                        sql.Literal(DIM)))
        with psycopg.connect(dsn, autocommit=True) as other:  # another projector is at it
            other.execute("select pg_advisory_lock(hashtext('aosk-memory-index'), hashtext(%s))", (schema,))
            assert memory_index.rebuild(conn, schema, DIM, due.wanted) is False
        upkeep = MemoryIndexUpkeep(dsn, schema, DIM, check_every_s=0.1)
        try:
            upkeep.poll()
            wait_for(lambda: upkeep.rebuilds == 1, timeout=120, interval=0.5, what="the IVFFlat index built again")
        finally:
            upkeep.close()
        assert memory_index.ivfflat_lists(conn, schema) == 12
        assert memory_index.stale(conn, schema) is None
        names = {r[0] for r in conn.execute("select indexname from pg_indexes where schemaname = %s", (schema,))}
        assert memory_index.INDEX_NAMES["ivfflat"] in names and leftover not in names
        got = recall(conn, schema, vectors[7], k=3, tenant_id="t")
        assert got[0].memory_id == "m7" and got[0].distance == pytest.approx(0, abs=1e-6)
        conn.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(schema)))
