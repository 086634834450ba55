"""The SDK produces to the real broker; `aosk events tail` reads it back decoded, in
per-agent order, and shows bad records as such instead of skipping them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from confluent_kafka import Producer

from aosk.client import KernelClient
from aosk.errors import EventRejected
from aosk.events import AgentStarted, Budgets, ContextAppended
from aosk.partitioning import partition_for
from aosk.topics import ensure_topics

pytestmark = pytest.mark.integration

BUDGETS = Budgets(max_tokens=10_000, max_tool_calls=10, max_steps=100, context_window_tokens=4_000)


@pytest.fixture(scope="module")
def journal(settings):
    ensure_topics(settings.kafka.bootstrap_servers, settings.kafka)
    return settings


def _tail(settings, *args: str) -> list[dict]:
    env = dict(os.environ, AOSK_KAFKA_BOOTSTRAP=settings.kafka.bootstrap_servers,
               AOSK_TOPIC_PREFIX=settings.kafka.topic_prefix, AOSK_POSTGRESQL_DSN="postgresql://unused/x")
    out = subprocess.run([sys.executable, "-m", "aosk.cli", "events", "tail", "--format", "json", *args],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_sdk_events_come_back_in_per_agent_order(journal) -> None:
    agents = [f"agent-{i}" for i in range(8)]
    sent: dict[str, list[str]] = {a: [] for a in agents}
    with KernelClient.from_settings(journal) as kernel:
        pendings = []
        for a in agents:
            p = kernel.spawn(agent_id=a, tenant_id="acme", name=a, budgets=BUDGETS, capabilities=["search"])
            pendings.append(p)
            sent[a].append(p.event_id)
            p = kernel.emit(AgentStarted, agent_id=a, tenant_id="acme")
            sent[a].append(p.event_id)
        for i in range(20):
            for a in agents:
                p = kernel.emit(ContextAppended, agent_id=a, tenant_id="acme", entry_id=f"{a}-{i}",
                                role="user", content=f"step {i}", tokens=5, importance=0.5)
                sent[a].append(p.event_id)
                pendings.append(p)
    deliveries = [p.result() for p in pendings]
    assert all(d.partition == partition_for(p.event.agent_id, 12) for d, p in zip(deliveries, pendings, strict=True))

    total = sum(len(v) for v in sent.values())
    views = _tail(journal, "--from-beginning", "--max", str(total))
    assert len(views) == total
    got: dict[str, list[str]] = {a: [] for a in agents}
    for v in views:
        assert {"partition", "offset", "timestamp", "type"} <= v.keys()
        got[v["event"]["agent_id"]].append(v["event"]["event_id"])
    assert got == sent
    assert views[0]["type"] in {"AgentSpawned", "AgentStarted", "ContextAppended"}

    one = _tail(journal, "--from-beginning", "--no-follow", "--agent", "agent-3")
    assert [v["event"]["event_id"] for v in one] == sent["agent-3"]


def test_bad_records_are_shown_not_skipped(journal) -> None:
    producer = Producer({"bootstrap.servers": journal.kafka.bootstrap_servers, "partitioner": "murmur2_random"})
    producer.produce(journal.kafka.journal_topic, key=b"bad-agent", value=b"not avro at all")
    producer.produce(journal.kafka.journal_topic, key=b"bad-agent", value=b"\xc3\x01" + b"\xff" * 8 + b"body")
    assert producer.flush(30) == 0
    views = _tail(journal, "--from-beginning", "--no-follow", "--agent", "bad-agent")
    assert [v["error"] for v in views] == ["undecodable", "unknown_fingerprint"]
    assert views[1]["fingerprint"] == "ff" * 8


def test_refused_before_reaching_kafka(journal) -> None:
    with KernelClient.from_settings(journal) as kernel:
        with pytest.raises(EventRejected, match="over the limit"):
            kernel.emit(ContextAppended, agent_id="big", tenant_id="acme", entry_id="e", role="user",
                        content="x" * (1024 * 1024 + 10), tokens=1, importance=0.1)
        with pytest.raises(EventRejected, match="payload fields are"):
            kernel.emit(ContextAppended, agent_id="a", tenant_id="acme", entry_id="e", bogus=1)
        with pytest.raises(EventRejected, match="ContextAppended does not fit its Avro schema"):
            kernel.emit(ContextAppended, agent_id="a", tenant_id="acme", entry_id="e", role="user",
                        content="c", tokens="many", importance=0.1)
        with pytest.raises(EventRejected, match="priority"):
            kernel.spawn(agent_id="a", tenant_id="acme", name="n", budgets=BUDGETS, priority=101)
    assert _tail(journal, "--from-beginning", "--no-follow", "--agent", "big") == []
