"""Fork on the real stack (worker + projector processes): `aosk fork AGENT --at-seq N`
makes an agent that starts from the source's past state, lives on independently (also
after its source is terminated), has an audit chain starting at the fork event, and
recalls its source's memories up to the fork point plus its own."""

from __future__ import annotations

import math
import uuid

import psycopg
import pytest

from aosk.client import KernelClient, ProjectionReader
from aosk.events import AgentStarted, AgentTerminated, Budgets, ContextAppended, MemoryStored
from aosk.journal import JournalReader
from aosk.kernel import fold_journal, state_hash
from aosk.topics import ensure_topics
from projector_harness import Projectors, run_cli
from worker_harness import Workers

pytestmark = pytest.mark.integration

BUDGETS = Budgets(max_tokens=100_000, max_tool_calls=100, max_steps=1_000, context_window_tokens=4_000)


def _unit(i: int, dim: int = 384) -> tuple[float, ...]:
    v = [0.0] * dim
    v[i] = 1.0
    v[(i + 1) % dim] = 0.1
    n = math.sqrt(sum(x * x for x in v))
    return tuple(x / n for x in v)


@pytest.fixture(scope="module")
def cluster(settings, tmp_path_factory):
    ensure_topics(settings.kafka.bootstrap_servers, settings.kafka)
    procs = Projectors(settings, tmp_path_factory.mktemp("proj"), schema="aosk")
    with Workers(settings, tmp_path_factory.mktemp("workers")) as workers:
        try:
            procs.start("p1")
            workers.start("w1")
            yield settings
        finally:
            procs.close()


def test_fork_lives_its_own_life(cluster) -> None:
    settings = cluster
    src = f"src-{uuid.uuid4().hex[:6]}"
    fork_id = f"fork-{uuid.uuid4().hex[:6]}"
    t = "acme"
    with KernelClient.from_settings(settings, watch_verdicts=True) as kernel, \
            ProjectionReader.from_settings(settings) as reader:
        def act(event_type, agent, **fields):
            ev = kernel.new_event(event_type, agent_id=agent, tenant_id=t, **fields)
            kernel.send(ev).result()
            v = kernel.wait_for_verdict(ev.event_id, timeout=90)
            assert v.verdict == "accepted", (event_type.__name__, v.reason, v.message)
            return v

        kernel.spawn(agent_id=src, tenant_id=t, name="src", budgets=BUDGETS, capabilities=["search"]).result()
        act(AgentStarted, src)
        act(MemoryStored, src, memory_id="before-1", text="kept by the fork", embedding=_unit(1), importance=0.5,
            metadata={})
        at = act(MemoryStored, src, memory_id="before-2", text="also kept", embedding=_unit(2), importance=0.5,
                 metadata={})
        act(MemoryStored, src, memory_id="after", text="after the fork point", embedding=_unit(3),
            importance=0.5, metadata={})
        act(ContextAppended, src, entry_id="e-late", role="user", content="later", tokens=3, importance=0.5)

        out = run_cli(settings, "fork", src, "--at-seq", str(at.seq), "--new-id", fork_id, "--tenant", t)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"AgentForked on {fork_id}: accepted" in out.stdout

        # The source ends; the fork goes on.
        act(AgentTerminated, src, exit_code=0, reason="done")
        act(AgentStarted, fork_id)
        own = act(MemoryStored, fork_id, memory_id="own", text="the fork's own", embedding=_unit(4), importance=0.5,
                  metadata={})
        reader.wait_until_projected(own.journal_partition, own.journal_offset, timeout=90)

        view = reader.agent_state(fork_id)
        assert view is not None and view.status == "RUNNING"
        assert view.state.identity.forked_from == src and view.state.identity.fork_seq == at.seq
        assert reader.agent_state(src).status == "TERMINATED"

        # The fork's state started as the source's state at seq N.
        with JournalReader(settings.kafka.bootstrap_servers, settings.kafka.journal_topic) as jr:
            src_records = [r for r in jr.read(at.journal_partition, 0) if r.key == src]
        expected = fold_journal(src_records[: at.seq])[src].state
        with psycopg.connect(settings.storage.postgresql.dsn) as conn:
            rows = conn.execute(
                "select seq, event_type, kind from aosk.audit_log where agent_id = %s order by seq", (fork_id,)
            ).fetchall()
        assert rows[0] == (1, "AgentForked", "accepted")
        assert [r[1] for r in rows[1:]] == ["AgentStarted", "MemoryStored"]
        forked = next(r for r in JournalReader(settings.kafka.bootstrap_servers, settings.kafka.journal_topic)
                      .read(own.journal_partition, 0) if r.key == fork_id)
        assert forked.event.source_state_hash == state_hash(expected)

        # Recall: the source's memories up to the fork point plus its own, not what came after.
        hits = reader.recall(_unit(3), k=10, agent_id=fork_id)
        assert {h.memory_id for h in hits} == {"before-1", "before-2", "own"}
        src_hits = reader.recall(_unit(3), k=10, agent_id=src)
        assert {h.memory_id for h in src_hits} == {"before-1", "before-2", "after"}
        # Recall as of a point of the source's own history.
        as_of = reader.recall(_unit(3), k=10, agent_id=src, as_of_offset=at.journal_offset)
        assert {h.memory_id for h in as_of} == {"before-1", "before-2"}

    assert run_cli(settings, "audit", "verify").returncode == 0
