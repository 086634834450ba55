"""Exactly-once projections through SIGKILLs: two projector processes, one killed at
random moments and restarted each time; afterwards every table equals the fold of the
journal, checkpoints restore to their hashes, and `aosk audit verify` passes -- and
fails, naming the agent and seq, after an audit row is changed or an agent's last row
deleted.

Default run: 15,000 events over 100 agents, 3 kills. ``-m chaos``: 50,000 events over
200 agents, 5 kills (``make chaos``)."""

from __future__ import annotations

import random
from pathlib import Path

import psycopg
import pytest

from aosk.config import Settings
from aosk.kernel import AgentSlot, apply, decode_state, encode_state, state_hash
from aosk.projectors.checkpoints import nearest_checkpoint
from aosk.projectors.runner import ensure_journal
from aosk.waiting import wait_for
from aosk.workload import generate_workload, iter_chunks, produce_workload
from projection_oracle import assert_projection_matches, end_offsets, read_journal
from projector_harness import Projectors, projected_total, run_cli, wait_caught_up

pytestmark = pytest.mark.integration


def _sub(settings: Settings, suffix: str) -> Settings:
    return settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"topic_prefix": f"{settings.kafka.topic_prefix}-{suffix}"})}
    )


def run_kills(settings: Settings, tmp_path: Path, *, schema: str, events: int, agents: int, kills: int,
              seed: int) -> None:
    dsn = settings.storage.postgresql.dsn
    topic = settings.kafka.journal_topic
    bootstrap = settings.kafka.bootstrap_servers
    ensure_journal(bootstrap, settings)
    w = generate_workload(agents=agents, events=events, seed=seed, garbage_every=250, illegal_every=40)
    items = w.items
    first = int(len(items) * 0.4)
    produce_workload(bootstrap, topic, items[:first])
    rest = list(iter_chunks(items[first:], -(-(len(items) - first) // kills)))

    rng = random.Random(seed)
    moments = sorted(rng.uniform(0.05, 0.9) for _ in range(kills))
    procs = Projectors(settings, tmp_path, schema=schema, args=("--batch-max", "400", "--poll-ms", "50",
                                                                "--transaction-timeout", "10"))
    try:
        procs.start("a")
        procs.start("b")
        produced = first
        for i, frac in enumerate(moments):
            target = int(frac * produced)
            wait_for(lambda: projected_total(dsn, schema) >= target, timeout=180, interval=0.02,  # noqa: B023 - wait_for calls it within this iteration
                     what=f"{target} records projected before kill {i + 1}")
            procs.kill("a")
            procs.start("a")
            if i < len(rest):
                produce_workload(bootstrap, topic, rest[i])
                produced += len(rest[i])
        assert produced == len(items)
        ends = end_offsets(bootstrap, topic)
        assert sum(ends.values()) == len(items)
        wait_caught_up(dsn, schema, ends, timeout=300, procs=procs)
        codes = procs.stop_all()
        assert codes == {"a": 0, "b": 0}, procs.tails()
    finally:
        procs.close()

    records = read_journal(bootstrap, topic)
    assert len(records) == len(items)
    exp = assert_projection_matches(dsn, schema, records)
    assert len({v.agent_id for v in exp.verdicts.values()}) >= agents

    with psycopg.connect(dsn) as conn:
        # checkpoints restore to the same state hash ...
        n = 0
        for agent, seq, data, h in conn.execute(f"select agent_id, seq, state, state_hash from {schema}.checkpoints"):
            st = decode_state(bytes(data))
            assert st.seq == seq and state_hash(st) == bytes(h), (agent, seq)
            n += 1
        assert n > 0
        # ... and a checkpoint plus the journal after it reaches the agent's current state
        with_cps = [a for (a,) in conn.execute(f"select distinct agent_id from {schema}.checkpoints order by 1")]
        for agent in rng.sample(with_cps, min(10, len(with_cps))):
            cp = nearest_checkpoint(conn, schema, agent)
            assert cp is not None
            slot = AgentSlot(cp.state, cp.offset)
            for r in records:
                if r.key == agent and r.offset > cp.offset:
                    slot, _ = apply(slot, r)
            assert encode_state(slot.state) == encode_state(exp.slots[agent].state), agent

    ok = run_cli(settings, "audit", "verify", "--schema", schema)
    assert ok.returncode == 0, ok.stderr
    assert f"{len(items)} rows" in ok.stdout

    _tamper_update(settings, dsn, schema, rng)
    _tamper_delete_tail(settings, dsn, schema, rng)


def _tamper_update(settings: Settings, dsn: str, schema: str, rng: random.Random) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            f"select journal_partition, journal_offset, agent_id, seq, reason from {schema}.audit_log"
            " where kind = 'rejected' order by journal_partition, journal_offset"
        ).fetchall()
        p, o, agent, seq, reason = rng.choice(rows)
        conn.execute(f"update {schema}.audit_log set reason = 'ok', kind = 'accepted'"
                     " where journal_partition = %s and journal_offset = %s", (p, o))
    bad = run_cli(settings, "audit", "verify", "--schema", schema)
    assert bad.returncode == 1, bad.stdout
    assert f"agent {agent} seq {seq}:" in bad.stderr, bad.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"update {schema}.audit_log set reason = %s, kind = 'rejected'"
                     " where journal_partition = %s and journal_offset = %s", (reason, p, o))
    assert run_cli(settings, "audit", "verify", "--schema", schema).returncode == 0


def _tamper_delete_tail(settings: Settings, dsn: str, schema: str, rng: random.Random) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        agents = [a for (a,) in conn.execute(
            f"select agent_id from {schema}.agent_state where seq > 1 order by agent_id")]
        agent = rng.choice(agents)
        (seq,) = conn.execute(f"select max(seq) from {schema}.audit_log where agent_id = %s", (agent,)).fetchone()
        conn.execute(f"delete from {schema}.audit_log where agent_id = %s and seq = %s", (agent, seq))
    bad = run_cli(settings, "audit", "verify", "--schema", schema)
    assert bad.returncode == 1
    assert f"agent {agent} seq {seq}:" in bad.stderr, bad.stderr
    one = run_cli(settings, "audit", "verify", "--schema", schema, "--agent", agent)
    assert one.returncode == 1 and f"agent {agent} seq {seq}:" in one.stderr


def test_sigkill_projector_three_times(settings: Settings, tmp_path: Path) -> None:
    run_kills(_sub(settings, "k3"), tmp_path, schema="crash_small", events=15_000, agents=100, kills=3, seed=17)


@pytest.mark.chaos
def test_sigkill_projector_five_times_full_size(settings: Settings, tmp_path: Path) -> None:
    run_kills(_sub(settings, "k5"), tmp_path, schema="crash_full", events=50_000, agents=200, kills=5, seed=23)
