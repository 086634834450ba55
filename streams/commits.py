"""How often the worker commits its consumer offsets: often enough that a redelivered
record always finds its original verdict in its slot.

After a crash the journal is read again from the last committed offset, and the table
(restored from its changelog) may already hold the slots after some of those records.
The fold answers such a redelivered record with the verdict kept in the slot's
``recent`` (the last ``recent_verdicts`` of that agent). That works only while no agent
has more than ``recent_verdicts`` records past the committed offset, so the worker
counts, per agent, the records folded since its last commit and commits (waiting for it)
before an agent reaches ``cap``. The worker's periodic commit still runs; this gate only
adds commits (for a fleet of busy agents it rarely fires).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

__all__ = ["CommitGate", "DEFAULT_CAP"]

log = logging.getLogger("aosk.streams")

DEFAULT_CAP = 32
"""Half of the 64 verdicts the worker keeps per agent: a margin for the record in flight
and for faust's own bookkeeping."""


class CommitGate:
    """Commits before any agent has ``cap`` folded records past the committed offset."""

    def __init__(self, commit: Callable[[], Awaitable[bool]], *, cap: int = DEFAULT_CAP) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self._commit = commit
        self._cap = cap
        self._since: dict[str, int] = {}
        self.forced = 0
        """How many commits this gate forced (for tests and logs)."""

    async def before(self, key: str) -> None:
        """Call before folding a record of ``key``: commits first if ``key`` is at the cap."""
        if self._since.get(key, 0) < self._cap:
            return
        await self._commit()
        self.forced += 1
        self._since.clear()

    def folded(self, key: str) -> None:
        """Call once a record of ``key`` is folded and its outputs handed over."""
        self._since[key] = self._since.get(key, 0) + 1

    def reset(self) -> None:
        """After a rebalance: everything folded before it is committed or will be redone."""
        self._since.clear()
