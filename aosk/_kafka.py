"""Small confluent-kafka helpers shared by the SDK and the journal reader."""

from __future__ import annotations

import time
from typing import Any


def high_watermark(consumer: Any, topic: str, partition: int, *, timeout: float = 30.0) -> int:
    """The offset the next record of ``topic[partition]`` will get.

    Retries while the partition has no leader yet: right after a topic is created the
    metadata can name a leader a moment before that broker serves the partition
    (NOT_LEADER_FOR_PARTITION), and after a broker restart for a while too.
    """
    from confluent_kafka import KafkaException, TopicPartition

    deadline = time.monotonic() + timeout
    while True:
        try:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            return int(high)
        except KafkaException as e:
            err = e.args[0]
            if not err.retriable() and err.name() not in {"NOT_LEADER_FOR_PARTITION", "LEADER_NOT_AVAILABLE",
                                                         "UNKNOWN_TOPIC_OR_PART"}:
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)  # the broker is electing a leader; ask again shortly
