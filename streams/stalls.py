"""Noticing a partition whose fetcher sits idle although the broker has records for it.

Seen once in a worker started right after a broker restart: librdkafka delivered one
batch, then nothing more for minutes, no error, the records waiting on the broker. A
seek to the partition's next offset restarts its fetch state, and costs nothing when the
partition was merely quiet. ``StallWatch`` keeps the timing (pure, clock passed in); the
worker asks the broker for the end offset only for partitions that have been idle
``stall_s``, and seeks only if records are waiting.

A partition that stays behind after a seek (an open transaction holds the last stable
offset below the end offset, or a transaction marker is the last offset) is sought again
at doubling intervals, logged loudly only the first time.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["StallWatch"]

_MAX_INTERVAL_S = 600.0


class StallWatch:
    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self._last: dict[int, float] = {}
        """partition -> when it last made progress (or was last sought)."""
        self._since: dict[int, float] = {}
        """partition -> when it last made progress."""
        self._interval: dict[int, float] = {}
        """partition -> the wait before the next seek of a partition sought without progress."""

    def progressed(self, partition: int, now: float) -> None:
        """Records of ``partition`` were folded (or there is nothing to fetch)."""
        self._last[partition] = self._since[partition] = now
        self._interval.pop(partition, None)

    def due(self, partition: int, now: float) -> bool:
        """Idle long enough to ask the broker whether records are waiting."""
        last = self._last.setdefault(partition, now)
        self._since.setdefault(partition, now)
        return now - last >= self._interval.get(partition, self.stall_s)

    def idle(self, partition: int, now: float) -> float:
        return now - self._since.get(partition, now)

    def reseek(self, partition: int, now: float) -> bool:
        """``partition`` is sought again now; True the first time since its last progress."""
        first = partition not in self._interval
        self._interval[partition] = min(2 * self._interval.get(partition, self.stall_s), _MAX_INTERVAL_S)
        self._last[partition] = now
        return first

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._last.pop(p, None)
            self._since.pop(p, None)
            self._interval.pop(p, None)
