"""A lone projector whose database lost its last committed transactions.

Projectors commit with ``synchronous_commit = off``: PostgreSQL crashing right after a
commit can lose it, rows and offsets together, so ``projector_offsets.next_offset`` goes
back behind what the running projector wrote. Its next batch fails the compare-and-set
like a fenced zombie's, but nobody else owns the partition: the log must say that the
stored offset is behind what this process committed (not "another projector owns it"),
and the projector must re-project from the stored offset without a duplicate row.

The loss is made exactly: the projection's tables are copied at one point (a consistent
snapshot), more records are projected, and then the tables are put back to the copy in
one transaction under the running projector, as a crash that lost those commits would.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from aosk.config import Settings
from aosk.projectors.runner import ensure_journal
from aosk.waiting import wait_for
from aosk.workload import generate_workload, produce_workload
from projection_oracle import assert_projection_matches, end_offsets, read_journal
from projector_harness import Projectors, wait_caught_up

pytestmark = pytest.mark.integration

TABLES = ("agent_state", "audit_log", "events", "checkpoints", "memories", "projector_offsets")


def test_offsets_behind_what_a_lone_projector_committed_are_re_projected_without_duplicates(
    settings: Settings, tmp_path: Path
) -> None:
    s = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"topic_prefix": f"{settings.kafka.topic_prefix}-rollback"})})
    schema = "rolled_back"
    dsn = s.storage.postgresql.dsn
    bootstrap = s.kafka.bootstrap_servers
    topic = s.kafka.journal_topic
    ensure_journal(bootstrap, s)
    w = generate_workload(agents=30, events=3_000, seed=53, garbage_every=0)
    procs = Projectors(s, tmp_path, schema=schema, args=("--batch-max", "200", "--poll-ms", "50"))
    try:
        produce_workload(bootstrap, topic, w.items[:1000])
        procs.start("lone")
        wait_caught_up(dsn, schema, end_offsets(bootstrap, topic), timeout=120, procs=procs)
        with psycopg.connect(dsn) as conn:  # the state a crash will take the database back to
            conn.execute("set transaction isolation level repeatable read")
            for t in TABLES:
                conn.execute(f"create table public.saved_{t} as select * from {schema}.{t}")
            saved = dict(conn.execute(f"select partition, next_offset from {schema}.projector_offsets").fetchall())

        produce_workload(bootstrap, topic, w.items[1000:2000])
        wait_caught_up(dsn, schema, end_offsets(bootstrap, topic), timeout=120, procs=procs)
        with psycopg.connect(dsn) as conn:
            ahead = dict(conn.execute(f"select partition, next_offset from {schema}.projector_offsets").fetchall())
            assert any(ahead[p] > saved[p] for p in saved)
            # The lost commits: every table back to the copy, at once, under the running projector.
            conn.execute(f"lock table {', '.join(f'{schema}.{t}' for t in TABLES)} in access exclusive mode")
            for t in TABLES:
                conn.execute(f"delete from {schema}.{t}")
                conn.execute(f"insert into {schema}.{t} select * from public.saved_{t}")
                conn.execute(f"drop table public.saved_{t}")

        produce_workload(bootstrap, topic, w.items[2000:])
        wait_caught_up(dsn, schema, end_offsets(bootstrap, topic), timeout=120, procs=procs)
        log = procs.log("lone")
        wait_for(lambda: "offsets rolled back" in procs.log("lone"), timeout=30, what="the rollback to be logged")
        log = procs.log("lone")
        assert "the database lost committed transactions" in log, log[-3000:]
        assert "(written last by this process)" in log, log[-3000:]
        assert "another projector" not in log and "fenced:" not in log, log[-3000:]
        assert procs.stop_all() == {"lone": 0}, procs.tails()
    finally:
        procs.close()
    assert_projection_matches(dsn, schema, read_journal(bootstrap, topic))
