"""The SDK's producer puts every key on the partition aiokafka/faust (and Java) pick."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka.admin import AdminClient, NewTopic

from aosk.client._producer import DeliveringProducer, producer_config
from aosk.partitioning import partition_for

pytestmark = pytest.mark.integration


def test_sdk_partitions_match_aiokafka_for_10000_keys(stack, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.partitioner"
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=12, replication_factor=1)])[topic].result(30)
    producer = DeliveringProducer(producer_config(stack.bootstrap, client_id="partitioner-test"))
    keys = [f"agent-{uuid.UUID(int=i * 7919 + 13)}".encode() for i in range(10_000)]
    futures = [producer.produce(topic, key=k, value=b"v") for k in keys]
    producer.close()
    partitions = list(range(12))
    aiokafka = DefaultPartitioner()
    mismatches = [
        (k, f.result().partition)
        for k, f in zip(keys, futures, strict=True)
        if f.result().partition != aiokafka(k, partitions, partitions)
    ]
    assert mismatches == []
    assert all(f.result().partition == partition_for(k, 12) for k, f in zip(keys, futures, strict=True))
    assert len({f.result().partition for f in futures}) == 12
