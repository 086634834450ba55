"""Time travel: an agent's state at any journal offset, broker time or seq.

The nearest checkpoint at or before the point, plus the agent's records after it,
folded with the same ``apply``. The journal is kept forever, so every point stays
reachable even after checkpoints are thinned (without one the fold starts at offset 0).
Equal, by construction and by test, to folding the whole prefix of the journal.

Records are picked with the rule every reader shares (``aosk.kernel.route`` /
``fold_key``): from fold version 2 on, a record with the agent's key that is not on the
agent's murmur2 partition belongs to that partition's pseudo-agent, so it is left out
here exactly as the worker and the projector leave it out of the agent's state. The
rules in force at the checkpoint come from the checkpoint's state (its version) and the
partition's pseudo-agent (the count its version 2 marker recorded, which never changes);
without them the fold starts at offset 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from aosk.errors import HistoryError, NoSuchAgent, PartitionStopped, UnknownFingerprint, UnknownFoldVersion
from aosk.journal import JournalReader, Quarantines
from aosk.kernel import (
    INITIAL_VERSION,
    AgentSlot,
    AgentState,
    StateDecodeError,
    apply,
    decode_state,
    params_for,
    pseudo_key,
    route,
    state_hash,
)
from aosk.partitioning import partition_for
from aosk.projectors.checkpoints import Checkpoint, nearest_checkpoint
from aosk.projectors.rows import storage_key
from aosk.reads.agents import first_offset, stored_state

__all__ = ["PointInTime", "HistoryError", "NoSuchAgent", "PartitionStopped", "state_at", "state_at_seq",
           "projected_state_at", "fold_start", "needs_recorded_partitions", "recorded_partitions_of",
           "CheckpointPastStates"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PointInTime:
    agent_id: str
    partition: int
    offset: int
    """The last journal offset of the partition included."""
    state: AgentState
    state_hash: bytes
    checkpoint_seq: int | None
    """Seq of the checkpoint the fold started from (None: from the beginning)."""
    folded: int
    """How many of the agent's records were folded on top of the checkpoint."""


def _fold_range(reader: JournalReader, agent_id: str, partition: int, start_slot: AgentSlot | None,
                version: int, start: int, stop: int, *, partitions: int = 0,
                until_seq: int | None = None) -> tuple[AgentSlot | None, int]:
    """Fold ``agent_id``'s records in [start, stop) on top of ``start_slot``, with fold
    ``version`` and the recorded partition count ``partitions`` in force at ``start``;
    keyless ``KernelUpgraded`` markers in the range switch them as they do live. A record
    with an unknown fingerprint is looked up in the journal's quarantine markers, as the
    worker and the projectors do (``aosk.journal.Quarantines``)."""
    slot = start_slot
    marker = AgentSlot(AgentState(agent_id=pseudo_key(partition), fold_version=version, partitions=partitions))
    folded = 0
    quarantines: Quarantines | None = None
    # closing: the reader's consumer is released here, not when the generator is collected
    with closing(reader.read(partition, start, stop)) as records:
        try:
            for r in records:
                if r.error is not None and (r.key is None or r.key == agent_id):
                    if quarantines is None:
                        quarantines = reader.quarantines()
                    r = quarantines.resolve(r)
                st = marker.state
                try:
                    if r.key is None:
                        marker, _ = apply(marker, r, version=st.fold_version, partitions=st.partitions)
                        continue
                    if r.key != agent_id or route(r, st.fold_version, st.partitions).key != agent_id:
                        continue  # another key's, or misrouted: the partition's pseudo-agent's (fold_key)
                    if until_seq is not None and slot is not None and slot.state.seq >= until_seq:
                        break
                    slot, _ = apply(slot, r, version=st.fold_version, partitions=st.partitions, hash_state=False)
                except (UnknownFingerprint, UnknownFoldVersion) as e:
                    raise PartitionStopped(reader.topic, partition, r.offset, e) from e
                folded += 1
        finally:
            if quarantines is not None:
                quarantines.close()
    return slot, folded


def recorded_partitions_of(blob: bytes | None) -> int:
    """The partition count a pseudo-agent's stored state ``blob`` recorded (0: none, or
    unknown: no state, or one that does not decode)."""
    if blob is None:
        return 0
    try:
        return decode_state(blob).partitions
    except StateDecodeError:
        return 0


def _recorded_partitions(conn: psycopg.Connection[Any], schema: str, partition: int) -> int:
    """The partition count ``partition``'s pseudo-agent recorded (0: none, or unknown here)."""
    try:
        blob = stored_state(conn, schema, storage_key(pseudo_key(partition)))
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return 0
    return recorded_partitions_of(blob)


def needs_recorded_partitions(cp: Checkpoint | None) -> bool:
    """Whether ``fold_start`` from ``cp`` needs the partition's recorded partition count
    (the rules at the checkpoint route by partition)."""
    return cp is not None and params_for(cp.state.fold_version).routes_by_partition


def fold_start(conn: psycopg.Connection[Any] | None, schema: str, partition: int,
               cp: Checkpoint | None, *, recorded: int | None = None) -> tuple[AgentSlot | None, int, int, int]:
    """Where to start folding: (slot, version, recorded partition count, offset). From the
    checkpoint when the partition's rules at it are known, else from offset 0.
    ``recorded``: the count ``recorded_partitions_of`` read already (None: read it here)."""
    if cp is None:
        return None, INITIAL_VERSION, 0, 0
    version = cp.state.fold_version
    partitions = 0
    if params_for(version).routes_by_partition:
        if recorded is not None:
            partitions = recorded
        else:
            partitions = _recorded_partitions(conn, schema, partition) if conn is not None else 0
        if partitions == 0:  # the count is not known here: fold the whole prefix instead
            return None, INITIAL_VERSION, 0, 0
    return AgentSlot(cp.state, last_offset=cp.offset), version, partitions, cp.offset + 1


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
        if end == 0:
            raise _no_record(conn, schema, agent_id, p, f"offset {offset} of partition {p}",
                             f"and partition {p} of {reader.topic} is empty")
        raise HistoryError(f"offset {offset} is past the end of partition {p} of {reader.topic} (next offset {end}); "
                           f"ask for an offset below {end}")
    cp = nearest_checkpoint(conn, schema, agent_id, at_offset=offset) if offset >= 0 else None
    start_slot, version, partitions, start = fold_start(conn, schema, p, cp)
    if start_slot is None:
        cp = None
    slot, folded = _fold_range(reader, agent_id, p, start_slot, version, start, offset + 1, partitions=partitions)
    if slot is None:
        if time_ms is None:
            point = f"offset {offset} of partition {p}"
        else:
            when = datetime.fromtimestamp(time_ms / 1000, UTC).isoformat(timespec="milliseconds")
            point = (f"broker time {when} (offset {offset} of partition {p})" if offset >= 0
                     else f"broker time {when}, before the first record of partition {p}")
        searched = (f"nor in partition {p} of {reader.topic} up to offset {offset}" if offset >= 0
                    else f"and partition {p} of {reader.topic} has no record at or before broker time {time_ms}")
        raise _no_record(conn, schema, agent_id, p, point, searched)
    return PointInTime(agent_id, p, offset, slot.state, state_hash(slot.state), cp.seq if cp else None, folded)


def projected_state_at(conn: psycopg.Connection[Any], schema: str, agent_id: str, *, offset: int | None = None,
                       time_ms: int | None = None,
                       journal: Callable[[], AbstractContextManager[JournalReader]] | None = None) -> PointInTime:
    """``state_at`` from PostgreSQL when the projection can answer (the nearest checkpoint
    plus the agent's ``events`` rows: ``aosk.reads.events.state_at``), else from the
    journal (``state_at`` above, on the reader ``journal()`` lends): the point is past what
    is projected (``ProjectionBehind``), the agent has no projected record yet, the schema
    lacks the rows (``HistoryIncomplete``) or a row on the way lost its payload
    (``EventsRowUnfoldable``). The same state either way, byte for byte. Without
    ``journal`` those cases raise their error. For a time, the ``offset`` of a PostgreSQL
    answer is the agent's last record at or before it (the journal's: the partition's)."""
    from aosk.errors import EventsRowUnfoldable, HistoryIncomplete, ProjectionBehind
    from aosk.reads.events import state_at as events_state_at

    try:
        p = events_state_at(conn, schema, agent_id, offset=offset, time_ms=time_ms)
        return PointInTime(agent_id, p.partition, p.offset, p.state, p.state_hash, p.checkpoint_seq, p.folded)
    except (ProjectionBehind, HistoryIncomplete, EventsRowUnfoldable) as e:
        conn.rollback()
        if journal is None:
            raise
        why: Exception = e
    except NoSuchAgent as e:
        conn.rollback()
        if e.first_offset is not None or journal is None:
            raise  # it exists, later than the point; or no journal to look in
        why = e  # none of its records projected yet: the journal may have them
    log.debug("state_at(%s) from the journal: %s", agent_id, why)
    with journal() as reader:
        return state_at(conn, schema, reader, agent_id, offset=offset, time_ms=time_ms)


def _no_record(conn: psycopg.Connection[Any], schema: str, agent_id: str, partition: int, point: str,
               searched: str) -> NoSuchAgent:
    """The error for an agent without a record at or before ``point`` (``searched``: what
    of the journal was read): unknown to ``schema`` too, or not spawned yet then."""
    first = first_offset(conn, schema, agent_id)
    if first is None:
        return NoSuchAgent(agent_id, f"no such agent: {agent_id!r} (no record of it in schema {schema}, {searched}); "
                                     "check the agent id")
    return NoSuchAgent(agent_id, f"agent {agent_id!r} did not exist yet at {point}: its first record is at "
                                 f"offset {first} of partition {partition}; ask for a point at or after it",
                       first_offset=first)


def state_at_seq(conn: psycopg.Connection[Any] | None, schema: str, reader: JournalReader, agent_id: str,
                 seq: int) -> AgentState | None:
    """The state of ``agent_id`` right after its ``seq``-th record (None if it has fewer).
    Without a connection (no projections yet) the fold starts at offset 0."""
    p = partition_for(agent_id, reader.partitions())
    cp = nearest_checkpoint(conn, schema, agent_id, at_seq=seq) if conn is not None else None
    if cp is not None and cp.seq == seq:
        return cp.state
    start_slot, version, partitions, start = fold_start(conn, schema, p, cp)
    slot, _ = _fold_range(reader, agent_id, p, start_slot, version, start, reader.end_offset(p),
                          partitions=partitions, until_seq=seq)
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
