"""Running ``aosk worker`` processes from outside and reading what they wrote.

Shared by ``aosk bench worker`` and the worker tests (``tests/support/worker_harness.py``
re-exports these): the environment a worker subprocess gets, whole-topic reads up to
the end offsets, and ``Coverage``, which follows the verdict topic in a thread and
knows which journal offsets have a verdict, and when the last new one was read.

A journal written in a Kafka transaction has a commit marker after its records: the
marker takes an offset but is never delivered. So "read up to the end offset" stops at
the consumer's position (which moves past markers), not at the last delivered offset
+ 1, and "every journal record has a verdict" is checked against the offsets of the
records actually read (``record_positions``), not against ``range(end)``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aosk._kafka import consume_ready, high_watermark
from aosk.config import Settings

if TYPE_CHECKING:
    from aosk.events import Transition

__all__ = ["worker_env", "Message", "scratch_consumer", "end_offsets", "read_topic", "topic_bytes",
           "record_positions", "group_assignment", "Coverage", "wait_settled"]


def worker_env(settings: Settings, state_dir: Path) -> dict[str, str]:
    """Environment of an ``aosk worker`` subprocess: these settings' broker, topics and
    database, its data directory under ``state_dir``."""
    k = settings.kafka
    return dict(
        os.environ,
        AOSK_KAFKA_BOOTSTRAP=k.bootstrap_servers or "",
        AOSK_TOPIC_PREFIX=k.topic_prefix,
        AOSK_KAFKA_PARTITIONS=str(k.journal_partitions),
        AOSK_KAFKA_SESSION_TIMEOUT_MS=str(k.session_timeout_ms),
        AOSK_STATE_DIR=str(state_dir),
        AOSK_POSTGRESQL_DSN=settings.storage.postgresql.dsn or "postgresql://unused/x",
        PYTHONUNBUFFERED="1",
    )


@dataclass(frozen=True)
class Message:
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def scratch_consumer(bootstrap: str, **overrides: Any) -> Any:
    """A consumer in a group of its own that never commits (read_committed, librdkafka's default)."""
    from confluent_kafka import Consumer

    return Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"aosk-read-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.partition.eof": False, "log_level": 3, **overrides,
    })


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's end offset now (retried while a leader is being elected)."""
    c = scratch_consumer(bootstrap)
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        return {p: high_watermark(c, topic, p) for p in md.partitions}
    finally:
        c.close()


def read_topic(bootstrap: str, topic: str, *, raw: bool = False, timeout: float = 300) -> list[Any]:
    """Every record of ``topic`` up to its end offsets now, partition by partition
    (``Message``s, or confluent-kafka messages with ``raw``)."""
    from confluent_kafka import TopicPartition

    ends = end_offsets(bootstrap, topic)
    c = scratch_consumer(bootstrap)
    out: list[Any] = []
    try:
        todo = {p: e for p, e in ends.items() if e > 0}
        c.assign([TopicPartition(topic, p, 0) for p in todo])
        got: Counter[int] = Counter()
        deadline = time.monotonic() + timeout
        while any(got[p] < e for p, e in todo.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: got {dict(got)} of {todo}")
            msgs = c.consume(5000, timeout=0.5)
            for m in msgs:
                if m.error():
                    raise RuntimeError(m.error().str())
                p = m.partition()
                if m.offset() >= todo[p]:
                    continue
                got[p] = m.offset() + 1
                out.append(m if raw else Message(p, m.offset(), m.timestamp()[1], m.key(), m.value(),
                                                 tuple(m.headers() or ())))
            if not msgs:  # trailing transaction markers: the position is past them
                for tp in c.position([TopicPartition(topic, p) for p in todo]):
                    if tp.offset >= 0:
                        got[tp.partition] = max(got[tp.partition], tp.offset)
    finally:
        c.close()
    return out


def topic_bytes(bootstrap: str, topic: str) -> int:
    """Sum of key + value sizes of every record in ``topic`` now (0 if it does not exist)."""
    from confluent_kafka.admin import AdminClient

    if topic not in AdminClient({"bootstrap.servers": bootstrap, "log_level": 3}).list_topics(timeout=10).topics:
        return 0
    return sum(len(m.key or b"") + len(m.value or b"") for m in read_topic(bootstrap, topic))


def record_positions(messages: list[Any]) -> dict[int, set[int]]:
    """partition -> offsets of the records in ``messages`` (``Message``s or raw)."""
    out: dict[int, set[int]] = defaultdict(set)
    for m in messages:
        if isinstance(m, Message):
            out[m.partition].add(m.offset)
        else:
            out[m.partition()].add(m.offset())
    return out


def group_assignment(bootstrap: str, group: str, topic: str) -> dict[str, set[int]] | None:
    """client id -> partitions of ``topic`` for a STABLE consumer group (None otherwise)."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    if desc.state != ConsumerGroupState.STABLE:
        return None
    out: dict[str, set[int]] = {}
    for m in desc.members:
        tps = m.assignment.topic_partitions if m.assignment else []
        out[m.client_id] = {tp.partition for tp in tps if tp.topic == topic}
    return out


class Coverage:
    """Follows the verdict topic in a thread: which journal offsets have a verdict.

    ``on_verdict(transition, monotonic_time_read)``, if given, is called for every verdict
    read (in the thread; keep it short)."""

    def __init__(self, bootstrap: str, topic: str,
                 on_verdict: Callable[[Transition, float], None] | None = None) -> None:
        from confluent_kafka import TopicPartition

        self._c = scratch_consumer(bootstrap)
        parts = self._c.list_topics(topic, timeout=10).topics[topic].partitions
        self._c.assign([TopicPartition(topic, p, 0) for p in parts])
        self.offsets: dict[int, set[int]] = defaultdict(set)
        self.count = 0
        self.last_new = time.monotonic()
        """When the latest journal offset without a verdict so far got one (monotonic)."""
        self._on_verdict = on_verdict
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aosk-coverage", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from aosk.events import decode_transition

        try:
            while not self._stop.is_set():
                msgs = consume_ready(self._c, 5000, timeout=0.2)  # never measures a timeout as latency
                now = time.monotonic()
                for m in msgs:
                    if m.error():
                        continue
                    t = decode_transition(m.value())
                    with self._lock:
                        seen = self.offsets[t.journal_partition]
                        if t.journal_offset not in seen:
                            seen.add(t.journal_offset)
                            self.last_new = now
                        self.count += 1
                    if self._on_verdict is not None:
                        self._on_verdict(t, now)
        finally:
            self._c.close()

    def last_offsets(self, partitions: set[int]) -> dict[int, int]:
        """The highest journal offset with a verdict, per partition of ``partitions`` that has one."""
        with self._lock:
            return {p: max(self.offsets[p]) for p in partitions if self.offsets.get(p)}

    def distinct(self) -> int:
        with self._lock:
            return sum(len(s) for s in self.offsets.values())

    def covers(self, ends: dict[int, int]) -> bool:
        """Every journal offset below ``ends`` has a verdict (a journal without transactions)."""
        with self._lock:
            return all(len(self.offsets.get(p, ())) >= e and (e == 0 or max(self.offsets[p]) == e - 1)
                       for p, e in ends.items())

    def positions(self) -> dict[int, set[int]]:
        """partition -> journal offsets with a verdict so far (a copy)."""
        with self._lock:
            return {p: set(s) for p, s in self.offsets.items()}

    def missing(self, positions: dict[int, set[int]]) -> int:
        """How many of these journal record positions have no verdict yet."""
        with self._lock:
            return sum(len(offs - self.offsets.get(p, set())) for p, offs in positions.items())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def wait_settled(bootstrap: str, journal: str, coverage: Coverage, *, quiet_s: float, timeout: float,
                 alive: Any = None, progress: Callable[[int, int], None] | None = None) -> float:
    """Waits until every journal record has a verdict and neither the journal nor the
    verdicts have grown for ``quiet_s`` (no more timeouts or derived events to come);
    returns the seconds waited. ``progress(verdicts, journal_end_offsets)`` is called
    on every poll. The journal is read back to check each record's offset, so a
    transactional journal's commit markers are not mistaken for records."""
    t0 = time.monotonic()
    last: tuple[dict[int, int], int] | None = None
    checked: tuple[dict[int, int], int] | None = None  # read back once per quiet state
    stable_since = time.monotonic()
    while True:
        if alive is not None:
            alive()
        ends = end_offsets(bootstrap, journal)
        seen = (ends, coverage.distinct())
        if seen != last:
            last, stable_since = seen, time.monotonic()
        if progress is not None:
            progress(seen[1], sum(ends.values()))
        if coverage.covers(ends) and time.monotonic() - stable_since >= quiet_s:
            return time.monotonic() - t0
        if seen[1] and seen != checked and time.monotonic() - stable_since >= quiet_s:
            checked = seen
            if (coverage.missing(record_positions(read_topic(bootstrap, journal))) == 0
                    and end_offsets(bootstrap, journal) == ends):
                return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"not settled after {timeout:.0f}s: {coverage.distinct()} verdicts for "
                               f"{sum(ends.values())} journal offsets")
        time.sleep(0.5)
