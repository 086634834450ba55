"""Time travel: an agent's state at any journal offset, broker time or seq.

The nearest checkpoint at or before the point, plus the agent's records after it,
folded with the same ``apply``. The journal is kept forever, so every point stays
reachable even after checkpoints are thinned (without one the fold starts at offset 0).
Equal, by construction and by test, to folding the whole prefix of the journal.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from aosk.errors import AoskError
from aosk.journal import JournalReader
from aosk.kernel import INITIAL_VERSION, AgentSlot, AgentState, Record, apply, placeholder, pseudo_key, state_hash
from aosk.partitioning import partition_for
from aosk.projectors.checkpoints import nearest_checkpoint

__all__ = ["PointInTime", "HistoryError", "state_at", "state_at_seq", "CheckpointPastStates"]


class HistoryError(AoskError):
    """The point asked for does not exist (before the agent's first record, past the end)."""


@dataclass(frozen=True)
class PointInTime:
    agent_id: str
    partition: int
    offset: int
    """The last journal offset of the partition included (-1: before the first record)."""
    state: AgentState
    state_hash: bytes
    checkpoint_seq: int | None
    """Seq of the checkpoint the fold started from (None: from the beginning)."""
    folded: int
    """How many of the agent's records were folded on top of the checkpoint."""


def _fold_range(reader: JournalReader, agent_id: str, partition: int, start_slot: AgentSlot | None,
                version: int, start: int, stop: int, *, until_seq: int | None = None) -> tuple[AgentSlot | None, int]:
    """Fold ``agent_id``'s records in [start, stop) on top of ``start_slot``; keyless
    ``KernelUpgraded`` markers in the range switch the version as they do live."""
    slot = start_slot
    marker = AgentSlot(placeholder(pseudo_key(partition), version))
    folded = 0
    records: Iterator[Record] = reader.read(partition, start, stop)
    for r in records:
        if r.key is None:
            marker, _ = apply(marker, r, version=marker.state.fold_version)
            continue
        if r.key != agent_id:
            continue
        if until_seq is not None and slot is not None and slot.state.seq >= until_seq:
            break
        slot, _ = apply(slot, r, version=marker.state.fold_version, hash_state=False)
        folded += 1
    return slot, folded


def state_at(conn: psycopg.Connection[Any], schema: str, reader: JournalReader, agent_id: str, *,
             offset: int | None = None, time_ms: int | None = None) -> PointInTime:
    """The state of ``agent_id`` after the record at ``offset`` of its partition, or
    after the last record with broker time <= ``time_ms``."""
    if (offset is None) == (time_ms is None):
        raise ValueError("give exactly one of offset and time_ms")
    partitions = reader.partitions()
    p = partition_for(agent_id, partitions)
    end = reader.end_offset(p)
    if time_ms is not None:
        offset = reader.offset_for_time(p, time_ms + 1) - 1
    assert offset is not None
    if offset >= end:
        raise HistoryError(f"offset {offset} is past the end of partition {p} (next offset {end})")
    cp = nearest_checkpoint(conn, schema, agent_id, at_offset=offset) if offset >= 0 else None
    if cp is not None:
        start_slot: AgentSlot | None = AgentSlot(cp.state, last_offset=cp.offset)
        version, start = cp.state.fold_version, cp.offset + 1
    else:
        start_slot, version, start = None, INITIAL_VERSION, 0
    slot, folded = _fold_range(reader, agent_id, p, start_slot, version, start, offset + 1)
    state = slot.state if slot is not None else placeholder(agent_id, version)
    return PointInTime(agent_id, p, offset, state, state_hash(state), cp.seq if cp else None, folded)


def state_at_seq(conn: psycopg.Connection[Any] | None, schema: str, reader: JournalReader, agent_id: str,
                 seq: int) -> AgentState | None:
    """The state of ``agent_id`` right after its ``seq``-th record (None if it has fewer).
    Without a connection (no projections yet) the fold starts at offset 0."""
    p = partition_for(agent_id, reader.partitions())
    cp = nearest_checkpoint(conn, schema, agent_id, at_seq=seq) if conn is not None else None
    if cp is not None and cp.seq == seq:
        return cp.state
    if cp is not None:
        start_slot: AgentSlot | None = AgentSlot(cp.state, last_offset=cp.offset)
        version, start = cp.state.fold_version, cp.offset + 1
    else:
        start_slot, version, start = None, INITIAL_VERSION, 0
    slot, _ = _fold_range(reader, agent_id, p, start_slot, version, start, reader.end_offset(p), until_seq=seq)
    if slot is None or slot.state.seq != seq:
        return None
    return slot.state


class CheckpointPastStates:
    """A worker's way to an older state for forks: checkpoints in PostgreSQL + the journal."""

    def __init__(self, dsn: str, schema: str, bootstrap: str, journal_topic: str) -> None:
        self._dsn, self._schema = dsn, schema
        self._bootstrap, self._topic = bootstrap, journal_topic

    def state_at(self, agent_id: str, seq: int) -> AgentState | None:
        with psycopg.connect(self._dsn) as conn, JournalReader(self._bootstrap, self._topic) as reader:
            found = conn.execute("select to_regclass(%s)", (f"{self._schema}.checkpoints",)).fetchone()
            has_checkpoints = found is not None and found[0] is not None
            return state_at_seq(conn if has_checkpoints else None, self._schema, reader, agent_id, seq)
