"""``ProjectionReader.state_at`` from PostgreSQL (nearest checkpoint plus ``events`` rows)
equals the journal's answer (``aosk.projectors.history.state_at``) and the plain fold of
the partition's prefix, byte for byte (state hash), at random offsets of a long-lived
agent, on each side of the fold version markers ``aosk kernel upgrade`` wrote and of
checkpoints; a point past what is projected is answered from the journal."""

from __future__ import annotations

import random

import psycopg
import pytest

from aosk.client.projections import ProjectionReader
from aosk.errors import ProjectionBehind
from aosk.journal import JournalReader
from aosk.kernel import LATEST_VERSION, AgentSlot, Record, fold_journal, state_hash
from aosk.partitioning import partition_for
from aosk.projectors.history import state_at as journal_state_at
from aosk.reads.events import state_at as events_state_at
from aosk.topics import ensure_topics
from aosk.workload import generate_workload, produce_workload
from projection_oracle import end_offsets, read_journal
from projector_harness import Projectors, run_cli, wait_caught_up

pytestmark = pytest.mark.integration

SCHEMA = "aosk"
AGENT = "long-0000"
TAIL = 40
"""Records of the long agent produced after the projector stopped (only in the journal)."""


def _upgrade(settings, version: int) -> None:
    out = run_cli(settings, "kernel", "upgrade", "--to-version", str(version), "--yes")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(f"KernelUpgraded(fold_version={version}, partitions=12)") == 12, out.stdout


@pytest.fixture(scope="module")
def journal(settings, tmp_path_factory):
    bootstrap, topic = settings.kafka.bootstrap_servers, settings.kafka.journal_topic
    dsn = settings.storage.postgresql.dsn
    ensure_topics(bootstrap, settings.kafka)
    long = generate_workload(agents=1, events=1_500, seed=21, prefix="long", messages=False, children=False,
                             terminate_fraction=0.0).items
    others = generate_workload(agents=24, events=1_500, seed=22).items
    thirds = [len(long) * i // 3 for i in range(4)]
    procs = Projectors(settings, tmp_path_factory.mktemp("proj"), schema=SCHEMA)
    try:
        procs.start("p1")
        for i in range(3):
            # the long agent interleaved with others sharing its partition; a marker on every
            # partition between the thirds: version 1 -> 2 (routes by partition) -> latest
            mine = long[thirds[i]:thirds[i + 1] - (TAIL if i == 2 else 0)]
            theirs = others[len(others) * i // 3:len(others) * (i + 1) // 3]
            items = [x for pair in zip(mine, theirs, strict=False) for x in pair]
            items += mine[len(theirs):] + theirs[len(mine):]
            produce_workload(bootstrap, topic, items)
            if i == 0:
                _upgrade(settings, 2)
            elif i == 1:
                _upgrade(settings, LATEST_VERSION)
        wait_caught_up(dsn, SCHEMA, end_offsets(bootstrap, topic), timeout=120, procs=procs)
    finally:
        procs.close()
    projected_end = end_offsets(bootstrap, topic)[partition_for(AGENT, 12)]
    produce_workload(bootstrap, topic, long[len(long) - TAIL:] + generate_workload(
        agents=1, events=5, seed=23, prefix="late").items)
    return settings, read_journal(bootstrap, topic), projected_end


def _oracle(records: list[Record], partition: int, offsets: list[int]) -> dict[int, bytes]:
    """The long agent's state hash after each of ``offsets`` (plain fold of the prefix)."""
    part = [r for r in records if r.partition == partition]
    slots: dict[str, AgentSlot] = {}
    out: dict[int, bytes] = {}
    i = 0
    for off in sorted(set(offsets)):
        j = i
        while j < len(part) and part[j].offset <= off:
            j += 1
        slots = fold_journal(part[i:j], slots)
        i = j
        if AGENT in slots:
            out[off] = state_hash(slots[AGENT].state)
    return out


def test_postgres_equals_journal_and_plain_fold(journal) -> None:
    settings, records, projected_end = journal
    dsn = settings.storage.postgresql.dsn
    p = partition_for(AGENT, 12)
    mine = [r.offset for r in records if r.partition == p and r.key == AGENT and r.offset < projected_end]
    markers = [r.offset for r in records if r.partition == p and r.key is None]
    assert len(markers) == 2 and len(mine) > 1_000
    with psycopg.connect(dsn) as conn:
        cps = [int(o) for (o,) in conn.execute(
            "select journal_offset from aosk.checkpoints where agent_id = %s order by seq", (AGENT,))]
    assert len(cps) >= 10
    # each side of every marker and of the checkpoints just before, at and after each marker
    after = [min(c for c in cps if c > m) for m in markers]
    edges = {o + d for o in markers + after + cps[:3] for d in (-1, 0, 1)}
    rng = random.Random(5)
    picks = sorted({o for o in edges if mine[0] <= o < projected_end}
                   | set(rng.sample(range(mine[0], projected_end), 60)))
    expected = _oracle(records, p, picks)
    with ProjectionReader(dsn, schema=SCHEMA, bootstrap=settings.kafka.bootstrap_servers,
                          journal_topic=settings.kafka.journal_topic) as reader, \
            psycopg.connect(dsn) as conn, \
            JournalReader(settings.kafka.bootstrap_servers, settings.kafka.journal_topic) as jr:
        for off in picks:
            pg = events_state_at(conn, SCHEMA, AGENT, offset=off)  # PostgreSQL alone (raises if behind)
            point = reader.state_at(AGENT, offset=off)
            kafka = journal_state_at(conn, SCHEMA, jr, AGENT, offset=off)
            assert pg.state_hash == point.state_hash == kafka.state_hash == expected[off], f"offset {off}"
            assert point.state == kafka.state and point.offset == off
            assert (point.checkpoint_seq, point.folded) == (pg.checkpoint_seq, pg.folded)
            assert (point.checkpoint_seq is not None) == (off >= cps[0]), f"offset {off}"
            assert point.folded <= 100, f"folded {point.folded} records at {off}"
        # by broker time: the agent's last record at or before it
        r = next(x for x in records if x.partition == p and x.key == AGENT and x.offset > after[1])
        at = reader.state_at(AGENT, time_ms=r.timestamp)
        assert at.state_hash == state_hash(fold_journal(
            [x for x in records if x.partition == p and x.timestamp <= r.timestamp])[AGENT].state)


def test_past_the_projection_reads_the_journal(journal) -> None:
    settings, records, projected_end = journal
    dsn = settings.storage.postgresql.dsn
    p = partition_for(AGENT, 12)
    tail = [r.offset for r in records if r.partition == p and r.key == AGENT and r.offset >= projected_end]
    assert len(tail) == TAIL
    expected = _oracle(records, p, tail)
    with psycopg.connect(dsn) as conn:
        with pytest.raises(ProjectionBehind, match="past what is projected"):
            events_state_at(conn, SCHEMA, AGENT, offset=tail[-1])
    with ProjectionReader(dsn, schema=SCHEMA, bootstrap=settings.kafka.bootstrap_servers,
                          journal_topic=settings.kafka.journal_topic) as reader:
        for off in (tail[0], tail[len(tail) // 2], tail[-1]):
            point = reader.state_at(AGENT, offset=off)
            assert point.state_hash == expected[off] and point.checkpoint_seq is not None
        # an agent with no projected record yet: the journal has it
        late = next(r for r in records if r.key == "late-0000")
        point = reader.state_at("late-0000", offset=late.offset)
        assert point.state.seq == 1
    with ProjectionReader(dsn, schema=SCHEMA) as reader, pytest.raises(ProjectionBehind):
        reader.state_at(AGENT, offset=tail[-1])  # no journal to read: the error says why


def test_rows_read_ahead_are_checked(journal) -> None:
    """``state_at`` reads the rows to fold with the queries that find the agent's partition
    and its nearest checkpoint; rows picked for another partition or checkpoint (a
    checkpoint thinned in between, an agent with rows on two partitions) are read again
    instead of folded: the state is the same."""
    from aosk.projectors.checkpoints import nearest_checkpoint
    from aosk.reads.events import _Ahead, fold_events

    settings, records, projected_end = journal
    p = partition_for(AGENT, 12)
    mine = [r.offset for r in records if r.partition == p and r.key == AGENT and r.offset < projected_end]
    with psycopg.connect(settings.storage.postgresql.dsn) as conn:
        checked = 0
        for off in random.Random(9).sample(mine[len(mine) // 2:], 6):
            want = events_state_at(conn, SCHEMA, AGENT, offset=off)
            cp = nearest_checkpoint(conn, SCHEMA, AGENT, at_offset=off)
            assert cp is not None
            if want.folded == 0:
                continue  # a checkpoint's own offset: no rows to get wrong
            checked += 1
            for wrong in (_Ahead(p, -1, []), _Ahead(p + 1, cp.offset, []), _Ahead(None, cp.offset, [])):
                slot, _, cp_seq, folded = fold_events(conn, SCHEMA, AGENT, p, off, what="a test", checkpoint=cp,
                                                      ahead=wrong)
                assert slot is not None and state_hash(slot.state) == want.state_hash, f"offset {off}, {wrong}"
                assert (cp_seq, folded) == (want.checkpoint_seq, want.folded)
        assert checked >= 3
