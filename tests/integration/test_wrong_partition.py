"""Fold version 2 against the real broker and PostgreSQL: records a producer put off
their key's murmur2 partition (confluent-kafka's default partitioner, consistent_random)
are judged alike by every reader.

The journal is created by ``aosk topics ensure`` (which writes the latest version's
marker, version 2's partition rule included, with the partition count on every
partition); the SDK produces a workload and, in its middle, a plain confluent-kafka
producer without a ``partitioner`` setting produces events (and garbage) for the same
agents and for never-spawned keys. Then:

- projector: every misrouted record is in ``audit_log`` as ``rejected / wrong_partition``
  under ``~p<partition>``, every other record of those partitions is projected, the
  projector never stops a partition, and the whole projection equals the plain fold;
- time travel / ``aosk state``: the affected agents' states equal the fold;
- replay: a rebuild's digest equals the live projection's.

The worker half (its verdicts equal the fold's; misrouted records copied to the dead
letters with ``aosk-reason: wrong_partition``) plugs in as one more test on the
``journal`` fixture: start a worker on ``settings``, wait for a transition per record,
compare with ``expected_projection(records).verdicts`` and read the dead-letter topic.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

import psycopg
import pytest

from aosk.config import Settings
from aosk.events import AgentSuspended, CheckpointRequested, ContextAppended, Event, encode
from aosk.journal import JournalReader
from aosk.kernel import LATEST_VERSION, Reason, fold_journal, params_for, state_hash
from aosk.partitioning import partition_for
from aosk.projectors.digest import digest_schema
from aosk.projectors.history import state_at, state_at_seq
from aosk.workload import generate_workload, produce_workload
from projection_oracle import assert_projection_matches, end_offsets, expected_projection, read_journal
from projector_harness import Projectors, run_cli, wait_caught_up

pytestmark = pytest.mark.integration

SCHEMA = "aosk"
PARTITIONS = 12  # the dev settings' journal_partitions (checked below)


@dataclass
class Journal:
    settings: Settings
    agents: list[str]
    """The SDK workload's agents (each lives on its murmur2 partition)."""
    misrouted: dict[tuple[int, int], str]
    """(partition, offset) -> key, for every record the default partitioner put off its key's partition."""
    routed_by_default: dict[tuple[int, int], str]
    """Records of the default partitioner that happened to land on the right partition."""
    ends: dict[int, int]


def _event(cls: type[Event], agent: str, tenant: str, **payload: object) -> Event:
    return cls(event_id=str(uuid.uuid4()), agent_id=agent, tenant_id=tenant, occurred_at=1, origin="client",
               **payload)


def _produce_default_partitioner(
    bootstrap: str, topic: str, items: list[tuple[str, bytes]]
) -> list[tuple[str, int, int]]:
    """Produce (key, value) pairs with librdkafka's default partitioner; their positions."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "client.id": "not-the-sdk", "acks": "all",
                         "log_level": 3})  # no "partitioner": consistent_random (CRC32)
    positions: list[tuple[str, int, int]] = []
    errors: list[str] = []

    def done(err, msg) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            positions.append((msg.key().decode(), msg.partition(), msg.offset()))

    for key, value in items:
        producer.produce(topic, key=key.encode(), value=value, on_delivery=done)
    assert producer.flush(60) == 0 and not errors, errors
    return positions


@pytest.fixture(scope="module")
def journal(settings: Settings) -> Journal:
    assert settings.kafka.journal_partitions == PARTITIONS
    bootstrap, topic = settings.kafka.bootstrap_servers, settings.kafka.journal_topic
    out = run_cli(settings, "topics", "ensure")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"created  {topic}" in out.stdout and f"partitions={PARTITIONS}) on every partition" in out.stdout

    wl = generate_workload(agents=16, events=4_000, seed=31, prefix="wp", embeddings=False, garbage_every=400)
    half = len(wl.items) // 2
    produce_workload(bootstrap, topic, wl.items[:half])  # the SDK's producer settings: murmur2
    tenant = {e.agent_id: e.tenant_id for e in wl.items if isinstance(e, Event)}
    stray: list[tuple[str, bytes]] = []
    for i, agent in enumerate(wl.agents):
        stray.append((agent, encode(_event(CheckpointRequested, agent, tenant[agent]))))
        stray.append((agent, encode(_event(AgentSuspended, agent, tenant[agent], reason="from the wrong partition"))))
        stray.append((agent, encode(_event(ContextAppended, agent, tenant[agent], entry_id=f"stray-{i}", role="user",
                                           content="misrouted", tokens=1, importance=0.5))))
    stray += [(f"never-{i}", encode(_event(CheckpointRequested, f"never-{i}", "t1"))) for i in range(8)]
    stray += [(wl.agents[i], b"not single-object encoded " + os.urandom(8)) for i in range(4)]  # undecodable
    positions = _produce_default_partitioner(bootstrap, topic, stray)
    produce_workload(bootstrap, topic, wl.items[half:])

    misrouted = {(p, o): k for k, p, o in positions if partition_for(k, PARTITIONS) != p}
    right = {(p, o): k for k, p, o in positions if partition_for(k, PARTITIONS) == p}
    assert len(misrouted) >= 20, "the default partitioner should miss murmur2 for most keys"
    return Journal(settings, wl.agents, misrouted, right, end_offsets(bootstrap, topic))


@pytest.fixture(scope="module")
def projected(journal: Journal, tmp_path_factory: pytest.TempPathFactory) -> list:
    """A live projector projects the whole journal into ``aosk`` and keeps running."""
    s = journal.settings
    procs = Projectors(s, tmp_path_factory.mktemp("proj"), schema=SCHEMA, args=("--batch-max", "500"))
    try:
        procs.start("p1")
        wait_caught_up(s.storage.postgresql.dsn, SCHEMA, journal.ends, timeout=180, procs=procs)
        assert procs.procs["p1"].poll() is None, procs.tails()
        assert "STOPPED" not in procs.log("p1"), procs.tails()
        assert procs.stop_all() == {"p1": 0}, procs.tails()
    finally:
        procs.close()
    return read_journal(s.kafka.bootstrap_servers, s.kafka.journal_topic)


def test_new_journal_is_marked_with_the_partition_count(journal: Journal, projected: list) -> None:
    markers = [r for r in projected if r.key is None]
    assert sorted((r.partition, r.offset) for r in markers) == [(p, 0) for p in range(PARTITIONS)]
    assert {(r.event.fold_version, r.event.partitions) for r in markers} == {(LATEST_VERSION, PARTITIONS)}
    assert params_for(LATEST_VERSION).routes_by_partition


def test_projector_rejects_misrouted_records_on_the_pseudo_agent(journal: Journal, projected: list) -> None:
    dsn = journal.settings.storage.postgresql.dsn
    with psycopg.connect(dsn) as conn:
        rows = {(p, o): (agent, kind, reason) for p, o, agent, kind, reason in conn.execute(
            f"select journal_partition, journal_offset, agent_id, kind, reason from {SCHEMA}.audit_log")}
        stored = dict(conn.execute(f"select partition, next_offset from {SCHEMA}.projector_offsets").fetchall())
    assert stored == journal.ends  # every record of every partition, nothing stopped
    assert len(rows) == sum(journal.ends.values())
    for (p, o), key in journal.misrouted.items():
        assert rows[(p, o)] == (f"~p{p}", "rejected", Reason.WRONG_PARTITION), (p, o, key)
    for pos, key in journal.routed_by_default.items():  # the default partitioner's lucky ones fold normally
        assert rows[pos][0] == key and rows[pos][2] != Reason.WRONG_PARTITION
    wrong = {pos for pos, (_a, _k, reason) in rows.items() if reason == Reason.WRONG_PARTITION}
    assert wrong == set(journal.misrouted)
    assert_projection_matches(dsn, SCHEMA, projected)  # rows, states, chains, checkpoints = the fold


def test_time_travel_and_aosk_state_equal_the_fold(journal: Journal, projected: list) -> None:
    s = journal.settings
    slots = fold_journal(projected)
    affected = sorted({k for k in journal.misrouted.values() if k in journal.agents})
    assert affected
    with psycopg.connect(s.storage.postgresql.dsn) as conn, \
            JournalReader(s.kafka.bootstrap_servers, s.kafka.journal_topic) as reader:
        for agent in affected:
            p = partition_for(agent, PARTITIONS)
            point = state_at(conn, SCHEMA, reader, agent, offset=journal.ends[p] - 1)
            assert point.state_hash == state_hash(slots[agent].state), agent
            assert point.checkpoint_seq is not None  # started from a checkpoint under the routing version
            seq = slots[agent].state.seq - 1
            want = _state_at_seq([r for r in projected if r.partition == p], agent, seq)
            assert state_at_seq(conn, SCHEMA, reader, agent, seq) == want
    for agent in affected[:3]:
        at = journal.ends[partition_for(agent, PARTITIONS)] - 1
        out = run_cli(s, "state", agent, "--at-offset", str(at), "--format", "json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["state_hash"] == state_hash(slots[agent].state).hex()


def _state_at_seq(records: list, agent: str, seq: int):
    """The plain fold of one partition's records, up to the agent's ``seq``-th record."""
    slots: dict = {}
    for r in records:
        slots = fold_journal([r], slots)
        if agent in slots and slots[agent].state.seq == seq:
            return slots[agent].state
    raise AssertionError(f"{agent} has no record with seq {seq}")


def test_replay_digest_equals_live(journal: Journal, projected: list) -> None:
    s = journal.settings
    dsn = s.storage.postgresql.dsn
    with psycopg.connect(dsn) as conn:
        before = digest_schema(conn, SCHEMA)
    r = run_cli(s, "replay", "--no-progress", "--schema", SCHEMA, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "STOPPED" not in r.stdout + r.stderr
    with psycopg.connect(dsn) as conn:
        after = digest_schema(conn, SCHEMA)
    assert after == before


def test_expected_verdicts_for_a_worker(journal: Journal, projected: list) -> None:
    """What a worker must say for the same journal (the worker test compares its
    transitions with these): misrouted records on ``~p<partition>``, the rest on their key."""
    exp = expected_projection(projected)
    for pos in journal.misrouted:
        v = exp.verdicts[pos]
        assert (v.agent_id, v.reason, v.fold_version) == (f"~p{pos[0]}", Reason.WRONG_PARTITION, LATEST_VERSION)


def test_a_worker_rejects_misrouted_records_and_dead_letters_them(journal: Journal, projected: list,
                                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    """The worker's verdicts on the same journal equal the fold's (and so the projector's):
    misrouted records rejected ``wrong_partition`` on ``~p<partition>`` and copied to the
    dead letters with ``aosk-reason: wrong_partition``; every other record of those
    partitions gets its verdict; no partition stops."""
    from aosk.events import decode_transition, encode_transition
    from aosk.waiting import wait_for
    from worker_harness import Workers, read_topic

    s = journal.settings
    k = s.kafka
    records = read_journal(k.bootstrap_servers, k.journal_topic)
    exp = expected_projection(records)
    with Workers(s, tmp_path_factory.mktemp("workers")) as workers:
        w = workers.start("w1")

        def transitions() -> dict[tuple[int, int], bytes]:
            assert w.alive(), w.log()[-3000:]
            return {(t.journal_partition, t.journal_offset): m.value for m in read_topic(k.bootstrap_servers,
                    k.transitions_topic) for t in [decode_transition(m.value)]}

        wait_for(lambda: len(transitions()) >= len(records), timeout=180, what="a verdict for every journal record")
        got = transitions()
        assert "partition STOPPED" not in w.log()
        assert workers.stop("w1") == 0
    for r in records:
        want = encode_transition(exp.verdicts[(r.partition, r.offset)].to_transition())
        assert got[(r.partition, r.offset)] == want, (r.partition, r.offset)
    for pos in journal.misrouted:
        t = decode_transition(got[pos])
        assert (t.agent_id, t.reason) == (f"~p{pos[0]}", Reason.WRONG_PARTITION)
    dead = read_topic(k.bootstrap_servers, k.dead_letters_topic)
    wrong = {(int(dict(m.headers)["aosk-source-partition"]), int(dict(m.headers)["aosk-source-offset"]))
             for m in dead if dict(m.headers)["aosk-reason"] == b"wrong_partition"}
    assert wrong == set(journal.misrouted)
