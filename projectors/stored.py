"""Reading agent entries back from ``agent_state``: what a projector (or a resumed
replay) needs when a key shows up that is not in its cache, and what the runtime's
``JournalView`` restores a partition from.

``projector_offsets.next_offset`` and the ``agent_state`` rows of a partition are written
in one transaction per batch, so read in one snapshot (``read_partitions``) they are the
fold of the partition up to ``next_offset``: folding on from there gives the states a
fold from offset 0 gives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from aosk.errors import Inconsistent, UndecodableState
from aosk.kernel import StateDecodeError
from aosk.projectors.batch import AgentEntry
from aosk.projectors.db import qualified

__all__ = ["StoredEntries", "StoredPartition", "UndecodableState", "read_stored_entries", "read_stored_offsets",
           "read_partitions"]

_COLUMNS = ("agent_id, journal_partition, state, last_offset, audit_head, accepted, rejected, duplicates,"
            " updated_at")


@dataclass
class StoredEntries:
    found: dict[str, AgentEntry] = field(default_factory=dict)
    """key -> the entry its row holds."""
    absent: list[tuple[str, int]] = field(default_factory=list)
    """(key, partition) of the keys without a row: new agents."""
    moved: dict[str, int] = field(default_factory=dict)
    """key -> partition, for keys whose row was written from another partition."""


def read_stored_entries(conn: psycopg.Connection[Any], schema: str,
                        want: Mapping[str, tuple[str, int]]) -> StoredEntries:
    """The rows of ``want`` (storage key -> (key, the partition it appears on)), in one
    query; raises ``UndecodableState`` for a row whose state does not decode."""
    out = StoredEntries()
    if not want:
        return out
    rows = conn.execute(
        sql.SQL("select " + _COLUMNS + " from {} where agent_id = any(%s)").format(qualified(schema, "agent_state")),
        (list(want),),
    ).fetchall()
    found = {r[0] for r in rows}
    out.absent.extend(kp for sk, kp in want.items() if sk not in found)
    for agent_id, partition, state, last_offset, head, acc, rej, dup, updated_at in rows:
        key, p = want[agent_id]
        if partition != p:
            out.moved[key] = partition
            continue
        out.found[key] = _entry(key, state, last_offset, head, (acc, rej, dup), p, updated_at)
    return out


def _entry(key: str, state: bytes, last_offset: int, head: bytes, counts: tuple[int, int, int], partition: int,
           updated_at: Any) -> AgentEntry:
    try:
        return AgentEntry.from_stored(state, last_offset, head, counts, partition, updated_at)
    except StateDecodeError as e:
        raise UndecodableState(key, e) from e


def read_stored_offsets(conn: psycopg.Connection[Any], schema: str, partitions: list[int]) -> dict[int, int]:
    """``projector_offsets.next_offset`` of each of ``partitions`` (0 without a row)."""
    rows = conn.execute(
        sql.SQL("select partition, next_offset from {} where partition = any(%s)").format(
            qualified(schema, "projector_offsets")
        ),
        (partitions,),
    ).fetchall()
    stored = {int(p): int(o) for p, o in rows}
    return {p: stored.get(p, 0) for p in partitions}


@dataclass
class StoredPartition:
    """One partition as the projection holds it: the fold of its records below ``next_offset``."""

    next_offset: int
    entries: dict[str, AgentEntry] = field(default_factory=dict)
    """key (the state's ``agent_id``, also for keys stored under a ``~h:`` storage key) -> entry."""


def read_partitions(conn: psycopg.Connection[Any], schema: str, partitions: list[int]) -> dict[int, StoredPartition]:
    """The stored offset and every ``agent_state`` row of each of ``partitions``, read in
    one repeatable-read snapshot (the module doc says why that is consistent); a partition
    with nothing projected (``next_offset`` 0) is left out. Raises ``UndecodableState``, and
    ``Inconsistent`` for a row applied at or past its partition's ``next_offset``."""
    with conn.transaction():
        conn.execute("set transaction isolation level repeatable read, read only")
        offsets = read_stored_offsets(conn, schema, partitions)
        out = {p: StoredPartition(o) for p, o in offsets.items() if o > 0}
        if not out:
            return out
        rows = conn.execute(
            sql.SQL("select " + _COLUMNS + " from {} where journal_partition = any(%s)").format(
                qualified(schema, "agent_state")
            ),
            (list(out),),
        ).fetchall()
    for agent_id, partition, state, last_offset, head, acc, rej, dup, updated_at in rows:
        stored = out[partition]
        if last_offset >= stored.next_offset:
            raise Inconsistent(f"agent_state of {agent_id} was applied at offset {last_offset} of partition "
                               f"{partition}, at or past its projector_offsets ({stored.next_offset})")
        e = _entry(agent_id, state, last_offset, head, (acc, rej, dup), partition, updated_at)
        stored.entries[e.slot.state.agent_id] = e
    return out
