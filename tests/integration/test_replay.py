"""``aosk replay`` and ``aosk db digest`` against the real broker and PostgreSQL.

- PostgreSQL lost: the projection schema is dropped (after digesting it); ``aosk replay``
  builds it again from the journal, every table's digest equals the one taken before.
- A projector bug wrote wrong rows: rows of agent_state and audit_log are changed with
  UPDATE; ``aosk audit verify`` fails; ``aosk replay`` swaps in a rebuild, the digests
  equal the pre-corruption ones and ``aosk audit verify`` passes.
- Live: a replay runs while a producer and two live projectors keep running; the live
  projectors carry on across the swap (their prepared statements resolve the renamed
  schema); once the producer stops and they catch up, the digests equal those of a
  second, quiet rebuild of the same journal into another schema; no live write lost.
- Interrupted: a replay stopped mid-way and SIGKILLed leaves the live schema unchanged;
  a plain replay then refuses; ``--resume`` finishes it with the same digests as a
  clean one; ``--discard`` drops an interrupted shadow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from aosk.config import Settings
from aosk.projectors.digest import digest_schema, schema_exists
from aosk.projectors.memory_index import INDEX_NAMES
from aosk.projectors.runner import ensure_journal
from aosk.waiting import wait_for
from aosk.workload import generate_workload, iter_chunks, produce_workload
from projection_oracle import assert_projection_matches, end_offsets, read_journal
from projector_harness import Projectors, projected, projector_env, run_cli, wait_caught_up

pytestmark = pytest.mark.integration

EVENTS = 6000
AGENTS = 60
PROJECTOR_ARGS = ("--batch-max", "300", "--poll-ms", "50", "--transaction-timeout", "10")


def _sub(settings: Settings, suffix: str) -> Settings:
    return settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"topic_prefix": f"{settings.kafka.topic_prefix}-{suffix}"})}
    )


def _digest(dsn: str, schema: str) -> dict:
    with psycopg.connect(dsn) as conn:
        return digest_schema(conn, schema)


def _exists(dsn: str, schema: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return schema_exists(conn, schema)


def _indexes(dsn: str, schema: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute("select indexname from pg_indexes where schemaname = %s", (schema,))}


def _index_definitions(dsn: str, schema: str) -> set[tuple[str, str]]:
    """Every index and every constraint of ``schema``, as PostgreSQL defines them."""
    with psycopg.connect(dsn) as conn:
        indexes = {("index", r[0]) for r in conn.execute("select indexdef from pg_indexes where schemaname = %s",
                                                         (schema,))}
        constraints = {("constraint", f"{r[0]}.{r[1]}: {r[2]}") for r in conn.execute(
            "select t.relname, c.conname, pg_get_constraintdef(c.oid) from pg_constraint c "
            "join pg_class t on t.oid = c.conrelid join pg_namespace n on n.oid = t.relnamespace "
            "where n.nspname = %s", (schema,))}
    return indexes | constraints


def _workload(seed: int):
    return generate_workload(agents=AGENTS, events=EVENTS, seed=seed, garbage_every=250, illegal_every=40).items


def _project_all(settings: Settings, tmp_path: Path, schema: str) -> None:
    """Live projectors project the whole journal into ``schema``, then stop."""
    dsn, bootstrap = settings.storage.postgresql.dsn, settings.kafka.bootstrap_servers
    procs = Projectors(settings, tmp_path, schema=schema, args=PROJECTOR_ARGS)
    try:
        procs.start("a")
        procs.start("b")
        wait_caught_up(dsn, schema, end_offsets(bootstrap, settings.kafka.journal_topic), timeout=120, procs=procs)
        assert procs.stop_all() == {"a": 0, "b": 0}, procs.tails()
    finally:
        procs.close()


def _replay(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    r = run_cli(settings, "replay", "--no-progress", *args, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture(scope="module")
def quiet(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A finished journal, projected by live projectors into schema ``live_q``."""
    s = _sub(settings, "q")
    ensure_journal(s.kafka.bootstrap_servers, s)
    produce_workload(s.kafka.bootstrap_servers, s.kafka.journal_topic, _workload(11))
    _project_all(s, tmp_path_factory.mktemp("quiet"), "live_q")
    return s


def test_postgres_lost_rebuilds_identical_projections(quiet: Settings) -> None:
    dsn = quiet.storage.postgresql.dsn
    before = _digest(dsn, "live_q")
    assert before["audit_log"]["rows"] > 0
    definitions = _index_definitions(dsn, "live_q")
    assert any(INDEX_NAMES[quiet.memory.index] in d for _, d in definitions)
    assert any("PRIMARY KEY" in d for _, d in definitions)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("drop schema live_q cascade")  # every projection and the offsets: PostgreSQL lost
    r = _replay(quiet, "--schema", "live_q")
    assert "there was no live schema" in r.stdout
    assert not _exists(dsn, "live_q_shadow")
    after = _digest(dsn, "live_q")
    assert after == before
    # every index and key but the upserts' was dropped for the catch-up and built at the end
    assert _index_definitions(dsn, "live_q") == definitions
    # the memories' vector index is the configured kind
    assert INDEX_NAMES[quiet.memory.index] in _indexes(dsn, "live_q")
    cli = run_cli(quiet, "db", "digest", "--schema", "live_q", "--format", "json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == {"schema": "live_q", "tables": before}
    records = read_journal(quiet.kafka.bootstrap_servers, quiet.kafka.journal_topic)
    assert before["audit_log"]["rows"] == len(records)
    assert_projection_matches(dsn, "live_q", records)
    v = run_cli(quiet, "audit", "verify", "--schema", "live_q")
    assert v.returncode == 0, v.stdout + v.stderr


def test_projector_bug_fixed_by_replay(quiet: Settings) -> None:
    dsn = quiet.storage.postgresql.dsn
    good = _digest(dsn, "live_q")
    with psycopg.connect(dsn) as conn:  # "a projector bug": wrong budgets, wrong verdicts
        conn.execute("update live_q.agent_state set tokens_used = tokens_used + 7 "
                     "where agent_id in (select agent_id from live_q.agent_state order by agent_id limit 5)")
        conn.execute("update live_q.audit_log set reason = 'wrong', message = 'wrong' "
                     "where (journal_partition, journal_offset) in "
                     "(select journal_partition, journal_offset from live_q.audit_log order by 1, 2 limit 3)")
    bad = _digest(dsn, "live_q")
    assert bad["agent_state"] != good["agent_state"] and bad["audit_log"] != good["audit_log"]
    v = run_cli(quiet, "audit", "verify", "--schema", "live_q")
    assert v.returncode == 1, v.stdout + v.stderr
    r = _replay(quiet, "--schema", "live_q")
    assert "the replaced schema is live_q_old_" in r.stdout
    assert _digest(dsn, "live_q") == good
    v = run_cli(quiet, "audit", "verify", "--schema", "live_q")
    assert v.returncode == 0, v.stdout + v.stderr


def test_replay_while_live_projectors_and_producer_run(settings: Settings, tmp_path: Path) -> None:
    s = _sub(settings, "live")
    dsn, bootstrap, topic = s.storage.postgresql.dsn, s.kafka.bootstrap_servers, s.kafka.journal_topic
    ensure_journal(bootstrap, s)
    items = _workload(23)
    first = len(items) * 4 // 10
    during, last = items[first:-600], items[-600:]
    produce_workload(bootstrap, topic, items[:first])
    procs = Projectors(s, tmp_path, schema="live_l", args=PROJECTOR_ARGS)
    stop = threading.Event()
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            for chunk in iter_chunks(during, 200):
                produce_workload(bootstrap, topic, chunk)
                if stop.is_set():
                    break
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    t = threading.Thread(target=producer, name="producer")
    try:
        procs.start("a")
        procs.start("b")
        wait_for(lambda: sum(projected(dsn, "live_l").values()) > 0, timeout=60, interval=0.05,
                 what="the live projectors to start")
        t.start()
        r = _replay(s, "--schema", "live_l", "--batch-max", "400", "--swap-gap", "200")
        assert "the replaced schema is live_l_old_1" in r.stdout, r.stdout
        t.join(120)
        assert not t.is_alive() and not errors, errors
        # records produced after the swap are projected by the same live processes, into the new schema
        produce_workload(bootstrap, topic, last)
        ends = end_offsets(bootstrap, topic)
        assert sum(ends.values()) == len(items)
        wait_caught_up(dsn, "live_l", ends, timeout=120, procs=procs)
        assert all(p.poll() is None for p in procs.procs.values()), procs.tails()
        assert procs.stop_all() == {"a": 0, "b": 0}, procs.tails()
    finally:
        stop.set()
        if t.is_alive():
            t.join(120)
        procs.close()
    live = _digest(dsn, "live_l")
    assert live["audit_log"]["rows"] == len(items)  # no live write lost, none duplicated
    # a second, quiet rebuild of the same journal, into a schema that does not exist yet
    _replay(s, "--schema", "quiet_l")
    assert _digest(dsn, "quiet_l") == live
    old = projected(dsn, "live_l_old_1")
    assert all(old[p] <= ends.get(p, 0) for p in old)
    assert_projection_matches(dsn, "live_l", read_journal(bootstrap, topic))


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _start_faulted_replay(s: Settings, tmp_path: Path, name: str, schema: str) -> subprocess.Popen[bytes]:
    env = projector_env(s)
    env["AOSK_REPLAY_FAULT"] = "sigstop:4"
    log = open(tmp_path / f"{name}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "aosk.cli", "replay", "--no-progress", "--schema", schema,
                             "--batch-max", "300", "--swap-gap", "100"], env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def test_interrupted_replay_resumes_or_is_discarded(settings: Settings, tmp_path: Path) -> None:
    s = _sub(settings, "int")
    dsn, bootstrap, topic = s.storage.postgresql.dsn, s.kafka.bootstrap_servers, s.kafka.journal_topic
    ensure_journal(bootstrap, s)
    produce_workload(bootstrap, topic, _workload(37))
    _project_all(s, tmp_path, "live_i")
    clean = _digest(dsn, "live_i")
    indexes = _indexes(dsn, "live_i")
    total = sum(end_offsets(bootstrap, topic).values())

    for name in ("resume", "discard"):
        proc = _start_faulted_replay(s, tmp_path, name, "live_i")
        try:
            wait_for(lambda: proc.poll() is not None or _proc_state(proc.pid) == "T", timeout=60, interval=0.05,  # noqa: B023 - wait_for calls it within this iteration
                     what="the replay to stop itself mid-way")
            assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
            done = sum(projected(dsn, "live_i_shadow").values())
            assert 0 < done < total
            assert _digest(dsn, "live_i") == clean  # the live schema is untouched meanwhile
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
        assert _digest(dsn, "live_i") == clean
        refused = run_cli(s, "replay", "--no-progress", "--schema", "live_i")
        assert refused.returncode == 1 and "--resume" in refused.stderr, refused.stdout + refused.stderr
        if name == "resume":
            _replay(s, "--schema", "live_i", "--resume", "--drop-old")
            assert not _exists(dsn, "live_i_shadow")
            assert not _exists(dsn, "live_i_old_1")
            assert _digest(dsn, "live_i") == clean
            assert _indexes(dsn, "live_i") == indexes
        else:
            r = run_cli(s, "replay", "--schema", "live_i", "--discard")
            assert r.returncode == 0 and "dropped schema live_i_shadow" in r.stdout, r.stdout + r.stderr
            assert not _exists(dsn, "live_i_shadow")
            assert _digest(dsn, "live_i") == clean
    assert os.environ.get("AOSK_REPLAY_FAULT") is None
