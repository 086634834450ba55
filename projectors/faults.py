"""Test-only fault injection for projector processes: stop at an exact point of a batch.

``AOSK_PROJECTOR_FAULT=sigstop:<point>:<N>`` (``aosk project``: ``before_write`` or
``in_transaction``) and ``AOSK_REPLAY_FAULT=sigstop:<N>`` (``aosk replay``: after its
N-th catch-up batch): once N batches are done, the process stops itself with SIGSTOP at
that point, once. The tests then kill it, resume it, or let another process take over.
"""

from __future__ import annotations

import logging
import os
import signal

__all__ = ["Fault"]

log = logging.getLogger("aosk.projector")


class Fault:
    def __init__(self, point: str | None, after: int) -> None:
        self.point = point
        self.after = after

    @classmethod
    def parse(cls, spec: str | None, *, points: tuple[str, ...]) -> Fault:
        """``sigstop:<point>:<N>`` with a point of ``points``, or ``sigstop:<N>`` where
        there is only one point; None or "": no fault."""
        if not spec:
            return cls(None, 0)
        parts = spec.split(":")
        if len(parts) == 2 and len(points) == 1:
            parts.insert(1, points[0])
        if len(parts) != 3 or parts[0] != "sigstop" or parts[1] not in points or not parts[2].isdigit():
            raise ValueError(f"unknown fault {spec!r}")
        return cls(parts[1], int(parts[2]))

    def maybe(self, point: str, batches_done: int) -> None:
        """Stop here if this is the point and enough batches are done (once)."""
        if self.point == point and batches_done >= self.after:
            self.point = None
            log.warning("fault injection: stopping this process (SIGSTOP) at %s", point)
            os.kill(os.getpid(), signal.SIGSTOP)
