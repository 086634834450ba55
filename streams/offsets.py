"""The worker's journal positions, per owned partition: the next offset to fold, the
committed offset, and whether the partition is stopped.

An offset is committed only after every output of the records before it was
acknowledged (the worker flushes its producer first); what is committed is exactly the
offset after the last record folded, never an offset the consumer merely fetched.
Offsets in a partition need not be consecutive: transaction markers take offsets that
``read_committed`` consumers never see, so any offset at or past the next one is
admitted, and anything below it (fetched again after a seek) is dropped.

Pure bookkeeping: no Kafka, unit-tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Cursors"]


@dataclass
class _Cursor:
    next: int
    committed: int | None
    """The group's committed offset (None: never committed)."""
    stopped: bool = False


class Cursors:
    """Per owned partition: the next offset to fold and the committed one."""

    def __init__(self) -> None:
        self._c: dict[int, _Cursor] = {}

    def arm(self, partition: int, *, next_offset: int, committed: int | None) -> None:
        self._c[partition] = _Cursor(next_offset, committed)

    def disarm(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._c.pop(p, None)

    def owned(self) -> set[int]:
        return set(self._c)

    def next_offset(self, partition: int) -> int | None:
        c = self._c.get(partition)
        return None if c is None else c.next

    def committed_offset(self, partition: int) -> int | None:
        c = self._c.get(partition)
        return None if c is None else c.committed

    def silent(self, partition: int) -> bool:
        """Still re-folding records whose outputs were acknowledged before a takeover."""
        c = self._c.get(partition)
        return c is not None and c.committed is not None and c.next < c.committed

    def admit(self, partition: int, offset: int) -> bool:
        """Whether a fetched record is to be folded (owned, not stopped, not folded yet)."""
        c = self._c.get(partition)
        return c is not None and not c.stopped and offset >= c.next

    def advance(self, partition: int, next_offset: int) -> None:
        c = self._c.get(partition)
        if c is not None and next_offset > c.next:
            c.next = next_offset

    def stop(self, partition: int) -> None:
        """The partition is stopped: nothing more is folded (or committed past it)."""
        c = self._c.get(partition)
        if c is not None:
            c.stopped = True

    def release(self, partition: int, next_offset: int) -> None:
        """The partition goes on from ``next_offset`` (the record that stopped it)."""
        c = self._c.get(partition)
        if c is not None:
            c.stopped = False
            c.next = next_offset

    def commit_plan(self, partitions: Iterable[int]) -> dict[int, int]:
        """partition -> offset to commit, for those of ``partitions`` folded past their commit."""
        out = {}
        for p in partitions:
            c = self._c.get(p)
            if c is not None and (c.committed is None or c.next > c.committed):
                out[p] = c.next
        return out

    def committed(self, offsets: dict[int, int]) -> None:
        """``offsets`` (from a plan) are committed now."""
        for p, o in offsets.items():
            c = self._c.get(p)
            if c is not None and (c.committed is None or o > c.committed):
                c.committed = o
