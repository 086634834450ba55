"""Realistic agent journals for demos, benchmarks and fault tests.

``generate_workload`` simulates a fleet of agents (spawn, start, context appends, LLM and
tool calls, memories with embeddings, messages, waits, child spawns, exits) and
deliberately mixes in illegal records whose event ids it lists, so a test can check
that the kernel rejects exactly those. Deterministic for a given seed.

Illegal records never change an agent's state, so the simulation stays valid after
each of them. Budgets are generous: nothing here exhausts one by accident.

Embeddings cluster around ``embedding_topics`` topic directions plus noise, as sentence
embeddings do (a memory is about something). Uniformly random 384-d directions have no
near neighbours (every pair is about equally far apart): no real embedding looks like
that, and it is the worst case for an HNSW index, which would make every benchmark of
the memory index measure a workload nobody runs.
"""

from __future__ import annotations

import math
import random
import uuid
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aosk.events import (
    AgentResumed,
    AgentSpawned,
    AgentStarted,
    AgentTerminated,
    AgentWaiting,
    Budgets,
    ContextAppended,
    Event,
    LlmCallCompleted,
    LlmCallRequested,
    MemoryStored,
    MessageSent,
    SpawnRequested,
    ToolCallCompleted,
    ToolCallRequested,
)

TOOLS = ("search", "browse", "python", "sql", "email")
BUDGETS = Budgets(max_tokens=10**12, max_tool_calls=10**9, max_steps=10**9, context_window_tokens=4_000)


@dataclass(frozen=True, slots=True)
class RawRecord:
    """Bytes produced as they are (e.g. garbage a buggy producer wrote)."""

    key: str
    value: bytes


Item = Event | RawRecord


@dataclass(frozen=True)
class Workload:
    items: list[Item]
    """Records in production order (each agent's records in its own order)."""
    illegal_event_ids: frozenset[str]
    """Client events the kernel must reject (state unchanged)."""
    garbage: int
    """How many RawRecords (undecodable) are among the items."""
    agents: tuple[str, ...]
    unfinished_calls: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    """(agent, call_id) of calls that never complete: workers must time them out."""
    child_spawns: frozenset[str] = frozenset()
    """Child agent ids requested through SpawnRequested."""

    @property
    def events(self) -> list[Event]:
        return [i for i in self.items if isinstance(i, Event)]


@dataclass
class _Agent:
    agent_id: str
    tenant_id: str
    caps: tuple[str, ...]
    status: str = "NONE"
    open_calls: list[tuple[str, str]] = field(default_factory=list)  # (kind, call_id)
    unfinished: int = 0
    n: int = 0


def generate_workload(
    *,
    agents: int,
    events: int,
    seed: int = 1,
    tenants: int = 2,
    illegal_every: int = 50,
    garbage_every: int = 0,
    unfinished_calls: int = 0,
    unfinished_timeout_ms: int = 2_000,
    children: bool = True,
    messages: bool = True,
    embeddings: bool = True,
    embedding_dim: int = 384,
    embedding_topics: int = 64,
    terminate_fraction: float = 0.1,
    prefix: str = "agent",
) -> Workload:
    """About ``events`` records over ``agents`` agents.

    ``illegal_every``: one illegal client event per that many records (0: none).
    ``garbage_every``: one undecodable record per that many records (0: none).
    ``unfinished_calls``: that many LLM calls (over distinct agents) never complete,
    with a short timeout, so workers must write CallTimedOut for them.
    ``embedding_topics``: how many topic directions the embeddings cluster around.
    """
    rng = random.Random(seed)
    # Topics come from their own generator: the fleet's events do not depend on them.
    topic_rng = random.Random(f"topics-{seed}")
    topics = [_unit([topic_rng.gauss(0, 1) for _ in range(embedding_dim)])
              for _ in range(max(1, embedding_topics) if embeddings else 0)]
    ids = iter(uuid.UUID(int=rng.getrandbits(128), version=4) for _ in iter(int, 1))

    def eid() -> str:
        return str(next(ids))

    fleet = [
        _Agent(f"{prefix}-{i:04d}", f"tenant-{i % tenants}", tuple(sorted(rng.sample(TOOLS, 3))))
        for i in range(agents)
    ]
    items: list[Item] = []
    illegal: set[str] = set()
    unfinished: set[tuple[str, str]] = set()
    spawned_children: set[str] = set()
    garbage = 0
    t0 = 1_700_000_000_000_000
    remaining_unfinished = unfinished_calls

    def header(a: _Agent, **kw: Any) -> dict[str, Any]:
        a.n += 1
        h: dict[str, Any] = dict(event_id=eid(), agent_id=a.agent_id, tenant_id=a.tenant_id,
                                    occurred_at=t0 + len(items), origin="client")
        h.update(kw)
        return h

    def emit(ev: Event) -> None:
        items.append(ev)

    def bad(ev: Event) -> None:
        illegal.add(ev.event_id)
        items.append(ev)

    def embedding() -> tuple[float, ...] | None:
        if not embeddings:
            return None
        topic = topics[topic_rng.randrange(len(topics))]
        # Noise of 0.06 per dimension: cosine similarity about 0.65 to the topic.
        # float32 values, as Avro `float` stores them: an event equals itself read back.
        return tuple(array("f", _unit([t + rng.gauss(0, 0.06) for t in topic])).tolist())

    def illegal_for(a: _Agent) -> Event:
        choice = rng.randrange(5)
        if choice == 0:
            denied = next(t for t in TOOLS if t not in a.caps)
            return ToolCallRequested(**header(a), call_id=f"c-{eid()}", tool=denied, arguments="{}", timeout_ms=60_000)
        if choice == 1:
            return AgentStarted(**header(a))  # already RUNNING: illegal transition
        if choice == 2:
            return ContextAppended(**header(a, tenant_id="tenant-intruder"), entry_id=eid(), role="user",
                                   content="hello", tokens=3, importance=0.5)
        if choice == 3:
            return ContextAppended(**header(a), entry_id=eid(), role="user", content="bad\x00byte",
                                   tokens=3, importance=0.5)
        ghost = _Agent(f"ghost-{rng.randrange(10**6)}", a.tenant_id, a.caps)
        return AgentStarted(**header(ghost))

    def work(a: _Agent) -> None:
        r = rng.random()
        if a.open_calls and r < 0.25:
            kind, call_id = a.open_calls.pop(0)
            if kind == "llm":
                emit(LlmCallCompleted(**header(a), call_id=call_id, response="ok " * rng.randrange(1, 20),
                                      completion_tokens=rng.randrange(5, 200), latency_ms=rng.randrange(50, 900)))
            else:
                emit(ToolCallCompleted(**header(a), call_id=call_id, result='{"rows": 3}', error=None,
                                       duration_ms=rng.randrange(5, 500)))
        elif r < 0.45:
            emit(ContextAppended(**header(a), entry_id=eid(), role=rng.choice(("user", "assistant", "tool")),
                                 content="Observation: " + "the figures agree. " * rng.randrange(1, 12),
                                 tokens=rng.randrange(20, 400), importance=round(rng.random(), 3)))
        elif r < 0.55 and len(a.open_calls) < 8:
            call_id = f"llm-{eid()}"
            a.open_calls.append(("llm", call_id))
            emit(LlmCallRequested(**header(a), call_id=call_id, model="gpt-x", prompt_hash=eid()[:16],
                                  prompt_tokens=rng.randrange(50, 2000), timeout_ms=600_000))
        elif r < 0.63 and len(a.open_calls) < 8:
            call_id = f"tool-{eid()}"
            a.open_calls.append(("tool", call_id))
            emit(ToolCallRequested(**header(a), call_id=call_id, tool=rng.choice(a.caps),
                                   arguments='{"q": "quarterly revenue"}', timeout_ms=600_000))
        elif r < 0.72:
            emit(MemoryStored(**header(a), memory_id=eid(), text="Noted: " + "fact " * rng.randrange(1, 20),
                              embedding=embedding(), importance=round(rng.random(), 3), metadata={"source": "demo"}))
        elif r < 0.80 and messages:
            peers = [p for p in fleet if p.tenant_id == a.tenant_id and p is not a]
            if peers:
                to = rng.choice(peers)
                emit(MessageSent(**header(a), message_id=eid(), to_agent_id=to.agent_id, body="status?"))
        elif r < 0.83 and not a.open_calls:
            emit(AgentWaiting(**header(a), on="human review"))
            a.status = "WAITING"
        elif r < 0.84 and children:
            child = f"{a.agent_id}-child-{a.n}"
            spawned_children.add(child)
            emit(SpawnRequested(**header(a), child_id=child, name="helper", priority=40,
                                capabilities=a.caps[:2], budgets=BUDGETS, metadata={"role": "child"}))
        else:
            emit(ContextAppended(**header(a), entry_id=eid(), role="assistant", content="Thinking.",
                                 tokens=rng.randrange(5, 50), importance=0.2))

    while len(items) < events:
        a = rng.choice(fleet)
        if illegal_every and len(items) % illegal_every == illegal_every - 1 and a.status == "RUNNING":
            bad(illegal_for(a))
            continue
        if garbage_every and len(items) % garbage_every == garbage_every - 1:
            items.append(RawRecord(a.agent_id, b"\x00garbage" + rng.randbytes(rng.randrange(0, 40))))
            garbage += 1
            continue
        if a.status == "NONE":
            emit(AgentSpawned(**header(a), parent_id=None, name=f"worker {a.agent_id}", priority=rng.randrange(101),
                              capabilities=a.caps, budgets=BUDGETS, metadata={"team": "research"}))
            a.status = "READY"
        elif a.status == "READY":
            emit(AgentStarted(**header(a)))
            a.status = "RUNNING"
        elif a.status == "WAITING":
            emit(AgentResumed(**header(a)))
            a.status = "RUNNING"
        elif a.status == "RUNNING":
            if remaining_unfinished and a.unfinished == 0:
                call_id = f"never-{eid()}"
                a.unfinished = 1
                remaining_unfinished -= 1
                unfinished.add((a.agent_id, call_id))
                emit(LlmCallRequested(**header(a), call_id=call_id, model="gpt-x", prompt_hash="h",
                                      prompt_tokens=10, timeout_ms=unfinished_timeout_ms))
            elif a.n > 30 and rng.random() < terminate_fraction / 10 and not a.open_calls:
                emit(AgentTerminated(**header(a), exit_code=0, reason="done"))
                a.status = "TERMINATED"
            else:
                work(a)
        # TERMINATED agents receive nothing more from their clients.
        if all(x.status == "TERMINATED" for x in fleet):
            break
    return Workload(
        items=items, illegal_event_ids=frozenset(illegal), garbage=garbage,
        agents=tuple(a.agent_id for a in fleet), unfinished_calls=frozenset(unfinished),
        child_spawns=frozenset(spawned_children),
    )


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


def produce_workload(
    bootstrap: str,
    topic: str,
    items: Sequence[Item],
    *,
    on_progress: Callable[[int], None] | None = None,
    transactional_id: str | None = None,
) -> list[tuple[int, int]]:
    """Produce ``items`` to ``topic`` keyed by agent; returns each record's (partition, offset).

    With ``transactional_id`` every item goes into one Kafka transaction: ``read_committed``
    readers see the whole workload appear at once when it commits."""
    from contextlib import nullcontext

    from aosk.client._producer import DeliveringProducer, producer_config
    from aosk.events import encode

    # a whole journal in one transaction can take minutes on a loaded machine: the broker
    # aborts (and fences) a transaction open longer than this (its default, 1 min)
    extra = {} if transactional_id is None else {"transactional.id": transactional_id,
                                                 "transaction.timeout.ms": 600_000}
    producer = DeliveringProducer(producer_config(bootstrap, client_id="aosk-workload", **extra))
    futures = []
    try:
        with producer.transaction() if transactional_id is not None else nullcontext():
            for n, item in enumerate(items, 1):
                if isinstance(item, RawRecord):
                    futures.append(producer.produce(topic, key=item.key.encode(), value=item.value))
                else:
                    futures.append(producer.produce(topic, key=item.agent_id.encode(), value=encode(item)))
                if on_progress and n % 5000 == 0:
                    on_progress(n)
    finally:
        producer.close(120)
    positions = []
    for f in futures:
        d = f.result(0)
        positions.append((d.partition, d.offset))
    return positions


def iter_chunks(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
