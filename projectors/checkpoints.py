"""Checkpoints: when one is taken, and reading them back.

Policy (the same for every projector and rebuild of a schema, so rebuilds are equal):

* ``interval``: every ``checkpoint_every`` records of a spawned agent (its ``seq`` is a
  multiple of N; N is ``projection_meta.checkpoint_every``, by default the fold
  version's ``checkpoint_interval``, 100);
* ``suspended`` / ``final``: the record that moves the agent into SUSPENDED, or into
  TERMINATED / ERROR;
* ``requested``: an accepted ``CheckpointRequested``.

A checkpoint holds the canonical state bytes at (partition, offset) and their hash; the
fold bounds a state (``FoldParams.state_max_bytes``, under 1 MiB, also a CHECK in the
table), so every checkpoint is bounded. ``thin`` deletes old ones (the journal is kept
forever, so any point stays reachable from an earlier checkpoint plus the journal) and
notes each in ``checkpoints_thinned``. The audit row of a record that made a checkpoint
records its reason and state hash (``checkpoint``, ``state_hash``), which ``aosk audit
verify`` compares with the checkpoint; the interval is a per-schema setting that an
operator may change, so verify reads which records made one from there, not from N.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

from aosk.errors import CheckpointError
from aosk.kernel import AgentState, StateDecodeError, Status, Verdict, decode_state
from aosk.kernel.verdict import Kind
from aosk.projectors.db import qualified
from aosk.projectors.rows import ms_of, storage_key

__all__ = ["checkpoint_reason", "Checkpoint", "CheckpointError", "load_checkpoint", "nearest_checkpoint",
           "nearest_query", "checkpoint_of_row", "thin"]

_FINAL: Final = frozenset({Status.TERMINATED, Status.ERROR})


def checkpoint_reason(prev_status: str, v: Verdict, every: int) -> str | None:
    """Why a checkpoint is taken after the record judged by ``v`` (None: no checkpoint).
    ``prev_status``: the agent's status before the record."""
    if v.kind == Kind.ACCEPTED:
        if v.event_type == "CheckpointRequested":
            return "requested"
        if v.status != prev_status:
            if v.status == Status.SUSPENDED:
                return "suspended"
            if v.status in _FINAL:
                return "final"
    if v.status != Status.NONE and v.seq % every == 0:
        return "interval"
    return None


@dataclass(frozen=True)
class Checkpoint:
    agent_id: str
    seq: int
    partition: int
    offset: int
    taken_at_ms: int
    reason: str
    state: AgentState
    state_hash: bytes


def _row_to_checkpoint(row: tuple[Any, ...]) -> Checkpoint:
    agent_id, seq, partition, offset, taken_at, reason, state_hash, data = row
    data = bytes(data)
    if hashlib.sha256(data).digest() != bytes(state_hash):
        raise CheckpointError(f"checkpoint of {agent_id} at seq {seq} does not match its state_hash (tampered?)")
    try:
        state = decode_state(data)
    except StateDecodeError as e:
        raise CheckpointError(f"checkpoint of {agent_id} at seq {seq} does not decode: {e}") from e
    if state.seq != seq:
        raise CheckpointError(f"checkpoint of {agent_id} at seq {seq} holds the state at seq {state.seq}")
    return Checkpoint(agent_id, seq, partition, offset, ms_of(taken_at), reason, state, bytes(state_hash))


_COLS: Final = sql.SQL("agent_id, seq, journal_partition, journal_offset, taken_at, reason, state_hash, state")


def load_checkpoint(conn: psycopg.Connection[Any], schema: str, agent_id: str, seq: int) -> Checkpoint | None:
    """The checkpoint of ``agent_id`` at exactly ``seq``, verified (None if absent)."""
    row = conn.execute(
        sql.SQL("select {} from {} where agent_id = %s and seq = %s").format(_COLS, qualified(schema, "checkpoints")),
        (storage_key(agent_id), seq),
    ).fetchone()
    return None if row is None else _row_to_checkpoint(row)


def nearest_query(schema: str, agent_id: str, *, at_seq: int | None = None,
                  at_offset: int | None = None) -> tuple[sql.Composed, list[Any]]:
    """``nearest_checkpoint``'s query and parameters (its row: ``checkpoint_of_row``), for a
    caller that sends it with others in one round trip (a pipeline)."""
    cond: sql.Composable = sql.SQL("")
    params: list[Any] = [storage_key(agent_id)]
    if at_seq is not None:
        cond += sql.SQL(" and seq <= %s")
        params.append(at_seq)
    if at_offset is not None:
        cond += sql.SQL(" and journal_offset <= %s")
        params.append(at_offset)
    q = sql.SQL("select {} from {} where agent_id = %s{} order by seq desc limit 1").format(
        _COLS, qualified(schema, "checkpoints"), cond)
    return q, params


def checkpoint_of_row(row: tuple[Any, ...] | None) -> Checkpoint | None:
    """The checkpoint a row of ``nearest_query`` holds, verified (None: no row)."""
    return None if row is None else _row_to_checkpoint(row)


def nearest_checkpoint(
    conn: psycopg.Connection[Any], schema: str, agent_id: str, *, at_seq: int | None = None,
    at_offset: int | None = None,
) -> Checkpoint | None:
    """The latest checkpoint of ``agent_id`` at or before ``at_seq`` / ``at_offset``
    (the latest of all without either), verified; fold the journal after its offset to
    reach any later point."""
    q, params = nearest_query(schema, agent_id, at_seq=at_seq, at_offset=at_offset)
    return checkpoint_of_row(conn.execute(q, params).fetchone())


def thin(conn: psycopg.Connection[Any], schema: str, *, keep_last: int = 10, keep_every: int = 1000) -> int:
    """Delete old checkpoints: per agent, keep the newest ``keep_last`` and every one
    whose seq is a multiple of ``keep_every``, plus every suspend/final/requested one.
    Returns how many were deleted. An operator action: a rebuild recreates them all.

    Each deleted (agent, seq) is recorded in ``checkpoints_thinned`` in the same
    statement, so ``aosk audit verify`` tells a thinned checkpoint from a deleted one."""
    if keep_last < 1 or keep_every < 1:
        raise ValueError("keep_last and keep_every must be >= 1")
    row = conn.execute(
        sql.SQL(
            "with gone as (delete from {t} c using (select agent_id, seq, row_number() over"
            " (partition by agent_id order by seq desc) as r from {t}) ranked"
            " where c.agent_id = ranked.agent_id and c.seq = ranked.seq and ranked.r > %s"
            " and c.seq %% %s <> 0 and c.reason = 'interval' returning c.agent_id, c.seq),"
            " noted as (insert into {thinned} (agent_id, seq) select agent_id, seq from gone on conflict do nothing)"
            " select count(*) from gone"
        ).format(t=qualified(schema, "checkpoints"), thinned=qualified(schema, "checkpoints_thinned")),
        (keep_last, keep_every),
    ).fetchone()
    assert row is not None
    return int(row[0])
