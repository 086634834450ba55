"""Journal records and a fake Kafka for the worker's unit tests (no broker).

``Journal`` appends records as the broker would. ``FakeBroker`` holds topics in memory;
``FakeConsumer`` / ``FakeProducer`` implement the confluent-kafka methods ``Worker``
calls. The producer keeps what it was given as *pending* until ``flush`` acknowledges
it (appends it to the broker's topic and calls the delivery callback), so a test can
"crash" a worker by discarding it with outputs still pending.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TopicPartition

from aosk.config import Settings
from aosk.errors import DecodeError
from aosk.events import Event, decode, encode
from aosk.kernel import Record, decode_slot
from aosk.partitioning import partition_for
from aosk.streams.snapshots import FLOOR_PREFIX, decode_floor
from aosk.workload import RawRecord

PARTITIONS = 12
OFFSET_BEGINNING = -2
NO_OFFSET = -1001


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


def settings(partitions: int = PARTITIONS, prefix: str = "t") -> Settings:
    return Settings(kafka={"journal_partitions": partitions, "topic_prefix": prefix, "bootstrap_servers": "unused:1"})


# --- a fake Kafka -------------------------------------------------------------------------


@dataclass
class FakeMessage:
    _topic: str
    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes | None
    _timestamp: int = 0
    _headers: list[tuple[str, bytes]] | None = None
    _error: Any = None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (2, self._timestamp)  # TIMESTAMP_LOG_APPEND_TIME

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def error(self) -> Any:
        return self._error


@dataclass
class FakeError:
    text: str = "broker said no"
    is_fatal: bool = False

    def str(self) -> str:  # noqa: A003 - confluent-kafka's KafkaError API
        return self.text

    def fatal(self) -> bool:
        return self.is_fatal

    def code(self) -> int:
        return -1


class Crash(BaseException):
    """A simulated kill -9 (BaseException: the worker's best-effort handlers do not catch it)."""


@dataclass
class FakeBroker:
    """Topics in memory: topic -> partition -> messages (offset = index)."""

    topics: dict[str, dict[int, list[FakeMessage]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    commits: list[dict[int, int]] = field(default_factory=list)
    """Every commit, in order: partition -> offset."""
    violations: list[str] = field(default_factory=list)
    """Broken promises seen by the fakes (checked by the tests)."""
    clock_ms: int = 1_800_000_000_000
    """The broker's clock (LogAppendTime of what producers append)."""

    def append(self, topic: str, partition: int, key: bytes | None, value: bytes | None, *,
               timestamp: int | None = None, headers: list[tuple[str, bytes]] | None = None) -> FakeMessage:
        log = self.topics[topic][partition]
        if timestamp is None:
            self.clock_ms += 1
            timestamp = self.clock_ms
        m = FakeMessage(topic, partition, len(log), key, value, timestamp, headers)
        log.append(m)
        return m

    def load_journal(self, topic: str, records: Iterable[Record]) -> None:
        for r in records:
            m = self.append(topic, r.partition, None if r.key is None else r.key.encode(), r.value,
                            timestamp=r.timestamp)
            assert m.offset() == r.offset

    def messages(self, topic: str) -> list[FakeMessage]:
        return [m for p in sorted(self.topics[topic]) for m in self.topics[topic][p]]

    def read_snapshots(self, topic: str) -> Callable[[list[int]], dict[int, list[tuple[bytes | None, bytes | None]]]]:
        def read(ps: list[int]) -> dict[int, list[tuple[bytes | None, bytes | None]]]:
            return {p: [(m.key(), m.value()) for m in self.topics[topic][p]] for p in ps}
        return read


class FakeProducer:
    """``produce`` keeps records pending; ``flush`` acknowledges them in order (or not)."""

    def __init__(self, broker: FakeBroker, *, journal: str, snapshots: str, crash_at: int | None = None) -> None:
        self.broker = broker
        self.journal = journal
        self.snapshots = snapshots
        self.pending: list[tuple[FakeMessage, Callable[..., None] | None]] = []
        self.produced = 0
        self.crash_at = crash_at
        """Raise ``Crash`` on this produce call (1-based) instead of taking the record."""
        self.stuck = False
        """``flush`` acknowledges nothing and reports everything outstanding."""
        self.refuse = False
        """``flush`` reports every pending record as refused by the broker."""

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, partition: int = -1,
                headers: list[tuple[str, bytes]] | None = None, on_delivery: Callable[..., None] | None = None) -> None:
        self.produced += 1
        if self.crash_at is not None and self.produced >= self.crash_at:
            raise Crash(f"produce #{self.produced}")
        assert partition >= 0, "the worker always names the partition"
        if topic == self.snapshots:
            self._check_snapshot(partition, key, value)
        self.pending.append((FakeMessage(topic, partition, -1, key, value, 0, headers), on_delivery))

    def _check_snapshot(self, p: int, key: bytes | None, value: bytes | None) -> None:
        committed = self.broker.committed.get((self.journal, p))
        assert key is not None and value is not None
        if key.startswith(FLOOR_PREFIX.encode()):
            floor = decode_floor(value)
            if key != f"{FLOOR_PREFIX}{p}".encode() or committed is None or floor > committed:
                self.broker.violations.append(f"floor {key!r}={floor} on {p} with committed {committed}")
        else:
            last = decode_slot(value).last_offset
            if committed is None or last >= committed:
                self.broker.violations.append(f"snapshot {key!r}@{last} on {p} with committed {committed}")

    def poll(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.pending)

    def flush(self, timeout: float | None = None) -> int:
        if self.stuck:
            return len(self.pending)
        self.ack(len(self.pending))
        return 0

    def ack(self, n: int) -> None:
        """Acknowledge the first ``n`` pending records."""
        done, self.pending = self.pending[:n], self.pending[n:]
        for m, cb in done:
            if self.refuse:
                if cb is not None:
                    cb(FakeError(), m)
                continue
            stored = self.broker.append(m.topic(), m.partition(), m.key(), m.value(), headers=m.headers())
            if cb is not None:
                cb(None, stored)

    def ack_some(self, rng: random.Random) -> None:
        """Acknowledge, per topic partition, a random prefix of the pending records
        (what an idempotent producer may have delivered when its process died)."""
        by_tp: dict[tuple[str, int], list[int]] = defaultdict(list)
        for i, (m, _) in enumerate(self.pending):
            by_tp[(m.topic(), m.partition())].append(i)
        keep = set()
        for idx in by_tp.values():
            keep.update(idx[:rng.randint(0, len(idx))])
        for i in sorted(keep):
            m, cb = self.pending[i]
            stored = self.broker.append(m.topic(), m.partition(), m.key(), m.value(), headers=m.headers())
            if cb is not None:
                cb(None, stored)
        self.pending = []


class FakeConsumer:
    """The journal consumer: subscribe with rebalance callbacks, consume what is assigned."""

    def __init__(self, broker: FakeBroker, producer: FakeProducer, *, journal: str, chunk: int = 7,
                 assign_on_first_consume: list[int] | None = None) -> None:
        self.broker = broker
        self.producer = producer
        self.journal = journal
        self.chunk = chunk
        """Records taken from one partition before moving to the next (batches mix partitions)."""
        self.callbacks: dict[str, Callable[..., None]] = {}
        self.positions: dict[int, int] = {}
        self.paused: set[int] = set()
        self.assign_on_first_consume = assign_on_first_consume
        self.commit_calls = 0
        self.crash_on_commit: int | None = None
        """Raise ``Crash`` on this commit call (1-based), before the broker stores it."""
        self.closed = False
        self.unassigned = 0
        self.stuck: set[int] = set()
        """Partitions whose fetcher sits idle (nothing delivered) until they are sought."""
        self.seeks: list[tuple[int, int]] = []

    # subscription and assignment

    def subscribe(self, topics: list[str], on_assign: Callable[..., None] | None = None,
                  on_revoke: Callable[..., None] | None = None, on_lost: Callable[..., None] | None = None) -> None:
        assert topics == [self.journal]
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def rebalance(self, kind: str, partitions: Iterable[int]) -> None:
        self.callbacks[kind](self, [TopicPartition(self.journal, p) for p in partitions])

    def assign(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            assert tp.topic == self.journal
            self.positions[tp.partition] = 0 if tp.offset == OFFSET_BEGINNING else tp.offset
            self.paused.discard(tp.partition)

    def unassign(self) -> None:
        self.unassigned += 1
        self.positions.clear()
        self.paused.clear()

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused.update(tp.partition for tp in tps)

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.partition, tp.offset))
        self.positions[tp.partition] = tp.offset
        self.stuck.discard(tp.partition)

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.positions.get(tp.partition, -1001)) for tp in tps]

    # records

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        if self.assign_on_first_consume is not None:
            ps, self.assign_on_first_consume = self.assign_on_first_consume, None
            self.rebalance("assign", ps)
        out: list[FakeMessage] = []
        while len(out) < num_messages:
            took = False
            for p in sorted(self.positions):
                if p in self.paused or p in self.stuck:
                    continue
                log = self.broker.topics[self.journal][p]
                pos = self.positions[p]
                n = min(self.chunk, num_messages - len(out), len(log) - pos)
                if n > 0:
                    out.extend(log[pos:pos + n])
                    self.positions[p] = pos + n
                    took = True
                if len(out) >= num_messages:
                    break
            if not took:
                break
        return out

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float | None = None,
                              cached: bool = False) -> tuple[int, int]:
        return 0, len(self.broker.topics[self.journal][tp.partition])

    # offsets

    def committed(self, tps: list[TopicPartition], timeout: float | None = None) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.broker.committed.get((tp.topic, tp.partition), NO_OFFSET))
                for tp in tps]

    def commit(self, message: Any = None, offsets: list[TopicPartition] | None = None,
               asynchronous: bool = True) -> None:
        assert not asynchronous and offsets is not None
        self.commit_calls += 1
        if self.crash_on_commit is not None and self.commit_calls >= self.crash_on_commit:
            raise Crash(f"commit #{self.commit_calls}")
        if self.producer.pending:
            self.broker.violations.append(f"commit with {len(self.producer.pending)} outputs unacknowledged")
        plan = {}
        for tp in offsets:
            assert tp.topic == self.journal
            prev = self.broker.committed.get((tp.topic, tp.partition))
            if prev is not None and tp.offset < prev:
                self.broker.violations.append(f"commit of {tp.partition} went back {prev} -> {tp.offset}")
            self.broker.committed[(tp.topic, tp.partition)] = tp.offset
            plan[tp.partition] = tp.offset
        self.broker.commits.append(plan)

    def close(self) -> None:
        self.closed = True
