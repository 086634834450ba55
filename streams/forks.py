"""Forks: the ``AgentForked`` a worker writes for an accepted ``ForkRequested``.

The fork carries the source's state at ``at_seq``. What the worker can do on its own:

* ``at_seq`` is the source's seq just before the request (the common "fork me now"):
  the state is the slot the worker held before folding the request;
* anything older needs a checkpoint plus the journal after it. That lookup belongs to
  the checkpoint projection (a later issue): ``PastStates`` is the hook it plugs into.
  Without it the fork is logged as pending and not written (nothing wrong is written).

A request judged again after a crash is folded from the same state as the first time,
so the same ``AgentForked`` (same deterministic id) is written again.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aosk.events import AgentForked, ForkRequested, encode
from aosk.kernel import AgentState, Record, fork_event

__all__ = ["PastStates", "NoPastStates", "build_fork"]

log = logging.getLogger("aosk.streams.forks")


class PastStates(Protocol):
    """Where a source agent's state at an older ``seq`` comes from (checkpoints)."""

    def state_at(self, agent_id: str, seq: int) -> AgentState | None: ...


class NoPastStates:
    """The default until checkpoint lookup exists: nothing older than the current state."""

    def state_at(self, agent_id: str, seq: int) -> AgentState | None:
        return None


def build_fork(record: Record, before: AgentState, past: PastStates) -> bytes | None:
    """The encoded ``AgentForked`` for the accepted ``ForkRequested`` in ``record``
    (``before``: the source's state before it), or None when the state at ``at_seq``
    is not available here (logged)."""
    req = record.event
    assert isinstance(req, ForkRequested)
    source: AgentState | None = before if before.seq == req.at_seq else past.state_at(req.agent_id, req.at_seq)
    if source is None or not source.spawned:
        log.warning(
            "fork of %s at seq %d into %s (request %s at %d:%d) is PENDING: this worker holds only the "
            "state at seq %d; forking from an older seq needs checkpoint lookup (streams.forks.PastStates)",
            req.agent_id, req.at_seq, req.new_agent_id, req.event_id, record.partition, record.offset, before.seq,
        )
        return None
    event: AgentForked = fork_event(source, req, partition=record.partition, offset=record.offset,
                                    timestamp_ms=record.timestamp)
    return encode(event)
