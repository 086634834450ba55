"""Kafka side of a backup: reading a partition's committed records up to an end offset,
and producing them again at their original offsets and timestamps (docs/operations.md,
"Backup and restore").

Restoring a partition follows ``restore_steps``: plain records through an idempotent
producer; a record whose commit marker must fill a one-offset gap, and fillers whose
records and abort marker fill a longer gap, through a transactional producer. The
transaction coordinator writes markers after it has answered the commit or abort, so
after each transaction the partition's end offset is awaited before anything else is
produced. Every delivered offset is checked against the archived one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any, Final

from aosk._kafka import high_watermark, quiet
from aosk.backup.archive import Aborted, ArchivedRecord, Committed, Plain, expected_layout, restore_steps
from aosk.errors import BackupError
from aosk.waiting import wait_for

__all__ = ["read_partition", "partition_reader", "end_offsets", "restore_partition", "set_timestamp_type",
           "timestamp_type", "FILLER_HEADER"]

FILLER_HEADER: Final = ("aosk-restore", b"filler")
_EOF_CODE: Final = -191  # librdkafka's _PARTITION_EOF


def _consumer(bootstrap: str) -> Any:
    from confluent_kafka import Consumer

    return Consumer(quiet({
        "bootstrap.servers": bootstrap,
        "group.id": f"aosk-backup-{uuid.uuid4().hex[:8]}",  # assign() only; nothing committed
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": "read_committed",
        "fetch.wait.max.ms": 50,
        "fetch.message.max.bytes": 4 * 1024 * 1024,
    }))


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
    """(log start offset, end offset) of each partition of ``topic``, now."""
    from confluent_kafka import TopicPartition

    c = _consumer(bootstrap)
    try:
        out = {}
        for p in range(partitions):
            high_watermark(c, topic, p)  # waits out a leader election
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            out[p] = (int(low), int(high))
        return out
    finally:
        c.close()


def partition_reader(bootstrap: str) -> Any:
    """A consumer for ``read_partition`` (one for many partitions saves a connection each)."""
    return _consumer(bootstrap)


def read_partition(bootstrap: str, topic: str, partition: int, end: int, *, timeout: float = 60.0,
                   consumer: Any = None) -> Iterator[ArchivedRecord]:
    """The committed records of ``topic[partition]`` below offset ``end``, in offset order
    (through ``consumer`` if given, which is left open; else a consumer of its own)."""
    import time

    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    if end <= 0:
        return
    c = consumer if consumer is not None else _consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        nxt = 0
        while True:
            # consume() returns early only once it has ``num`` messages: ask for no more
            # than the offsets left (plus the end-of-partition event), and poll briefly.
            msgs = c.consume(min(1000, end - nxt + 1), timeout=0.1)
            progressed = False
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == _EOF_CODE:
                        continue
                    raise BackupError(f"reading {topic}[{partition}]: {err.str()}")
                if m.offset() >= end:
                    return
                progressed = True
                nxt = m.offset() + 1
                ts_type, ts = m.timestamp()
                yield ArchivedRecord(partition, m.offset(), ts, ts_type, m.key(), m.value(),
                                     tuple((n, v) for n, v in (m.headers() or ())))
                if nxt >= end:
                    return
            (pos,) = c.position([TopicPartition(topic, partition)])
            if pos.offset >= end:
                return  # markers or aborted records up to the end
            if progressed:
                deadline = time.monotonic() + timeout
            elif time.monotonic() > deadline:
                raise BackupError(f"reading {topic}[{partition}]: no progress for {timeout:.0f}s at offset "
                                  f"{pos.offset} (end {end}); an open transaction holds the partition?")
    finally:
        if consumer is None:
            c.close()
        else:
            c.unassign()


def timestamp_type(bootstrap: str, topic: str) -> str:
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient(quiet({"bootstrap.servers": bootstrap}))
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    cfg = admin.describe_configs([res], request_timeout=30)[res].result(30)
    return str(cfg["message.timestamp.type"].value)


def set_timestamp_type(bootstrap: str, topic: str, value: str) -> None:
    """Set ``message.timestamp.type`` of ``topic`` (``CreateTime`` while restoring)."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    admin = AdminClient(quiet({"bootstrap.servers": bootstrap}))
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("message.timestamp.type", value, incremental_operation=AlterConfigOpType.SET)])
    for f in admin.incremental_alter_configs([res], request_timeout=30).values():
        f.result(30)
    wait_for(lambda: timestamp_type(bootstrap, topic) == value, timeout=30, interval=0.1,
             what=f"{topic} to take message.timestamp.type={value}")


class _Producers:
    """The idempotent producer and the transactional one of a restore."""

    def __init__(self, bootstrap: str, client_id: str) -> None:
        from confluent_kafka import Consumer, Producer

        from aosk.client._producer import producer_config

        self.plain = Producer(producer_config(bootstrap, client_id=client_id))
        self.tx = Producer(producer_config(bootstrap, client_id=f"{client_id}-tx",
                                           **{"transactional.id": f"{client_id}-{uuid.uuid4().hex[:8]}"}))
        self.tx.init_transactions(30)
        self.watch = Consumer(quiet({"bootstrap.servers": bootstrap, "group.id": f"{client_id}-watch",
                                     "enable.auto.commit": False}))

    def close(self) -> None:
        self.plain.flush(30)
        self.tx.flush(30)
        self.watch.close()


def restore_partition(producers: _Producers, topic: str, partition: int,
                      records: Callable[[], Iterator[ArchivedRecord]], end_offset: int, *,
                      progress: Callable[[int], None] = lambda n: None) -> None:
    """Produce the records ``records()`` yields (this partition's, in offset order) to an
    empty ``topic[partition]`` at their offsets and timestamps, leaving its end offset at
    ``end_offset``. Raises ``BackupError`` naming the first record that landed elsewhere.
    ``records`` is called twice: once for the plan (offsets and timestamps only), once to
    produce, so a partition is never held in memory."""
    from confluent_kafka import KafkaException, TopicPartition

    offsets: list[int] = []
    times: list[int] = []
    for r in records():
        offsets.append(r.offset)
        times.append(r.timestamp)
    steps = restore_steps(offsets, times, end_offset, what=f"{topic}[{partition}]")
    source = records()
    wrong: list[str] = []

    def check(want: int) -> Callable[[Any, Any], None]:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                wrong.append(f"offset {want}: {err.str()}")
            elif want >= 0 and msg.offset() != want:
                wrong.append(f"record of offset {want} landed at offset {msg.offset()}")
        return cb

    def send(producer: Any, r: ArchivedRecord) -> None:
        while True:
            try:
                producer.produce(topic, value=r.value, key=r.key, partition=partition, timestamp=r.timestamp,
                                 headers=list(r.headers) or None, on_delivery=check(r.offset))
                return
            except BufferError:
                producer.poll(0.1)  # the local queue is full: deliver some first

    def settle(at: int) -> None:
        tp = TopicPartition(topic, partition)
        wait_for(lambda: producers.watch.get_watermark_offsets(tp, timeout=10, cached=False)[1] >= at,
                 timeout=60, interval=0.005, what=f"{topic}[{partition}] to reach offset {at}")

    def fail_if_wrong() -> None:
        if wrong:
            raise BackupError(f"restoring {topic}[{partition}]: " + "; ".join(wrong[:5])
                              + (f" (and {len(wrong) - 5} more)" if len(wrong) > 5 else ""))

    try:
        for step, at in expected_layout(steps, offsets):
            if isinstance(step, Plain):
                for _ in step.indexes:
                    send(producers.plain, next(source))
                    producers.plain.poll(0)
                progress(len(step.indexes))
                continue
            producers.plain.flush(60)  # what came before must be in the log first
            fail_if_wrong()
            producers.tx.begin_transaction()
            if isinstance(step, Committed):
                send(producers.tx, next(source))
            else:
                assert isinstance(step, Aborted)
                for _ in range(step.fillers):
                    send(producers.tx, ArchivedRecord(partition, -1, step.timestamp, 1, None, b"", (FILLER_HEADER,)))
            producers.tx.flush(60)
            fail_if_wrong()
            if isinstance(step, Committed):
                producers.tx.commit_transaction(60)
                progress(1)
            else:
                producers.tx.abort_transaction(60)
            settle(at)  # the coordinator writes the marker after answering
        producers.plain.flush(60)
        fail_if_wrong()
    except KafkaException as e:
        raise BackupError(f"restoring {topic}[{partition}]: {e.args[0].str() if e.args else e}") from e
    settle(end_offset)
    (low, high) = producers.watch.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    if high != end_offset:
        raise BackupError(f"restoring {topic}[{partition}]: the partition ends at {high}, the archive at {end_offset}")
