"""Call timeouts: which open calls a worker must answer with ``CallTimedOut``, and when.

A call's deadline is its request's broker timestamp + ``timeout_ms`` (the fold keeps it
in ``OpenCall.deadline_ms``). The worker decides when a deadline has passed and writes
the decision into the journal (``CallTimedOut``, built by the kernel's
``timeout_events`` with a deterministic id), so replay never re-decides it.

The time a worker compares deadlines with is the *partition's time*:

* while the worker is behind on the partition (records fetched but not yet folded, or
  the broker's high-water mark ahead of what was folded), the largest broker timestamp
  folded so far on it: a backlog being caught up is judged by journal time, so a
  completion already in the journal is folded before its call could time out;
* once caught up (nothing left to fold), the wall clock, never less than the journal
  time: an idle partition must still time calls out. The broker stamps LogAppendTime
  with its own clock, so a worker whose clock runs ahead of the broker's by ``d``
  times calls out up to ``d`` early (keep clocks in sync, as for any Kafka deployment).

Nothing here touches Kafka: ``DeadlineIndex`` and ``PartitionClock`` are plain objects
the worker loop feeds (and the unit tests drive directly).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from aosk.kernel import AgentState

__all__ = ["DeadlineIndex", "PartitionClock", "SentTimeouts", "caught_up"]


class DeadlineIndex:
    """Per partition: agent key -> its earliest open-call deadline (ms).

    Updated after every folded record, rebuilt from the table after a rebalance, dropped
    for revoked partitions. ``due`` lists the keys worth asking ``timeout_events`` about.
    """

    def __init__(self) -> None:
        self._by_partition: dict[int, dict[str, int]] = {}

    def update(self, partition: int, key: str, state: AgentState) -> None:
        calls = state.calls.open
        keys = self._by_partition.setdefault(partition, {})
        if calls:
            keys[key] = min(c.deadline_ms for c in calls)
        else:
            keys.pop(key, None)

    def rebuild(self, partition: int, states: Iterable[tuple[str, AgentState]]) -> None:
        self._by_partition[partition] = {}
        for key, state in states:
            self.update(partition, key, state)

    def drop(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._by_partition.pop(p, None)

    def due(self, partition: int, time_ms: int) -> list[str]:
        """Keys on ``partition`` with a deadline before ``time_ms``, earliest first."""
        keys = self._by_partition.get(partition, {})
        return sorted((k for k, d in keys.items() if d < time_ms), key=lambda k: (keys[k], k))

    def earliest(self, partition: int) -> int | None:
        keys = self._by_partition.get(partition)
        return min(keys.values()) if keys else None

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_partition.values())


@dataclass
class PartitionClock:
    """The largest broker timestamp folded so far on each partition (its journal time)."""

    last_timestamp: dict[int, int] = field(default_factory=dict)

    def observe(self, partition: int, timestamp_ms: int) -> None:
        if timestamp_ms > self.last_timestamp.get(partition, -1):
            self.last_timestamp[partition] = timestamp_ms

    def drop(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.last_timestamp.pop(p, None)

    def time_ms(self, partition: int, *, caught_up: bool, now_ms: int) -> int | None:
        """The partition's time (module doc); None when unknown (behind, nothing folded)."""
        journal = self.last_timestamp.get(partition)
        if caught_up:
            return now_ms if journal is None else max(journal, now_ms)
        return journal


def caught_up(next_offset: int | None, highwater: int | None) -> bool:
    """Nothing is left to fold: the next offset to fold has reached the broker's
    high-water mark (unknown either way: not caught up)."""
    return next_offset is not None and highwater is not None and next_offset >= highwater


class SentTimeouts:
    """``CallTimedOut`` events written but not folded back yet, so a timer tick does not
    write the same one again every interval. An entry older than ``resend_after_s`` is
    forgotten (its send may have been lost with a crashed producer): writing it again is
    harmless, the fold answers a second ``CallTimedOut`` with ``duplicate``."""

    def __init__(self, *, resend_after_s: float = 30.0) -> None:
        self._sent: dict[str, float] = {}
        self._resend_after = resend_after_s

    def should_send(self, event_id: str, now_s: float) -> bool:
        at = self._sent.get(event_id)
        if at is not None and now_s - at < self._resend_after:
            return False
        self._sent[event_id] = now_s
        return True

    def prune(self, now_s: float) -> None:
        old = [e for e, at in self._sent.items() if now_s - at >= self._resend_after]
        for e in old:
            del self._sent[e]
