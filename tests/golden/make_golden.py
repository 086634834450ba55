"""Builds the golden journals: ``python tests/golden/make_golden.py``.

``v1_*.json`` pin fold version 1 (journals without a version 2 marker), ``v2_*.json``
version 2 (the partition rule) together with the version 1 history before its markers,
``v3_*.json`` version 3 (all-zero embeddings rejected) after version 1 and 2 history.

Each scenario is played through the worker-like simulator of the kernel tests (so
derived events are in the journal where a worker would have written them) and saved
with the verdict expected for every record and the final states. The test
``tests/unit/kernel/test_kernel_golden.py`` folds the saved records with ``apply`` and
compares. Regenerate only for an intended semantic change (which is a new fold version
once anything is deployed), and review the JSON diff: it is the change.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "unit" / "kernel"))

import kernel_support  # noqa: E402 - after sys.path gains tests/unit/kernel
from kernel_support import (  # noqa: E402 - after sys.path gains tests/unit/kernel
    EMB,
    Sim,
    ev,
    record_to_plain,
    reset_ids,
    spawn_running,
    verdict_to_plain,
)

from aosk.events import Budgets  # noqa: E402 - kept below kernel_support's import
from aosk.kernel import encode_state  # noqa: E402 - kept below kernel_support's import
from aosk.partitioning import partition_for  # noqa: E402 - kept below kernel_support's import

SMALL = Budgets(max_tokens=100, max_tool_calls=2, max_steps=12, context_window_tokens=50)


def lifecycle() -> Sim:
    """Every status and the transitions between them, final states, not-spawned keys,
    undecodable records, tenancy and key mismatches, a fork from a final agent."""
    sim = Sim()
    sim.produce(ev("AgentStarted", "ghost"))
    sim.produce(None, key="ghost", error="truncated single-object header")
    sim.produce(ev("AgentSpawned", "ghost", name="late spawn"))
    spawn_running(sim, "a", metadata={"team": "core", "ünï": "cödé"})
    sim.produce(ev("AgentWaiting", "a", on="user input"))
    sim.produce(ev("AgentStarted", "a"))
    sim.produce(ev("AgentResumed", "a"))
    sim.produce(ev("AgentSuspended", "a", reason="operator"))
    sim.produce(ev("AgentResumed", "a"))
    sim.produce(ev("AgentSuspended", "a", tenant="t2"))
    sim.produce(ev("AgentStarted", "b"), key="a")
    sim.produce(ev("CheckpointRequested", "a"))
    sim.produce(ev("AgentStarted", "a"))
    sim.produce(ev("AgentTerminated", "a", exit_code=3, reason="finished"))
    sim.produce(ev("AgentStarted", "a"))
    sim.produce(ev("BudgetUpdated", "a"))
    sim.produce(ev("ForkRequested", "a", new_agent_id="a-fork", at_seq=3))
    sim.produce(ev("AgentStarted", "a-fork"))
    spawn_running(sim, "b")
    sim.produce(ev("AgentKilled", "b", signal="SIGKILL", by="ops"))
    spawn_running(sim, "c")
    sim.produce(ev("AgentFailed", "c", error="Traceback ...\nValueError: x"))
    sim.produce(ev("AgentResumed", "c"))
    sim.produce(None, key=None, partition=1, error="no key, garbage")
    sim.produce(ev("KernelUpgraded", "~p1", fold_version=1), key=None, partition=1)
    sim.produce(ev("KernelUpgraded", "~p1", fold_version=1, origin="client"), key=None, partition=1)
    return sim


def budgets_and_paging() -> Sim:
    """Budgets crossing (tokens, tool calls, steps), BudgetUpdated, and the context window
    paging out by band and age, pinned entries, a full window, a lowered window."""
    sim = Sim()
    spawn_running(sim, "q", budgets=SMALL, capabilities=("search",))
    sim.produce(ev("LlmCallRequested", "q", call_id="c1", prompt_tokens=60))
    sim.produce(ev("LlmCallRequested", "q", call_id="c2", prompt_tokens=60))
    sim.produce(ev("ContextAppended", "q", entry_id="x"))
    sim.produce(ev("AgentResumed", "q"))
    sim.produce(ev("LlmCallCompleted", "q", call_id="c1", completion_tokens=40))
    sim.produce(ev("BudgetUpdated", "q", budgets=Budgets(max_tokens=150, max_tool_calls=2, max_steps=12,
                                                          context_window_tokens=50)))
    sim.produce(ev("BudgetUpdated", "q", budgets=Budgets(max_tokens=1000, max_tool_calls=2, max_steps=12,
                                                          context_window_tokens=50)))
    sim.produce(ev("AgentStarted", "q"))
    sim.produce(ev("ToolCallRequested", "q", call_id="t1"))
    sim.produce(ev("ToolCallRequested", "q", call_id="t2"))
    spawn_running(sim, "w", budgets=Budgets(max_tokens=1000, max_tool_calls=5, max_steps=30,
                                            context_window_tokens=50))
    for i, (tokens, imp) in enumerate([(10, 0.42), (10, 0.47), (15, 0.95), (10, 0.9), (10, 0.8), (10, 0.35),
                                       (20, 0.5), (40, 1.0), (30, 0.99), (5, 0.0)]):
        sim.produce(ev("ContextAppended", "w", entry_id=f"w{i}", content=f"entry {i} ✓", tokens=tokens,
                       importance=imp))
    sim.produce(ev("BudgetUpdated", "w", budgets=Budgets(max_tokens=1000, max_tool_calls=5, max_steps=30,
                                                          context_window_tokens=10)))
    sim.produce(ev("ContextAppended", "w", entry_id="w-late", tokens=1))
    spawn_running(sim, "s", budgets=Budgets(max_tokens=1000, max_tool_calls=5, max_steps=3,
                                            context_window_tokens=50))
    for i in range(4):
        sim.produce(ev("MemoryStored", "s", memory_id=f"s{i}", embedding=EMB if i % 2 else None))
    return sim


def ipc_calls_and_duplicates() -> Sim:
    """Messages (delivered, consumed, bounced for every reason, redelivered), children,
    capabilities, calls and timeouts, client retries, payload hygiene."""
    sim = Sim()
    spawn_running(sim, "p", capabilities=("search", "calc"))
    spawn_running(sim, "r")
    spawn_running(sim, "other", tenant="t2")
    sim.produce(ev("MessageSent", "p", message_id="m1", to_agent_id="r", body="hello ☃"))
    sim.produce(ev("MessageSent", "p", message_id="m2", to_agent_id="nobody"))
    sim.produce(ev("MessageSent", "p", message_id="m3", to_agent_id="other"))
    delivered = next(r.event for r in sim.records if r.event is not None and
                     type(r.event).__name__ == "MessageDelivered")
    sim.produce(delivered)
    sim.produce(ev("MessagesConsumed", "r", message_ids=("m9",)))
    sim.produce(ev("MessagesConsumed", "r", message_ids=("m1",)))
    sim.produce(ev("MessageDelivered", "r", origin="client", source_partition=0, source_offset=999))
    sim.produce(ev("SpawnRequested", "p", child_id="kid", capabilities=("calc",), metadata={"role": "helper"}))
    sim.produce(ev("SpawnRequested", "p", child_id="greedy", capabilities=("calc", "shell")))
    sim.produce(ev("AgentSpawned", "orphan", parent_id="p"))
    sim.produce(ev("AgentStarted", "kid"))
    sim.produce(ev("ToolCallRequested", "kid", call_id="k1", tool="search"))
    sim.produce(ev("ToolCallRequested", "kid", call_id="k2", tool="calc", arguments="{oops"))
    sim.produce(ev("ToolCallRequested", "kid", call_id="k3", tool="calc", arguments='{"n": 2}', timeout_ms=100))
    sim.produce(ev("LlmCallRequested", "kid", call_id="l1", timeout_ms=5000))
    sim.produce(ev("AgentWaiting", "kid", on="k3"))
    sim.tick(1000)
    sim.produce(ev("ToolCallCompleted", "kid", call_id="k3", result="4"))
    sim.produce(ev("LlmCallCompleted", "kid", call_id="l1", completion_tokens=7))
    sim.produce(ev("LlmCallCompleted", "kid", call_id="l1", completion_tokens=7))
    retry = ev("ContextAppended", "p", entry_id="once")
    sim.produce(retry)
    sim.produce(retry)
    for fields in (dict(content="nul\x00"), dict(importance=float("nan")), dict(role="")):
        sim.produce(ev("ContextAppended", "p", **{"entry_id": "bad", **fields}))
    sim.produce(ev("MemoryStored", "p", memory_id="short", embedding=EMB[:10]))
    sim.produce(ev("MemoryEmbedded", "p", memory_id="once", embedding=EMB))
    sim.produce(ev("CapabilityRevoked", "p", capability="calc"))
    sim.produce(ev("SpawnRequested", "p", child_id="kid2", capabilities=("calc",)))
    sim.produce(ev("ForkRequested", "p", new_agent_id="p-fork", at_seq=4))
    return sim


def random_mix() -> Sim:
    """A seeded random journal of the property tests' actions (seed 1, 250 actions)."""
    from test_kernel_properties import random_journal

    return random_journal(1, 250)


def _key_on(partition: int, partitions: int, prefix: str) -> str:
    return next(k for k in (f"{prefix}{i}" for i in range(1000)) if partition_for(k, partitions) == partition)


def wrong_partition() -> Sim:
    """Version 1 history (a misrouted record folded into its key, as version 1 does), then
    version 2 markers with the partition count on every partition (one repeated, one
    without a count, one with another count: rejected), then correctly routed records
    and misrouted ones: for agents that live on their home partition (their state stays
    untouched), for a key never spawned, undecodable, a misrouted spawn."""
    n = 3
    sim = Sim(n, murmur2=True)
    a, b, c = _key_on(0, n, "a"), _key_on(1, n, "b"), _key_on(2, n, "c")
    spawn_running(sim, a)
    spawn_running(sim, b)
    sim.produce(ev("ContextAppended", a, entry_id="before"), partition=1)  # version 1: folds into a
    for p in range(n):
        sim.produce(ev("KernelUpgraded", f"~p{p}", fold_version=2, partitions=n), key=None, partition=p)
    sim.produce(ev("KernelUpgraded", "~p0", fold_version=2, partitions=n), key=None, partition=0)
    sim.produce(ev("KernelUpgraded", "~p1", fold_version=2, partitions=0), key=None, partition=1)
    sim.produce(ev("KernelUpgraded", "~p2", fold_version=2, partitions=n + 1), key=None, partition=2)
    sim.produce(ev("ContextAppended", a, entry_id="home"))
    sim.produce(ev("ContextAppended", a, entry_id="stray"), partition=1)
    sim.produce(ev("AgentSuspended", a), partition=2)
    sim.produce(ev("AgentSuspended", b), partition=0)
    sim.produce(None, key=b, partition=2, error="garbage on the wrong partition")
    sim.produce(ev("AgentSpawned", c), partition=0)
    spawn_running(sim, c)
    sim.produce(ev("MessageSent", c, message_id="m1", to_agent_id=a, body="hi"))
    sim.produce(ev("AgentStarted", "ghost-0"), partition=(partition_for("ghost-0", n) + 1) % n)
    sim.produce(ev("AgentSuspended", b))
    return sim


def zero_embedding() -> Sim:
    """Version 1 and version 2 history with all-zero embeddings (accepted, as those
    versions do), then version 3 markers partition by partition (one without a count
    and a downgrade to 2: rejected): from its marker on, a partition rejects all-zero
    embeddings (``MemoryStored``, ``MemoryEmbedded``, -0.0 included) as
    ``invalid_payload`` while a partition still on version 2 accepts them; non-zero
    and absent embeddings stay accepted and misrouted records stay ``wrong_partition``."""
    n = 3
    sim = Sim(n, murmur2=True)
    a, b = _key_on(0, n, "a"), _key_on(1, n, "b")
    zero = tuple(0.0 for _ in range(len(EMB)))
    spawn_running(sim, a)
    sim.produce(ev("MemoryStored", a, memory_id="v1-zero", embedding=zero))
    for p in range(n):
        sim.produce(ev("KernelUpgraded", f"~p{p}", fold_version=2, partitions=n), key=None, partition=p)
    spawn_running(sim, b)
    sim.produce(ev("MemoryStored", a, memory_id="v2-zero", embedding=zero))
    sim.produce(ev("MemoryEmbedded", b, memory_id="v2-late", embedding=zero))
    sim.produce(ev("KernelUpgraded", "~p0", fold_version=3, partitions=0), key=None, partition=0)
    sim.produce(ev("KernelUpgraded", "~p0", fold_version=3, partitions=n), key=None, partition=0)
    sim.produce(ev("KernelUpgraded", "~p0", fold_version=2, partitions=n), key=None, partition=0)
    sim.produce(ev("MemoryStored", a, memory_id="v3-zero", embedding=zero))
    sim.produce(ev("MemoryEmbedded", a, memory_id="v1-zero", embedding=zero))
    sim.produce(ev("MemoryEmbedded", a, memory_id="v1-zero", embedding=tuple(-0.0 for _ in zero)))
    sim.produce(ev("MemoryEmbedded", b, memory_id="still-v2", embedding=zero))
    for p in (1, 2):
        sim.produce(ev("KernelUpgraded", f"~p{p}", fold_version=3, partitions=n), key=None, partition=p)
    sim.produce(ev("MemoryEmbedded", b, memory_id="v2-late", embedding=zero))
    sim.produce(ev("MemoryStored", a, memory_id="v3-none", embedding=None))
    sim.produce(ev("MemoryStored", b, memory_id="v3-emb", embedding=EMB))
    sim.produce(ev("MemoryEmbedded", a, memory_id="v1-zero", embedding=(1.0, *zero[1:])))
    sim.produce(ev("MemoryStored", a, memory_id="stray", embedding=zero), partition=2)
    return sim


def tasks() -> Sim:
    """Version 3 history, then version 4 markers: a task submitted before the marker is
    ``needs_fold_version``; after it, tasks queue and run through model turns and tool
    calls (ids from agent/task/turn/attempt), a second request for a turn is
    ``turn_taken``, a tool outside the capabilities is answered with a denial, a timed-out
    turn is asked again, a cancel abandons the open call (its completion is then
    ``task_ended``), a kill cancels what is left, and hourly quotas refuse a call
    (``rate_limited``) until the window of broker time turns."""
    from dataclasses import replace

    from aosk.kernel import llm_call_id, tool_call_id

    n = 3
    sim = Sim(n, murmur2=True)
    a, b = _key_on(0, n, "a"), _key_on(1, n, "b")
    for p in range(n):
        sim.produce(ev("KernelUpgraded", f"~p{p}", fold_version=3, partitions=n), key=None, partition=p)
    spawn_running(sim, a)
    sim.produce(ev("TaskSubmitted", a, task_id="early"))
    for p in range(n):
        sim.produce(ev("KernelUpgraded", f"~p{p}", fold_version=4, partitions=n), key=None, partition=p)
    sim.produce(ev("TaskSubmitted", a, task_id="t1", input="add(a=2, b=3)"))
    sim.produce(ev("TaskSubmitted", a, task_id="t2", input="say hi"))
    c1 = llm_call_id(a, "t1", 1, 1)
    llm = dict(origin="kernel", model="stand-in", prompt_hash="h", prompt_tokens=5, timeout_ms=1_000)
    sim.produce(ev("LlmCallRequested", a, call_id=c1, task_id="t1", turn=1, attempt=1, token_estimate=50,
                   context_entry_ids=("t1#in",), **llm))
    sim.produce(ev("LlmCallRequested", a, call_id=c1, task_id="t1", turn=1, attempt=1, token_estimate=50,
                   context_entry_ids=("t1#in",), **llm))
    sim.produce(ev("LlmCallCompleted", a, origin="kernel", call_id=c1, content="", tool_names=("calc", "rm"),
                   tool_arguments=('{"a":2,"b":3}', "{}"), finish_reason="tool_calls", prompt_tokens=30,
                   completion_tokens=8))
    t0 = tool_call_id(c1, 0)
    sim.produce(ev("ToolCallRequested", a, origin="kernel", call_id=t0, tool="calc", arguments='{"a":2,"b":3}'))
    sim.produce(ev("ToolCallCompleted", a, origin="kernel", call_id=t0, result="5", duration_ms=2))
    c2 = llm_call_id(a, "t1", 2, 1)
    sim.produce(ev("LlmCallRequested", a, call_id=c2, task_id="t1", turn=2, attempt=1, token_estimate=60,
                   context_entry_ids=("t1#in", "t1#r1", "t1#t1.0", "t1#t1.1"), **{**llm, "timeout_ms": 10}))
    sim.tick(20)
    c2b = llm_call_id(a, "t1", 2, 2)
    sim.produce(ev("LlmCallCompleted", a, origin="kernel", call_id=c2, content="late", completion_tokens=1))
    sim.produce(ev("LlmCallRequested", a, call_id=c2b, task_id="t1", turn=2, attempt=2, token_estimate=60,
                   context_entry_ids=("t1#in", "t1#r1", "t1#t1.0", "t1#t1.1"), **llm))
    sim.produce(ev("LlmCallCompleted", a, origin="kernel", call_id=c2b, content="2 + 3 = 5", finish_reason="stop",
                   prompt_tokens=45, completion_tokens=6))
    sim.produce(ev("TaskCompleted", a, task_id="t1", output="2 + 3 = 5"))
    c3 = llm_call_id(a, "t2", 1, 1)
    sim.produce(ev("LlmCallRequested", a, call_id=c3, task_id="t2", turn=1, attempt=1, token_estimate=20,
                   context_entry_ids=("t2#in",), **llm))
    sim.produce(ev("TaskCancelled", a, task_id="t2", reason="operator"))
    sim.produce(ev("LlmCallCompleted", a, origin="kernel", call_id=c3, content="hi", completion_tokens=1))
    sim.produce(ev("TaskCompleted", a, task_id="t2", output="hi"))
    sim.produce(ev("TaskSubmitted", a, task_id="t3", input="never runs"))
    sim.produce(ev("AgentKilled", a))
    window = 60_000
    sim.now = (sim.now // window + 1) * window
    quotas = replace(kernel_support.BIG, calls_per_hour=1, tokens_per_hour=1_000, tokens_per_request=500,
                     quota_window_ms=window)
    spawn_running(sim, b, budgets=quotas)
    sim.produce(ev("TaskSubmitted", b, task_id="q1", input="two turns"))
    q1 = llm_call_id(b, "q1", 1, 1)
    sim.produce(ev("LlmCallRequested", b, call_id=q1, task_id="q1", turn=1, attempt=1, token_estimate=501,
                   context_entry_ids=("q1#in",), **llm))
    sim.produce(ev("LlmCallRequested", b, call_id=q1, task_id="q1", turn=1, attempt=1, token_estimate=100,
                   context_entry_ids=("q1#in",), **llm))
    sim.produce(ev("LlmCallCompleted", b, origin="kernel", call_id=q1, content="", tool_names=("search",),
                   tool_arguments=('{"q":"x"}',), prompt_tokens=20, completion_tokens=5))
    s0 = tool_call_id(q1, 0)
    sim.produce(ev("ToolCallRequested", b, origin="kernel", call_id=s0, tool="search", arguments='{"q":"x"}'))
    sim.produce(ev("ToolCallCompleted", b, origin="kernel", call_id=s0, result="found", duration_ms=1))
    q2 = llm_call_id(b, "q1", 2, 1)
    turn2 = dict(call_id=q2, task_id="q1", turn=2, attempt=1, token_estimate=100,
                 context_entry_ids=("q1#in", "q1#r1", "q1#t1.0"), **llm)
    sim.produce(ev("LlmCallRequested", b, **turn2))
    sim.now += window
    sim.produce(ev("LlmCallRequested", b, **turn2))
    return sim


SCENARIOS: dict[str, tuple[int, Callable[[], Sim]]] = {
    "lifecycle": (1, lifecycle),
    "budgets_and_paging": (1, budgets_and_paging),
    "ipc_calls_and_duplicates": (1, ipc_calls_and_duplicates),
    "random_mix": (1, random_mix),
    "wrong_partition": (2, wrong_partition),
    "zero_embedding": (3, zero_embedding),
    "tasks": (4, tasks),
}


_LATER_FIELDS: dict[str, dict[str, Any]] = {
    "LlmCallRequested": {"task_id": None, "turn": 0, "attempt": 0, "token_estimate": 0, "context_entry_ids": []},
    "LlmCallCompleted": {"content": "", "tool_names": [], "tool_arguments": [], "finish_reason": "",
                         "prompt_tokens": 0},
}
_QUOTA_FIELDS = ("tokens_per_hour", "calls_per_hour", "tokens_per_request", "quota_window_ms")


def _as_written(record: dict[str, Any]) -> dict[str, Any]:
    """Fields added by later schema versions left out while they hold their defaults
    (they read back as those), so the older journals stay byte for byte what they were:
    a marker without a partition count as KernelUpgraded v1 wrote it, model calls without
    the task fields of v2, budgets without the window quotas of Budgets v2."""
    e = record["event"]
    if e is None:
        return record
    if e["type"] == "KernelUpgraded" and e.get("partitions") == 0:
        e = {k: v for k, v in e.items() if k != "partitions"}
    later = _LATER_FIELDS.get(e["type"], {})
    e = {k: v for k, v in e.items() if not (k in later and v == later[k])}
    b = e.get("budgets")
    if isinstance(b, dict) and not any(b.get(k) for k in _QUOTA_FIELDS):
        e["budgets"] = {k: v for k, v in b.items() if k not in _QUOTA_FIELDS}
    return {**record, "event": e}


def build(name: str) -> dict[str, object]:
    reset_ids()
    version, make = SCENARIOS[name]
    sim = make()
    return {
        "about": (make.__doc__ or "").strip(),
        "fold_version": version,
        "regenerate": "python tests/golden/make_golden.py; review the diff: it is a semantic change of the fold",
        "records": [{**_as_written(record_to_plain(r)), "expect": verdict_to_plain(v)}
                    for r, v in zip(sim.records, sim.verdicts, strict=True)],
        "final": {
            key: {"state_hash": hashlib.sha256(encode_state(slot.state)).hexdigest(),
                  "state": json.loads(encode_state(slot.state))}
            for key, slot in sorted(sim.slots.items())
        },
    }


def dumps(doc: dict[str, object]) -> str:
    """JSON with one record (and one final state) per line: small files, readable diffs."""
    c = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))  # noqa: E731 - a one-line local shorthand
    head = ",\n".join(f" {c(k)}: {c(v)}" for k, v in doc.items() if k not in ("records", "final"))
    records = ",\n".join(f"  {c(r)}" for r in doc["records"])  # type: ignore[attr-defined]
    final = ",\n".join(f"  {c(k)}: {c(v)}" for k, v in doc["final"].items())  # type: ignore[attr-defined]
    return f"{{\n{head},\n \"records\": [\n{records}\n ],\n \"final\": {{\n{final}\n }}\n}}\n"


def main() -> None:
    for name, (version, _) in SCENARIOS.items():
        path = HERE / f"v{version}_{name}.json"
        text = dumps(build(name))
        assert json.loads(text)
        path.write_text(text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
