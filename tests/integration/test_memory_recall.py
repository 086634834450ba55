"""Memory recall on a 10,000-memory index (``memory.index``), projected from the journal:
recall@10 against an exact scan is at least 0.95 with and without an agent filter, and
the plan uses the vector index (pgvector iterative scans keep filtered queries at k rows).
The default IVFFlat index, made with one list on the empty table, is built again by the
projector once the table outgrows it.

Embeddings are clustered (60 topics plus noise), like sentence embeddings; uniformly
random 384-d vectors have no near neighbours to find (every distance is about the same),
so no approximate index is measured on them."""

from __future__ import annotations

import math
import random

import psycopg
import pytest

from aosk.client import KernelClient, ProjectionReader
from aosk.config import Settings
from aosk.events import AgentStarted, Budgets, MemoryStored
from aosk.projectors.memory_index import INDEX_NAMES, ivfflat_lists
from aosk.projectors.runner import ensure_journal
from aosk.reads.memory import explain_recall
from aosk.waiting import wait_for
from projection_oracle import end_offsets
from projector_harness import Projectors, wait_caught_up

pytestmark = pytest.mark.integration

DIM = 384
BUDGETS = Budgets(max_tokens=10**9, max_tool_calls=10**6, max_steps=10**6, context_window_tokens=4000)
AGENTS = {"acme": [f"r-{i}" for i in range(5)], "beta": ["b-0", "b-1"]}
PER_AGENT = {"acme": 1600, "beta": 1000}


def _norm(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


@pytest.fixture(scope="module")
def memories(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, random.Random, list]:
    rng = random.Random(7)
    centres = [_norm([rng.gauss(0, 1) for _ in range(DIM)]) for _ in range(60)]

    def sample() -> tuple[float, ...]:
        c = rng.choice(centres)
        return tuple(_norm([x + rng.gauss(0, 0.06) for x in c]))

    ensure_journal(settings.kafka.bootstrap_servers, settings)
    with KernelClient.from_settings(settings) as kernel:
        for tenant, agents in AGENTS.items():
            for a in agents:
                kernel.spawn(agent_id=a, tenant_id=tenant, name=a, budgets=BUDGETS)
                kernel.emit(AgentStarted, agent_id=a, tenant_id=tenant)
                for i in range(PER_AGENT[tenant]):
                    kernel.emit(MemoryStored, agent_id=a, tenant_id=tenant, memory_id=f"{a}-{i}", text=f"memory {i}",
                                embedding=sample(), importance=0.5, metadata={})
    procs = Projectors(settings, tmp_path_factory.mktemp("recall"), schema="aosk", args=("--memory-index-check", "0.5"))
    try:
        procs.start("p")
        wait_caught_up(settings.storage.postgresql.dsn, "aosk",
                       end_offsets(settings.kafka.bootstrap_servers, settings.kafka.journal_topic),
                       timeout=240, procs=procs)
        if settings.memory.index == "ivfflat":  # the projector sizes it to the 10,000 memories
            with psycopg.connect(settings.storage.postgresql.dsn, autocommit=True) as conn:
                wait_for(lambda: (ivfflat_lists(conn, "aosk") or 0) >= 10, timeout=120,
                         what="the projector building the IVFFlat index again")
    finally:
        assert procs.stop_all() == {"p": 0}
    with psycopg.connect(settings.storage.postgresql.dsn, autocommit=True) as conn:
        assert conn.execute("select count(embedding) from aosk.memories").fetchone() == (10_000,)
        conn.execute("analyze aosk.memories")
    return settings, rng, [sample() for _ in range(40)]


def _exact(conn: psycopg.Connection, q: tuple[float, ...], tenant: str, agent: str | None) -> list[str]:
    text = "[" + ",".join(map(repr, q)) + "]"
    with conn.transaction():
        conn.execute("set local enable_indexscan = off")
        conn.execute("set local enable_bitmapscan = off")
        where = "tenant_id = %s" + (" and agent_id = %s" if agent else "")
        params = (tenant, agent) if agent else (tenant,)
        return [r[0] for r in conn.execute(
            f"select memory_id from aosk.memories where {where} and embedding is not null"
            f" order by embedding <=> %s::vector limit 10", (*params, text))]


@pytest.mark.parametrize("agent", [None, "r-2"], ids=["tenant", "tenant+agent"])
def test_recall_at_10_against_exact_scan(memories, agent: str | None) -> None:
    settings, _, queries = memories
    with ProjectionReader.from_settings(settings) as reader, psycopg.connect(settings.storage.postgresql.dsn) as conn:
        plan = explain_recall(conn, "aosk", queries[0], k=10, tenant_id="acme", agent_id=agent)
        assert INDEX_NAMES[settings.memory.index] in plan, plan[:300]
        total = 0.0
        for q in queries:
            got = reader.recall(q, k=10, tenant_id="acme", agent_id=agent)
            assert len(got) == 10
            assert all(m.tenant_id == "acme" and (agent is None or m.agent_id == agent) for m in got)
            assert [m.distance for m in got] == sorted(m.distance for m in got)
            total += len({m.memory_id for m in got} & set(_exact(conn, q, "acme", agent))) / 10
    recall = total / len(queries)
    print(f"recall@10 ({'agent filter' if agent else 'tenant only'}): {recall:.3f}")
    assert recall >= 0.95


def test_small_scope_still_returns_k(memories) -> None:
    """An agent with few memories: the iterative scan (or the exact fallback) still fills k."""
    settings, _, queries = memories
    with ProjectionReader.from_settings(settings) as reader:
        got = reader.recall(queries[1], k=10, agent_id="b-1")
        assert len(got) == 10 and {m.agent_id for m in got} == {"b-1"}
