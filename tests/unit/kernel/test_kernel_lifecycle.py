"""The lifecycle table of ARCHITECTURE.md, cell by cell: every event type in every status.

The table is copied here by hand (not imported from the kernel), so a change to
``aosk.kernel.LIFECYCLE`` that drifts from the architecture fails a test.
"""

from __future__ import annotations

import pytest
from kernel_support import Sim, ev, semantic, spawn_running

from aosk.events import EVENT_TYPES
from aosk.kernel import LIFECYCLE, Kind, Reason, Status, fork_event
from aosk.kernel.tasks import llm_call_id

R, RU, W, SU, T, E, N = (Status.READY, Status.RUNNING, Status.WAITING, Status.SUSPENDED,
                         Status.TERMINATED, Status.ERROR, Status.NONE)
NON_FINAL = {R, RU, W, SU}
WORK = ["ContextAppended", "LlmCallRequested", "ToolCallRequested", "MemoryStored", "MemoryRecalled",
        "MessageSent", "MessagesConsumed", "SpawnRequested"]

# (event type) -> {from status: to status}; "same" = unchanged. Straight from ARCHITECTURE.md.
TABLE: dict[str, dict[str, str]] = {
    "AgentSpawned": {N: R},
    "AgentForked": {N: R},
    "AgentStarted": {R: RU},
    "AgentWaiting": {RU: W},
    "AgentResumed": {W: RU, SU: R},
    "AgentSuspended": {R: SU, RU: SU, W: SU},
    "BudgetUpdated": {s: "same" for s in NON_FINAL},
    "AgentTerminated": {s: T for s in NON_FINAL},
    "AgentKilled": {s: T for s in NON_FINAL},
    "AgentFailed": {s: E for s in NON_FINAL},
    **{t: {RU: "same"} for t in WORK},
    **{t: {RU: "same", W: "same", SU: "same"} for t in ("LlmCallCompleted", "ToolCallCompleted", "CallTimedOut")},
    **{t: {s: "same" for s in NON_FINAL} for t in ("MessageDelivered", "MessageBounced", "MemoryEmbedded",
                                                   "MemoryForgotten", "CheckpointRequested", "CapabilityGranted",
                                                   "CapabilityRevoked", "TaskSubmitted", "TaskCompleted",
                                                   "TaskFailed", "TaskCancelled")},
    "ForkRequested": {s: "same" for s in NON_FINAL | {T, E}},
    "KernelUpgraded": {s: "same" for s in NON_FINAL | {T, E, N}},
    "RecordQuarantined": {s: "same" for s in NON_FINAL | {T, E, N}},
}
PARTITION_MARKERS = ("KernelUpgraded", "RecordQuarantined")
STATUSES = [N, R, RU, W, SU, T, E]
AGENT = "a-1"


def test_table_covers_every_event_type_and_matches_the_kernel() -> None:
    assert set(TABLE) == set(EVENT_TYPES)
    for t, moves in TABLE.items():
        assert LIFECYCLE[t] == frozenset(moves), t


def _setup(status: str, *, tasks: bool = False) -> Sim:
    """An agent in ``status`` with an LLM call and a tool call open (when spawned); with
    ``tasks``, under fold version 4 with task ``t-1`` running and its final answer in."""
    sim = Sim(murmur2=tasks)
    if tasks:
        for p in range(sim.n):
            sim.produce(ev("KernelUpgraded", f"~p{p}", fold_version=4, partitions=sim.n), key=None, partition=p)
    if status == N:
        return sim
    spawn_running(sim, AGENT)
    if tasks:
        assert sim.produce(ev("TaskSubmitted", AGENT)).kind == Kind.ACCEPTED
        call = llm_call_id(AGENT, "t-1", 1, 1)
        v = sim.produce(ev("LlmCallRequested", AGENT, origin="kernel", call_id=call, task_id="t-1", turn=1,
                           attempt=1, context_entry_ids=("t-1#in",)))
        assert v.kind == Kind.ACCEPTED, v
        v = sim.produce(ev("LlmCallCompleted", AGENT, origin="kernel", call_id=call, content="5"))
        assert v.kind == Kind.ACCEPTED, v
    for t, c in (("LlmCallRequested", "c-llm"), ("ToolCallRequested", "c-tool")):
        assert sim.produce(ev(t, AGENT, call_id=c)).kind == Kind.ACCEPTED
    moves = {
        R: [ev("AgentSuspended", AGENT), ev("AgentResumed", AGENT)],
        RU: [],
        W: [ev("AgentWaiting", AGENT)],
        SU: [ev("AgentSuspended", AGENT)],
        T: [ev("AgentTerminated", AGENT)],
        E: [ev("AgentFailed", AGENT)],
    }[status]
    for e in moves:
        assert sim.produce(e).kind == Kind.ACCEPTED
    assert sim.state(AGENT).status == status
    return sim


def _event_for(sim: Sim, t: str):  # noqa: ANN202 - an Event
    if t == "AgentForked":
        spawn_running(sim, "src-1")
        src = sim.state("src-1")
        req = ev("ForkRequested", "src-1", new_agent_id=AGENT, at_seq=src.seq)
        return fork_event(src, req, partition=0, offset=99, timestamp_ms=5)
    fields = {
        "ContextAppended": dict(entry_id="e-new"),
        "MemoryStored": dict(memory_id="m-new"),
        "MemoryEmbedded": dict(memory_id="m-new"),
        "LlmCallRequested": dict(call_id="c-new"),
        "ToolCallRequested": dict(call_id="c-new2"),
        "LlmCallCompleted": dict(call_id="c-llm"),
        "ToolCallCompleted": dict(call_id="c-tool"),
        "CallTimedOut": dict(call_id="c-llm"),
        "MessageSent": dict(message_id="m1", to_agent_id="b-1"),
        "MessageDelivered": dict(message_id="m2", from_agent_id="b-1", source_partition=1, source_offset=7),
        "MessageBounced": dict(message_id="m3", source_partition=1, source_offset=8),
        "SpawnRequested": dict(child_id="kid-1"),
        "ForkRequested": dict(new_agent_id="fork-1", at_seq=1),
        "TaskSubmitted": dict(task_id="t-2"),
    }.get(t, {})
    return ev(t, AGENT, **fields)


CASES = [(t, s) for t in sorted(TABLE) if t not in PARTITION_MARKERS for s in STATUSES]


@pytest.mark.parametrize(("event_type", "status"), CASES)
def test_every_event_in_every_status(event_type: str, status: str) -> None:
    sim = _setup(status, tasks=event_type.startswith("Task"))
    e = _event_for(sim, event_type)
    before = sim.slots.get(AGENT)
    v = sim.produce(e)
    after = sim.state(AGENT)
    allowed = TABLE[event_type]
    if status in allowed:
        assert v.kind == Kind.ACCEPTED, v
        to = allowed[status]
        assert after.status == (status if to == "same" else to)
        return
    # Not allowed: rejected (or a kernel duplicate), no semantic field changes.
    assert v.kind in (Kind.REJECTED, Kind.DUPLICATE), v
    assert semantic(after) == semantic(before.state if before else None) or (
        before is None and after.status == N
    )
    assert after.seq == (before.state.seq if before else 0) + 1
    if event_type == "MessageDelivered":
        assert v.reason == Reason.RECIPIENT_UNAVAILABLE
        assert [type(d).__name__ for d in v.derived] == ["MessageBounced"]
    elif event_type in ("AgentSpawned", "AgentForked"):
        assert v.reason == Reason.ALREADY_SPAWNED
        assert v.kind == (Kind.DUPLICATE if e.origin == "kernel" else Kind.REJECTED)
    elif status == N:
        assert v.reason == Reason.NOT_SPAWNED
    else:
        assert v.reason == Reason.ILLEGAL_TRANSITION


@pytest.mark.parametrize("status", STATUSES)
def test_kernel_upgraded_is_a_partition_marker_accepted_in_any_status(status: str) -> None:
    sim = _setup(status)
    v = sim.produce(ev("KernelUpgraded", "~p0", fold_version=1), key=None, partition=0)
    assert (v.kind, v.agent_id) == (Kind.ACCEPTED, "~p0")
    keyed = sim.produce(ev("KernelUpgraded", AGENT, fold_version=1))
    assert (keyed.kind, keyed.reason) == (Kind.REJECTED, Reason.NOT_PARTITION_MARKER)


def test_events_for_an_agent_never_spawned_are_rejected_in_its_sequence() -> None:
    sim = Sim()
    v1 = sim.produce(ev("AgentStarted", "ghost"))
    v2 = sim.produce(ev("ContextAppended", "ghost", entry_id="e"))
    assert [(v.kind, v.reason, v.seq, v.status) for v in (v1, v2)] == [
        (Kind.REJECTED, Reason.NOT_SPAWNED, 1, N),
        (Kind.REJECTED, Reason.NOT_SPAWNED, 2, N),
    ]
    # the placeholder keeps the sequence going: the spawn is seq 3
    v3 = sim.produce(ev("AgentSpawned", "ghost"))
    assert (v3.kind, v3.seq, v3.status) == (Kind.ACCEPTED, 3, R)


def test_undecodable_record_is_rejected_in_its_agents_sequence() -> None:
    sim = Sim()
    spawn_running(sim, AGENT)
    before = sim.state(AGENT)
    v = sim.produce(None, key=AGENT, error="bad magic")
    assert (v.kind, v.reason, v.seq, v.event_id, v.event_type) == (Kind.REJECTED, Reason.UNDECODABLE, 3, None, None)
    assert semantic(sim.state(AGENT)) == semantic(before)
    # without a key it goes to the partition's pseudo-agent
    v = sim.produce(None, key=None, partition=2, error="garbage")
    assert (v.agent_id, v.seq, v.reason) == ("~p2", 1, Reason.UNDECODABLE)


def test_final_states_accept_only_fork_and_upgrade() -> None:
    for final in (T, E):
        sim = _setup(final)
        for t in sorted(TABLE):
            if t in PARTITION_MARKERS:
                continue
            v = sim.produce(_event_for(sim, t))
            assert (v.kind == Kind.ACCEPTED) == (t == "ForkRequested"), (final, t, v)
        assert sim.state(AGENT).status == final


def test_killed_and_terminated_notes() -> None:
    sim = _setup(RU)
    sim.produce(ev("AgentKilled", AGENT, signal="SIGTERM", by="ops"))
    st = sim.state(AGENT)
    assert (st.status, st.life.signal, st.life.killed_by, st.calls.open) == (T, "SIGTERM", "ops", ())
    sim = _setup(W)
    sim.produce(ev("AgentFailed", AGENT, error="x" * 5000))
    st = sim.state(AGENT)
    assert st.status == E and len(st.life.error or "") == 1024  # notes are cut, never rejected
