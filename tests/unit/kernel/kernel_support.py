"""Test helpers for the kernel: event factories and a worker-like journal simulator.

``Sim`` plays the worker's part without Kafka: every produced record is folded at once
with ``apply``; derived events (children, deliveries, bounces) are produced onto their
key's partition; ``tick`` writes ``CallTimedOut`` for expired calls; an accepted
``ForkRequested`` gets its ``AgentForked`` from the source's state history.
Everything is deterministic (event ids are uuid5 of a counter).
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import replace
from typing import Any

from aosk.errors import Undecodable
from aosk.events import EVENT_TYPES, Budgets, Event, ForkRequested
from aosk.kernel import (
    AgentSlot,
    AgentState,
    Kind,
    Record,
    Verdict,
    apply,
    fold_args,
    fold_key,
    fork_event,
    partition_state,
    timeout_events,
)
from aosk.partitioning import partition_for

NS = uuid.UUID("00000000-0000-4000-8000-00000000a05c")
TENANT = "t1"
BIG = Budgets(max_tokens=1_000_000, max_tool_calls=1_000, max_steps=10_000, context_window_tokens=1_000)
EMB = tuple(0.25 for _ in range(384))

DEFAULTS: dict[str, dict[str, Any]] = {
    "AgentSpawned": dict(parent_id=None, name="agent", priority=50, capabilities=("search", "calc"), budgets=BIG,
                         metadata={}),
    "SpawnRequested": dict(child_id="kid", name="child", priority=50, capabilities=("search",), budgets=BIG,
                           metadata={}),
    "AgentStarted": {},
    "AgentWaiting": dict(on="call"),
    "AgentSuspended": dict(reason="operator"),
    "AgentResumed": {},
    "AgentTerminated": dict(exit_code=0, reason="done"),
    "AgentKilled": dict(signal="SIGKILL", by="operator"),
    "AgentFailed": dict(error="boom"),
    "ForkRequested": dict(new_agent_id="fork", at_seq=1),
    "ContextAppended": dict(entry_id="e", role="user", content="hello", tokens=10, importance=0.5),
    "MemoryStored": dict(memory_id="m1", text="a memory", embedding=None, importance=0.5, metadata={}),
    "MemoryEmbedded": dict(memory_id="m1", embedding=EMB),
    "MemoryRecalled": dict(query_hash="q", memory_ids=("m1",)),
    "MemoryForgotten": dict(memory_id="m1"),
    "LlmCallRequested": dict(call_id="c", model="gpt", prompt_hash="p", prompt_tokens=10, timeout_ms=1_000),
    "LlmCallCompleted": dict(call_id="c", response="ok", completion_tokens=5, latency_ms=3),
    "ToolCallRequested": dict(call_id="t", tool="search", arguments='{"q": "x"}', timeout_ms=1_000),
    "ToolCallCompleted": dict(call_id="t", result="r", error=None, duration_ms=3),
    "CallTimedOut": dict(call_id="c"),
    "MessageSent": dict(message_id="m", to_agent_id="b-1", body="hi"),
    "MessagesConsumed": dict(message_ids=()),
    "CheckpointRequested": {},
    "CapabilityGranted": dict(capability="browse"),
    "CapabilityRevoked": dict(capability="search"),
    "BudgetUpdated": dict(budgets=BIG),
    "KernelUpgraded": dict(fold_version=1),
    "RecordQuarantined": dict(quarantined_offset=0, fingerprint="00" * 8, reason="garbage"),
    "MessageDelivered": dict(message_id="m", from_agent_id="x", from_tenant_id=TENANT, body="hi", source_partition=0,
                             source_offset=0),
    "MessageBounced": dict(message_id="m", reason="inbox_full", source_partition=0, source_offset=0),
    "AgentForked": dict(source_agent_id="x", source_seq=1, source_state_hash=b"\0" * 32, state=b"{}"),
    "TaskSubmitted": dict(task_id="t-1", input="add 2 and 3", metadata={}),
    "TaskCompleted": dict(task_id="t-1", output="5"),
    "TaskFailed": dict(task_id="t-1", reason="max_turns", message=""),
    "TaskCancelled": dict(task_id="t-1", reason=""),
}

_counter = [0]


def reset_ids() -> None:
    """Restart the event-id counter (golden journals are built from a known start)."""
    _counter[0] = 0


def new_id(tag: str = "") -> str:
    _counter[0] += 1
    return str(uuid.uuid5(NS, f"{tag}/{_counter[0]}"))


def ev(type_name: str, agent: str, *, tenant: str = TENANT, origin: str | None = None,
       event_id: str | None = None, **fields: Any) -> Event:
    """An event of ``type_name`` for ``agent`` with sensible defaults for every field."""
    cls = EVENT_TYPES[type_name]
    kw = dict(DEFAULTS[type_name])
    kw.update(fields)
    if origin is None:
        origin = "kernel" if type_name in ("CallTimedOut", "MessageDelivered", "MessageBounced", "AgentForked",
                                             "KernelUpgraded", "RecordQuarantined", "TaskCompleted",
                                             "TaskFailed") else "client"
    return cls(event_id=event_id or new_id(type_name), agent_id=agent, tenant_id=tenant,
               occurred_at=0, origin=origin, **kw)


def rec(event: Event | None, *, key: str | None = "", partition: int = 0, offset: int = 0,
        timestamp: int = 1_000, error: str | None = None) -> Record:
    if key == "":
        key = event.agent_id if event is not None else None
    return Record(key, partition, offset, timestamp, b"raw", event,
                  Undecodable(error) if error is not None else None)


KEEP_VERDICTS = 64
"""What the simulated worker keeps per agent for redeliveries."""


class Sim:
    """A journal with ``partitions`` partitions and a worker folding it as it grows.

    ``murmur2=False`` (the default, what the version 1 golden journals were built with)
    puts keys on partitions by CRC32; ``murmur2=True`` the way every AOSK producer does."""

    def __init__(self, partitions: int = 3, start_ms: int = 1_000_000, *, murmur2: bool = False) -> None:
        self.n = partitions
        self.murmur2 = murmur2
        self.now = start_ms
        self.offsets = [0] * partitions
        self.records: list[Record] = []
        self.verdicts: list[Verdict] = []
        self.slots: dict[str, AgentSlot] = {}
        self.history: dict[str, dict[int, AgentState]] = {}
        self.before: list[AgentState | None] = []

    def partition_of(self, key: str) -> int:
        if self.murmur2:
            return partition_for(key, self.n)
        return zlib.crc32(key.encode()) % self.n

    def state(self, key: str) -> AgentState:
        return self.slots[key].state

    def produce(self, event: Event | None = None, *, key: str | None = "", partition: int | None = None,
                error: str | None = None, step_ms: int = 1) -> Verdict:
        """Append a record, fold it, produce what it derives; returns its verdict."""
        if key == "":
            assert event is not None
            key = event.agent_id
        if partition is None:
            assert key is not None
            partition = self.partition_of(key)
        self.now += step_ms
        r = Record(key, partition, self.offsets[partition], self.now, b"raw", event,
                   Undecodable(error) if error is not None else None)
        self.offsets[partition] += 1
        return self._fold(r)

    def _fold(self, r: Record) -> Verdict:
        self.records.append(r)
        ps = partition_state(self.slots, r.partition)
        k = fold_key(r, ps)
        prev = self.slots.get(k)
        self.before.append(prev.state if prev else None)
        slot, v = apply(prev, r, **fold_args(ps)._asdict(), keep_verdicts=KEEP_VERDICTS)
        self.slots[k] = slot
        self.history.setdefault(k, {})[slot.state.seq] = slot.state
        self.verdicts.append(v)
        for d in v.derived:
            self.produce(d, step_ms=0)
        if v.kind == Kind.ACCEPTED and isinstance(r.event, ForkRequested):
            src = self.history[k][r.event.at_seq]
            if src.spawned:
                self.produce(fork_event(src, r.event, partition=r.partition, offset=r.offset,
                                        timestamp_ms=r.timestamp), step_ms=0)
        return v

    def tick(self, ms: int) -> list[Verdict]:
        """Let time pass; write ``CallTimedOut`` for every call whose deadline passed."""
        self.now += ms
        out = []
        for key in sorted(self.slots):
            for t in timeout_events(self.slots[key].state, self.now):
                out.append(self.produce(t, step_ms=0))
        return out

    def redeliver(self, index: int) -> tuple[AgentSlot, Verdict]:
        """Fold record ``index`` again (a crash redelivery); the slots stay as they are."""
        r = self.records[index]
        ps = partition_state(self.slots, r.partition)
        return apply(self.slots[fold_key(r, ps)], r, **fold_args(ps)._asdict(), keep_verdicts=KEEP_VERDICTS)


def semantic(st: AgentState | None) -> AgentState | None:
    """The state with its bookkeeping (seq, dedupe memory) blanked, for comparisons."""
    if st is None:
        return None
    from aosk.kernel.state import Dedupe

    return replace(st, seq=0, dedupe=Dedupe())


def spawn_running(sim: Sim, agent: str, **fields: Any) -> None:
    v = sim.produce(ev("AgentSpawned", agent, **fields))
    assert v.kind == Kind.ACCEPTED, v
    v = sim.produce(ev("AgentStarted", agent, tenant=fields.get("tenant", TENANT)))
    assert v.kind == Kind.ACCEPTED, v


# --- journals as JSON (golden files, subprocess determinism checks) -----------------------


def record_to_plain(r: Record) -> dict[str, Any]:
    from aosk.kernel import event_to_plain

    return {
        "key": r.key,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "event": event_to_plain(r.event) if r.event is not None else None,
        "error": getattr(r.error, "reason", None),
    }


def record_from_plain(d: dict[str, Any]) -> Record:
    from aosk.kernel import event_from_plain

    return Record(
        d["key"], d["partition"], d["offset"], d["timestamp"], b"raw",
        event_from_plain(d["event"]) if d["event"] is not None else None,
        Undecodable(d["error"]) if d["error"] is not None else None,
    )


def verdict_to_plain(v: Verdict) -> dict[str, Any]:
    return {
        "kind": v.kind,
        "reason": v.reason,
        "status": v.status,
        "seq": v.seq,
        "fold_version": v.fold_version,
        "state_hash": v.state_hash.hex(),
        "derived": [f"{type(e).__name__}:{e.event_id}" for e in v.derived],
        "paged_out": [e.entry_id for e in v.paged_out],
        "checkpoint_due": v.checkpoint_due,
    }


def journal_digest(records: list[Record]) -> str:
    """sha256 over every verdict (canonical bytes, state hash, derived events) and every
    final state, folded fresh."""
    import hashlib

    from aosk.kernel import canonical_verdict_bytes, encode_state, fold_with_verdicts

    slots, verdicts = fold_with_verdicts(records)
    h = hashlib.sha256()
    for v in verdicts:
        h.update(canonical_verdict_bytes(v) + v.state_hash)
        for d in v.derived:
            h.update(repr(d).encode())
    for key in sorted(slots):
        h.update(key.encode() + encode_state(slots[key].state))
    return h.hexdigest()
