"""Reading the journal back: Kafka messages as the fold's ``Record``s.

``record_from_message`` is the one conversion from a consumed message to the fold's
input (decode, or keep the decode error so the record still takes its place in the
agent's sequence). ``JournalReader`` reads exact offset ranges of one partition, for
point-in-time queries, forks and tests that fold the journal in a plain loop.

``group_consumer_config`` and ``live_partition_count`` are what the processes that share
the journal in a consumer group (projectors, the runtime's ``JournalView``) set up alike.

``Quarantines`` is how every reader honours ``aosk journal quarantine``: a record with an
unknown schema fingerprint stops its partition unless a ``RecordQuarantined`` marker
later in the same partition names its offset. The marker necessarily comes after the
record, so a reader that meets such a record looks ahead (from the record to the end of
the partition now) before it stops; a worker or projector already stopped looks again
now and then. Whether a marker exists depends on the journal alone, so live processing,
a replay and time travel fold the record alike (rejected ``quarantined``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from aosk._kafka import cluster_metadata, consume_ready, high_watermark, quiet
from aosk.errors import AoskError, DecodeError, Quarantined, UnknownFingerprint
from aosk.events import RecordQuarantined, decode
from aosk.kernel import Record

__all__ = ["record_from_message", "JournalReader", "QuarantineMarker", "Quarantines", "OFFSET_BEGINNING",
           "group_consumer_config", "live_partition_count"]

PARTITIONS_TTL_S: Final = 30.0
"""How long ``JournalReader.partitions`` trusts the count it read."""

READ_STALL_S: Final = 60.0
"""How long ``JournalReader.read`` waits for a record it knows exists before it gives up."""

OFFSET_BEGINNING: Final = -2
"""``confluent_kafka.OFFSET_BEGINNING``: the first offset still in the partition."""


def record_from_message(msg: Any) -> Record:
    """A confluent-kafka message (or anything with the same accessors) as a fold input."""
    raw_key = msg.key()
    value = msg.value() or b""
    key = raw_key.decode("utf-8", "replace") if raw_key is not None else None
    try:
        event, error = decode(value), None
    except DecodeError as e:
        event, error = None, e
    # positional: per message, keyword arguments cost a third of building the Record
    return Record(key, msg.partition(), msg.offset(), msg.timestamp()[1], value, event, error)


def group_consumer_config(bootstrap: str, *, group_id: str, client_id: str, session_timeout_ms: int) -> dict[str, Any]:
    """The consumer config of a process that folds the journal in a consumer group and
    keeps its own position (``projector_offsets``, or the fold it restores): auto-commit
    and offset store off (Kafka's committed offsets are at most a hint), only committed
    records (``read_committed``), no automatic reset (every assignment says where to
    start), ``range`` assignment, 4 MiB fetches. Pass it through
    ``KafkaClientLog.configure_consumer`` for the quiet client log."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "client.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "error",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(500, session_timeout_ms // 5),
        "partition.assignment.strategy": "range",
        "fetch.message.max.bytes": 4 * 1024 * 1024,
        "log_level": 3,
    }


def live_partition_count(consumer: Any, topic: str, *, logger: logging.Logger) -> int | None:
    """The partition count of ``topic`` in the cluster's metadata now (None, with a warning
    on ``logger``, if it cannot be read): what ``check_partition_count`` compares with the
    count a partition's fold version 2 marker recorded."""
    try:
        md = consumer.list_topics(topic, timeout=10).topics[topic]
        if not md.error and md.partitions:
            return len(md.partitions)
    except Exception as e:  # noqa: BLE001 - the caller keeps the count it read before
        logger.warning("could not read the partition count of %s: %s", topic, e)
    return None


class JournalReader:
    """Reads offset ranges of the journal without joining a consumer group."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer

        self._topic = topic
        self._bootstrap = bootstrap
        self._closed = False
        self._partitions: tuple[int, float] | None = None
        """(count, when it was read) for ``partitions``."""
        self._consumer = Consumer(quiet({
            "bootstrap.servers": bootstrap,
            "group.id": f"aosk-reader-{uuid.uuid4().hex[:8]}",  # assign() only; nothing committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            # A fetch of a partition read to its end waits this long on the broker, and every
            # next request of this reader (the next range's fetch, its end offset, metadata)
            # waits behind it on the connection (librdkafka's default: 500 ms per range).
            "fetch.wait.max.ms": 5,
        }))

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def topic(self) -> str:
        return self._topic

    def close(self) -> None:
        self._closed = True
        self._consumer.close()

    def quarantines(self) -> Quarantines:
        """A ``Quarantines`` looking ahead on a reader of its own (this one may be mid-read)."""
        return Quarantines.from_journal(self._bootstrap, self._topic)

    def partitions(self) -> int:
        """The journal's partition count, asked of the cluster at most every
        ``PARTITIONS_TTL_S`` (a reader reused for many point-in-time reads would
        otherwise send a metadata request per read; the count only changes by an
        operator's action, which stops every fold anyway: ``PartitionCountChanged``)."""
        now = time.monotonic()
        if self._partitions is not None and now - self._partitions[1] < PARTITIONS_TTL_S:
            return self._partitions[0]
        md = cluster_metadata(self._consumer, self._bootstrap, self._topic, timeout=10).topics.get(self._topic)
        if md is None or md.error is not None:
            raise AoskError(f"journal topic {self._topic} does not exist; run `aosk topics ensure`")
        self._partitions = (len(md.partitions), now)
        return len(md.partitions)

    def end_offset(self, partition: int) -> int:
        """The offset the next record of ``partition`` will get."""
        return high_watermark(self._consumer, self._topic, partition)

    def offset_for_time(self, partition: int, timestamp_ms: int) -> int:
        """The first offset whose broker timestamp is >= ``timestamp_ms`` (end if none)."""
        from confluent_kafka import TopicPartition

        (tp,) = self._consumer.offsets_for_times([TopicPartition(self._topic, partition, timestamp_ms)], timeout=10)
        return self.end_offset(partition) if tp.offset < 0 else int(tp.offset)

    def quarantine_markers(self, partition: int, start: int) -> tuple[list[QuarantineMarker], int]:
        """The valid ``RecordQuarantined`` markers of ``partition`` from ``start`` to its end
        now, and that end (only records without a key are decoded)."""
        end = self.end_offset(partition)
        found = []
        for rec in self.read(partition, start, end, unkeyed_only=True):
            m = QuarantineMarker.of(rec)
            if m is not None:
                found.append(m)
        return found, end

    def read(self, partition: int, start: int, stop: int | None = None, *,
             unkeyed_only: bool = False) -> Generator[Record, None, None]:
        """Records of ``partition`` with ``start <= offset < stop`` (stop None: up to the end
        now); ``unkeyed_only``: only the records without a key (partition markers)."""
        from confluent_kafka import TopicPartition

        end = self.end_offset(partition) if stop is None else min(stop, self.end_offset(partition))
        if start >= end:
            return
        self._consumer.assign([TopicPartition(self._topic, partition, start)])
        quiet_since = time.monotonic()
        try:
            while True:
                # not consume(1000, timeout): it would wait out the timeout for a short range.
                # Short polls: every record up to ``end`` exists, so a read that gets nothing
                # for READ_STALL_S (broker gone, records deleted) fails instead of hanging.
                msgs = consume_ready(self._consumer, 1000, timeout=0.2)
                if not msgs:
                    if time.monotonic() - quiet_since > READ_STALL_S:
                        raise AoskError(f"reading {self._topic}[{partition}]: nothing for {READ_STALL_S:g}s "
                                        f"before offset {end}")
                    continue
                quiet_since = time.monotonic()
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() == -191:  # _PARTITION_EOF
                            return
                        raise AoskError(f"reading {self._topic}[{partition}]: {err.str()}")
                    offset = msg.offset()
                    assert offset is not None  # a record without an error has one
                    if offset >= end:
                        return
                    if not unkeyed_only or msg.key() is None:
                        yield record_from_message(msg)
                    if offset + 1 >= end:
                        return
        finally:
            # A generator left unfinished is closed when it is collected, possibly after
            # the reader: a closed consumer has nothing assigned any more.
            if not self._closed:
                self._consumer.unassign()


@dataclass(frozen=True, slots=True)
class QuarantineMarker:
    """A ``RecordQuarantined`` marker as readers honour it."""

    partition: int
    offset: int
    """The marker's own offset."""
    quarantined_offset: int
    reason: str

    @classmethod
    def of(cls, record: Record) -> QuarantineMarker | None:
        """The marker ``record`` is, if it is one the fold accepts (no key, kernel origin,
        naming an earlier offset); None otherwise."""
        ev = record.event
        if (record.key is not None or not isinstance(ev, RecordQuarantined) or ev.origin != "kernel"
                or not 0 <= ev.quarantined_offset < record.offset):
            return None
        return cls(record.partition, record.offset, ev.quarantined_offset, ev.reason)


class Quarantines:
    """Quarantine markers found by looking ahead in the journal (see the module doc).

    ``scan(partition, start)`` returns the markers from ``start`` to the end of the
    partition now, and that end (``JournalReader.quarantine_markers``); ``from_journal``
    builds one on a reader of its own, opened at the first look. Markers found stay known:
    each look reads only what the previous ones on that partition did not.
    """

    def __init__(self, scan: Callable[[int, int], tuple[list[QuarantineMarker], int]]) -> None:
        self._scan = scan
        self._scanned: dict[int, tuple[int, int]] = {}
        """partition -> [lo, hi) read so far without a gap."""
        self._found: dict[tuple[int, int], QuarantineMarker] = {}
        """(partition, quarantined offset) -> the first marker naming it."""
        self._reader: JournalReader | None = None

    @classmethod
    def from_journal(cls, bootstrap: str, topic: str) -> Quarantines:
        q = cls(lambda p, start: q._journal(bootstrap, topic).quarantine_markers(p, start))
        return q

    def _journal(self, bootstrap: str, topic: str) -> JournalReader:
        if self._reader is None:
            self._reader = JournalReader(bootstrap, topic)
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def marker_for(self, partition: int, offset: int) -> QuarantineMarker | None:
        """The marker naming ``partition:offset``, looking as far as the partition's end now."""
        m = self._found.get((partition, offset))
        if m is not None:
            return m
        lo, hi = self._scanned.get(partition, (-1, -1))
        if not lo <= offset + 1 <= hi:  # markers before offset + 1 cannot name it
            lo = hi = offset + 1
        markers, end = self._scan(partition, hi)
        for m in markers:
            self._found.setdefault((m.partition, m.quarantined_offset), m)
        self._scanned[partition] = (lo, max(hi, end))
        return self._found.get((partition, offset))

    def resolve(self, record: Record) -> Record:
        """``record`` itself, unless it has an unknown fingerprint and a marker names it:
        then the same record with a ``Quarantined`` error (the fold rejects it ``quarantined``)."""
        error = record.error
        if type(error) is not UnknownFingerprint:
            return record
        m = self.marker_for(record.partition, record.offset)
        if m is None:
            return record
        return Record(record.key, record.partition, record.offset, record.timestamp, record.value, None,
                      Quarantined(error.fingerprint, m.offset, m.reason))
