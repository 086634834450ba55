"""The worker's only contact with the Kafka client library (confluent-kafka, librdkafka).

Why librdkafka and not faust/aiokafka for the worker (measured; docs/workers.md):

* per record, faust's event and send machinery cost ~1.3 ms of Python where the fold
  costs ~0.09 ms: a worker could not get near the speed of the fold;
* aiokafka's fetcher drops a worker during a rebalance (``KeyError(TopicPartition)``,
  robinhood/aiokafka#19, fixed only in an unreleased fork); faust's commit and flush
  bookkeeping had to be worked around (acks off, own offsets, re-seeks of stalled
  partitions); and a faust worker whose broker went away sat minutes in its shutdown.

librdkafka fetches and produces in C threads, commits exactly the offsets it is given,
and every blocking call here takes a timeout, so the worker loop can keep its promises
(outputs acknowledged before any commit; a stop within its deadline whatever the
broker does). The settings below are the ones those promises rest on. Checked against
confluent-kafka 2.16 (librdkafka 2.16) and Kafka 3.9 brokers; nothing here reaches into
the client's internals: only its documented consumer and producer calls.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from aosk.client._producer import producer_config
from aosk.topics import JOURNAL_MAX_MESSAGE_BYTES

__all__ = ["consumer_config", "worker_producer_config", "read_partitions", "OFFSET_BEGINNING", "group_id"]

log = logging.getLogger("aosk.streams")

OFFSET_BEGINNING = -2
"""librdkafka's logical offset for "the first record still in the log"."""

_FETCH_MAX = 2 * JOURNAL_MAX_MESSAGE_BYTES


def group_id(topic_prefix: str) -> str:
    """The consumer group of every worker of a cluster."""
    return f"{topic_prefix}-worker"


def consumer_config(bootstrap: str, *, group: str, client_id: str, session_timeout_ms: int) -> dict[str, Any]:
    """The journal consumer of a worker.

    * ``enable.auto.commit``/``enable.auto.offset.store`` off: offsets are committed only
      after every output of the records before them was acknowledged;
    * ``read_committed``: records of aborted transactions are never judged (and the
      transaction markers leave gaps in the offsets, which the loop allows for);
    * ``range`` assignment (eager): a rebalance revokes before it assigns, so a partition
      is never folded by two owners at once while both are healthy;
    * ``auto.offset.reset=earliest`` for a group that never committed on a partition.
    """
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "client.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "session.timeout.ms": session_timeout_ms,
        # A member learns of a rebalance only at its next heartbeat: a short interval lets
        # a joining worker get its partitions in well under a second (cheap requests).
        "heartbeat.interval.ms": max(100, min(500, session_timeout_ms // 3)),
        "partition.assignment.strategy": "range",
        # Per partition and fetch: small, so a backlog is judged across all partitions
        # evenly (one fetch's records are queued partition after partition) and a
        # rebalance does not leave one worker the untouched half (a bigger record is
        # still fetched whole).
        "fetch.message.max.bytes": 256 * 1024,
        "fetch.wait.max.ms": 100,
        "socket.timeout.ms": 10_000,
        "log_level": 3,
    }


def worker_producer_config(bootstrap: str, *, client_id: str) -> dict[str, Any]:
    """The producer of verdicts, derived events, dead letters and snapshots: the SDK's
    settings (idempotent, acks=all, murmur2) with a short linger, because a client
    waits on every verdict (5 ms: measured, fewer and fuller produce requests cost the
    broker ~40% less CPU per record than 2 ms, for ~3 ms of latency)."""
    return producer_config(bootstrap, client_id=client_id, **{
        "linger.ms": 5,
        # Only failures call back into Python (one call per output otherwise); the
        # worker learns of successes from flush() before each commit.
        "delivery.report.only.error": True,
        "message.max.bytes": _FETCH_MAX + 64 * 1024,
    })


def read_partitions(bootstrap: str, topic: str, partitions: list[int], *, timeout_s: float = 120.0
                    ) -> dict[int, list[tuple[bytes | None, bytes | None]]]:
    """Every (key, value) of the ``partitions`` of ``topic`` up to their ends now, in
    offset order per partition, read by one consumer outside any group. Raises
    ``TimeoutError`` when the ends are not reached within ``timeout_s``."""
    import time

    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from aosk._kafka import high_watermark

    out: dict[int, list[tuple[bytes | None, bytes | None]]] = {p: [] for p in partitions}
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"aosk-worker-restore-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        # Compaction leaves gaps: the last offset before the end may be gone, so the end
        # of a partition is known by EOF, not by reaching end - 1.
        "enable.partition.eof": True,
        "fetch.message.max.bytes": _FETCH_MAX,
        "log_level": 3,
    })
    try:
        ends: dict[int, int] = {}
        for p in partitions:
            low, _ = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            end = high_watermark(c, topic, p, timeout=timeout_s)
            if end > low:
                ends[p] = end
        if not ends:
            return out
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"reading {topic} partitions {sorted(ends)} to their ends took over {timeout_s:.0f}s"
                )
            for m in c.consume(10_000, timeout=0.2):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        ends.pop(m.partition(), None)  # type: ignore[arg-type]  # EOF events name their partition
                        continue
                    raise RuntimeError(f"reading {topic}[{m.partition()}]: {err.str()}")
                part, offset = m.partition(), m.offset()
                assert part is not None and offset is not None  # a record without an error has both
                stop_at = ends.get(part)
                if stop_at is None or offset >= stop_at:
                    continue
                out[part].append((m.key(), m.value()))
                if offset + 1 >= stop_at:
                    del ends[part]
        return out
    finally:
        c.close()
