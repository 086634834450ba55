"""A fold change ships behind `aosk kernel upgrade`: a marker on every partition. A known
version is folded from the marker on (version 2 with the live partition count; version 3,
which rejects all-zero embeddings, judged alike by the worker and the projector on each
side of its marker); a version this code does not know stops each partition at its
marker, loudly, with nothing after it projected (never skipped)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from aosk.events import AgentSpawned, AgentStarted, Budgets, Event, MemoryEmbedded, MemoryStored
from aosk.kernel import LATEST_VERSION, Kind, Reason
from aosk.partitioning import partition_for
from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from aosk.workload import generate_workload, produce_workload
from projection_oracle import assert_projection_matches, end_offsets, expected_projection, read_journal
from projector_harness import Projectors, projected, run_cli, wait_caught_up

pytestmark = pytest.mark.integration


def test_known_version_folds_on_unknown_version_stops_partitions(settings, tmp_path) -> None:
    bootstrap, topic = settings.kafka.bootstrap_servers, settings.kafka.journal_topic
    dsn = settings.storage.postgresql.dsn
    ensure_topics(bootstrap, settings.kafka)
    procs = Projectors(settings, tmp_path, schema="aosk")
    try:
        procs.start("p1")
        produce_workload(bootstrap, topic, generate_workload(agents=12, events=400, seed=3).items)
        out = run_cli(settings, "kernel", "upgrade", "--to-version", "1", "--yes")
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("KernelUpgraded(fold_version=1, partitions=12)") == 12
        out = run_cli(settings, "kernel", "upgrade", "--to-version", "2", "--yes")
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("KernelUpgraded(fold_version=2, partitions=12)") == 12
        produce_workload(bootstrap, topic, generate_workload(agents=12, events=400, seed=4, prefix="after").items)
        wait_caught_up(dsn, "aosk", end_offsets(bootstrap, topic), timeout=120, procs=procs)
        with psycopg.connect(dsn) as conn:
            markers = conn.execute(
                "select kind, count(*) from aosk.audit_log where event_type = 'KernelUpgraded' group by kind"
            ).fetchall()
            routed = conn.execute(
                "select count(*) from aosk.audit_log where fold_version = 2 and event_type <> 'KernelUpgraded'"
            ).fetchone()[0]
            pseudo = conn.execute("select count(*) from aosk.agent_state where agent_id like '~p%%' and "
                                  "convert_from(state, 'UTF8')::jsonb ->> 'partitions' = '12'").fetchone()[0]
        assert markers == [("accepted", 24)]
        assert routed > 0 and pseudo == 12  # every pseudo-agent keeps the count

        unknown = str(LATEST_VERSION + 1)
        refused = run_cli(settings, "kernel", "upgrade", "--to-version", unknown)
        assert refused.returncode == 2 and f"does not know fold version {unknown}" in refused.stdout
        out = run_cli(settings, "kernel", "upgrade", "--to-version", unknown, "--yes")
        assert out.returncode == 0, out.stderr
        at_marker = {int(line.rsplit(" ", 1)[1].split(":")[0]): int(line.rsplit(":", 1)[1])
                     for line in out.stdout.splitlines() if line.startswith("KernelUpgraded")}
        produce_workload(bootstrap, topic, generate_workload(agents=12, events=200, seed=5, prefix="later").items)
        ends = end_offsets(bootstrap, topic)
        wait_for(lambda: f"fold version {unknown}" in procs.log("p1") and all(
            projected(dsn, "aosk").get(p, 0) == at_marker[p] for p in at_marker),
            timeout=120, what="every partition to stop at its marker")
        assert procs.procs["p1"].poll() is None, "the projector must stay up: only the partitions stop"
        assert all(ends[p] > at_marker[p] for p in at_marker)
        assert projected(dsn, "aosk") == at_marker  # nothing past a marker, nothing skipped
    finally:
        procs.close()


PARTITIONS = 12
DIM = 384
ZERO = tuple(0.0 for _ in range(DIM))
ONE_HOT = tuple(1.0 if i == 0 else 0.0 for i in range(DIM))
BUDGETS = Budgets(max_tokens=10**9, max_tool_calls=10**6, max_steps=10**6, context_window_tokens=4_000)


def _ev(cls: type[Event], agent: str, **payload: Any) -> Event:
    return cls(event_id=str(uuid.uuid4()), agent_id=agent, tenant_id="t1", occurred_at=1, origin="client", **payload)


def _stored(agent: str, memory_id: str, embedding: tuple[float, ...] | None) -> Event:
    return _ev(MemoryStored, agent, memory_id=memory_id, text=f"{memory_id} of {agent}", embedding=embedding,
               importance=0.5, metadata={})


def test_version_3_rejects_zero_embeddings_from_its_marker_on(settings, tmp_path) -> None:
    """A journal on version 2 (all-zero embeddings accepted) is upgraded live to version 3:
    the worker's verdicts and the projection accept the zero embeddings before each
    partition's marker and reject them (``invalid_payload``) after it; old memories keep
    the zero embedding they were projected with."""
    from aosk.events import decode_transition, encode_transition
    from worker_harness import Workers, read_topic

    s = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"topic_prefix": settings.kafka.topic_prefix + "-v3"})})
    k, dsn, schema = s.kafka, s.storage.postgresql.dsn, "aosk_v3"
    assert k.journal_partitions == PARTITIONS
    ensure_topics(k.bootstrap_servers, k)  # an existing journal from before version 3 ...
    out = run_cli(s, "kernel", "upgrade", "--to-version", "2", "--yes")  # ... that runs version 2
    assert out.returncode == 0 and out.stdout.count("KernelUpgraded(fold_version=2, partitions=12)") == 12, out

    agents = [f"z{i}" for i in range(24)]
    assert len({partition_for(a, PARTITIONS) for a in agents}) >= 8
    before: list[Event] = []
    for a in agents:
        before += [_ev(AgentSpawned, a, parent_id=None, name=a, priority=50, capabilities=(), budgets=BUDGETS,
                       metadata={}),
                   _ev(AgentStarted, a), _stored(a, "zero-v2", ZERO), _stored(a, "later", None)]
    after: list[Event] = []
    for a in agents:
        after += [_stored(a, "zero-v3", ZERO), _ev(MemoryEmbedded, a, memory_id="later", embedding=ZERO),
                  _ev(MemoryEmbedded, a, memory_id="later", embedding=ONE_HOT), _stored(a, "fine-v3", ONE_HOT)]

    (tmp_path / "proj").mkdir()
    procs = Projectors(s, tmp_path / "proj", schema=schema)
    with Workers(s, tmp_path / "workers") as workers:
        try:
            procs.start("p1")
            w = workers.start("w1")
            pos_before = produce_workload(k.bootstrap_servers, k.journal_topic, before)
            out = run_cli(s, "kernel", "upgrade", "--to-version", "3", "--yes")
            assert out.returncode == 0, out.stderr
            assert out.stdout.count("KernelUpgraded(fold_version=3, partitions=12)") == 12
            pos_after = produce_workload(k.bootstrap_servers, k.journal_topic, after)
            ends = end_offsets(k.bootstrap_servers, k.journal_topic)
            wait_caught_up(dsn, schema, ends, timeout=180, procs=procs)
            total = sum(ends.values())

            def transitions() -> dict[tuple[int, int], bytes]:
                assert w.alive(), w.log()[-3000:]
                return {(t.journal_partition, t.journal_offset): m.value
                        for m in read_topic(k.bootstrap_servers, k.transitions_topic)
                        for t in [decode_transition(m.value)]}

            wait_for(lambda: len(transitions()) >= total, timeout=180, what="a worker verdict for every record")
            got = transitions()
            assert "STOPPED" not in w.log() + procs.log("p1")
            assert workers.stop("w1") == 0 and procs.stop_all() == {"p1": 0}, procs.tails()
        finally:
            procs.close()

    records = read_journal(k.bootstrap_servers, k.journal_topic)
    exp = expected_projection(records)
    for r in records:  # the worker judged every record as the fold does, byte for byte
        assert got[(r.partition, r.offset)] == encode_transition(exp.verdicts[(r.partition, r.offset)].to_transition())

    def verdicts(events: list[Event], positions: list[tuple[int, int]]) -> dict[tuple[str, str, bool], set]:
        """(type, memory id, all-zero embedding?) -> the worker's (verdict, reason, fold version)s."""
        out: dict[tuple[str, str, bool], set] = {}
        for e, pos in zip(events, positions, strict=True):
            t = decode_transition(got[pos])
            zero = getattr(e, "embedding", None) == ZERO
            out.setdefault((type(e).__name__, getattr(e, "memory_id", ""), zero), set()).add(
                (t.verdict, t.reason, t.fold_version))
            if zero and t.verdict == Kind.REJECTED:
                assert "all-zero embedding: cosine distance is undefined" in t.message, t.message
        return out

    assert verdicts(before, pos_before)[("MemoryStored", "zero-v2", True)] == {(Kind.ACCEPTED, Reason.OK, 2)}
    v3 = verdicts(after, pos_after)
    assert v3[("MemoryStored", "zero-v3", True)] == {(Kind.REJECTED, Reason.INVALID_PAYLOAD, 3)}
    assert v3[("MemoryEmbedded", "later", True)] == {(Kind.REJECTED, Reason.INVALID_PAYLOAD, 3)}
    assert v3[("MemoryEmbedded", "later", False)] == {(Kind.ACCEPTED, Reason.OK, 3)}
    assert v3[("MemoryStored", "fine-v3", False)] == {(Kind.ACCEPTED, Reason.OK, 3)}

    assert_projection_matches(dsn, schema, records)  # audit log, states, chains, memories = the fold
    with psycopg.connect(dsn) as conn:
        audit = conn.execute(
            f"select kind, reason, fold_version, count(*) from {schema}.audit_log where event_type = 'MemoryStored'"
            " group by 1, 2, 3 order by 1, 2, 3").fetchall()
        memories = {(m, v2zero, one_hot): n for m, v2zero, one_hot, n in conn.execute(
            f"select memory_id, embedding = %(zero)s::vector, embedding = %(one)s::vector, count(*)"
            f" from {schema}.memories group by 1, 2, 3",
            {"zero": str(list(ZERO)), "one": str(list(ONE_HOT))}).fetchall()}
    assert audit == [("accepted", "ok", 2, 48), ("accepted", "ok", 3, 24), ("rejected", "invalid_payload", 3, 24)]
    n = len(agents)
    assert memories == {("zero-v2", True, False): n, ("later", False, True): n, ("fine-v3", False, True): n}
