"""Fold version 2: records off their key's murmur2 partition belong to the partition's
pseudo-agent and are rejected ``wrong_partition``; the partition count comes in on the
``KernelUpgraded`` marker and is kept in the pseudo-agent's state."""

from __future__ import annotations

import pytest
from kernel_support import KEEP_VERDICTS, Sim, ev, rec, spawn_running

from aosk.errors import PartitionCountChanged
from aosk.kernel import (
    INITIAL_VERSION,
    LATEST_VERSION,
    AgentSlot,
    FoldArgs,
    Kind,
    Reason,
    apply,
    check_partition_count,
    decode_slot,
    decode_state,
    encode_slot,
    encode_state,
    fold_args,
    fold_key,
    fold_with_verdicts,
    params_for,
    placeholder,
    state_hash,
)
from aosk.kernel.statecodec import StateDecodeError
from aosk.partitioning import partition_for

N = 3


def upgraded(sim: Sim, partition: int, *, partitions: int = N, version: int = 2):
    return sim.produce(ev("KernelUpgraded", f"~p{partition}", fold_version=version, partitions=partitions),
                       key=None, partition=partition)


def key_on(partition: int, *, not_: bool = False, prefix: str = "k") -> str:
    """A key whose murmur2 partition (of N) is ``partition`` (or, with ``not_``, is not)."""
    return next(k for k in (f"{prefix}{i}" for i in range(1000)) if (partition_for(k, N) == partition) != not_)


def test_versions_from_2_on_route_by_partition() -> None:
    assert LATEST_VERSION == 4  # versions 3 and 4 add rules (zero embeddings, tasks) and keep routing
    assert not params_for(1).routes_by_partition
    assert all(params_for(v).routes_by_partition for v in range(2, LATEST_VERSION + 1))


def test_fold_key_routes_by_the_partition_state() -> None:
    a = key_on(0)
    home = partition_for(a, N)
    wrong = (home + 1) % N
    r = rec(ev("AgentStarted", a), partition=wrong)
    keyless = rec(ev("KernelUpgraded", f"~p{wrong}", fold_version=2, partitions=N), key=None, partition=wrong)
    v1 = placeholder(f"~p{wrong}", 1)
    v2_unknown = placeholder(f"~p{wrong}", 2)
    v2 = AgentSlot(placeholder(f"~p{wrong}", 1))
    v2, _ = apply(v2, keyless, version=1)
    assert (v2.state.fold_version, v2.state.partitions) == (2, N)
    assert fold_key(r, None) == a  # nothing recorded: version 1 rules
    assert fold_key(r, v1) == a
    assert fold_key(r, v2_unknown) == a  # version 2 without a count cannot route
    assert fold_key(r, v2.state) == f"~p{wrong}"
    assert fold_key(rec(ev("AgentStarted", a), partition=home), v2.state) == a
    assert fold_key(keyless, v2.state) == f"~p{wrong}"
    assert fold_args(None) == FoldArgs(INITIAL_VERSION, 0) and fold_args(v2.state) == FoldArgs(2, N)


def test_misrouted_record_is_rejected_on_the_pseudo_agent_and_leaves_its_key_alone() -> None:
    sim = Sim(N, murmur2=True)
    for p in range(N):
        assert upgraded(sim, p).kind == Kind.ACCEPTED
    a = key_on(0)
    spawn_running(sim, a)
    before = sim.state(a)
    wrong = (partition_for(a, N) + 1) % N
    pseudo = sim.state(f"~p{wrong}")
    v = sim.produce(ev("AgentSuspended", a), partition=wrong)
    assert (v.kind, v.reason, v.agent_id, v.fold_version) == (Kind.REJECTED, Reason.WRONG_PARTITION, f"~p{wrong}", 2)
    assert f"partition {partition_for(a, N)}" in v.message and "murmur2" in v.message
    assert v.seq == pseudo.seq + 1 and v.derived == ()
    assert sim.state(a) is before  # untouched: not even its seq
    after = sim.state(f"~p{wrong}")
    assert (after.seq, after.partitions, after.status) == (pseudo.seq + 1, N, pseudo.status)
    assert after.dedupe == pseudo.dedupe
    # undecodable and never-spawned keys alike: the route decides first
    u = sim.produce(None, key=a, partition=wrong, error="garbage")
    assert (u.reason, u.agent_id) == (Reason.WRONG_PARTITION, f"~p{wrong}")
    b = key_on(wrong, not_=True, prefix="new")
    n = sim.produce(ev("AgentSpawned", b), partition=wrong)
    assert (n.reason, n.agent_id) == (Reason.WRONG_PARTITION, f"~p{wrong}") and b not in sim.slots
    # correctly routed records on that partition fold as before
    c = key_on(wrong)
    spawn_running(sim, c)
    assert sim.state(c).status == "RUNNING" and sim.state(c).fold_version == 2


def test_before_the_marker_version_1_folds_a_misrouted_record_into_its_key() -> None:
    sim = Sim(N, murmur2=True)
    a = key_on(0)
    spawn_running(sim, a)
    wrong = (partition_for(a, N) + 1) % N
    v = sim.produce(ev("CheckpointRequested", a), partition=wrong)
    assert (v.kind, v.agent_id, v.fold_version) == (Kind.ACCEPTED, a, 1)


def test_apply_refuses_the_slot_of_another_key() -> None:
    sim = Sim(N, murmur2=True)
    a = key_on(0)
    upgraded(sim, 1)
    spawn_running(sim, a)
    r = rec(ev("AgentSuspended", a), partition=1, offset=99)
    ps = sim.state("~p1")
    with pytest.raises(ValueError, match="fold_key"):
        apply(sim.slots[a], r, **fold_args(ps)._asdict())
    slot, v = apply(sim.slots["~p1"], r, **fold_args(ps)._asdict())
    assert v.reason == Reason.WRONG_PARTITION
    fresh, v2 = apply(None, r, **fold_args(ps)._asdict())  # a new slot is made for the routed key
    assert fresh.state.agent_id == "~p1" and v2.agent_id == "~p1"


def test_redelivered_misrouted_record_gets_its_original_verdict() -> None:
    sim = Sim(N, murmur2=True)
    upgraded(sim, 2)
    a = key_on(2, not_=True)
    v = sim.produce(ev("AgentStarted", a), partition=2)
    assert v.reason == Reason.WRONG_PARTITION
    slot, again = sim.redeliver(len(sim.records) - 1)
    assert again == sim.slots["~p2"].recent[-1] and slot is sim.slots["~p2"]
    assert len(sim.slots["~p2"].recent) <= KEEP_VERDICTS


@pytest.mark.parametrize(("partitions", "on"), [(0, 0), (-1, 0), (2, 2)])
def test_a_version_2_marker_without_a_valid_count_is_invalid(partitions: int, on: int) -> None:
    sim = Sim(N, murmur2=True)
    v = upgraded(sim, on, partitions=partitions)
    assert (v.kind, v.reason) == (Kind.REJECTED, Reason.INVALID_PAYLOAD)
    st = sim.state(f"~p{on}")
    assert (st.fold_version, st.partitions) == (1, 0)


def test_a_recorded_count_never_changes() -> None:
    sim = Sim(N, murmur2=True)
    assert upgraded(sim, 0).kind == Kind.ACCEPTED
    same = upgraded(sim, 0)
    assert (same.kind, same.reason) == (Kind.ACCEPTED, Reason.OK)
    other = upgraded(sim, 0, partitions=N + 1)
    assert (other.kind, other.reason) == (Kind.REJECTED, Reason.INVALID_PAYLOAD)
    assert "never changes" in other.message and sim.state("~p0").partitions == N
    down = upgraded(sim, 0, version=1)
    assert down.reason == Reason.VERSION_DOWNGRADE


def test_a_version_1_marker_records_no_count() -> None:
    sim = Sim(N, murmur2=True)
    v = upgraded(sim, 0, version=1, partitions=N)
    assert v.kind == Kind.ACCEPTED and sim.state("~p0").partitions == 0


def test_the_count_is_in_the_canonical_state_only_when_recorded() -> None:
    sim = Sim(N, murmur2=True)
    sim.produce(ev("KernelUpgraded", "~p0", fold_version=1), key=None, partition=0)
    v1_bytes = encode_state(sim.state("~p0"))
    assert b"partitions" not in v1_bytes
    upgraded(sim, 0)
    st = sim.state("~p0")
    b = encode_state(st)
    assert b'"life":' in b and b',"partitions":3,"seq":' in b
    assert decode_state(b) == st and state_hash(decode_state(b)) == state_hash(st)
    assert decode_slot(encode_slot(sim.slots["~p0"])).state == st
    with pytest.raises(StateDecodeError):  # an explicit 0 is not canonical
        decode_state(v1_bytes.replace(b',"seq":', b',"partitions":0,"seq":'))
    with pytest.raises(StateDecodeError):
        decode_state(b.replace(b'"partitions":3', b'"partitions":-3'))


def test_fold_with_verdicts_routes_like_the_simulated_worker() -> None:
    sim = Sim(N, murmur2=True)
    a, b = key_on(0), key_on(1)
    spawn_running(sim, a)
    for p in range(N):
        upgraded(sim, p)
    spawn_running(sim, b)
    sim.produce(ev("AgentSuspended", a), partition=1)
    sim.produce(ev("AgentSuspended", b), partition=2)
    sim.produce(ev("AgentSuspended", a))
    slots, verdicts = fold_with_verdicts(sim.records, keep_verdicts=KEEP_VERDICTS)
    assert verdicts == sim.verdicts
    assert {k: s.state for k, s in slots.items()} == {k: s.state for k, s in sim.slots.items()}
    assert [v.reason for v in verdicts].count(Reason.WRONG_PARTITION) == 2


def test_check_partition_count() -> None:
    check_partition_count(None, 7)
    check_partition_count(placeholder("~p1", 2), 7)  # nothing recorded
    sim = Sim(N, murmur2=True)
    upgraded(sim, 1)
    st = sim.state("~p1")
    check_partition_count(st, N)
    with pytest.raises(PartitionCountChanged) as e:
        check_partition_count(st, N + 3)
    assert (e.value.partition, e.value.recorded, e.value.live) == (1, N, N + 3)
    assert "A changed partition count" in str(e.value)
