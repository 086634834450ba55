"""The audit chain: one hash-linked sequence of ``audit_log`` rows per agent key.

``hash = sha256(prev_hash || seq || sha256(raw record value) || canonical verdict)``
with ``seq`` as 8 bytes big-endian, ``prev_hash`` of seq 1 the genesis (32 zero bytes)
and the canonical verdict exactly ``aosk.kernel.canonical_verdict_bytes`` (sorted
compact JSON of the verdict without its human message).

``verify`` recomputes every link from the row's columns (so changing any column the
chain covers, the order, or deleting a row anywhere breaks a link) and then compares
each chain's head with ``agent_state`` (``seq`` and ``audit_head``, and the stored
state against its ``state_hash``), which catches deleted tail rows too. Columns the
chain does not cover, by design: ``message`` (wording may improve), ``tenant_id`` and
``subject`` (conveniences), ``refused`` / ``refusal`` (storage outcome, not a verdict),
and the hashes of migration 0003 (``state_hash``, ``checkpoint``, ``memory_hashes``).

Then, in the same snapshot, the rows people query are checked against the chain and the
hashes its rows record (``audit_checks``: every agent_state column against the stored
state, stored states and checkpoints against their audit rows' state hashes, missing
checkpoints, memory content hashes). ``audit_journal`` checks the audit log against the
journal itself (``aosk audit verify --against-journal``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg import sql

from aosk.kernel import Status, Verdict, canonical_verdict_bytes
from aosk.projectors.audit_checks import (
    ChainEnd,
    HashesFrom,
    agent_state_problems,
    audit_row_problems,
    checkpoint_columns,
    expected_checkpoint,
    hashes_from,
    memory_problems,
    memory_rows,
    orphan_checkpoints,
)
from aosk.projectors.db import qualified
from aosk.projectors.rows import AGENT_COLUMNS, GENESIS, count_verdict, link, ms_of, storable, storage_key

__all__ = ["Break", "VerifyResult", "verify", "verdict_from_row", "ChainReport", "chain_report", "offset_of_seq",
           "seq_at_offset"]

_AUDIT_COLS: Final = (
    "agent_id", "seq", "journal_partition", "journal_offset", "recorded_at", "event_id", "event_type", "kind",
    "reason", "status", "fold_version", "checkpoint_due", "derived_ids", "paged_out_ids",
    "value_hash", "hash", "verdict_bytes", "refused", "state_hash", "checkpoint",
)
_FETCH: Final = 5000


@dataclass(frozen=True, slots=True)
class _Id:
    """Stands in for a derived event / paged-out entry: the canonical verdict keeps only ids."""

    event_id: str = ""
    entry_id: str = ""


@dataclass(frozen=True)
class Break:
    agent_id: str
    seq: int
    problem: str

    def __str__(self) -> str:
        at = f" seq {self.seq}" if self.seq else ""  # seq 0: a journal record with no audit row
        return f"agent {self.agent_id}{at}: {self.problem}"


@dataclass
class VerifyResult:
    agents: int = 0
    rows: int = 0
    refused: int = 0
    breaks: list[Break] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks

    @property
    def first(self) -> Break | None:
        return self.breaks[0] if self.breaks else None


def verdict_from_row(r: dict[str, Any], agent_id: str | None = None, event_id: str | None = None) -> Verdict:
    """The verdict as far as the chain covers it, rebuilt from an audit row."""
    return Verdict(
        kind=r["kind"], reason=r["reason"], message="", agent_id=agent_id if agent_id is not None else r["agent_id"],
        partition=r["journal_partition"], offset=r["journal_offset"], timestamp=ms_of(r["recorded_at"]),
        event_id=event_id if event_id is not None else r["event_id"], event_type=r["event_type"], status=r["status"],
        seq=r["seq"], state_hash=b"", fold_version=r["fold_version"],
        derived=tuple(_Id(event_id=x) for x in r["derived_ids"]),  # type: ignore[misc]
        paged_out=tuple(_Id(entry_id=x) for x in r["paged_out_ids"]),  # type: ignore[misc]
        checkpoint_due=r["checkpoint_due"],
    )


def _canonical(r: dict[str, Any]) -> tuple[bytes | None, str | None]:
    """The canonical verdict bytes of a row, or (None, problem)."""
    exact = r["verdict_bytes"]
    if exact is None:
        return canonical_verdict_bytes(verdict_from_row(r)), None
    exact = bytes(exact)
    try:
        d = json.loads(exact)
        agent_id, event_id = d["agent_id"], d["event_id"]
        paged = d["paged_out"]
    except (ValueError, KeyError, TypeError):
        return None, "verdict_bytes is not a canonical verdict"
    if storage_key(agent_id) != r["agent_id"] or (event_id is None) != (r["event_id"] is None):
        return None, "verdict_bytes names another agent or event than the row"
    if event_id is not None and storable(event_id, limit=256) != r["event_id"]:
        return None, "verdict_bytes names another event than the row"
    if [storable(x, limit=256) for x in paged] != [storable(x, limit=256) for x in r["paged_out_ids"]]:
        return None, "verdict_bytes lists other paged-out entries than the row"
    row = dict(r, paged_out_ids=paged)
    if canonical_verdict_bytes(verdict_from_row(row, agent_id, event_id)) != exact:
        return None, "the row's columns differ from its verdict_bytes"
    return exact, None


def _audit_rows(conn: psycopg.Connection[Any], schema: str, agent: str | None) -> Iterator[dict[str, Any]]:
    """Every audit row (of ``agent``) in agent and seq order, with its checkpoint's columns."""
    where = sql.SQL(" where a.agent_id = %s") if agent is not None else sql.SQL("")
    cp_names, cp_items = checkpoint_columns()
    q = sql.SQL(
        "select {}, {} from {} a left join {} c on c.agent_id = a.agent_id and c.seq = a.seq"
        " left join {} t on t.agent_id = a.agent_id and t.seq = a.seq{} order by a.agent_id, a.seq"
    ).format(
        sql.SQL(", ").join(sql.SQL("a.{}").format(sql.Identifier(c)) for c in _AUDIT_COLS), cp_items,
        qualified(schema, "audit_log"), qualified(schema, "checkpoints"), qualified(schema, "checkpoints_thinned"),
        where,
    )
    names = (*_AUDIT_COLS, *cp_names)
    with conn.cursor(name="aosk_audit_verify") as cur:
        cur.itersize = _FETCH
        cur.execute(q, (agent,) if agent is not None else None)
        for row in cur:
            yield dict(zip(names, row, strict=True))


def _agent_states(conn: psycopg.Connection[Any], schema: str, agent: str | None) -> Iterator[dict[str, Any]]:
    """Every agent_state row (of ``agent``) by column, plus ``state_sha`` (sha256 of the blob)."""
    where = sql.SQL(" where agent_id = %s") if agent is not None else sql.SQL("")
    q = sql.SQL("select {}, sha256(state) from {}{} order by agent_id").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in AGENT_COLUMNS), qualified(schema, "agent_state"), where
    )
    names = (*AGENT_COLUMNS, "state_sha")
    with conn.cursor(name="aosk_audit_states") as cur:
        cur.itersize = 500
        cur.execute(q, (agent,) if agent is not None else None)
        for row in cur:
            yield dict(zip(names, row, strict=True))


class _Walk:
    """One agent's chain as the walk goes: the next link expected and what its end says."""

    __slots__ = ("agent", "prev", "expect", "broken", "status", "counts", "last")

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.prev = GENESIS
        self.expect = 1
        self.broken = False
        self.status: str = Status.NONE
        self.counts = (0, 0, 0)
        self.last: dict[str, Any] | None = None

    def end(self, hashes: HashesFrom) -> ChainEnd | None:
        r = self.last
        if r is None or self.broken:
            return None
        return ChainEnd(
            seq=self.expect - 1, head=self.prev, counts=self.counts, partition=r["journal_partition"],
            offset=r["journal_offset"], recorded_at=r["recorded_at"],
            state_hash=None if r["state_hash"] is None else bytes(r["state_hash"]),
            covered=hashes.covers(r["journal_partition"], r["journal_offset"]),
        )


def verify(conn: psycopg.Connection[Any], schema: str, *, agent_id: str | None = None,
           max_breaks: int = 100) -> VerifyResult:
    """Walk every chain (or ``agent_id``'s), then check the rows people query against it:
    each agent_state row, checkpoint and memory (``aosk.projectors.audit_checks``).
    Breaks are listed in agent order, then seq; ``result.first`` is the first broken
    agent and seq."""
    agent = None if agent_id is None else storage_key(agent_id)
    res = VerifyResult()
    fresh = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction():
        if fresh:  # one snapshot for every table
            conn.execute("set transaction isolation level repeatable read, read only")
        hashes = hashes_from(conn, schema)
        ends: dict[str, ChainEnd | None] = {}
        w: _Walk | None = None
        for r in _audit_rows(conn, schema, agent):
            a = r["agent_id"]
            if w is None or a != w.agent:
                if w is not None:
                    ends[w.agent] = w.end(hashes)
                w = _Walk(a)
                res.agents += 1
            res.rows += 1
            res.refused += r["refused"]
            _walk_row(res, w, r, hashes)
        if w is not None:
            ends[w.agent] = w.end(hashes)
        seen = set(ends)
        for st in _agent_states(conn, schema, agent):
            a = st["agent_id"]
            if a not in seen:
                if st["seq"] > 0:
                    res.breaks.append(Break(a, 1, f"agent_state is at seq {st['seq']} but the agent has no audit rows"))
                    res.agents += 1
                continue
            seen.discard(a)
            end = ends[a]
            if end is not None and _compare_head(res, a, end, st):
                res.breaks.extend(Break(a, end.seq, p) for p in agent_state_problems(st, end))
        for a in sorted(seen):
            end = ends[a]
            if end is not None:
                res.breaks.append(Break(a, end.seq, "the agent has audit rows but no agent_state row"))
        for a, seq in orphan_checkpoints(conn, schema, agent):
            res.breaks.append(Break(a, seq, f"a checkpoint at seq {seq} has no audit row"))
        for m in memory_rows(conn, schema, agent):
            at = m["forgotten_offset"] if m["forgotten"] else m["journal_offset"]
            for p in memory_problems(m, hashes.covers(m["journal_partition"], at)):
                res.breaks.append(Break(m["agent_id"], m["seq"], p))
    res.breaks.sort(key=lambda b: (b.agent_id, b.seq))
    del res.breaks[max_breaks:]
    return res


def _walk_row(res: VerifyResult, w: _Walk, r: dict[str, Any], hashes: HashesFrom) -> None:
    """One audit row: its link (until the chain breaks), then its checkpoint."""
    a = w.agent
    if not w.broken:
        problem = None
        if r["seq"] != w.expect:
            problem = (f"row missing (found seq {r['seq']} next)" if r["seq"] > w.expect
                       else f"seq {r['seq']} out of order")
        else:
            vb, problem = _canonical(r)
            if vb is not None and link(w.prev, w.expect, bytes(r["value_hash"]), vb) != bytes(r["hash"]):
                problem = "hash does not match the row's content and the previous row's hash"
        if problem is not None:
            res.breaks.append(Break(a, w.expect, problem))
            w.broken = True
        else:
            w.prev = bytes(r["hash"])
            w.expect += 1
            w.counts = count_verdict(w.counts, r["kind"])
            w.last = r
    covered = hashes.covers(r["journal_partition"], r["journal_offset"])
    expected = expected_checkpoint(w.status, verdict_from_row(r)) if covered else None
    res.breaks.extend(Break(a, r["seq"], p) for p in audit_row_problems(r, covered=covered, expected=expected))
    w.status = r["status"]


def _compare_head(res: VerifyResult, agent: str, end: ChainEnd, stored: dict[str, Any]) -> bool:
    """The chain's head against agent_state's seq and audit_head; False (a break noted) if they differ."""
    seq, s_seq = end.seq, int(stored["seq"])
    if s_seq > seq:
        missing = f"audit rows after seq {seq} are missing (agent_state is at seq {s_seq})"
        res.breaks.append(Break(agent, seq + 1, missing))
    elif s_seq < seq:
        res.breaks.append(Break(agent, s_seq + 1, f"agent_state is at seq {s_seq} but the chain goes on to seq {seq}"))
    elif bytes(stored["audit_head"]) != end.head:
        res.breaks.append(Break(agent, seq, "agent_state.audit_head is not the chain's head"))
    else:
        return True
    return False


@dataclass(frozen=True)
class ChainReport:
    """One agent's audit chain, verified: its head and, if broken, the first break."""

    agent_id: str
    records: int
    """Audit rows of the agent (one per journal record of its key)."""
    head: bytes | None
    """``agent_state.audit_head``: the hash of the chain's last row (None: not projected)."""
    seq: int
    intact: bool
    first_break: Break | None
    break_offset: int | None
    """The journal offset of the first broken row (None: intact, or the row is missing)."""


def offset_of_seq(conn: psycopg.Connection[Any], schema: str, agent_id: str, seq: int) -> int | None:
    """The journal offset of ``agent_id``'s ``seq``-th record, from its audit row."""
    row = conn.execute(
        sql.SQL("select journal_offset from {} where agent_id = %s and seq = %s").format(
            qualified(schema, "audit_log")), (storage_key(agent_id), seq)).fetchone()
    return None if row is None else int(row[0])


def seq_at_offset(conn: psycopg.Connection[Any], schema: str, agent_id: str, offset: int) -> int | None:
    """The seq of ``agent_id``'s last record at or before journal ``offset`` of its partition."""
    row = conn.execute(
        sql.SQL("select max(seq) from {} where agent_id = %s and journal_offset <= %s").format(
            qualified(schema, "audit_log")), (storage_key(agent_id), offset)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def chain_report(conn: psycopg.Connection[Any], schema: str, agent_id: str) -> ChainReport:
    """``verify`` for one agent, with the chain's head and the first break's journal offset."""
    res = verify(conn, schema, agent_id=agent_id, max_breaks=1)
    row = conn.execute(
        sql.SQL("select seq, audit_head from {} where agent_id = %s").format(qualified(schema, "agent_state")),
        (storage_key(agent_id),)).fetchone()
    first = res.first
    at = None if first is None or not first.seq else offset_of_seq(conn, schema, agent_id, first.seq)
    return ChainReport(agent_id=agent_id, records=res.rows, head=None if row is None else bytes(row[1]),
                       seq=0 if row is None else int(row[0]), intact=res.ok, first_break=first, break_offset=at)
