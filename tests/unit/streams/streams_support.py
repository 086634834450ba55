"""Journal records for the worker's unit tests, without Kafka."""

from __future__ import annotations

from aosk.errors import DecodeError
from aosk.events import Event, decode, encode
from aosk.kernel import Record
from aosk.partitioning import partition_for
from aosk.workload import RawRecord

PARTITIONS = 12


class Journal:
    """Appends events / raw bytes as the broker would: murmur2 partition, next offset,
    increasing broker time."""

    def __init__(self, partitions: int = PARTITIONS, start_ms: int = 1_700_000_000_000) -> None:
        self.partitions = partitions
        self.offsets = [0] * partitions
        self.now = start_ms
        self.records: list[Record] = []

    def append(self, item: Event | RawRecord | bytes, *, key: str | None = None, partition: int | None = None,
               step_ms: int = 1) -> Record:
        if isinstance(item, RawRecord):
            key, value = item.key, item.value
        elif isinstance(item, Event):
            key, value = (key or item.agent_id), encode(item)
        else:
            value = item
        if partition is None:
            assert key is not None
            partition = partition_for(key, self.partitions)
        self.now += step_ms
        offset = self.offsets[partition]
        self.offsets[partition] += 1
        try:
            event, error = decode(value), None
        except DecodeError as e:
            event, error = None, e
        r = Record(key, partition, offset, self.now, value, event, error)
        self.records.append(r)
        return r
