"""The walk-through behind ``make demo``: each capability, run for real, with a short report.

Every section talks to the real broker and database of the embedded stack (or the
configured external ones) and prints what it measured or queried.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from aosk.config import Settings
from aosk.endpoints import Endpoints, resolve_endpoints


def _heading(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 70 - len(text)), flush=True)


def _section_stack(settings: Settings) -> Endpoints:
    _heading("1. the stack")
    if settings.kafka.bootstrap_servers is None or settings.storage.postgresql.host is None:
        from aosk.devstack.stack import dev_stack

        stack = dev_stack(settings)
        assert stack is not None
        t0 = time.monotonic()
        stack.up()
        for name, (ok, text) in stack.status().items():
            print(f"  {name:11s} {'up' if ok else 'DOWN'}  {text}")
        print(f"  (ready in {time.monotonic() - t0:.1f}s; data under {stack.state_dir})")
    return resolve_endpoints(settings)


def _section_smoke(settings: Settings, ep: Endpoints) -> None:
    _heading("2. the log and the database, end to end")
    import psycopg
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"{settings.kafka.topic_prefix}.demo-smoke-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": ep.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=12, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": ep.bootstrap, "enable.idempotence": True, "acks": "all",
                         "partitioner": "murmur2_random", "linger.ms": 5, "log_level": 3})
    n, agents = 2_000, 20
    t0 = time.monotonic()
    for i in range(n):
        producer.produce(topic, key=f"agent-{i % agents}".encode(), value=f"{i // agents}".encode())
        producer.poll(0)
    producer.flush(30)
    produced_s = time.monotonic() - t0
    consumer = Consumer({"bootstrap.servers": ep.bootstrap, "group.id": f"demo-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    last: dict[bytes, int] = {}
    in_order = True
    got = 0
    deadline = time.monotonic() + 60
    while got < n and time.monotonic() < deadline:
        for msg in consumer.consume(1000, timeout=0.5):
            if msg.error():
                continue
            seq = int(msg.value())
            in_order &= last.get(msg.key(), -1) == seq - 1
            last[msg.key()] = seq
            got += 1
    consumer.close()
    admin.delete_topics([topic])
    print(f"  produced {n} records for {agents} agents over 12 partitions in {produced_s:.2f}s "
          f"(idempotent producer, acks=all)")
    print(f"  consumed {got}/{n}; per-agent order held: {'yes' if in_order else 'NO'}")
    with psycopg.connect(ep.dsn) as conn:
        version = conn.execute("select extversion from pg_extension where extname = 'vector'").fetchone()
        row = conn.execute(
            "select v.id, round((v.e <=> '[1,0,0]')::numeric, 3) from (values (1, '[1,0,0]'::vector), "
            "(2, '[0,1,0]'::vector), (3, '[0.9,0.1,0]'::vector)) v(id, e) where v.id <> 1 "
            "order by v.e <=> '[1,0,0]' limit 1"
        ).fetchone()
    print(f"  pgvector {version[0] if version else '?'}: nearest to [1,0,0] besides itself -> "
          f"item {row[0]} (cosine distance {row[1]})")


def _section_events(settings: Settings, ep: Endpoints) -> None:
    _heading("3. agents emit Avro events onto the journal")
    from aosk.cli.events import format_text, tail_records
    from aosk.client import KernelClient
    from aosk.errors import EventRejected
    from aosk.events import AgentStarted, Budgets, ContextAppended, ToolCallRequested
    from aosk.topics import ensure_topics

    made = ensure_topics(ep.bootstrap, settings.kafka)
    print(f"  topics: {', '.join(made.created) or 'all present'} "
          f"({'created' if made.created else 'checked'}: LogAppendTime, infinite retention)")
    run = uuid.uuid4().hex[:4]
    agents = [f"demo-{run}-{name}" for name in ("planner", "researcher", "writer")]
    budgets = Budgets(max_tokens=50_000, max_tool_calls=20, max_steps=200, context_window_tokens=2_000)
    with KernelClient.from_settings(settings) as kernel:
        for a in agents:
            kernel.spawn(agent_id=a, tenant_id="acme", name=a.rsplit("-", 1)[1], budgets=budgets,
                         capabilities=["search", "browse"])
            kernel.emit(AgentStarted, agent_id=a, tenant_id="acme")
            kernel.emit(ContextAppended, agent_id=a, tenant_id="acme", entry_id=f"{a}-goal", role="user",
                        content="Summarise the quarterly report.", tokens=8, importance=0.96)
        last = kernel.emit(ToolCallRequested, agent_id=agents[1], tenant_id="acme", call_id="c-1",
                           tool="search", arguments='{"q": "Q3 revenue"}', timeout_ms=30_000).result()
        try:
            kernel.emit(ContextAppended, agent_id=agents[0], tenant_id="acme", entry_id="x", role="user",
                        content="x" * (settings.kafka.max_event_bytes + 1), tokens=1, importance=0.1)
        except EventRejected as e:
            print(f"  refused before Kafka: {str(e)[:100]}...")
    print(f"  {len(agents)} agents spawned with the SDK; last event at partition {last.partition}, "
          f"offset {last.offset} (broker time {last.timestamp})")
    print(f"  `aosk events tail --agent {agents[1]} --from-beginning --no-follow`:")
    for view in tail_records(settings, agent=agents[1], from_beginning=True, follow=False):
        print("    " + format_text(view)[:150])


SECTIONS: tuple[Callable[[Settings, Endpoints], None], ...] = (_section_smoke, _section_events)


def run_demo(settings: Settings) -> int:
    print("AOSK demo: an event-sourced kernel for AI agents on Kafka and PostgreSQL")
    ep = _section_stack(settings)
    for section in SECTIONS:
        section(settings, ep)
    _heading("done")
    print("  the stack keeps running; `.venv/bin/aosk dev status` shows it, `.venv/bin/aosk dev down` stops it")
    return 0
