"""The first end-to-end path on the real components: Kafka ordering and durability,
pgvector rows in PostgreSQL, and a broker restart that keeps every record."""

from __future__ import annotations

import struct
import uuid
from collections import defaultdict

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from aosk.waiting import wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 12
AGENTS = 100
RECORDS = 10_000


def _consume_all(bootstrap: str, topic: str, expected: int, *, timeout: float = 90) -> list[tuple[str, int, int]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"smoke-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    seen: list[tuple[str, int, int]] = []

    def drained() -> bool:
        for msg in consumer.consume(num_messages=1000, timeout=0.5):
            if msg.error():
                raise KafkaException(msg.error())
            key = msg.key().decode()
            (seq,) = struct.unpack(">I", msg.value()[:4])
            seen.append((key, seq, msg.partition()))
        return len(seen) >= expected

    try:
        wait_for(drained, timeout=timeout, interval=0, what=f"{expected} records from {topic}")
        # Anything beyond the expected count would be a duplicate: read a little longer.
        for msg in consumer.consume(num_messages=1000, timeout=1.0):
            if not msg.error():
                seen.append((msg.key().decode(), struct.unpack(">I", msg.value()[:4])[0], msg.partition()))
    finally:
        consumer.close()
    return seen


def _assert_complete_and_ordered(seen: list[tuple[str, int, int]], per_key: int) -> None:
    assert len(seen) == RECORDS, f"expected {RECORDS} records exactly once, got {len(seen)}"
    by_key: dict[str, list[int]] = defaultdict(list)
    partition_of: dict[str, set[int]] = defaultdict(set)
    for key, seq, partition in seen:
        by_key[key].append(seq)
        partition_of[key].add(partition)
    assert len(by_key) == AGENTS
    for key, seqs in by_key.items():
        assert seqs == list(range(per_key)), f"{key}: order or completeness broken"
        assert len(partition_of[key]) == 1, f"{key} spread over partitions {partition_of[key]}"


def test_kafka_order_pgvector_and_broker_restart(stack, topic_prefix: str, database: str) -> None:
    topic = f"{topic_prefix}.smoke"
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(30)

    producer = Producer(
        {
            "bootstrap.servers": stack.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "linger.ms": 5,
        }
    )
    failures: list[str] = []
    per_key = RECORDS // AGENTS
    for i in range(per_key):
        for a in range(AGENTS):
            producer.produce(
                topic,
                key=f"agent-{a:03d}".encode(),
                value=struct.pack(">I", i) + b"x" * 60,
                on_delivery=lambda err, msg: failures.append(str(err)) if err else None,
            )
        producer.poll(0)
    assert producer.flush(60) == 0
    assert failures == []

    _assert_complete_and_ordered(_consume_all(stack.bootstrap, topic, RECORDS), per_key)

    # pgvector: write and query rows with a vector column.
    with psycopg.connect(database) as conn:
        conn.execute("create table items (id int primary key, embedding vector(3))")
        conn.execute("insert into items values (1, '[1,0,0]'), (2, '[0,1,0]'), (3, '[0.9,0.1,0]')")
        rows = conn.execute(
            "select id from items order by embedding <=> %s::vector limit 2", ("[1,0,0]",)
        ).fetchall()
        assert [r[0] for r in rows] == [1, 3]

    # Restart the broker: every record is still there, in order.
    broker = stack.stack.kafka
    broker.stop()
    assert broker.pid() is None
    broker.start()
    _assert_complete_and_ordered(_consume_all(stack.bootstrap, topic, RECORDS), per_key)
