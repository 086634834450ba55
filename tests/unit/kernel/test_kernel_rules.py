"""One test (at least) per rule of the fold: tenancy, capabilities and children,
kernel-only events, quotas, and the context window as virtual memory."""

from __future__ import annotations

import pytest
from kernel_support import BIG, Sim, ev, semantic, spawn_running

from aosk.events import Budgets
from aosk.kernel import Kind, Reason, Status, Verdict, derived_event_id

A, B = "a-1", "b-1"


# --- tenancy ------------------------------------------------------------------------------


def test_event_from_another_tenant_is_rejected_and_changes_nothing() -> None:
    sim = Sim()
    spawn_running(sim, A)
    before = sim.state(A)
    v = sim.produce(ev("ContextAppended", A, tenant="t2", entry_id="e"))
    assert (v.kind, v.reason) == (Kind.REJECTED, Reason.TENANT_MISMATCH)
    assert "t2" in v.message and "t1" in v.message
    assert semantic(sim.state(A)) == semantic(before)


def test_message_to_another_tenants_agent_bounces_back_to_the_sender() -> None:
    sim = Sim()
    spawn_running(sim, A)
    spawn_running(sim, B, tenant="t2")
    v = sim.produce(ev("MessageSent", A, message_id="m1", to_agent_id=B))
    assert v.kind == Kind.ACCEPTED
    (delivered,) = v.derived
    assert (delivered.tenant_id, delivered.from_tenant_id, delivered.origin) == ("t1", "t1", "kernel")
    dv, bv = sim.verdicts[-2], sim.verdicts[-1]
    assert (dv.agent_id, dv.kind, dv.reason) == (B, Kind.REJECTED, Reason.TENANT_MISMATCH)
    (bounced,) = dv.derived
    assert (bounced.agent_id, bounced.reason, bounced.tenant_id) == (A, Reason.TENANT_MISMATCH, "t1")
    assert (bv.agent_id, bv.kind, bv.event_type) == (A, Kind.ACCEPTED, "MessageBounced")
    assert sim.state(A).counters.messages_bounced == 1
    assert sim.state(B).inbox.messages == ()


# --- capabilities, children, kernel-only ----------------------------------------------------


def test_tool_call_outside_capabilities_is_denied_until_granted() -> None:
    sim = Sim()
    spawn_running(sim, A, capabilities=("search",))
    v = sim.produce(ev("ToolCallRequested", A, call_id="c1", tool="shell"))
    assert (v.kind, v.reason) == (Kind.REJECTED, Reason.CAPABILITY_DENIED)
    assert "CapabilityGranted" in v.message
    assert sim.state(A).usage.tool_calls == 0
    sim.produce(ev("CapabilityGranted", A, capability="shell"))
    assert sim.produce(ev("ToolCallRequested", A, call_id="c2", tool="shell")).kind == Kind.ACCEPTED
    sim.produce(ev("CapabilityRevoked", A, capability="shell"))
    v = sim.produce(ev("ToolCallRequested", A, call_id="c3", tool="shell"))
    assert v.reason == Reason.CAPABILITY_DENIED


def test_spawn_requested_on_the_parent_derives_the_childs_kernel_spawn() -> None:
    sim = Sim()
    spawn_running(sim, A, capabilities=("search", "calc"), metadata={"team": "x"})
    req = ev("SpawnRequested", A, child_id="kid", capabilities=("search",), metadata={"b": "2", "a": "1"})
    v = sim.produce(req)
    assert v.kind == Kind.ACCEPTED
    (child,) = v.derived
    assert (child.agent_id, child.parent_id, child.origin, child.tenant_id) == ("kid", A, "kernel", "t1")
    assert child.event_id == derived_event_id("AgentSpawned", req.event_id, v.partition, v.offset)
    assert child.occurred_at == v.timestamp * 1000 and child.causation_id == req.event_id
    kid = sim.state("kid")
    assert (kid.status, kid.capabilities.names, kid.identity.parent_id) == (Status.READY, ("search",), A)
    assert sim.state(A).counters.children_requested == 1
    # the worker writing the child's spawn twice: the second is a duplicate by natural key
    v2 = sim.produce(child)
    assert (v2.kind, v2.reason) == (Kind.DUPLICATE, Reason.ALREADY_SPAWNED)


def test_child_asking_for_more_than_its_parent_is_rejected_not_trimmed() -> None:
    sim = Sim()
    spawn_running(sim, A, capabilities=("search",))
    v = sim.produce(ev("SpawnRequested", A, child_id="kid", capabilities=("search", "shell")))
    assert (v.kind, v.reason, v.derived) == (Kind.REJECTED, Reason.CAPABILITY_DENIED, ())
    assert "shell" in v.message
    assert "kid" not in sim.slots


def test_client_agent_spawned_may_only_create_a_root() -> None:
    sim = Sim()
    v = sim.produce(ev("AgentSpawned", "kid", parent_id=A))
    assert (v.kind, v.reason) == (Kind.REJECTED, Reason.KERNEL_ONLY)
    assert "SpawnRequested" in v.message
    assert sim.produce(ev("AgentSpawned", "root")).kind == Kind.ACCEPTED


@pytest.mark.parametrize(
    "type_name", ["AgentForked", "MessageDelivered", "MessageBounced", "CallTimedOut", "KernelUpgraded"]
)
def test_kernel_only_types_with_client_origin_are_rejected(type_name: str) -> None:
    sim = Sim()
    spawn_running(sim, A)
    key = None if type_name == "KernelUpgraded" else A
    agent = "~p0" if key is None else A
    v = sim.produce(ev(type_name, agent, origin="client"), key=key, partition=0 if key is None else None)
    assert (v.kind, v.reason) == (Kind.REJECTED, Reason.KERNEL_ONLY)


def test_record_key_must_be_the_agent_id() -> None:
    sim = Sim()
    spawn_running(sim, A)
    v = sim.produce(ev("AgentSuspended", B), key=A)
    assert (v.kind, v.reason, v.agent_id) == (Kind.REJECTED, Reason.KEY_MISMATCH, A)
    v = sim.produce(ev("AgentSpawned", "x"), key=None, partition=1)
    assert (v.reason, v.agent_id) == (Reason.KEY_MISMATCH, "~p1")


# --- quotas ---------------------------------------------------------------------------------


def small(tokens: int = 100, tools: int = 100, steps: int = 100, window: int = 1000) -> Budgets:
    return Budgets(max_tokens=tokens, max_tool_calls=tools, max_steps=steps, context_window_tokens=window)


def test_llm_tokens_crossing_the_budget_suspend_and_budget_update_readies() -> None:
    sim = Sim()
    spawn_running(sim, A, budgets=small(tokens=100))
    assert sim.produce(ev("LlmCallRequested", A, call_id="c1", prompt_tokens=60)).reason == Reason.OK
    v = sim.produce(ev("LlmCallRequested", A, call_id="c2", prompt_tokens=60))
    assert (v.kind, v.reason, v.status) == (Kind.ACCEPTED, Reason.BUDGET_EXHAUSTED, Status.SUSPENDED)
    assert v.checkpoint_due and "BudgetUpdated" in v.message
    st = sim.state(A)
    assert st.remaining()["tokens"] == 0 and st.usage.tokens == 120
    assert st.life.suspend_reason == "budget_exhausted"
    w = sim.produce(ev("ContextAppended", A, entry_id="e"))
    assert w.reason == Reason.ILLEGAL_TRANSITION
    assert w.message == "agent a-1 is SUSPENDED (budget_exhausted); send BudgetUpdated to resume"
    r = sim.produce(ev("AgentResumed", A))
    assert (r.kind, r.reason) == (Kind.REJECTED, Reason.BUDGET_EXHAUSTED)
    # completions still count while suspended (never below 0 remaining)
    assert sim.produce(ev("LlmCallCompleted", A, call_id="c1", completion_tokens=30)).kind == Kind.ACCEPTED
    assert sim.state(A).remaining()["tokens"] == 0
    # not enough: stays suspended
    v = sim.produce(ev("BudgetUpdated", A, budgets=small(tokens=150)))
    assert (v.kind, v.status) == (Kind.ACCEPTED, Status.SUSPENDED)
    v = sim.produce(ev("BudgetUpdated", A, budgets=small(tokens=1000)))
    assert (v.kind, v.status) == (Kind.ACCEPTED, Status.READY)
    assert sim.state(A).life.suspend_reason is None


def test_tool_call_and_step_budgets() -> None:
    sim = Sim()
    spawn_running(sim, A, budgets=small(tools=2))
    assert sim.produce(ev("ToolCallRequested", A, call_id="c1")).reason == Reason.OK
    v = sim.produce(ev("ToolCallRequested", A, call_id="c2"))
    assert (v.reason, v.status) == (Reason.BUDGET_EXHAUSTED, Status.SUSPENDED)
    assert sim.state(A).remaining()["tool_calls"] == 0

    sim = Sim()
    spawn_running(sim, A, budgets=small(steps=3))
    reasons = [sim.produce(ev("MemoryStored", A, memory_id=f"m{i}")).reason for i in range(3)]
    assert reasons == [Reason.OK, Reason.OK, Reason.BUDGET_EXHAUSTED]
    assert sim.state(A).status == Status.SUSPENDED and sim.state(A).usage.steps == 3


def test_completion_crossing_while_waiting_suspends_and_while_suspended_keeps_the_reason() -> None:
    sim = Sim()
    spawn_running(sim, A, budgets=small(tokens=100))
    sim.produce(ev("LlmCallRequested", A, call_id="c1", prompt_tokens=10))
    sim.produce(ev("LlmCallRequested", A, call_id="c2", prompt_tokens=10))
    sim.produce(ev("AgentWaiting", A, on="c1"))
    v = sim.produce(ev("LlmCallCompleted", A, call_id="c1", completion_tokens=500))
    assert (v.reason, v.status) == (Reason.BUDGET_EXHAUSTED, Status.SUSPENDED)

    sim = Sim()
    spawn_running(sim, A, budgets=small(tokens=100))
    sim.produce(ev("LlmCallRequested", A, call_id="c1", prompt_tokens=10))
    sim.produce(ev("AgentSuspended", A, reason="operator"))
    v = sim.produce(ev("LlmCallCompleted", A, call_id="c1", completion_tokens=500))
    assert (v.kind, v.reason, v.status) == (Kind.ACCEPTED, Reason.BUDGET_EXHAUSTED, Status.SUSPENDED)
    assert sim.state(A).life.suspend_reason == "operator"
    # BudgetUpdated does not lift an operator's suspension; AgentResumed then does
    assert sim.produce(ev("BudgetUpdated", A, budgets=small(tokens=10_000))).status == Status.SUSPENDED
    assert sim.produce(ev("AgentResumed", A)).status == Status.READY


def test_lowering_a_budget_below_usage_blocks_work_without_changing_status() -> None:
    sim = Sim()
    spawn_running(sim, A, budgets=small(steps=100))
    sim.produce(ev("MemoryStored", A, memory_id="m"))
    v = sim.produce(ev("BudgetUpdated", A, budgets=small(steps=1)))
    assert (v.kind, v.status) == (Kind.ACCEPTED, Status.RUNNING)
    w = sim.produce(ev("MemoryStored", A, memory_id="m2"))
    assert (w.kind, w.reason) == (Kind.REJECTED, Reason.BUDGET_EXHAUSTED)
    assert sim.state(A).remaining()["steps"] == 0


@pytest.mark.parametrize("field", ["max_tokens", "max_tool_calls", "max_steps", "context_window_tokens"])
def test_budgets_must_be_positive(field: str) -> None:
    sim = Sim()
    bad = Budgets(**{**{f: 10 for f in ("max_tokens", "max_tool_calls", "max_steps", "context_window_tokens")},
                     field: 0})
    v = sim.produce(ev("AgentSpawned", A, budgets=bad))
    assert (v.kind, v.reason) == (Kind.REJECTED, Reason.INVALID_PAYLOAD)


# --- context window as virtual memory -------------------------------------------------------


def _append(sim: Sim, entry: str, tokens: int, importance: float) -> Verdict:
    return sim.produce(ev("ContextAppended", A, entry_id=entry, tokens=tokens, importance=importance,
                          content=f"content of {entry}"))


def test_paging_takes_the_lowest_band_then_the_least_recently_appended() -> None:
    sim = Sim()
    spawn_running(sim, A, budgets=small(window=100))
    _append(sim, "old-42", 25, 0.42)
    _append(sim, "new-47", 25, 0.47)
    _append(sim, "pin", 25, 0.95)
    _append(sim, "high", 25, 0.9)
    v = _append(sim, "next", 25, 0.8)  # 125 > 100: one victim from band 4, the older one
    assert [e.entry_id for e in v.paged_out] == ["old-42"]
    assert v.paged_out[0].content == "content of old-42" and v.paged_out[0].importance == 0.42
    v = _append(sim, "low-new", 10, 0.35)  # 110 > 100: band 3 now lowest, but it is the new entry
    assert [e.entry_id for e in v.paged_out] == ["new-47"]
    v = _append(sim, "big", 40, 0.5)
    assert [e.entry_id for e in v.paged_out] == ["low-new", "next"]  # band 3, then band 8 (0.8)
    st = sim.state(A)
    assert [e.entry_id for e in st.window.entries] == ["pin", "high", "big"]
    assert st.window.tokens == 90 and st.counters.memories_stored == 4


def test_pinned_entries_are_never_paged_out_and_a_full_window_rejects() -> None:
    sim = Sim()
    spawn_running(sim, A, budgets=small(window=50))
    _append(sim, "p1", 30, 0.95)
    _append(sim, "u1", 10, 0.1)
    v = _append(sim, "p2", 30, 1.0)
    assert (v.kind, v.reason) == (Kind.REJECTED, Reason.WINDOW_FULL)
    assert "BudgetUpdated" in v.message
    assert [e.entry_id for e in sim.state(A).window.entries] == ["p1", "u1"]  # nothing changed
    v = _append(sim, "u2", 20, 0.2)
    assert [e.entry_id for e in v.paged_out] == ["u1"]


def test_lowering_the_window_pages_out_and_keeps_pinned_entries() -> None:
    sim = Sim()
    spawn_running(sim, A, budgets=small(window=100))
    _append(sim, "p", 40, 0.99)
    _append(sim, "a", 30, 0.5)
    _append(sim, "b", 30, 0.6)
    v = sim.produce(ev("BudgetUpdated", A, budgets=small(window=20)))
    assert v.kind == Kind.ACCEPTED and [e.entry_id for e in v.paged_out] == ["a", "b"]
    st = sim.state(A)
    assert [e.entry_id for e in st.window.entries] == ["p"] and st.window.tokens == 40


def test_window_entry_count_cap_pages_out_even_with_tokens_to_spare() -> None:
    sim = Sim()
    spawn_running(sim, A, budgets=small(window=10**9, steps=10**6))
    paged = []
    for i in range(260):
        paged += [e.entry_id for e in _append(sim, f"e{i}", 0, 0.5).paged_out]
    assert paged == ["e0", "e1", "e2", "e3"]
    assert len(sim.state(A).window.entries) == 256


def test_entry_ids_are_unique_in_the_window() -> None:
    sim = Sim()
    spawn_running(sim, A)
    _append(sim, "e", 1, 0.5)
    v = _append(sim, "e", 1, 0.5)
    assert (v.kind, v.reason) == (Kind.REJECTED, Reason.INVALID_PAYLOAD)


def test_window_tokens_are_not_llm_tokens() -> None:
    sim = Sim()
    spawn_running(sim, A, budgets=small(tokens=5))
    assert _append(sim, "e", 50, 0.5).reason == Reason.OK
    assert sim.state(A).usage.tokens == 0 and sim.state(A).usage.steps == 1


def test_spawn_budget_defaults_are_generous() -> None:
    assert BIG.max_steps > 1000
