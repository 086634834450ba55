"""Stopping one partition, never skipping a record.

A record this worker cannot fold (``UnknownFingerprint``: written with a schema newer
than this deployment's ``schemas/``; ``UnknownFoldVersion``: a ``KernelUpgraded`` to a
fold version this code lacks) must not be skipped: a later replay with the new schemas
would fold it, and the two histories would disagree. So the worker

* does not acknowledge it (its offset is never committed; the next owner of the
  partition starts at or before it),
* pauses fetching from its partition (the consumer's ``pause``),
* drops, unacknowledged, every later record of that partition already fetched,
* logs one loud error naming the partition, offset, fingerprint and what to do,

while every other partition goes on. After a rebalance the new owner resumes all assigned
partitions and re-reads from the committed offsets: the record is met again and the
partition stops again, until a worker with the newer schemas / fold version takes it.

A bug (any other exception while folding or producing one record) is handled the same
way: stopping the partition loudly keeps the journal's order intact, where skipping
the record or crash-looping every worker would not.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from aosk.errors import PartitionCountChanged, UnknownFingerprint, UnknownFoldVersion

__all__ = ["Stop", "PartitionStops", "describe_stop"]


@dataclass(frozen=True, slots=True)
class Stop:
    partition: int
    offset: int
    reason: str
    """``unknown_fingerprint`` | ``unknown_fold_version`` | ``partition_count_changed`` | ``error``."""
    message: str


def describe_stop(topic: str, partition: int, offset: int, error: BaseException) -> Stop:
    """The ``Stop`` for ``error`` at ``topic[partition]@offset``, with a message that says
    what happened and what to do."""
    where = f"{topic}[{partition}] at offset {offset}"
    if isinstance(error, UnknownFingerprint):
        return Stop(partition, offset, "unknown_fingerprint",
                    f"partition STOPPED: record {where} has unknown schema fingerprint "
                    f"{error.fingerprint.hex()}; is schemas/ older than the producer? Deploy the "
                    "newer schemas to every worker and restart them; if the record is garbage, "
                    f"`aosk journal quarantine {partition}:{offset} --reason TEXT` releases the partition "
                    "(docs/recovery.md). The record was not skipped and its offset is not committed. "
                    "Other partitions go on.")
    if isinstance(error, UnknownFoldVersion):
        return Stop(partition, offset, "unknown_fold_version",
                    f"partition STOPPED: record {where} needs fold version {error.version}, this "
                    f"worker knows {list(error.known)}; deploy the newer aosk to every worker and "
                    "projector and restart. The record was not skipped; other partitions go on.")
    if isinstance(error, PartitionCountChanged):
        return Stop(partition, offset, "partition_count_changed",
                    f"partition STOPPED at {where}: {error} The record was not skipped; other partitions go on.")
    return Stop(partition, offset, "error",
                f"partition STOPPED: folding record {where} failed with {type(error).__name__}: "
                f"{error}; this is a bug (see the traceback). The record was not skipped and its "
                "offset is not committed; restart the worker once fixed. Other partitions go on.")


class PartitionStops:
    """The partitions this worker has stopped, with why."""

    def __init__(self) -> None:
        self._stops: dict[int, Stop] = {}

    def stop(self, stop: Stop) -> bool:
        """Record ``stop``; False if the partition was already stopped."""
        if stop.partition in self._stops:
            return False
        self._stops[stop.partition] = stop
        return True

    def stopped(self, partition: int) -> Stop | None:
        return self._stops.get(partition)

    def clear(self, partitions: Iterable[int] | None = None) -> None:
        """Forget stops (all, or of ``partitions``): after a rebalance the partition is
        read again from its committed offset and stops again at the same record; or a
        quarantine marker released the partition (``aosk.journal.Quarantines``)."""
        if partitions is None:
            self._stops.clear()
        else:
            for p in partitions:
                self._stops.pop(p, None)

    def __iter__(self) -> Iterator[Stop]:
        return iter(sorted(self._stops.values(), key=lambda s: s.partition))

    def __len__(self) -> int:
        return len(self._stops)
