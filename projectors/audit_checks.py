"""What ``aosk audit verify`` checks besides the hash chain: the rows people query.

Each check compares a row with what the audit chain (or a hash an audit row records)
says it must hold, and returns the problems found as text (the caller makes them
``Break``s with the agent and seq):

* ``agent_state_problems``: every column of an agent_state row equals what
  ``rows.agent_row`` (the projector's own function) builds from the stored state blob
  and the agent's chain (its head's partition, offset and time, its verdict counts);
  the blob hashes to ``state_hash``, and that is the state hash the audit row at the
  state's seq recorded;
* ``audit_row_problems``: a record that made a checkpoint has it (or ``aosk db
  thin-checkpoints`` noted it thinned, for interval ones), with the reason, position,
  time and state hash the audit row recorded, and its state hashes to that; a suspend,
  final or requested checkpoint is due whatever the audit row says (those reasons follow
  from columns the chain covers);
* ``memory_problems``: a memory's content (or tombstone) hashes to its ``content_hash``,
  which the audit row of the record that wrote it lists.

Rows written before migration 0003 carry none of these hashes: ``projection_meta``
``audit_hashes_from`` gives, per partition, the first offset projected with them; a
missing hash at or after it is a problem, before it the hash checks are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg import sql

from aosk.errors import ProjectionConfigError
from aosk.kernel import StateDecodeError, decode_state
from aosk.projectors.checkpoints import checkpoint_reason
from aosk.projectors.db import get_meta, qualified
from aosk.projectors.rows import AGENT_COLUMNS, MEMORY_COLUMNS, agent_row, memory_hash, ms_of

__all__ = [
    "ChainEnd", "HashesFrom", "hashes_from", "agent_state_problems", "audit_row_problems", "checkpoint_columns",
    "memory_problems", "memory_rows", "orphan_checkpoints", "expected_checkpoint",
]

_NEVER: Final = 2**62
"""An interval no seq reaches: ``checkpoint_reason`` with it gives only the reasons that
follow from the verdict (suspended, final, requested)."""


@dataclass(frozen=True)
class HashesFrom:
    """Per partition, the first offset whose rows carry the hashes of migration 0003."""

    offsets: Mapping[int, int]

    def covers(self, partition: int, offset: int) -> bool:
        return offset >= self.offsets.get(partition, 0)


def hashes_from(conn: psycopg.Connection[Any], schema: str) -> HashesFrom:
    raw = get_meta(conn, schema, "audit_hashes_from")
    if raw is None:
        raise ProjectionConfigError(
            f"schema {schema} has no audit_hashes_from in projection_meta: it predates migration "
            f"0003_audit_hashes; run `aosk db migrate --schema {schema}` (projectors do it at start)"
        )
    return HashesFrom({int(p): int(o) for p, o in json.loads(raw).items()})


@dataclass(frozen=True, slots=True)
class ChainEnd:
    """What an agent's audit chain says its agent_state row must hold."""

    seq: int
    head: bytes
    counts: tuple[int, int, int]
    partition: int
    offset: int
    recorded_at: datetime
    state_hash: bytes | None
    """The state hash the head row recorded (None: none)."""
    covered: bool
    """Whether the head row is at or after ``audit_hashes_from``."""


# --- agent_state ---------------------------------------------------------------------------


def agent_state_problems(row: Mapping[str, Any], end: ChainEnd) -> list[str]:
    """``row`` (agent_state by column, plus ``state_sha``: sha256 of the blob) against
    its blob and its chain; the head itself (seq, audit_head) is compared by the caller."""
    stored = bytes(row["state"])
    if bytes(row["state_sha"]) != bytes(row["state_hash"]):
        return ["agent_state.state does not hash to agent_state.state_hash"]
    out = []
    if end.covered and end.state_hash is None:
        out.append(f"the audit row at seq {end.seq} records no state hash (agent_state holds the state after it)")
    elif end.state_hash is not None and end.state_hash != bytes(row["state_hash"]):
        out.append(f"agent_state.state and state_hash are not the state the audit row at seq {end.seq} recorded "
                   f"(state hash {bytes(row['state_hash']).hex()[:16]}..., audit row {end.state_hash.hex()[:16]}...)")
    try:
        st = decode_state(stored)
    except StateDecodeError as e:
        return [*out, f"agent_state.state does not decode: {e}"]
    want = agent_row(
        st, partition=end.partition, last_offset=end.offset, state_bytes=stored, state_hash=bytes(row["state_hash"]),
        audit_head=end.head, counts=end.counts, updated_ms=ms_of(end.recorded_at),
    )
    diffs = [
        f"{c} is {_show(row[c])} but should be {_show(w)}"
        for c, w in zip(AGENT_COLUMNS, want, strict=True)
        if c != "state" and not _same(row[c], w)
    ]
    if diffs:
        out.append("agent_state columns differ from its stored state and audit chain: " + "; ".join(diffs))
    return out


def _same(have: Any, want: Any) -> bool:
    if isinstance(have, memoryview):
        have = bytes(have)
    return bool(have == want)


def _show(v: Any) -> str:
    if isinstance(v, (bytes, memoryview)):
        return bytes(v).hex()[:16] + "..."
    if isinstance(v, datetime):
        return v.isoformat()
    return repr(v)


# --- audit rows and their checkpoints ------------------------------------------------------

_CHECKPOINT_JOIN: Final = (
    ("cp_seq", "seq"), ("cp_partition", "journal_partition"), ("cp_offset", "journal_offset"),
    ("cp_taken_at", "taken_at"), ("cp_reason", "reason"), ("cp_fold_version", "fold_version"),
    ("cp_state_hash", "state_hash"),
)


def checkpoint_columns() -> tuple[list[str], sql.Composable]:
    """The names and select-list items the audit walk adds from ``checkpoints c`` and
    ``checkpoints_thinned t`` (joined on agent_id and seq)."""
    names = [n for n, _ in _CHECKPOINT_JOIN] + ["cp_state_sha", "thinned"]
    items: list[sql.Composable] = [sql.SQL("c.{}").format(sql.Identifier(col)) for _, col in _CHECKPOINT_JOIN]
    items += [sql.SQL("sha256(c.state)"), sql.SQL("t.seq is not null")]
    return names, sql.SQL(", ").join(items)


def expected_checkpoint(prev_status: str, verdict: Any) -> str | None:
    """The checkpoint a record must have made whatever the interval (suspended, final,
    requested), from columns the chain covers; None if only an interval one could be."""
    return checkpoint_reason(prev_status, verdict, _NEVER)


def audit_row_problems(r: Mapping[str, Any], *, covered: bool, expected: str | None) -> list[str]:
    """An audit row (with its checkpoint's columns joined, ``cp_*``) against its
    checkpoint. ``covered``: the row is at or after ``audit_hashes_from``; ``expected``:
    ``expected_checkpoint`` of the row."""
    out = []
    recorded = r["checkpoint"]
    if r["cp_seq"] is not None:
        cp_hash = bytes(r["cp_state_hash"])
        if bytes(r["cp_state_sha"]) != cp_hash:
            out.append("the checkpoint's state does not hash to its state_hash")
        where = (r["cp_partition"], r["cp_offset"], r["cp_taken_at"], r["cp_fold_version"])
        if where != (r["journal_partition"], r["journal_offset"], r["recorded_at"], r["fold_version"]):
            out.append("the checkpoint's partition, offset, taken_at or fold_version differ from its audit row's")
        if covered:
            if recorded is None:
                out.append(f"a checkpoint ({r['cp_reason']}) is stored but the audit row records none")
            elif recorded != r["cp_reason"]:
                out.append(f"the checkpoint's reason is {r['cp_reason']} but its audit row records {recorded}")
            if r["state_hash"] is not None and bytes(r["state_hash"]) != cp_hash:
                out.append(f"the checkpoint's state (hash {cp_hash.hex()[:16]}...) is not the state its audit row "
                           f"recorded ({bytes(r['state_hash']).hex()[:16]}...)")
    elif covered and recorded is not None:
        if r["thinned"] and recorded == "interval":
            pass  # aosk db thin-checkpoints deleted it
        elif r["thinned"]:
            out.append(f"the {recorded} checkpoint this record made is missing (noted thinned, but only interval "
                       "checkpoints are thinned)")
        else:
            out.append(f"the {recorded} checkpoint this record made is missing (not thinned by aosk db "
                       "thin-checkpoints)")
    if covered:
        if recorded is not None and r["state_hash"] is None:
            out.append(f"the audit row records a {recorded} checkpoint but no state hash")
        if expected is not None and recorded != expected:
            out.append(f"the record made a {expected} checkpoint but its audit row records "
                       f"{recorded or 'none'}")
    return out


def orphan_checkpoints(conn: psycopg.Connection[Any], schema: str, agent: str | None) -> list[tuple[str, int]]:
    """(agent_id, seq) of checkpoints without an audit row at that seq."""
    where = sql.SQL(" and c.agent_id = %s") if agent is not None else sql.SQL("")
    q = sql.SQL(
        "select c.agent_id, c.seq from {c} c where not exists (select 1 from {a} a where a.agent_id = c.agent_id"
        " and a.seq = c.seq){w} order by 1, 2"
    ).format(c=qualified(schema, "checkpoints"), a=qualified(schema, "audit_log"), w=where)
    return [(str(a), int(s)) for a, s in conn.execute(q, (agent,) if agent is not None else None)]


# --- memories ------------------------------------------------------------------------------

_MEMORY_READ: Final = tuple(c for c in MEMORY_COLUMNS if c != "embedding")


def memory_rows(conn: psycopg.Connection[Any], schema: str, agent: str | None) -> Iterator[dict[str, Any]]:
    """Every memory (of ``agent``) with the audit row of the record that last wrote it:
    ``audit_agent`` and ``audit_hashes`` (None, None when there is no such row)."""
    where = sql.SQL(" where m.agent_id = %s") if agent is not None else sql.SQL("")
    q = sql.SQL(
        "select {cols}, a.agent_id, a.memory_hashes, a.journal_offset is not null from {m} m left join {a} a"
        " on a.journal_partition = m.journal_partition and a.journal_offset ="
        " case when m.forgotten then m.forgotten_offset else m.journal_offset end{w}"
        " order by m.agent_id, m.memory_id"
    ).format(cols=sql.SQL(", ").join(sql.SQL("m.{}").format(sql.Identifier(c)) for c in _MEMORY_READ),
             m=qualified(schema, "memories"), a=qualified(schema, "audit_log"), w=where)
    names = (*_MEMORY_READ, "audit_agent", "audit_hashes", "audit_found")
    with conn.cursor(name="aosk_audit_memories") as cur:
        cur.itersize = 2000
        cur.execute(q, (agent,) if agent is not None else None)
        for row in cur:
            yield dict(zip(names, row, strict=True))


def memory_problems(m: Mapping[str, Any], covered: bool) -> list[str]:
    """A memory row (from ``memory_rows``) against its content hash and its audit row.
    ``covered``: the record that last wrote it is at or after ``audit_hashes_from``."""
    have = None if m["content_hash"] is None else bytes(m["content_hash"])
    if have is None and not covered:
        return []
    what = f"memory {m['memory_id']}"
    want = memory_hash(m)
    if have is None:
        return [f"{what} (tenant {m['tenant_id']}) has no content_hash"]
    if have != want:
        return [f"{what} (tenant {m['tenant_id']}) does not hash to its content_hash: its text, metadata, tenant or "
                "other content was changed after it was written"]
    at = m["forgotten_offset"] if m["forgotten"] else m["journal_offset"]
    if not m["audit_found"]:
        return [f"{what}: no audit row at {m['journal_partition']}:{at}, the record that wrote it"]
    if m["audit_agent"] != m["agent_id"]:
        return [f"{what}: the audit row at {m['journal_partition']}:{at} belongs to agent {m['audit_agent']}"]
    listed = [bytes(h) for h in m["audit_hashes"] or ()]
    if covered and want not in listed:
        return [f"{what} (tenant {m['tenant_id']}) is not what the record at {m['journal_partition']}:{at} wrote "
                "(its content hash is not in that audit row's memory_hashes)"]
    return []

