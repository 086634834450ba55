"""Reading agent entries back from ``agent_state``: what a projector (or a resumed
replay) needs when a key shows up that is not in its cache."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from aosk.errors import UndecodableState
from aosk.kernel import StateDecodeError
from aosk.projectors.batch import AgentEntry
from aosk.projectors.db import qualified

__all__ = ["StoredEntries", "UndecodableState", "read_stored_entries"]


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
        sql.SQL(
            "select agent_id, journal_partition, state, last_offset, audit_head, accepted, rejected, duplicates,"
            " updated_at from {} where agent_id = any(%s)"
        ).format(qualified(schema, "agent_state")),
        (list(want),),
    ).fetchall()
    found = {r[0] for r in rows}
    out.absent.extend(kp for sk, kp in want.items() if sk not in found)
    for agent_id, partition, state, last_offset, head, acc, rej, dup, updated_at in rows:
        key, p = want[agent_id]
        if partition != p:
            out.moved[key] = partition
            continue
        try:
            out.found[key] = AgentEntry.from_stored(state, last_offset, head, (acc, rej, dup), p, updated_at)
        except StateDecodeError as e:
            raise UndecodableState(key, e) from e
    return out
