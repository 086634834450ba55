"""The worker owns its journal offsets: records are folded strictly in offset order per
partition, and an offset is committed only once every record produced for the records
before it has been acknowledged by the broker.

Why not faust's own at-least-once bookkeeping (acks + commits): the fault test showed
faust-streaming 0.15.3 commit offsets of records no agent ever processed, around
rebalances. Stream records are delivered while a partition's table is still being
recovered and before the seek to the committed offset; faust acknowledges records it
skips (flow control, stale generation) on its own, and its commit takes the first run of
consecutive acknowledged offsets, so a skipped range could be committed. Its producer
flush before a commit also does not wait for batches already in flight (aiokafka
``flush`` waits only for batches still in the accumulator). Any of these loses records
after a crash. So the journal topic is consumed with faust acks disabled and this module
decides, per partition:

* ``arm(p, committed)`` after the table of ``p`` is recovered: the next offset to fold
  is the group's committed offset (the worker then seeks there);
* ``admit(p, offset)``: ``FOLD`` exactly the next offset; ``DONE`` for anything below
  (folded already, or committed); ``GAP`` above it (records are missing: seek back);
  ``UNARMED`` for a partition not (yet) owned. Only ``FOLD`` is processed; everything
  else is dropped and fetched again after the seek;
* ``folded(p, offset, deliveries)``: the record's outputs were handed to the producer;
* ``commit_plan()``: per partition, the next offset and the delivery futures to await
  before committing it (``streams.app`` awaits them, then commits).

Pure bookkeeping: no faust, no Kafka, unit-tested on its own.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["Admit", "Cursors", "CommitPlan"]


class Admit(Enum):
    FOLD = "fold"
    DONE = "done"
    GAP = "gap"
    UNARMED = "unarmed"


@dataclass
class _Cursor:
    next: int
    committed: int
    pending: deque[tuple[int, list[Any]]] = field(default_factory=deque)
    """(offset, delivery futures) of folded records past ``committed``."""
    seek_to: int | None = None
    seek_at: float = 0.0


@dataclass(frozen=True)
class CommitPlan:
    offsets: dict[int, int]
    """partition -> offset to commit (the next offset to fold)."""
    deliveries: list[Any]
    """Futures to await first; a failed one means the plan must not be committed."""


class Cursors:
    """Per armed partition: the next offset to fold and what is not committed yet."""

    def __init__(self, *, reseek_after_s: float = 2.0) -> None:
        self._c: dict[int, _Cursor] = {}
        self._reseek_after = reseek_after_s
        self._last_fold_at = 0.0

    # -- ownership ----------------------------------------------------------------------

    def arm(self, partition: int, next_offset: int, *, now: float = 0.0) -> None:
        self._c[partition] = _Cursor(next=next_offset, committed=next_offset)
        self._last_fold_at = max(self._last_fold_at, now)

    def disarm(self, partitions: Iterable[int] | None = None) -> None:
        if partitions is None:
            self._c.clear()
        else:
            for p in partitions:
                self._c.pop(p, None)

    def armed(self) -> set[int]:
        return set(self._c)

    def next_offset(self, partition: int) -> int | None:
        c = self._c.get(partition)
        return None if c is None else c.next

    # -- records ------------------------------------------------------------------------

    def admit(self, partition: int, offset: int) -> Admit:
        c = self._c.get(partition)
        if c is None:
            return Admit.UNARMED
        if offset == c.next:
            return Admit.FOLD
        return Admit.DONE if offset < c.next else Admit.GAP

    def folded(self, partition: int, offset: int, deliveries: list[Any], *, now: float = 0.0) -> bool:
        """Record that ``offset`` was folded and its outputs handed over; False (and
        nothing recorded) if the partition was disarmed or re-armed meanwhile (a
        rebalance during the sends: the record will be fetched and folded again)."""
        c = self._c.get(partition)
        if c is None or offset != c.next:
            return False
        c.next = offset + 1
        self._last_fold_at = max(self._last_fold_at, now)
        c.seek_to = None
        c.pending.append((offset, deliveries))
        return True

    def seek_due(self, partition: int, now: float) -> int | None:
        """The offset to seek ``partition`` to, unless a seek there was made recently."""
        c = self._c.get(partition)
        if c is None:
            return None
        if c.seek_to == c.next and now - c.seek_at < self._reseek_after:
            return None
        c.seek_to, c.seek_at = c.next, now
        return c.next

    def idle(self, now: float, after_s: float) -> bool:
        """Nothing was folded (on any partition) for ``after_s``."""
        return now - self._last_fold_at >= after_s

    def stalled(self, partition: int, *, highwater: int | None, now: float, after_s: float) -> bool:
        """Records exist past the partition's next offset, yet the worker folded nothing at
        all (on any partition) for ``after_s``: nothing is queued, so the partition's
        records are not coming (after a rebalance faust 0.15.3 often delivers nothing for a
        reassigned partition until it is sought again, and records it drops while its flow
        is suspended leave a gap no later record may reveal). A busy worker is never
        stalled: a partition's records may simply be queued behind others'."""
        c = self._c.get(partition)
        if c is None or highwater is None or highwater <= c.next:
            return False
        return self.idle(now, after_s) and now - c.seek_at >= after_s

    # -- commits ------------------------------------------------------------------------

    def commit_plan(self) -> CommitPlan:
        offsets: dict[int, int] = {}
        deliveries: list[Any] = []
        for p, c in self._c.items():
            if c.next > c.committed:
                offsets[p] = c.next
                for _, futs in c.pending:
                    deliveries.extend(futs)
        return CommitPlan(offsets, deliveries)

    def committed(self, offsets: dict[int, int]) -> None:
        """``offsets`` (from a plan) are committed now."""
        for p, o in offsets.items():
            c = self._c.get(p)
            if c is None:
                continue
            c.committed = max(c.committed, o)
            while c.pending and c.pending[0][0] < c.committed:
                c.pending.popleft()

    def uncommitted(self) -> int:
        return sum(len(c.pending) for c in self._c.values())


def failed(deliveries: list[Any]) -> BaseException | None:
    """The first exception among done delivery futures (None: all delivered)."""
    for f in deliveries:
        if isinstance(f, asyncio.Future) and f.done() and not f.cancelled() and f.exception() is not None:
            return f.exception()
        if isinstance(f, asyncio.Future) and f.cancelled():
            return asyncio.CancelledError("delivery cancelled")
    return None
