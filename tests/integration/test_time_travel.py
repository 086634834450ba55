"""Time travel on the real broker and PostgreSQL: the state of a 10,000-record agent at
random offsets and broker times equals the plain fold of the journal's prefix, and each
query folds at most one checkpoint interval of records on top of a checkpoint."""

from __future__ import annotations

import json
import random

import psycopg
import pytest

from aosk.journal import JournalReader
from aosk.kernel import fold_journal, params_for, state_hash
from aosk.projectors.history import state_at, state_at_seq
from aosk.topics import ensure_topics
from aosk.workload import generate_workload, produce_workload
from projection_oracle import end_offsets, read_journal
from projector_harness import Projectors, run_cli, wait_caught_up

pytestmark = pytest.mark.integration

SCHEMA = "aosk"


@pytest.fixture(scope="module")
def journal(settings, tmp_path_factory):
    bootstrap = settings.kafka.bootstrap_servers
    ensure_topics(bootstrap, settings.kafka)
    # One long-lived agent (10,000 records) among a few others sharing partitions.
    solo = generate_workload(agents=1, events=10_200, seed=11, prefix="long", messages=False,
                             children=False, embeddings=False, terminate_fraction=0.0)
    others = generate_workload(agents=24, events=2_000, seed=12, embeddings=False)
    items = [x for pair in zip(solo.items, others.items, strict=False) for x in pair] + solo.items[len(others.items):]
    produce_workload(bootstrap, settings.kafka.journal_topic, items)
    ends = end_offsets(bootstrap, settings.kafka.journal_topic)
    procs = Projectors(settings, tmp_path_factory.mktemp("proj"), schema=SCHEMA)
    try:
        procs.start("p1")
        wait_caught_up(settings.storage.postgresql.dsn, SCHEMA, ends, timeout=300, procs=procs)
    finally:
        procs.close()
    return settings, solo.agents[0], read_journal(bootstrap, settings.kafka.journal_topic)


def test_state_at_random_offsets_equals_plain_fold(journal) -> None:
    settings, agent, records = journal
    mine = [r for r in records if r.key == agent]
    assert len(mine) >= 10_000
    partition = mine[0].partition
    part = [r for r in records if r.partition == partition]
    interval = params_for(1).checkpoint_interval
    rng = random.Random(7)
    picks = sorted(rng.sample([r.offset for r in mine], 20))
    with psycopg.connect(settings.storage.postgresql.dsn) as conn, \
            JournalReader(settings.kafka.bootstrap_servers, settings.kafka.journal_topic) as reader:
        for offset in picks:
            point = state_at(conn, SCHEMA, reader, agent, offset=offset)
            plain = fold_journal([r for r in part if r.offset <= offset])[agent].state
            assert point.state_hash == state_hash(plain), f"offset {offset}"
            assert point.state.seq == plain.seq
            assert point.checkpoint_seq is not None
            assert point.folded <= interval, f"folded {point.folded} records at offset {offset}"
        # By broker time: the last record at or before T is included, later ones are not.
        r = mine[len(mine) // 2]
        point = state_at(conn, SCHEMA, reader, agent, time_ms=r.timestamp)
        plain = fold_journal([x for x in part if x.timestamp <= r.timestamp])[agent].state
        assert point.state_hash == state_hash(plain)
        # By seq, as forks need it.
        at_seq = state_at_seq(conn, SCHEMA, reader, agent, 4321)
        assert at_seq is not None and at_seq.seq == 4321
        assert state_hash(at_seq) == state_hash(fold_journal(mine[:4321])[agent].state)


def test_cli_state_json(journal) -> None:
    settings, agent, records = journal
    r = [x for x in records if x.key == agent][777]
    out = run_cli(settings, "state", agent, "--at-offset", str(r.offset), "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    part = [x for x in records if x.partition == r.partition and x.offset <= r.offset]
    assert doc["state_hash"] == state_hash(fold_journal(part)[agent].state).hex()
    assert doc["state"]["seq"] == 778
    past_end = run_cli(settings, "state", agent, "--at-offset", str(10**9))
    assert past_end.returncode == 1 and "past the end" in past_end.stderr
