"""``aosk backup create | verify | restore`` on the real broker and PostgreSQL.

A source cluster (its own topics and database) gets a journal with the things positions
and times matter for: fold-version markers, messages and deliveries, child spawns,
calls timed out by the worker, tasks, undecodable records, a committed transaction
(commit markers) and an aborted one (a longer gap); a worker judges it, ``aosk replay``
projects it, the API's schema holds keys and an idempotency record. It is archived,
and restored into a fresh cluster (other topics, another database). Then:

* a backup of the restored cluster has the same records at the same positions with the
  same timestamps (content digests and every record compared);
* projections equal the fold of the restored journal and ``aosk audit verify`` passes;
* every agent's state equals the one before, byte for byte (position fields included);
* the API's tables are restored row for row;
* a worker started on the restored cluster writes nothing for the restored records, and
  a message sent after the restore is delivered.

The 50k-event run (``-m chaos``) measures the same at size.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer

from aosk.backup import BackupOptions, Manifest, create_backup, restore_backup, verify_backup
from aosk.backup.run import read_archive
from aosk.bench.follow import Coverage, wait_settled
from aosk.client._producer import producer_config
from aosk.config import Settings
from aosk.errors import BackupMismatch, RestoreRefused
from aosk.events import MessageSent, TaskSubmitted, encode
from aosk.kernel import encode_state, fold_journal
from aosk.streams.kafka import group_id
from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from aosk.workload import generate_workload, produce_workload
from projection_oracle import assert_projection_matches, read_journal
from projector_harness import run_cli
from worker_harness import Workers, committed_offsets, end_offsets, group_assignment, read_topic

pytestmark = pytest.mark.integration

SCHEMA = "aosk"


def _with(settings: Settings, *, prefix: str, dsn: str | None = None) -> Settings:
    update: dict[str, Any] = {"kafka": settings.kafka.model_copy(update={"topic_prefix": prefix,
                                                                        "journal_partitions": 6})}
    if dsn is not None:
        update["storage"] = settings.storage.model_copy(update={
            "postgresql": settings.storage.postgresql.model_copy(update={"dsn": dsn})})
    return settings.model_copy(update=update)


@contextmanager
def _database(admin_dsn: str, what: str) -> Iterator[str]:
    """A new, empty database with pgvector; its DSN. Dropped afterwards."""
    name = f"t_backup_{what}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create extension if not exists vector")
    try:
        yield dsn
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def clusters(settings, stack) -> Iterator[tuple[Settings, Settings]]:
    """A source and a target cluster: topics of their own, a database each."""
    tag = uuid.uuid4().hex[:6]
    with _database(stack.admin_dsn, "src") as src, _database(stack.admin_dsn, "dst") as dst:
        yield (_with(settings, prefix=f"{settings.kafka.topic_prefix}-{tag}-src", dsn=src),
               _with(settings, prefix=f"{settings.kafka.topic_prefix}-{tag}-dst", dsn=dst))


def _settled(settings: Settings, *, quiet_s: float = 3.0, timeout: float = 120) -> None:
    """Until the worker group has committed every journal partition's end and the journal
    has not grown for ``quiet_s``. Only for a journal whose partitions end in a record or
    whose ends the restore committed: a worker commits the offset after its last record,
    which is short of an end behind a transaction marker."""
    k = settings.kafka
    seen: dict[str, Any] = {"ends": None, "since": time.monotonic()}

    def done() -> bool:
        ends = end_offsets(k.bootstrap_servers, k.journal_topic)
        if ends != seen["ends"]:
            seen.update(ends=ends, since=time.monotonic())
            return False
        committed = committed_offsets(k.bootstrap_servers, group_id(k.topic_prefix), k.journal_topic)
        return (all(committed.get(p, 0) >= e for p, e in ends.items() if e > 0)
                and time.monotonic() - seen["since"] >= quiet_s)

    wait_for(done, timeout=timeout, interval=0.5, what="the worker to judge the whole journal and go quiet")


def _start_worker(workers: Workers, settings: Settings) -> None:
    k = settings.kafka
    workers.start("w1")
    wait_for(lambda: workers.procs["w1"].alive()
             and (a := group_assignment(k.bootstrap_servers, group_id(k.topic_prefix), k.journal_topic)) is not None
             and sum(len(p) for p in a.values()) == k.journal_partitions
             and "folds" in workers.procs["w1"].log(),
             timeout=120, what="the worker to own the journal")


def build_source(settings: Settings, tmp: Path, *, agents: int, events: int) -> dict[str, Any]:
    """A judged, projected journal on ``settings``' topics and database; what it holds."""
    from aosk.api.idempotency import ensure_schema as ensure_idempotency
    from aosk.api.keys import KeyStore
    from aosk.api.keys import ensure_schema as ensure_keys

    k = settings.kafka
    bootstrap = k.bootstrap_servers
    assert bootstrap
    ensure_topics(bootstrap, k, mark_new_journal=True)  # fold version markers
    wl = generate_workload(agents=agents, events=events, seed=11, garbage_every=97, unfinished_calls=2,
                           unfinished_timeout_ms=1_000, prefix=f"bk{uuid.uuid4().hex[:4]}")
    half = len(wl.items) // 2
    produce_workload(bootstrap, k.journal_topic, wl.items[:half])
    # An aborted transaction: records no reader sees and a marker (a gap of several offsets).
    p = Producer(producer_config(bootstrap, client_id="test-abort", **{"transactional.id": f"abort-{k.topic_prefix}"}))
    p.init_transactions(30)
    p.begin_transaction()
    for ev in wl.events[:6]:
        p.produce(k.journal_topic, key=ev.agent_id.encode(), value=encode(ev))
    p.flush(30)
    p.abort_transaction(30)
    # The rest in one committed transaction: commit markers (one-offset gaps).
    produce_workload(bootstrap, k.journal_topic, wl.items[half:], transactional_id=f"commit-{k.topic_prefix}")
    tasks = [TaskSubmitted(event_id=str(uuid.uuid4()), agent_id=a, tenant_id=f"tenant-{i % 2}",
                           occurred_at=0, origin="client", task_id=f"task-{i}", input=f"summarise report {i}",
                           metadata={"n": str(i)})
             for i, a in enumerate(wl.agents[:4])]
    produce_workload(bootstrap, k.journal_topic, tasks)
    coverage = Coverage(bootstrap, k.transitions_topic)
    try:
        with Workers(settings, tmp / "workers-source") as workers:
            _start_worker(workers, settings)
            # every record judged, and no timeout or derived event written for a while
            wait_settled(bootstrap, k.journal_topic, coverage, quiet_s=2.0, timeout=300)
            assert workers.stop("w1") == 0
    finally:
        coverage.close()
    t0 = time.monotonic()
    r = run_cli(settings, "replay", "--no-progress", "--drop-old", timeout=600)
    assert r.returncode == 0, r.stderr
    replay_s = time.monotonic() - t0
    dsn = settings.storage.postgresql.dsn
    assert dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        ensure_keys(conn, settings.api.schema_name)
        ensure_idempotency(conn, settings.api.schema_name)
        KeyStore(conn, settings.api.schema_name).create(tenant_id="tenant-0", scope="write", name="ops")
        conn.execute(f"insert into {settings.api.schema_name}.agents (agent_id, tenant_id) values (%s, %s)",
                     (wl.agents[0], "tenant-0"))
    return {"workload": wl, "replay_s": replay_s}


def _api_rows(dsn: str, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(dsn) as conn:
        tables = [r[0] for r in conn.execute("select tablename from pg_tables where schemaname = %s order by 1",
                                             (schema,)).fetchall()]
        return {t: sorted(conn.execute(f"select * from {schema}.{t}").fetchall(), key=repr) for t in tables}


def _states(settings: Settings) -> dict[str, bytes]:
    k = settings.kafka
    assert k.bootstrap_servers
    slots = fold_journal(read_journal(k.bootstrap_servers, k.journal_topic))
    return {a: encode_state(s.state) for a, s in slots.items()}


def run_round_trip(source: Settings, target: Settings, tmp: Path, *, agents: int, events: int) -> dict[str, float]:
    t: dict[str, float] = {}
    built = build_source(source, tmp, agents=agents, events=events)
    t["source_replay_s"] = built["replay_s"]  # the same rebuild on the source, as a baseline
    before = _states(source)
    src_dsn, dst_dsn = source.storage.postgresql.dsn, target.storage.postgresql.dsn
    assert src_dsn and dst_dsn
    api_before = _api_rows(src_dsn, source.api.schema_name)
    assert api_before["api_keys"] and api_before["agents"]

    archive = tmp / "archive"
    t0 = time.monotonic()
    m = create_backup(source, archive, BackupOptions(progress=False))
    t["create_s"] = time.monotonic() - t0
    journal = m.topic("journal")
    assert journal.records == sum(1 for _ in read_journal(source.kafka.bootstrap_servers or "",
                                                          source.kafka.journal_topic))
    gaps = sum(e.end_offset - e.records for e in journal.partitions)
    assert gaps > 0, "the journal has transaction markers and aborted records"
    assert {d.role for d in m.dumps if d.file} == {"projections", "api"}
    t0 = time.monotonic()
    verify_backup(archive, progress=False)
    t["verify_s"] = time.monotonic() - t0

    # Restoring into the cluster it came from is refused: its journal is not empty.
    with pytest.raises(RestoreRefused, match="not empty"):
        restore_backup(source, archive, BackupOptions(progress=False))
    r = run_cli(source, "backup", "restore", str(archive), "--no-progress")
    assert r.returncode == 1 and f"{source.kafka.journal_topic} is not empty" in r.stderr, r.stderr

    t0 = time.monotonic()
    rep = restore_backup(target, archive, BackupOptions(progress=False))
    t["restore_s"] = time.monotonic() - t0
    t.update({f"restore_{k}_s": v for k, v in rep.seconds.items()})
    assert rep.records["journal"] == journal.records and rep.api_restored

    # Byte for byte: a backup of the restored cluster holds the same records at the same places.
    r = run_cli(target, "backup", "create", str(tmp / "again"), "--no-progress")
    assert r.returncode == 0, r.stderr
    again = Manifest.from_json((tmp / "again" / "manifest.json").read_text())
    for role in ("journal", "dead-letters"):
        a, b = m.topic(role), again.topic(role)
        assert [(e.partition, e.records, e.first_offset, e.last_offset, e.end_offset, e.content_sha256)
                for e in a.partitions] == \
               [(e.partition, e.records, e.first_offset, e.last_offset, e.end_offset, e.content_sha256)
                for e in b.partitions], role
    for ea, eb in zip(journal.partitions, again.topic("journal").partitions, strict=True):
        ra = [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in read_archive(archive, ea)]
        rb = [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in read_archive(tmp / "again", eb)]
        assert ra == rb, f"partition {ea.partition}"
    assert sum(e.records for e in m.topic("dead-letters").partitions) > 0  # the undecodable records' copies

    # Projections equal the fold of the restored journal; the audit chain verifies.
    tk = target.kafka
    assert tk.bootstrap_servers
    restored = read_journal(tk.bootstrap_servers, tk.journal_topic)
    assert_projection_matches(dst_dsn, SCHEMA, restored)
    digests = [run_cli(c, "db", "digest", "--format", "json") for c in (source, target)]
    assert all(d.returncode == 0 for d in digests), [d.stderr for d in digests]
    assert json.loads(digests[0].stdout)["tables"] == json.loads(digests[1].stdout)["tables"]
    r = run_cli(target, "audit", "verify", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "audit chains intact" in r.stdout
    # Each agent's state equals the one before (position fields included: they are kept).
    after = _states(target)
    assert after == before
    assert _api_rows(dst_dsn, target.api.schema_name) == api_before

    # A worker on the restored cluster writes nothing for the restored records, and a
    # message sent after the restore is delivered.
    ends = end_offsets(tk.bootstrap_servers, tk.journal_topic)
    from aosk.kernel import fold_journal as fold

    slots = fold(restored)
    running = [a for a, s in slots.items() if not a.startswith("~") and s.state.status == "RUNNING"
               and len(s.state.inbox.messages) < 16]
    by_tenant: dict[str, list[str]] = {}
    for a in running:
        by_tenant.setdefault(slots[a].state.tenant_id, []).append(a)
    sender, recipient = next(v for v in by_tenant.values() if len(v) >= 2)[:2]
    with Workers(target, tmp / "workers-target") as workers:
        _start_worker(workers, target)
        sent = MessageSent(event_id=str(uuid.uuid4()), agent_id=sender, tenant_id=slots[sender].state.tenant_id,
                           occurred_at=0, origin="client", message_id=str(uuid.uuid4()), to_agent_id=recipient,
                           body="after the restore")
        produce_workload(tk.bootstrap_servers, tk.journal_topic, [sent])

        def delivered() -> bool:
            return any(r.event is not None and type(r.event).__name__ == "MessageDelivered"
                       and getattr(r.event, "message_id", None) == sent.message_id
                       for r in read_journal(tk.bootstrap_servers, tk.journal_topic) if r.offset >= ends[r.partition])

        wait_for(delivered, timeout=60, interval=0.3, what="the message sent after the restore to be delivered")
        _settled(target, quiet_s=1.0)
        assert workers.stop("w1") == 0
    new = [r for r in read_journal(tk.bootstrap_servers, tk.journal_topic) if r.offset >= ends[r.partition]]
    assert sorted(type(r.event).__name__ for r in new) == ["MessageDelivered", "MessageSent"]
    verdicts = read_topic(tk.bootstrap_servers, tk.transitions_topic)
    assert len(verdicts) == 2, "verdicts only for the two records written after the restore"
    final = fold(read_journal(tk.bootstrap_servers, tk.journal_topic))
    inbox = [m.message_id for m in final[recipient].state.inbox.messages]
    assert sent.message_id in inbox
    t["records"] = journal.records
    t["archive_bytes"] = sum(e.file_bytes for tt in m.topics for e in tt.partitions)
    return t


def test_backup_restore_round_trip(settings, clusters, tmp_path: Path) -> None:
    source, target = clusters
    run_round_trip(source, target, tmp_path, agents=24, events=400)

    # verify names what differs: a damaged partition file and a damaged dump.
    archive = tmp_path / "archive"
    broken = tmp_path / "broken"
    shutil.copytree(archive, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    victim = next(p for p in manifest["topics"][0]["partitions"] if p["records"] > 0)["file"]
    data = bytearray((broken / victim).read_bytes())
    data[-40] ^= 0xFF
    (broken / victim).write_bytes(bytes(data))
    (broken / "postgres" / "api.dump").write_bytes(b"not a dump")
    with pytest.raises(BackupMismatch) as e:
        verify_backup(broken, progress=False)
    assert victim in str(e.value) and "api.dump" in str(e.value)
    r = run_cli(settings, "backup", "verify", str(broken), "--no-progress")
    assert r.returncode == 1 and victim in r.stderr, r.stderr
    r = run_cli(settings, "backup", "verify", str(archive), "--no-progress")
    assert r.returncode == 0, r.stderr


@pytest.mark.chaos
def test_backup_restore_50k_events(clusters, tmp_path: Path) -> None:
    source, target = clusters
    t = run_round_trip(source, target, tmp_path, agents=500, events=50_000)
    print("backup figures:", json.dumps(t, indent=1))
