"""Migration 0008 (agent_state's storage settings) on a database projected before it, on
the real stack.

Part of a journal is projected, then the schema is taken back to what migrations
0001-0007 left (agent_state's storage settings reset, 0008 not recorded); 0008 is then
applied: the table has its autovacuum settings (heap and
TOAST), the states written before read back and digest as before, and
projecting the rest of the journal on top verifies (``aosk audit verify``) and decodes,
with HOT updates where a row's indexed columns did not change and the writer's own
VACUUMs of the table (small batches, so enough rows are rewritten).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from aosk.bench.growth import UNTUNED_AGENT_STATE, agent_state_bytes, state_compression
from aosk.projectors.db import migrate, qualified
from aosk.projectors.digest import digest_schema
from aosk.projectors.stored import read_partitions
from aosk.reads.audit import verify
from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from aosk.workload import generate_workload, produce_workload
from projection_oracle import end_offsets
from projector_harness import Projectors, wait_caught_up

pytestmark = pytest.mark.integration

SCHEMA = "aosk"


def _options(conn: psycopg.Connection[Any], schema: str) -> tuple[set[str], set[str]]:
    """(agent_state's reloptions, its TOAST table's)."""
    row = conn.execute(
        "select c.reloptions, t.reloptions from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " left join pg_class t on t.oid = c.reltoastrelid where n.nspname = %s and c.relname = 'agent_state'",
        (schema,)).fetchone()
    assert row is not None
    return set(row[0] or ()), set(row[1] or ())


def _project(settings: Any, tmp: Any, name: str, *args: str) -> None:
    dsn, bootstrap, topic = settings.storage.postgresql.dsn, settings.kafka.bootstrap_servers, \
        settings.kafka.journal_topic
    tmp.mkdir()
    procs = Projectors(settings, tmp, schema=SCHEMA, args=("--poll-ms", "50", *args))
    try:
        procs.start(name)
        wait_caught_up(dsn, SCHEMA, end_offsets(bootstrap, topic), timeout=120, procs=procs)
        assert procs.stop_all() == {name: 0}, procs.tails()
    finally:
        procs.close()


def _stats(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """agent_state's (HOT updates, VACUUMs not by autovacuum) so far."""
    row = conn.execute("select n_tup_hot_upd, vacuum_count from pg_stat_user_tables where schemaname = %s"
                       " and relname = 'agent_state'", (SCHEMA,)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _half_projected(settings: Any, tmp: Any, *, events: int, first: int, seed: int) -> list[Any]:
    """A workload of ``events`` records with its first ``first`` produced and projected
    (process "p1"); returns the workload's items for the rest."""
    bootstrap = settings.kafka.bootstrap_servers
    ensure_topics(bootstrap, settings.kafka)
    items = generate_workload(agents=12, events=events, seed=seed, embeddings=False).items
    produce_workload(bootstrap, settings.kafka.journal_topic, items[:first])
    _project(settings, tmp, "p1")
    return list(items)


def _rows(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(sql.SQL("select count(*) from {}").format(qualified(SCHEMA, "agent_state"))).fetchone()
    return int(row[0]) if row else 0


def test_migration_0008_on_a_projected_database(settings: Any, tmp_path: Any) -> None:
    dsn, bootstrap, topic = settings.storage.postgresql.dsn, settings.kafka.bootstrap_servers, \
        settings.kafka.journal_topic
    items = _half_projected(settings, tmp_path / "before", events=1600, first=1000, seed=8)

    with psycopg.connect(dsn) as conn:
        # back to 0007 (`aosk project` migrates when it starts): agent_state's storage as
        # before, 0008 not recorded, the rows projected so far in place
        conn.execute(sql.SQL(UNTUNED_AGENT_STATE).format(t=qualified(SCHEMA, "agent_state")))
        conn.execute(sql.SQL("delete from {} where version = 8").format(qualified(SCHEMA, "schema_migrations")))
        conn.commit()
        assert _options(conn, SCHEMA) == (set(), set())
        before = digest_schema(conn, SCHEMA)
        n = _rows(conn)
        assert n >= 12
        assert migrate(conn, schema=SCHEMA) == ["0008_agent_state_storage"]
        heap, toast = _options(conn, SCHEMA)
        assert {"autovacuum_vacuum_scale_factor=0", "autovacuum_vacuum_cost_delay=0"} <= heap
        assert {"autovacuum_vacuum_scale_factor=0", "autovacuum_vacuum_threshold=500",
                "autovacuum_vacuum_cost_delay=0"} <= toast
        lz4 = conn.execute("select 'lz4' = any(enumvals) from pg_settings where name = 'default_toast_compression'"
                           ).fetchone()
        assert state_compression(conn, SCHEMA) == ("lz4" if lz4 and lz4[0] else "pglz")
        # the rows written before read back, and digest, as they did
        assert digest_schema(conn, SCHEMA) == before
        stored = read_partitions(conn, SCHEMA, list(range(settings.kafka.journal_partitions)))
        assert sum(len(p.entries) for p in stored.values()) == n
        stats0 = _stats(conn)

    produce_workload(bootstrap, topic, items[1000:])
    # small batches: enough agent_state rewrites for the writer to VACUUM the table itself
    _project(settings, tmp_path / "after", "p2", "--batch-max", "5")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert verify(conn, SCHEMA).ok
        stored = read_partitions(conn, SCHEMA, list(range(settings.kafka.journal_partitions)))
        assert sum(len(p.entries) for p in stored.values()) == _rows(conn)
        sizes = agent_state_bytes(conn, SCHEMA)
        assert sizes["rows"] == _rows(conn) and 0 < sizes["stored_state"] <= sizes["raw_state"]
        assert sizes["live"] > 0 and sizes["disk"] > 0

        def hot_updates_and_vacuums() -> bool:
            hot, vacuums = _stats(conn)
            return hot > stats0[0] and vacuums > stats0[1]

        # the projector's backend flushes its statistics when it exits
        wait_for(hot_updates_and_vacuums, timeout=15,
                 what="HOT updates of agent_state and the writer's VACUUMs counted after migration 0008")


def test_idle_projector_vacuums_and_compacts_a_bloated_agent_state(settings: Any, tmp_path: Any) -> None:
    """A projector that has read everything VACUUMs agent_state and, after a burst,
    compacts it when it is much larger than its live rows; the rows read back and
    verify as before."""
    dsn, bootstrap, topic = settings.storage.postgresql.dsn, settings.kafka.bootstrap_servers, \
        settings.kafka.journal_topic
    items = _half_projected(settings, tmp_path / "first", events=1200, first=600, seed=9)
    with psycopg.connect(dsn) as conn:
        # dead versions of every state, in one transaction so no VACUUM reclaims them in
        # between: the file grows, as under batches that each rewrite most of the table
        for _ in range(60):
            conn.execute(sql.SQL("update {} set state = substring(state from 1)").format(
                qualified(SCHEMA, "agent_state")))
        conn.commit()
        bloated = agent_state_bytes(conn, SCHEMA)
        before = digest_schema(conn, SCHEMA)
    assert bloated["disk"] > 3 * bloated["live"] and bloated["disk"] - bloated["live"] > 2**20, bloated

    produce_workload(bootstrap, topic, items[600:])
    tmp = tmp_path / "second"
    tmp.mkdir()
    procs = Projectors(settings, tmp, schema=SCHEMA, args=("--poll-ms", "50", "--batch-max", "25"))
    try:
        procs.start("p2")
        wait_caught_up(dsn, SCHEMA, end_offsets(bootstrap, topic), timeout=120, procs=procs)
        wait_for(lambda: "compacted to" in procs.log("p2"), timeout=30,
                 what="the idle projector's compaction of agent_state logged")
        assert procs.stop_all() == {"p2": 0}, procs.tails()
    finally:
        procs.close()
    line = next(x for x in procs.log("p2").splitlines() if "compacted to" in x)
    assert "idle: agent_state" in line, line
    with psycopg.connect(dsn, autocommit=True) as conn:
        after = agent_state_bytes(conn, SCHEMA)
        assert after["rows"] >= bloated["rows"] and after["disk"] < bloated["disk"] / 3, (bloated, after)
        assert verify(conn, SCHEMA).ok
        stored = read_partitions(conn, SCHEMA, list(range(settings.kafka.journal_partitions)))
        assert sum(len(p.entries) for p in stored.values()) == after["rows"]
        assert digest_schema(conn, SCHEMA) != before  # the second half was projected on top
