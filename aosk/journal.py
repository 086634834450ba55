"""Reading the journal back: Kafka messages as the fold's ``Record``s.

``record_from_message`` is the one conversion from a consumed message to the fold's
input (decode, or keep the decode error so the record still takes its place in the
agent's sequence). ``JournalReader`` reads exact offset ranges of one partition, for
point-in-time queries, forks and tests that fold the journal in a plain loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator
from types import TracebackType
from typing import Any

from aosk._kafka import cluster_metadata, high_watermark, quiet
from aosk.errors import AoskError, DecodeError
from aosk.events import decode
from aosk.kernel import Record


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


class JournalReader:
    """Reads offset ranges of the journal without joining a consumer group."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer

        self._topic = topic
        self._bootstrap = bootstrap
        self._closed = False
        self._consumer = Consumer(quiet({
            "bootstrap.servers": bootstrap,
            "group.id": f"aosk-reader-{uuid.uuid4().hex[:8]}",  # assign() only; nothing committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
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

    def partitions(self) -> int:
        md = cluster_metadata(self._consumer, self._bootstrap, self._topic, timeout=10).topics.get(self._topic)
        if md is None or md.error is not None:
            raise AoskError(f"journal topic {self._topic} does not exist; run `aosk topics ensure`")
        return len(md.partitions)

    def end_offset(self, partition: int) -> int:
        """The offset the next record of ``partition`` will get."""
        return high_watermark(self._consumer, self._topic, partition)

    def offset_for_time(self, partition: int, timestamp_ms: int) -> int:
        """The first offset whose broker timestamp is >= ``timestamp_ms`` (end if none)."""
        from confluent_kafka import TopicPartition

        (tp,) = self._consumer.offsets_for_times([TopicPartition(self._topic, partition, timestamp_ms)], timeout=10)
        return self.end_offset(partition) if tp.offset < 0 else int(tp.offset)

    def read(self, partition: int, start: int, stop: int | None = None) -> Generator[Record, None, None]:
        """Records of ``partition`` with ``start <= offset < stop`` (stop None: up to the end now)."""
        from confluent_kafka import TopicPartition

        end = self.end_offset(partition) if stop is None else min(stop, self.end_offset(partition))
        if start >= end:
            return
        self._consumer.assign([TopicPartition(self._topic, partition, start)])
        try:
            while True:
                for msg in self._consumer.consume(1000, timeout=1.0):
                    err = msg.error()
                    if err is not None:
                        if err.code() == -191:  # _PARTITION_EOF
                            return
                        raise AoskError(f"reading {self._topic}[{partition}]: {err.str()}")
                    offset = msg.offset()
                    assert offset is not None  # a record without an error has one
                    if offset >= end:
                        return
                    yield record_from_message(msg)
                    if offset + 1 >= end:
                        return
        finally:
            # A generator left unfinished is closed when it is collected, possibly after
            # the reader: a closed consumer has nothing assigned any more.
            if not self._closed:
                self._consumer.unassign()
