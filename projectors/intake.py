"""Which consumed records a projector folds, and where each partition stands on the consumer.

Shared by ``aosk project`` (a consumer group) and ``aosk replay`` (``assign()`` up to
targets). ``pos`` is the truth: per partition read, the next offset to fold, i.e. what
``projector_offsets`` holds once the last batch committed. A consumer's own position is
only a fetch position: after a re-seek, a pause or a rebalance it may hand out records
fetched before, behind ``pos`` or repeated, and those are dropped here (``take``), as
are the records of a partition that is stopped, paused or waiting for its seek. Records
are never taken past a gap: a partition is sought back to ``pos`` (``seek``) whenever
its fetch position may have moved elsewhere, and takes nothing until that seek is done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from aosk.journal import OFFSET_BEGINNING, record_from_message
from aosk.kernel import Record
from aosk.projectors.batch import PartitionStop

__all__ = ["PARTITION_EOF", "Intake"]

log = logging.getLogger("aosk.projector")

PARTITION_EOF: Final = -191
"""librdkafka's ``_PARTITION_EOF`` (with ``enable.partition.eof``): not an error."""


class Intake:
    """The positions, stops, pauses and pending seeks of the partitions one consumer reads.

    ``on_error(message, error)`` gets every error message but end-of-partition events,
    which mark the partition in ``eof`` until a record of it is taken again.
    """

    def __init__(self, topic: str, on_error: Callable[[Any, Any], None]) -> None:
        self.topic = topic
        self._on_error = on_error
        self.pos: dict[int, int] = {}
        """Partitions read -> the next offset to fold (stored with the projection)."""
        self.stopped: dict[int, PartitionStop] = {}
        """Partitions stopped at a record that cannot be folded; nothing of them is taken."""
        self.paused: set[int] = set()
        """Partitions paused on the consumer."""
        self.pending_seek: set[int] = set()
        """Partitions to seek back to ``pos`` (once not paused); nothing of them is taken meanwhile."""
        self.eof: set[int] = set()
        """Partitions at their end, nothing taken since (``enable.partition.eof``)."""

    def reset(self, positions: Mapping[int, int]) -> None:
        """Read exactly ``positions`` from now on, on a consumer assigned at them (nothing
        paused, no seek pending); stops stand."""
        self.pos = dict(positions)
        self.paused.clear()
        self.pending_seek.clear()
        self.eof.clear()

    def assigned(self, partition: int, offset: int) -> None:
        """``partition`` was (re-)assigned at its stored ``offset``: not stopped nor paused."""
        self.revoked(partition)
        self.pos[partition] = offset

    def revoked(self, partition: int) -> None:
        """``partition`` is not read any more (everything about it forgotten)."""
        self.pos.pop(partition, None)
        self.stopped.pop(partition, None)
        self.paused.discard(partition)
        self.pending_seek.discard(partition)
        self.eof.discard(partition)

    def advanced(self, ends: Iterable[tuple[int, int]]) -> None:
        """(partition, end) of a committed batch: the next offsets to fold."""
        for p, end in ends:
            self.pos[p] = end

    # -- records -----------------------------------------------------------------------

    def take(self, msgs: list[Any], caps: Mapping[int, int] | None = None,
             over: set[int] | None = None) -> dict[int, list[Record]]:
        """The records of ``msgs`` to fold, per partition, in offset order, without gaps.

        ``caps``: partition -> the offset to fold up to (exclusive); a partition a record
        at or past its cap came for is added to ``over`` (it is to be paused and sought
        back). None: no caps (a live projector folds whatever comes)."""
        parts: dict[int, list[Record]] = {}
        # locals: this loop runs per message (the containers are mutated, never rebound, meanwhile)
        positions, stopped, paused, pending, eof = self.pos, self.stopped, self.paused, self.pending_seek, self.eof
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == PARTITION_EOF:
                    eof.add(m.partition())
                else:
                    self._on_error(m, err)
                continue
            p = m.partition()
            pos = positions.get(p)
            if pos is None or p in stopped or p in paused or p in pending:
                continue
            o = m.offset()
            if o < pos:
                continue  # projected already (fetched before a re-seek)
            if caps is not None and o >= caps[p]:
                if over is not None:
                    over.add(p)
                continue
            if eof:
                eof.discard(p)
            recs = parts.get(p)
            if recs is None:
                recs = parts[p] = []
            elif o <= recs[-1].offset:
                continue  # the same record again, from a fetch made before a re-seek
            recs.append(record_from_message(m))
        return parts

    # -- the consumer ------------------------------------------------------------------

    def pause(self, consumer: Any, partition: int) -> None:
        from confluent_kafka import TopicPartition

        consumer.pause([TopicPartition(self.topic, partition)])
        self.paused.add(partition)

    def resume(self, consumer: Any, partition: int) -> None:
        from confluent_kafka import TopicPartition

        consumer.resume([TopicPartition(self.topic, partition)])
        self.paused.discard(partition)

    def seek(self, consumer: Any, partitions: Iterable[int]) -> None:
        """Seek ``partitions`` back to ``pos`` (each as soon as it is not paused)."""
        self.pending_seek.update(partitions)
        self.seek_pending(consumer)

    def seek_pending(self, consumer: Any) -> None:
        """The pending seeks of partitions not paused; one the consumer cannot do yet (its
        fetcher not started) is tried again at the next call."""
        from confluent_kafka import KafkaException, TopicPartition

        if not self.pending_seek:
            return
        for p in sorted(self.pending_seek - self.paused):
            off = self.pos.get(p)
            if off is None:
                self.pending_seek.discard(p)
                continue
            try:
                consumer.seek(TopicPartition(self.topic, p, off if off > 0 else OFFSET_BEGINNING))
                self.pending_seek.discard(p)
            except KafkaException as e:
                log.debug("seek of partition %d not possible yet (%s); retrying", p, e)

    def park(self, consumer: Any, caps: Mapping[int, int], over: set[int]) -> None:
        """For a reader with targets (``caps``): pause the partitions that reached theirs
        (or are stopped, or were read beyond it, ``over``) and resume those whose target
        moved on, seeking them back to ``pos``."""
        for p in sorted(self.pos):
            at_cap = self.pos[p] >= caps[p] or p in self.stopped
            if (at_cap or p in over) and p not in self.paused:
                self.pause(consumer, p)
                self.pending_seek.add(p)
            elif not at_cap and p not in over and p in self.paused:
                self.resume(consumer, p)
        self.seek_pending(consumer)
