"""Fold version 3: an all-zero embedding is rejected ``invalid_payload`` (its cosine
distance is undefined; pgvector returns NaN for it), from the partition's version 3
``KernelUpgraded`` marker on. Records before the marker keep their version 2 verdicts."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest
from kernel_support import EMB, Sim, ev, semantic, spawn_running

from aosk.kernel import LATEST_VERSION, VERSIONS, Kind, Reason, fold_with_verdicts, params_for
from aosk.partitioning import partition_for

N = 3
ZERO = tuple(0.0 for _ in range(384))
UNDEFINED = "all-zero embedding: cosine distance is undefined"


def upgraded(sim: Sim, partition: int, version: int, *, partitions: int = N):
    return sim.produce(ev("KernelUpgraded", f"~p{partition}", fold_version=version, partitions=partitions),
                       key=None, partition=partition)


def key_on(partition: int, prefix: str = "z") -> str:
    return next(k for k in (f"{prefix}{i}" for i in range(1000)) if partition_for(k, N) == partition)


def v2_journal() -> Sim:
    """Version 2 markers on every partition, as a journal created before version 3 has."""
    sim = Sim(N, murmur2=True)
    for p in range(N):
        assert upgraded(sim, p, 2).kind == Kind.ACCEPTED
    return sim


def test_version_3_adds_only_the_zero_embedding_rule() -> None:
    assert LATEST_VERSION >= 3 and sorted(VERSIONS)[:3] == [1, 2, 3]
    v2, v3 = params_for(2), params_for(3)
    assert v3.rejects_zero_embedding and v3.routes_by_partition
    assert not params_for(1).rejects_zero_embedding and not v2.rejects_zero_embedding
    differ = {f.name for f in fields(v3) if getattr(v2, f.name) != getattr(v3, f.name)}
    assert differ == {"version", "rejects_zero_embedding"}


@pytest.mark.parametrize("version", [1, 2])
def test_zero_embedding_is_accepted_before_version_3(version: int) -> None:
    sim = Sim(N, murmur2=True)
    if version == 2:
        for p in range(N):
            upgraded(sim, p, 2)
    a = key_on(0)
    spawn_running(sim, a)
    stored = sim.produce(ev("MemoryStored", a, memory_id="m0", embedding=ZERO))
    embedded = sim.produce(ev("MemoryEmbedded", a, memory_id="m0", embedding=ZERO))
    assert [(v.kind, v.reason, v.fold_version) for v in (stored, embedded)] == [(Kind.ACCEPTED, Reason.OK, version)] * 2


def test_zero_embedding_is_rejected_from_the_version_3_marker_on() -> None:
    sim = v2_journal()
    a = key_on(0)
    spawn_running(sim, a)
    before = sim.produce(ev("MemoryStored", a, memory_id="old", embedding=ZERO))
    assert (before.kind, before.fold_version) == (Kind.ACCEPTED, 2)
    up = upgraded(sim, 0, 3)
    assert (up.kind, up.reason, up.fold_version) == (Kind.ACCEPTED, Reason.OK, 2)  # judged by 2, switches to 3
    assert (sim.state("~p0").fold_version, sim.state("~p0").partitions) == (3, N)

    state = sim.state(a)
    for v in (sim.produce(ev("MemoryStored", a, memory_id="new", embedding=ZERO)),
              sim.produce(ev("MemoryEmbedded", a, memory_id="old", embedding=ZERO)),
              sim.produce(ev("MemoryEmbedded", a, memory_id="old", embedding=tuple(-0.0 for _ in range(384))))):
        assert (v.kind, v.reason, v.fold_version) == (Kind.REJECTED, Reason.INVALID_PAYLOAD, 3), v
        assert UNDEFINED in v.message
    assert sim.state(a).fold_version == 3  # the agent switched at its first record after the marker
    assert semantic(sim.state(a)) == replace(semantic(state), fold_version=3)  # nothing else moved but seq, dedupe
    assert sim.state(a).counters.memories_stored == state.counters.memories_stored

    one_hot = tuple(1.0 if i == 383 else 0.0 for i in range(384))
    tiny = tuple(5e-324 if i == 0 else 0.0 for i in range(384))
    ok = [sim.produce(ev("MemoryStored", a, memory_id="none", embedding=None)),
          sim.produce(ev("MemoryStored", a, memory_id="hot", embedding=one_hot)),
          sim.produce(ev("MemoryEmbedded", a, memory_id="old", embedding=tiny)),
          sim.produce(ev("MemoryEmbedded", a, memory_id="old", embedding=EMB))]
    assert [(v.kind, v.fold_version) for v in ok] == [(Kind.ACCEPTED, 3)] * 4


def test_nan_and_dimension_keep_their_own_messages_under_version_3() -> None:
    sim = v2_journal()
    a = key_on(0)
    spawn_running(sim, a)
    upgraded(sim, 0, 3)
    nan = sim.produce(ev("MemoryEmbedded", a, embedding=(float("nan"),) + ZERO[1:]))
    short = sim.produce(ev("MemoryEmbedded", a, embedding=ZERO[:10]))
    assert nan.reason == short.reason == Reason.INVALID_PAYLOAD
    assert "finite" in nan.message and UNDEFINED not in nan.message
    assert "dimension 10" in short.message and UNDEFINED not in short.message


def test_version_3_applies_only_on_partitions_that_have_its_marker() -> None:
    sim = v2_journal()
    a, b = key_on(0, "a"), key_on(1, "b")
    spawn_running(sim, a)
    spawn_running(sim, b)
    upgraded(sim, 0, 3)
    assert sim.produce(ev("MemoryStored", a, embedding=ZERO)).kind == Kind.REJECTED
    still_v2 = sim.produce(ev("MemoryStored", b, embedding=ZERO))
    assert (still_v2.kind, still_v2.fold_version) == (Kind.ACCEPTED, 2)


def test_version_3_marker_rules() -> None:
    sim = v2_journal()
    assert upgraded(sim, 0, 3, partitions=0).reason == Reason.INVALID_PAYLOAD  # needs the count, like 2
    assert upgraded(sim, 0, 3, partitions=N + 1).reason == Reason.INVALID_PAYLOAD  # a recorded count never changes
    assert sim.state("~p0").fold_version == 2
    assert upgraded(sim, 0, 3).kind == Kind.ACCEPTED
    again = upgraded(sim, 0, 3)
    assert (again.kind, again.fold_version) == (Kind.ACCEPTED, 3)
    down = upgraded(sim, 0, 2)
    assert (down.kind, down.reason) == (Kind.REJECTED, Reason.VERSION_DOWNGRADE)

    fresh = Sim(N, murmur2=True)  # a version 1 partition goes straight to 3 and records the count
    assert upgraded(fresh, 1, 3).kind == Kind.ACCEPTED
    assert (fresh.state("~p1").fold_version, fresh.state("~p1").partitions) == (3, N)
    stray = fresh.produce(ev("AgentStarted", key_on(0)), partition=1)
    assert (stray.reason, stray.agent_id) == (Reason.WRONG_PARTITION, "~p1")  # version 3 routes like 2


def test_replay_gives_each_record_the_verdict_of_its_version() -> None:
    sim = v2_journal()
    a = key_on(2)
    spawn_running(sim, a)
    sim.produce(ev("MemoryStored", a, memory_id="before", embedding=ZERO))
    upgraded(sim, 2, 3)
    sim.produce(ev("MemoryStored", a, memory_id="after", embedding=ZERO))
    _, verdicts = fold_with_verdicts(sim.records)
    assert verdicts == sim.verdicts
    zero = [(v.kind, v.fold_version) for r, v in zip(sim.records, verdicts, strict=True)
            if type(r.event).__name__ == "MemoryStored"]
    assert zero == [(Kind.ACCEPTED, 2), (Kind.REJECTED, 3)]
