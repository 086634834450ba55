"""PostgreSQL primary/standby of the dev stack (`aosk dev up --standby`): a standby made
with the embedded PostgreSQL's own ``pg_basebackup -R`` follows what a projector writes
on the primary; mid-projection the projector (default run) or the primary itself
(``-m chaos``: its postmaster SIGKILLed, then restarted for the other tests) dies and the
standby is promoted (`aosk dev promote-standby`); a projector pointed at the promoted
server resumes from the offsets stored with its projections, and every table equals the
fold of the journal.

The standby belongs to the session's dev stack and is dropped afterwards
(`aosk dev drop-standby`: data deleted, replication slot dropped on the primary)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from aosk.config import Settings
from aosk.devstack.postgres import SLOT_NAME
from aosk.devstack.stack import dev_stack
from aosk.projectors.runner import ensure_journal
from aosk.waiting import wait_for
from aosk.workload import generate_workload, produce_workload
from projection_oracle import assert_projection_matches, end_offsets, read_journal
from projector_harness import Projectors, projected, projected_total, run_cli, wait_caught_up

pytestmark = pytest.mark.integration

SCHEMA = "standby"


def _on_port(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _audit_rows(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(f"select count(*) from {SCHEMA}.audit_log").fetchone()
    assert row is not None
    return int(row[0])


def _slots(dsn: str) -> list[str]:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return [r[0] for r in conn.execute("select slot_name from pg_replication_slots")]


def _sigkill_postmaster(pgdata: Path) -> None:
    pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)


def test_standby_follows_and_takes_over(settings: Settings, tmp_path: Path) -> None:
    _failover(settings, tmp_path, events=4000, agents=30, kill="projector")


@pytest.mark.chaos
def test_primary_sigkilled_during_projection_standby_takes_over(settings: Settings, tmp_path: Path) -> None:
    _failover(settings, tmp_path, events=30_000, agents=200, kill="primary")


def _failover(settings: Settings, tmp_path: Path, *, events: int, agents: int, kill: str) -> None:
    primary_dsn = settings.storage.postgresql.dsn
    assert primary_dsn is not None
    bootstrap = settings.kafka.bootstrap_servers
    assert bootstrap is not None
    topic = settings.kafka.journal_topic
    ensure_journal(bootstrap, settings)
    items = generate_workload(agents=agents, events=events, seed=15, garbage_every=300, illegal_every=50).items
    half = len(items) // 2

    before = dev_stack(settings, create=False)
    if before is not None and before.standby is not None:  # left by an interrupted run
        before.drop_standby()
    try:
        up = run_cli(settings, "dev", "up", "--standby", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        ds = dev_stack(settings, create=False)
        assert ds is not None and ds.standby is not None and ds.standby.is_standby
        standby_dsn = _on_port(primary_dsn, ds.standby.port)
        status = run_cli(settings, "dev", "status")
        assert "pg-standby  up    streaming from" in status.stdout, status.stdout

        # 1. The first half projected on the primary shows up on the standby.
        produce_workload(bootstrap, topic, items[:half])
        procs = Projectors(settings, tmp_path, schema=SCHEMA,
                           args=("--batch-max", "50", "--poll-ms", "50", "--transaction-timeout", "10"))
        try:
            procs.start("a")
            wait_caught_up(primary_dsn, SCHEMA, end_offsets(bootstrap, topic), timeout=300, procs=procs)
            rows = _audit_rows(primary_dsn)
            assert rows == half
            wait_for(lambda: projected(standby_dsn, SCHEMA) == projected(primary_dsn, SCHEMA),
                     timeout=30, what="the standby to replay the primary's projection")
            assert _audit_rows(standby_dsn) == rows
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                with psycopg.connect(standby_dsn) as conn:
                    conn.execute(f"delete from {SCHEMA}.audit_log")

            # 2. The second half: the projector dies mid-way, the standby is promoted.
            produce_workload(bootstrap, topic, items[half:])
            wait_for(lambda: projected_total(primary_dsn, SCHEMA) >= half + len(items) // 8, timeout=120,
                     interval=0.02, what="part of the second half projected on the primary")
            if kill == "primary":
                _sigkill_postmaster(ds.postgres.pgdata)
                wait_for(lambda: not ds.postgres.accepts_connections(), timeout=30, what="the primary to be gone")
            procs.kill("a")
        finally:
            procs.close()
        promoted = run_cli(settings, "dev", "promote-standby")
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        assert f"AOSK_POSTGRESQL_DSN={ds.standby.dsn}" in promoted.stdout
        assert not ds.standby.is_standby and ds.standby.in_recovery() is False
        assert "promoted: a primary of its own" in run_cli(settings, "dev", "status").stdout

        # 3. AOSK pointed at the promoted server resumes from its stored offsets.
        on_standby = settings.model_copy(update={"storage": settings.storage.model_copy(update={
            "postgresql": settings.storage.postgresql.model_copy(update={"dsn": standby_dsn})})})
        resumed_from = projected_total(standby_dsn, SCHEMA)
        print(f"standby resumed from {resumed_from} of {len(items)} records")
        assert half <= resumed_from < len(items)
        procs = Projectors(on_standby, tmp_path, schema=SCHEMA, args=("--poll-ms", "50"))
        try:
            procs.start("b")
            ends = end_offsets(bootstrap, topic)
            assert sum(ends.values()) == len(items)
            wait_caught_up(standby_dsn, SCHEMA, ends, timeout=300, procs=procs)
            assert procs.stop_all() == {"b": 0}, procs.tails()
        finally:
            procs.close()
        assert_projection_matches(standby_dsn, SCHEMA, read_journal(bootstrap, topic))
        db_status = run_cli(on_standby, "db", "status", "--schema", SCHEMA)
        assert db_status.returncode == 0, db_status.stderr
        verify = run_cli(on_standby, "audit", "verify", "--schema", SCHEMA)
        assert verify.returncode == 0, verify.stderr
        assert f"{len(items)} rows" in verify.stdout
    finally:
        if kill == "primary":  # the other tests' primary, back (crash recovery)
            restarted = dev_stack(settings, create=False)
            assert restarted is not None
            restarted.postgres.start()
        dropped = run_cli(settings, "dev", "drop-standby")
    assert dropped.returncode == 0, dropped.stdout + dropped.stderr
    after = dev_stack(settings, create=False)
    assert after is not None and after.standby is None
    assert SLOT_NAME not in _slots(primary_dsn)
