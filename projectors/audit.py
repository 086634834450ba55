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
``subject`` (conveniences), ``refused`` / ``refusal`` (storage outcome, not a verdict).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg import sql

from aosk.kernel import Verdict, canonical_verdict_bytes
from aosk.projectors.db import qualified
from aosk.projectors.rows import GENESIS, link, ms_of, storable, storage_key

__all__ = ["Break", "VerifyResult", "verify", "verdict_from_row"]

_AUDIT_COLS: Final = (
    "agent_id", "seq", "journal_partition", "journal_offset", "recorded_at", "event_id", "event_type", "kind",
    "reason", "status", "fold_version", "checkpoint_due", "derived_ids", "paged_out_ids",
    "value_hash", "hash", "verdict_bytes", "refused",
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
        return f"agent {self.agent_id} seq {self.seq}: {self.problem}"


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
    where = sql.SQL(" where agent_id = %s") if agent is not None else sql.SQL("")
    q = sql.SQL("select {} from {}{} order by agent_id, seq").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in _AUDIT_COLS), qualified(schema, "audit_log"), where
    )
    with conn.cursor(name="aosk_audit_verify") as cur:
        cur.itersize = _FETCH
        cur.execute(q, (agent,) if agent is not None else None)
        for row in cur:
            yield dict(zip(_AUDIT_COLS, row, strict=True))


def _heads(conn: psycopg.Connection[Any], schema: str, agent: str | None) -> dict[str, tuple[int, bytes, bool]]:
    where = sql.SQL(" where agent_id = %s") if agent is not None else sql.SQL("")
    rows = conn.execute(
        sql.SQL("select agent_id, seq, audit_head, sha256(state) = state_hash from {}{}").format(
            qualified(schema, "agent_state"), where
        ),
        (agent,) if agent is not None else None,
    ).fetchall()
    return {r[0]: (int(r[1]), bytes(r[2]), bool(r[3])) for r in rows}


def verify(conn: psycopg.Connection[Any], schema: str, *, agent_id: str | None = None,
           max_breaks: int = 100) -> VerifyResult:
    """Walk every chain (or ``agent_id``'s) and compare each head with ``agent_state``.
    Breaks are listed in agent order, then seq; ``result.first`` is the first broken
    agent and seq."""
    agent = None if agent_id is None else storage_key(agent_id)
    res = VerifyResult()
    fresh = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction():
        if fresh:  # one snapshot for the chains and the heads
            conn.execute("set transaction isolation level repeatable read, read only")
        heads = _heads(conn, schema, agent)
        seen: set[str] = set()
        cur_agent: str | None = None
        prev = GENESIS
        expect = 1
        broken = False

        def finish() -> None:
            if cur_agent is None or broken:
                return
            _compare_head(res, cur_agent, expect - 1, prev, heads.get(cur_agent))

        for r in _audit_rows(conn, schema, agent):
            a = r["agent_id"]
            if a != cur_agent:
                finish()
                cur_agent, prev, expect, broken = a, GENESIS, 1, False
                seen.add(a)
                res.agents += 1
            res.rows += 1
            res.refused += r["refused"]
            if broken:
                continue
            problem = None
            if r["seq"] != expect:
                problem = (f"row missing (found seq {r['seq']} next)" if r["seq"] > expect
                           else f"seq {r['seq']} out of order")
            else:
                vb, problem = _canonical(r)
                if vb is not None and link(prev, expect, bytes(r["value_hash"]), vb) != bytes(r["hash"]):
                    problem = "hash does not match the row's content and the previous row's hash"
            if problem is not None:
                res.breaks.append(Break(a, expect, problem))
                broken = True
                continue
            prev = bytes(r["hash"])
            expect += 1
        finish()
        for a in sorted(set(heads) - seen):
            seq = heads[a][0]
            if seq > 0:
                res.breaks.append(Break(a, 1, f"agent_state is at seq {seq} but the agent has no audit rows"))
                res.agents += 1
    res.breaks.sort(key=lambda b: (b.agent_id, b.seq))
    del res.breaks[max_breaks:]
    return res


def _compare_head(res: VerifyResult, agent: str, seq: int, head: bytes, stored: tuple[int, bytes, bool] | None) -> None:
    if stored is None:
        res.breaks.append(Break(agent, seq, "the agent has audit rows but no agent_state row"))
        return
    s_seq, s_head, state_ok = stored
    if s_seq > seq:
        missing = f"audit rows after seq {seq} are missing (agent_state is at seq {s_seq})"
        res.breaks.append(Break(agent, seq + 1, missing))
    elif s_seq < seq:
        res.breaks.append(Break(agent, s_seq + 1, f"agent_state is at seq {s_seq} but the chain goes on to seq {seq}"))
    elif s_head != head:
        res.breaks.append(Break(agent, seq, "agent_state.audit_head is not the chain's head"))
    elif not state_ok:
        res.breaks.append(Break(agent, seq, "agent_state.state does not hash to agent_state.state_hash"))
