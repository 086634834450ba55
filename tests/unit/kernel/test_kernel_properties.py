"""Property tests: random journals (a worker-like simulator feeding derived events back)
keep the fold's invariants."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_support import EMB, Sim, ev, semantic

from aosk.events import AgentSpawned, Budgets
from aosk.kernel import (
    FINAL_STATUSES,
    LIFECYCLE,
    VERSIONS,
    WORK_TYPES,
    Kind,
    Status,
    decode_state,
    encode_state,
    fold_with_verdicts,
    state_hash,
)

P = VERSIONS[1]
ROOTS = ["a", "b", "c"]
CHILDREN = ["k0", "k1", "k2"]
FORKS = ["f0", "f1"]
TOOLS = ["search", "calc", "shell"]
CAPSETS = [(), ("search",), ("search", "calc"), ("search", "calc", "shell")]
BUDGETS = [
    Budgets(max_tokens=100, max_tool_calls=2, max_steps=6, context_window_tokens=40),
    Budgets(max_tokens=10_000, max_tool_calls=50, max_steps=500, context_window_tokens=300),
]
AGENTS = ROOTS + CHILDREN + FORKS
LIFE = ["AgentStarted", "AgentWaiting", "AgentResumed", "AgentSuspended", "AgentTerminated", "AgentKilled",
        "AgentFailed", "CheckpointRequested"]

agent = st.sampled_from(ROOTS * 5 + CHILDREN + FORKS)
action = st.one_of(
    st.tuples(st.just("spawn"), st.sampled_from(ROOTS), st.integers(0, 3), st.integers(0, 1)),
    st.tuples(st.just("life"), agent, st.sampled_from(LIFE)),
    st.tuples(st.just("life"), agent, st.just("AgentStarted")),
    st.tuples(st.just("append"), agent, st.integers(0, 40), st.sampled_from([0.0, 0.2, 0.5, 0.94, 0.95, 1.0])),
    st.tuples(st.just("append"), agent, st.integers(0, 40), st.sampled_from([0.0, 0.3, 0.6])),
    st.tuples(st.just("llm"), agent, st.integers(0, 120), st.integers(1, 3000)),
    st.tuples(st.just("llm"), agent, st.integers(0, 60), st.integers(1, 3000)),
    st.tuples(st.just("llm_done"), agent, st.integers(0, 5), st.integers(0, 120)),
    st.tuples(st.just("tool"), agent, st.sampled_from(TOOLS)),
    st.tuples(st.just("tool_done"), agent, st.integers(0, 5)),
    st.tuples(st.just("send"), agent, agent),
    st.tuples(st.just("consume"), agent),
    st.tuples(st.just("spawnreq"), agent, st.sampled_from(CHILDREN), st.integers(0, 3)),
    st.tuples(st.just("grant"), agent, st.sampled_from(TOOLS)),
    st.tuples(st.just("revoke"), agent, st.sampled_from(TOOLS)),
    st.tuples(st.just("budget"), agent, st.integers(0, 1)),
    st.tuples(st.just("memory"), agent, st.booleans()),
    st.tuples(st.just("tick"), st.integers(1, 4000)),
    st.tuples(st.just("retry"), st.integers(0, 200)),
    st.tuples(st.just("fork"), agent, st.integers(1, 30), st.sampled_from(FORKS)),
    st.tuples(st.just("junk"), agent),
    st.tuples(st.just("foreign"), agent),
    st.tuples(st.just("upgrade"), st.integers(0, 2)),
)


prelude = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1)), min_size=3, max_size=3)


def run(actions: list[tuple[Any, ...]], roots: list[tuple[int, int]] | None = None) -> Sim:
    """Spawn and start the roots (caps / budgets chosen by ``roots``), then play ``actions``."""
    sim = Sim()
    for name, (caps, budgets) in zip(ROOTS, roots or [], strict=False):
        sim.produce(ev("AgentSpawned", name, capabilities=CAPSETS[caps], budgets=BUDGETS[budgets]))
        sim.produce(ev("AgentStarted", name))
    calls: dict[str, list[str]] = {a: [] for a in AGENTS}
    sent: list[Any] = []
    for n, a in enumerate(actions):
        kind = a[0]
        if kind == "spawn":
            e = ev("AgentSpawned", a[1], capabilities=CAPSETS[a[2]], budgets=BUDGETS[a[3]])
        elif kind == "life":
            e = ev(a[2], a[1])
        elif kind == "append":
            e = ev("ContextAppended", a[1], entry_id=f"e{n}", tokens=a[2], importance=a[3])
        elif kind == "llm":
            calls[a[1]].append(f"c{n}")
            e = ev("LlmCallRequested", a[1], call_id=f"c{n}", prompt_tokens=a[2], timeout_ms=a[3])
        elif kind in ("llm_done", "tool_done"):
            ids = calls[a[1]]
            cid = ids[a[2] % len(ids)] if ids else "none"
            e = (ev("LlmCallCompleted", a[1], call_id=cid, completion_tokens=a[3]) if kind == "llm_done"
                 else ev("ToolCallCompleted", a[1], call_id=cid))
        elif kind == "tool":
            calls[a[1]].append(f"t{n}")
            e = ev("ToolCallRequested", a[1], call_id=f"t{n}", tool=a[2])
        elif kind == "send":
            e = ev("MessageSent", a[1], message_id=f"m{n}", to_agent_id=a[2])
        elif kind == "consume":
            e = ev("MessagesConsumed", a[1], message_ids=())
        elif kind == "spawnreq":
            e = ev("SpawnRequested", a[1], child_id=a[2], capabilities=CAPSETS[a[3]], budgets=BUDGETS[0])
        elif kind in ("grant", "revoke"):
            e = ev("CapabilityGranted" if kind == "grant" else "CapabilityRevoked", a[1], capability=a[2])
        elif kind == "budget":
            e = ev("BudgetUpdated", a[1], budgets=BUDGETS[a[2]])
        elif kind == "memory":
            e = ev("MemoryStored", a[1], memory_id=f"mem{n}", embedding=EMB if a[2] else EMB[:3])
        elif kind == "tick":
            sim.tick(a[1])
            continue
        elif kind == "retry":
            if not sent:
                continue
            e = sent[a[1] % len(sent)]
        elif kind == "fork":
            at = min(a[2], sim.slots[a[1]].state.seq) if a[1] in sim.slots else a[2]
            e = ev("ForkRequested", a[1], new_agent_id=a[3], at_seq=max(at, 1))
        elif kind == "junk":
            sim.produce(None, key=a[1], error="not single-object encoded")
            continue
        elif kind == "foreign":
            e = ev("AgentSuspended", a[1], tenant="t2")
        elif kind == "upgrade":
            sim.produce(ev("KernelUpgraded", f"~p{a[1]}", fold_version=1), key=None, partition=a[1])
            continue
        else:  # pragma: no cover
            raise AssertionError(kind)
        sent.append(e)
        sim.produce(e)
    return sim


def check_invariants(sim: Sim) -> None:
    seqs: dict[str, int] = {}
    for r, v, before in zip(sim.records, sim.verdicts, sim.before, strict=True):
        key = r.agent_key
        after = sim.history[key][v.seq]
        # every record takes the key's next seq, accepted or not
        assert v.seq == seqs.get(key, 0) + 1
        seqs[key] = v.seq
        assert v.state_hash == state_hash(after)
        prev = before.status if before is not None else Status.NONE
        t = v.event_type
        if v.kind == Kind.ACCEPTED:
            # the lifecycle table, and nothing after a final state beyond it
            assert prev in LIFECYCLE[t], (t, prev)
            if prev in FINAL_STATUSES:
                assert t in ("ForkRequested", "KernelUpgraded")
            if t in WORK_TYPES:
                assert before is not None and not before.exhausted(), "work accepted with a budget at 0"
        else:
            # rejected / duplicate: no semantic field changes (seq and dedupe may)
            assert semantic(after) == semantic(before) or (before is None and after.status == Status.NONE), (t, v)
        # budgets never negative; bounded parts
        for x in after.remaining().values():
            assert x >= 0
        assert min(after.usage.tokens, after.usage.tool_calls, after.usage.steps) >= 0
        w = after.window
        if after.budgets is not None:
            assert w.tokens <= after.budgets.context_window_tokens or all(
                e.importance >= P.pin_importance for e in w.entries)
        assert len(w.entries) <= P.window_max_entries and w.nbytes <= P.window_max_bytes
        assert len(after.inbox.messages) <= P.inbox_cap and len(after.dedupe.event_ids) <= P.dedupe_window
        assert len(after.calls.open) <= P.max_open_calls
        # children get at most their parent's capabilities
        for d in v.derived:
            if isinstance(d, AgentSpawned):
                assert set(d.capabilities) <= set(after.capabilities.names)
        if t == "AgentSpawned" and v.kind == Kind.ACCEPTED and r.event.parent_id is not None:
            parent = sim.state(r.event.parent_id)
            assert parent.spawned
    for slot in sim.slots.values():
        b = encode_state(slot.state)
        assert len(b) < P.state_max_bytes
        assert decode_state(b) == slot.state


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(action, min_size=10, max_size=90), prelude)
def test_random_journals_keep_the_invariants(actions: list[tuple[Any, ...]], roots: list[tuple[int, int]]) -> None:
    check_invariants(run(actions, roots))


@SETTINGS
@given(st.lists(action, min_size=0, max_size=60), prelude, st.floats(0, 1))
def test_folding_a_prefix_twice_changes_nothing(actions: list[tuple[Any, ...]], roots: list[tuple[int, int]],
                                                 cut: float) -> None:
    sim = run(actions, roots)
    records = sim.records
    k = int(len(records) * cut)
    slots, verdicts = fold_with_verdicts(records[:k])
    assert verdicts == sim.verdicts[:k]
    again, re_sent = fold_with_verdicts(records[:k], slots)
    assert again == slots and all(again[key] is slots[key] for key in slots)
    for v, orig in zip(re_sent, verdicts, strict=True):  # the originals again (or a plain duplicate if no longer kept)
        assert v == replace(orig, paged_out=()) or (v.kind == Kind.DUPLICATE and v.seq == 0)
    final, rest = fold_with_verdicts(records[k:], again)
    assert rest == sim.verdicts[k:]
    assert {key: s.state for key, s in final.items()} == {key: s.state for key, s in sim.slots.items()}


def random_journal(seed: int, n: int) -> Sim:
    """A reproducible random journal (no hypothesis): golden files and subprocess checks."""
    import random

    rng = random.Random(seed)
    agents = ROOTS * 5 + CHILDREN + FORKS

    def one() -> tuple[Any, ...]:
        k = rng.choice(["spawn", "life", "life", "append", "append", "llm", "llm_done", "tool", "tool_done",
                        "send", "consume", "spawnreq", "grant", "revoke", "budget", "memory", "tick", "retry",
                        "fork", "junk", "foreign", "upgrade"])
        a = rng.choice(agents)
        return {
            "spawn": lambda: (k, rng.choice(ROOTS), rng.randint(0, 3), rng.randint(0, 1)),
            "life": lambda: (k, a, rng.choice(LIFE)),
            "append": lambda: (k, a, rng.randint(0, 40), rng.choice([0.0, 0.2, 0.5, 0.94, 0.95, 1.0])),
            "llm": lambda: (k, a, rng.randint(0, 120), rng.randint(1, 3000)),
            "llm_done": lambda: (k, a, rng.randint(0, 5), rng.randint(0, 120)),
            "tool": lambda: (k, a, rng.choice(TOOLS)),
            "tool_done": lambda: (k, a, rng.randint(0, 5)),
            "send": lambda: (k, a, rng.choice(agents)),
            "consume": lambda: (k, a),
            "spawnreq": lambda: (k, a, rng.choice(CHILDREN), rng.randint(0, 3)),
            "grant": lambda: (k, a, rng.choice(TOOLS)),
            "revoke": lambda: (k, a, rng.choice(TOOLS)),
            "budget": lambda: (k, a, rng.randint(0, 1)),
            "memory": lambda: (k, a, rng.random() < 0.8),
            "tick": lambda: (k, rng.randint(1, 4000)),
            "retry": lambda: (k, rng.randint(0, 200)),
            "fork": lambda: (k, a, rng.randint(1, 30), rng.choice(FORKS)),
            "junk": lambda: (k, a),
            "foreign": lambda: (k, a),
            "upgrade": lambda: (k, rng.randint(0, 2)),
        }[k]()

    roots = [(rng.randint(0, 3), rng.randint(0, 1)) for _ in ROOTS]
    return run([one() for _ in range(n)], roots)
