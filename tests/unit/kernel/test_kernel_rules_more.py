"""Rules, continued: IPC, timeouts, duplicates, payload hygiene, fork, fold versions,
checkpoints."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from types import MappingProxyType

import pytest
from kernel_support import EMB, Sim, ev, rec, semantic, spawn_running

import aosk.kernel.params as params_mod
from aosk.errors import UnknownFingerprint, UnknownFoldVersion
from aosk.events import Budgets
from aosk.kernel import (
    AgentSlot,
    FoldParams,
    Kind,
    Reason,
    Record,
    Status,
    apply,
    derived_event_id,
    encode_state,
    expired_calls,
    fork_event,
    fork_state,
    state_hash,
    timeout_events,
)

A, B = "a-1", "b-1"


# --- IPC ------------------------------------------------------------------------------------


def test_message_is_delivered_with_a_derived_id_and_consumed() -> None:
    sim = Sim()
    spawn_running(sim, A)
    spawn_running(sim, B)
    sent = ev("MessageSent", A, message_id="m1", to_agent_id=B, body="hello")
    v = sim.produce(sent)
    (d,) = v.derived
    assert d.event_id == derived_event_id("MessageDelivered", sent.event_id, v.partition, v.offset)
    assert (d.source_partition, d.source_offset, d.from_agent_id, d.agent_id) == (v.partition, v.offset, A, B)
    dv = sim.verdicts[-1]
    assert (dv.agent_id, dv.kind) == (B, Kind.ACCEPTED)
    inbox = sim.state(B).inbox.messages
    assert [(m.message_id, m.body, m.from_agent_id) for m in inbox] == [("m1", "hello", A)]
    c = sim.produce(ev("MessagesConsumed", B, message_ids=("nope",)))
    assert (c.kind, c.reason) == (Kind.REJECTED, Reason.UNKNOWN_MESSAGE)
    assert sim.produce(ev("MessagesConsumed", B, message_ids=("m1",))).kind == Kind.ACCEPTED
    assert sim.state(B).inbox.messages == ()


@pytest.mark.parametrize("recipient_state", ["never spawned", "terminated"])
def test_message_to_an_unavailable_recipient_bounces(recipient_state: str) -> None:
    sim = Sim()
    spawn_running(sim, A)
    if recipient_state == "terminated":
        spawn_running(sim, B)
        sim.produce(ev("AgentTerminated", B))
    sim.produce(ev("MessageSent", A, message_id="m1", to_agent_id=B))
    dv, bv = sim.verdicts[-2], sim.verdicts[-1]
    assert (dv.agent_id, dv.kind, dv.reason) == (B, Kind.REJECTED, Reason.RECIPIENT_UNAVAILABLE)
    (b,) = dv.derived
    assert b.event_id == derived_event_id("MessageBounced", dv.event_id, dv.partition, dv.offset)
    assert (b.source_partition, b.source_offset) == (dv.partition, dv.offset)
    assert (bv.agent_id, bv.kind, bv.event_type) == (A, Kind.ACCEPTED, "MessageBounced")


def test_full_inbox_bounces_until_consumed() -> None:
    sim = Sim()
    spawn_running(sim, A)
    spawn_running(sim, B)
    for i in range(33):
        sim.produce(ev("MessageSent", A, message_id=f"m{i}", to_agent_id=B))
    assert len(sim.state(B).inbox.messages) == 32
    dv = next(v for v in reversed(sim.verdicts) if v.event_type == "MessageDelivered")
    assert (dv.kind, dv.reason) == (Kind.REJECTED, Reason.INBOX_FULL)
    assert sim.state(A).counters.messages_bounced == 1
    sim.produce(ev("MessagesConsumed", B, message_ids=()))
    sim.produce(ev("MessageSent", A, message_id="again", to_agent_id=B))
    assert [m.message_id for m in sim.state(B).inbox.messages] == ["again"]


def test_deliveries_and_bounces_are_deduplicated_by_source_high_water_mark() -> None:
    sim = Sim()
    spawn_running(sim, A)
    spawn_running(sim, B)
    sim.produce(ev("MessageSent", A, message_id="m1", to_agent_id=B))
    (d,) = sim.verdicts[-2].derived
    # the worker re-produces the same delivery after a crash (same id, or even a new id)
    for again in (d, replace(d, event_id="00000000-0000-4000-8000-000000000001")):
        v = sim.produce(again)
        assert (v.kind, v.reason, v.derived) == (Kind.DUPLICATE, Reason.ALREADY_DELIVERED, ())
    older = replace(d, event_id="00000000-0000-4000-8000-000000000002", source_offset=d.source_offset - 1)
    assert sim.produce(older).reason == Reason.ALREADY_DELIVERED
    assert len(sim.state(B).inbox.messages) == 1
    # bounces likewise
    sim.produce(ev("MessageSent", A, message_id="m2", to_agent_id="nobody"))
    (bounced,) = sim.verdicts[-2].derived
    v = sim.produce(bounced)
    assert (v.kind, v.reason) == (Kind.DUPLICATE, Reason.ALREADY_BOUNCED)
    assert sim.state(A).counters.messages_bounced == 1


def test_forged_client_delivery_neither_lands_nor_moves_the_high_water_mark() -> None:
    sim = Sim()
    spawn_running(sim, B)
    forged = ev("MessageDelivered", B, origin="client", source_partition=0, source_offset=10**9)
    v = sim.produce(forged)
    assert (v.reason, v.derived) == (Reason.KERNEL_ONLY, ())
    assert sim.state(B).dedupe.delivery_hwm == ()


# --- timeouts -------------------------------------------------------------------------------


def test_deadline_is_broker_time_plus_timeout_and_late_completion_is_rejected() -> None:
    sim = Sim()
    spawn_running(sim, A, budgets=Budgets(max_tokens=1000, max_tool_calls=9, max_steps=99,
                                          context_window_tokens=99))
    v = sim.produce(ev("LlmCallRequested", A, call_id="c1", timeout_ms=500, prompt_tokens=5))
    (call,) = sim.state(A).calls.open
    assert call.deadline_ms == v.timestamp + 500
    assert expired_calls(sim.state(A), call.deadline_ms) == ()  # must pass, not reach
    assert expired_calls(sim.state(A), call.deadline_ms + 1) == (call,)
    (t,) = timeout_events(sim.state(A), call.deadline_ms + 1)
    assert t == timeout_events(sim.state(A), call.deadline_ms + 99)[0]  # deterministic
    (tv,) = sim.tick(1000)
    assert (tv.event_type, tv.kind) == ("CallTimedOut", Kind.ACCEPTED)
    assert sim.state(A).calls.open == () and sim.state(A).calls.timed_out == ("c1",)
    late = sim.produce(ev("LlmCallCompleted", A, call_id="c1", completion_tokens=50))
    assert (late.kind, late.reason) == (Kind.REJECTED, Reason.LATE_COMPLETION)
    assert sim.state(A).usage.tokens == 5  # a rejected completion counts nothing
    again = sim.produce(t)
    assert again.reason in (Reason.DUPLICATE_EVENT_ID, Reason.CALL_NOT_OPEN) and again.kind == Kind.DUPLICATE


def test_completion_first_makes_a_later_timeout_a_duplicate() -> None:
    sim = Sim()
    spawn_running(sim, A)
    sim.produce(ev("ToolCallRequested", A, call_id="t1", timeout_ms=10))
    events = timeout_events(sim.state(A), 10**12)  # the worker decided to time it out...
    assert sim.produce(ev("ToolCallCompleted", A, call_id="t1")).kind == Kind.ACCEPTED  # ...but this came first
    v = sim.produce(events[0])
    assert (v.kind, v.reason) == (Kind.DUPLICATE, Reason.CALL_NOT_OPEN)
    u = sim.produce(ev("ToolCallCompleted", A, call_id="never"))
    assert (u.kind, u.reason) == (Kind.REJECTED, Reason.UNKNOWN_CALL)


def test_no_timeouts_for_ready_or_final_agents() -> None:
    sim = Sim()
    spawn_running(sim, A)
    sim.produce(ev("LlmCallRequested", A, call_id="c1", timeout_ms=10))
    sim.produce(ev("AgentSuspended", A))
    sim.produce(ev("AgentResumed", A))
    assert sim.state(A).status == Status.READY and expired_calls(sim.state(A), 10**12) == ()
    sim.produce(ev("AgentTerminated", A))
    assert sim.state(A).calls.open == () and sim.tick(10**6) == []


# --- duplicates -----------------------------------------------------------------------------


def test_redelivered_offset_returns_the_original_verdict_and_derived_events() -> None:
    sim = Sim()
    spawn_running(sim, A)
    sim.produce(ev("MessageSent", A, message_id="m1", to_agent_id=B))
    i = next(i for i, v in enumerate(sim.verdicts) if v.event_type == "MessageSent")
    slot = sim.slots[A]
    again_slot, again = sim.redeliver(i)
    assert again_slot is slot
    assert again == sim.verdicts[i] and again.derived == sim.verdicts[i].derived
    for j, r in enumerate(sim.records):  # every earlier offset of the key too
        if r.agent_key == A:
            assert sim.redeliver(j)[1] == sim.verdicts[j]


def test_redelivery_beyond_the_kept_verdicts_is_a_plain_duplicate() -> None:
    st_slot = None
    for off in range(70):
        st_slot, _ = apply(st_slot, rec(ev("AgentStarted", A), offset=off), keep_verdicts=64)
    assert len(st_slot.recent) == 64
    same, v = apply(st_slot, rec(ev("AgentStarted", A), offset=2), keep_verdicts=64)
    assert same is st_slot and (v.kind, v.reason, v.seq) == (Kind.DUPLICATE, Reason.REDELIVERED, 0)


def test_kept_verdicts_are_the_callers_setting_and_change_no_hash() -> None:
    kept = none = None
    for off in range(10):
        r = rec(ev("AgentStarted", A), offset=off)
        kept, vk = apply(kept, r, keep_verdicts=3)
        none, vn = apply(none, r)
        assert vk == vn
    assert [v.offset for v in kept.recent] == [7, 8, 9] and none.recent == ()
    assert kept.state == none.state
    assert apply(kept, rec(ev("AgentStarted", A), offset=8), keep_verdicts=3)[1] == kept.recent[1]
    one = None
    for off in range(5):
        one, v = apply(one, rec(ev("AgentStarted", A), offset=off), keep_verdicts=1)
        assert one.recent == (v,)


def test_client_retry_with_the_same_event_id_is_a_duplicate_within_k() -> None:
    sim = Sim()
    spawn_running(sim, A)
    e = ev("MemoryStored", A, memory_id="m")
    assert sim.produce(e).kind == Kind.ACCEPTED
    d = sim.produce(e)
    assert (d.kind, d.reason, d.seq) == (Kind.DUPLICATE, Reason.DUPLICATE_EVENT_ID, 4)
    assert sim.state(A).counters.memories_stored == 1
    bad = ev("ToolCallRequested", A, tool="shell")
    assert sim.produce(bad).reason == Reason.CAPABILITY_DENIED
    assert sim.produce(bad).kind == Kind.DUPLICATE  # retrying a rejected event too
    for _ in range(128):
        sim.produce(ev("CheckpointRequested", A))
    assert sim.produce(e).kind == Kind.ACCEPTED  # beyond the last K ids: new again
    assert sim.state(A).counters.memories_stored == 2


# --- payload hygiene ------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
HYGIENE = [
    ("ContextAppended", dict(content="a\x00b")),
    ("ContextAppended", dict(importance=NAN)),
    ("ContextAppended", dict(importance=INF)),
    ("ContextAppended", dict(importance=1.5)),
    ("ContextAppended", dict(tokens=-1)),
    ("ContextAppended", dict(content="x" * 16_385)),
    ("ContextAppended", dict(role="\ud800")),
    ("ContextAppended", dict(entry_id=5)),
    ("MemoryStored", dict(embedding=(0.1,) * 383)),
    ("MemoryStored", dict(embedding=(NAN,) * 384)),
    ("MemoryStored", dict(metadata={"k": "v\x00"})),
    ("MemoryEmbedded", dict(embedding=(0.1,) * 385)),
    ("MemoryEmbedded", dict(embedding=EMB[:-1] + (-INF,))),
    ("ToolCallRequested", dict(arguments="{not json")),
    ("ToolCallRequested", dict(arguments='{"x": NaN}')),
    ("ToolCallRequested", dict(arguments='[Infinity]')),
    ("ToolCallRequested", dict(timeout_ms=0)),
    ("LlmCallRequested", dict(prompt_tokens=-3)),
    ("MessageSent", dict(body="é" * 2049)),
    ("MessageSent", dict(to_agent_id="~p3")),
    ("AgentSuspended", dict(reason="a\x00")),
    ("AgentSuspended", dict(event_id="NOT-A-UUID")),
    ("AgentSuspended", dict(origin="root")),
]


@pytest.mark.parametrize(("type_name", "fields"), HYGIENE, ids=[f"{t}-{i}" for i, (t, _) in enumerate(HYGIENE)])
def test_payload_hygiene_rejects(type_name: str, fields: dict) -> None:
    sim = Sim()
    spawn_running(sim, A)
    before = sim.state(A)
    v = sim.produce(ev(type_name, A, **fields))
    assert (v.kind, v.reason) == (Kind.REJECTED, Reason.INVALID_PAYLOAD), v
    assert semantic(sim.state(A)) == semantic(before)


def test_embeddings_of_the_right_dimension_are_accepted() -> None:
    sim = Sim()
    spawn_running(sim, A)
    assert sim.produce(ev("MemoryStored", A, embedding=EMB)).kind == Kind.ACCEPTED
    assert sim.produce(ev("MemoryEmbedded", A, embedding=EMB)).kind == Kind.ACCEPTED


# --- fork -----------------------------------------------------------------------------------


def test_fork_carries_the_state_at_a_seq_and_resets_what_belonged_to_the_source() -> None:
    sim = Sim()
    spawn_running(sim, A, capabilities=("search",))
    sim.produce(ev("ContextAppended", A, entry_id="e1", content="remember me"))
    at = sim.state(A).seq
    sim.produce(ev("LlmCallRequested", A, call_id="c1"))
    spawn_running(sim, B)
    sim.produce(ev("MessageSent", B, message_id="m", to_agent_id=A))
    v = sim.produce(ev("ForkRequested", A, new_agent_id="f-1", at_seq=at))
    assert v.kind == Kind.ACCEPTED
    fv = sim.verdicts[-1]
    assert (fv.agent_id, fv.event_type, fv.kind, fv.status) == ("f-1", "AgentForked", Kind.ACCEPTED, Status.READY)
    f = sim.state("f-1")
    assert [e.content for e in f.window.entries] == ["remember me"]
    assert (f.identity.forked_from, f.identity.fork_seq, f.capabilities.names) == (A, at, ("search",))
    assert f.calls.open == () and f.inbox.messages == () and f.seq == 1
    assert f.usage == sim.history[A][at].usage
    assert sim.produce(sim.records[-1].event).reason in (Reason.ALREADY_SPAWNED,)  # natural-key duplicate


def test_forked_state_is_checked_against_its_hash_and_source() -> None:
    sim = Sim()
    spawn_running(sim, A)
    src = sim.state(A)
    req = ev("ForkRequested", A, new_agent_id="f", at_seq=src.seq)
    good = fork_event(src, req, partition=0, offset=1, timestamp_ms=9)
    assert good.source_state_hash == hashlib.sha256(good.state).digest() == state_hash(src)
    bad_hash = replace(good, source_state_hash=b"\1" * 32)
    spaced = good.state.replace(b'"agent_id":', b'"agent_id": ')
    not_canonical = replace(good, state=spaced, source_state_hash=hashlib.sha256(spaced).digest())
    wrong_seq = replace(good, source_seq=src.seq + 1)
    other_tenant = replace(good, tenant_id="t2")
    for bad, reason in ((bad_hash, Reason.INVALID_FORK), (not_canonical, Reason.INVALID_FORK),
                        (wrong_seq, Reason.INVALID_FORK), (other_tenant, Reason.TENANT_MISMATCH)):
        v = sim.produce(bad)
        assert (v.kind, v.reason, v.status) == (Kind.REJECTED, reason, Status.NONE), bad
    assert sim.produce(good).status == Status.READY
    with pytest.raises(ValueError):
        fork_event(src, replace(req, at_seq=1), partition=0, offset=1, timestamp_ms=9)


def test_fork_requested_checks_its_payload_and_works_on_final_agents() -> None:
    sim = Sim()
    spawn_running(sim, A)
    for fields in (dict(at_seq=0), dict(at_seq=99), dict(new_agent_id=A)):
        v = sim.produce(ev("ForkRequested", A, **{"new_agent_id": "f", **fields}))
        assert v.reason == Reason.INVALID_PAYLOAD, fields
    sim.produce(ev("AgentTerminated", A))
    assert sim.produce(ev("ForkRequested", A, new_agent_id="f", at_seq=2)).kind == Kind.ACCEPTED  # from a final agent
    assert sim.state("f").status == Status.READY


def test_fork_state_function() -> None:
    sim = Sim()
    spawn_running(sim, A)
    f = fork_state(sim.state(A), new_agent_id="z")
    assert (f.agent_id, f.status, f.seq, f.identity.forked_from) == ("z", Status.READY, 0, A)
    assert encode_state(f) != encode_state(sim.state(A))


# --- versions -------------------------------------------------------------------------------


@pytest.fixture
def with_v2(monkeypatch: pytest.MonkeyPatch) -> FoldParams:
    v2 = FoldParams(version=2, dedupe_window=4)
    monkeypatch.setattr(params_mod, "VERSIONS", MappingProxyType({1: params_mod.VERSIONS[1], 2: v2}))
    return v2


def test_kernel_upgraded_switches_its_partition_from_its_position_on(with_v2: FoldParams) -> None:
    sim = Sim()
    spawn_running(sim, A)
    p = sim.partition_of(A)
    other = next(k for k in (f"x{i}" for i in range(50)) if sim.partition_of(k) != p)
    spawn_running(sim, other)
    up = sim.produce(ev("KernelUpgraded", f"~p{p}", fold_version=2), key=None, partition=p)
    assert (up.kind, up.fold_version) == (Kind.ACCEPTED, 1)  # judged by 1, switches to 2
    v = sim.produce(ev("CheckpointRequested", A))
    assert v.fold_version == 2 and sim.state(A).fold_version == 2
    assert sim.produce(ev("CheckpointRequested", other)).fold_version == 1
    down = sim.produce(ev("KernelUpgraded", f"~p{p}", fold_version=1), key=None, partition=p)
    assert (down.kind, down.reason) == (Kind.REJECTED, Reason.VERSION_DOWNGRADE)
    with pytest.raises(ValueError):
        apply(sim.slots[A], rec(ev("AgentSuspended", A), offset=10**6), version=1)


def test_unknown_fold_version_stops_the_partition() -> None:
    sim = Sim()
    with pytest.raises(UnknownFoldVersion):
        sim.produce(ev("KernelUpgraded", "~p0", fold_version=99), key=None, partition=0)
    v = sim.produce(ev("KernelUpgraded", "~p0", fold_version=0), key=None, partition=0)
    assert v.reason == Reason.INVALID_PAYLOAD


def test_unknown_fingerprint_is_raised_not_folded() -> None:
    r = Record(A, 0, 0, 1, b"\xc3\x01", None, UnknownFingerprint(b"\1" * 8))
    with pytest.raises(UnknownFingerprint):
        apply(None, r)
    with pytest.raises(ValueError):
        apply(None, Record(A, 0, 0, 1, b"", None, None))


# --- checkpoints ----------------------------------------------------------------------------


def test_checkpoint_due_every_interval_on_suspend_on_final_and_on_request() -> None:
    sim = Sim()
    spawn_running(sim, A)
    assert sim.produce(ev("CheckpointRequested", A)).checkpoint_due
    assert sim.produce(ev("AgentSuspended", A)).checkpoint_due
    assert not sim.produce(ev("AgentResumed", A)).checkpoint_due
    dues = [sim.produce(ev("BudgetUpdated", A)).checkpoint_due for _ in range(200)]
    assert [i + 6 for i, d in enumerate(dues) if d] == [100, 200]
    assert sim.produce(ev("AgentTerminated", A)).checkpoint_due


def test_slot_keeps_recent_verdicts_without_paged_entries() -> None:
    sim = Sim()
    spawn_running(sim, A, budgets=Budgets(max_tokens=9, max_tool_calls=9, max_steps=99, context_window_tokens=10))
    sim.produce(ev("ContextAppended", A, entry_id="a", tokens=10))
    v = sim.produce(ev("ContextAppended", A, entry_id="b", tokens=10))
    assert [e.entry_id for e in v.paged_out] == ["a"]
    kept = sim.slots[A].recent[-1]
    assert kept.paged_out == () and replace(kept, paged_out=v.paged_out) == v
    assert isinstance(sim.slots[A], AgentSlot)
