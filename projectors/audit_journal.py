"""``aosk audit verify --against-journal``: the audit log against the journal itself.

A database can be made consistent with itself after any edit (delete an agent from
every table and nothing in PostgreSQL remembers it); only the journal, the source of
truth, can tell. This reads every record of every partition up to the offset the
projection has reached (``projector_offsets.next_offset``; records after it are not
projected yet, which is not an error) and checks that the audit row at that
(partition, offset) exists and records the record's hash (``value_hash``, sha256 of the
raw value: the same bytes the chain links). Audit rows with no record under them
(extra rows, or rows past the stored offsets) are reported too.

Each partition is read in offset order beside its audit rows (a server-side cursor in
the same order), so memory stays constant whatever the journal's length.

With ``refold`` the records are also folded (``aosk.kernel.apply``, in journal order per
partition, the way ``aosk.kernel.folding`` does) and every checkpoint's and agent_state's
state hash is compared with the hash of the state the fold reaches at that seq: the
strongest check (it needs nothing PostgreSQL holds to be honest), at the fold's speed,
with one partition's agent states in memory at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any, Final

import psycopg
from psycopg import sql

from aosk.errors import AoskError
from aosk.journal import JournalReader, Quarantines
from aosk.kernel import AgentSlot, Record, apply, fold_args, pseudo_key, route, state_hash
from aosk.projectors.db import qualified
from aosk.projectors.rows import storage_key
from aosk.reads.audit import Break, VerifyResult
from aosk.reads.status import projected_offsets

__all__ = ["verify_against_journal"]

_FETCH: Final = 5000
_END: Final = (2**63, "", 0, b"")


def _audit_positions(conn: psycopg.Connection[Any], schema: str,
                     partition: int) -> Iterator[tuple[int, str, int, bytes]]:
    """(offset, agent_id, seq, value_hash) of ``partition``'s audit rows in offset order."""
    q = sql.SQL("select journal_offset, agent_id, seq, value_hash from {} where journal_partition = %s"
                " order by journal_offset").format(qualified(schema, "audit_log"))
    with conn.cursor(name=f"aosk_audit_journal_{partition}") as cur:
        cur.itersize = _FETCH
        cur.execute(q, (partition,))
        for off, agent, seq, vh in cur:
            yield int(off), str(agent), int(seq), bytes(vh)


def _agent_of(rec: Record) -> str:
    """The agent a record belongs to, as far as its key tells (the fold may route a
    misrouted record to the partition's pseudo-agent instead)."""
    return pseudo_key(rec.partition) if rec.key is None else storage_key(rec.key)


class _Refold:
    """One partition folded as the journal is read, then compared with the stored states."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str, partition: int) -> None:
        self.partition = partition
        self.slots: dict[str, AgentSlot] = {}
        self.rule = fold_args(None)
        self.stopped: str | None = None
        rows = conn.execute(sql.SQL("select agent_id, seq, state_hash from {} where journal_partition = %s").format(
            qualified(schema, "checkpoints")), (partition,)).fetchall()
        self.checkpoints = {(str(a), int(q)): bytes(h) for a, q, h in rows}
        self.problems: list[Break] = []

    def add(self, rec: Record) -> None:
        if self.stopped is not None:
            return
        version, partitions = self.rule
        key = route(rec, version, partitions).key
        try:
            slot, v = apply(self.slots.get(key), rec, version=version, partitions=partitions, hash_state=False)
        except AoskError as e:  # an unknown fingerprint or fold version: the projection stops there too
            self.stopped = f"{self.partition}:{rec.offset} ({type(e).__name__})"
            return
        self.slots[key] = slot
        if key == pseudo_key(self.partition):  # a marker may switch the partition's rules
            self.rule = fold_args(slot.state)
        want = self.checkpoints.get((storage_key(key), v.seq))
        if want is not None and want != state_hash(slot.state):
            self.problems.append(Break(storage_key(key), v.seq, f"the checkpoint at seq {v.seq} is not the state "
                                                               "the journal folds to there"))

    def finish(self, conn: psycopg.Connection[Any], schema: str) -> list[Break]:
        rows = conn.execute(sql.SQL("select agent_id, seq, state_hash from {} where journal_partition = %s").format(
            qualified(schema, "agent_state")), (self.partition,)).fetchall()
        stored = {str(a): (int(q), bytes(h)) for a, q, h in rows}
        if self.stopped is not None:
            # The projection is past a record this process cannot fold: the states after it
            # cannot be checked here (a projector with newer schemas or fold version wrote them).
            self.problems.append(Break(pseudo_key(self.partition), 0, f"cannot refold partition {self.partition} "
                                       f"past {self.stopped}, which the projection went past; run the refold "
                                       "with the AOSK that projected it"))
        for key, slot in self.slots.items():
            a = storage_key(key)
            have = stored.get(a)
            if have is None:
                continue  # no agent_state row: reported by the record-hash check as missing audit rows
            if self.stopped is not None:
                continue
            if have[0] != slot.state.seq:
                self.problems.append(Break(a, have[0], f"agent_state is at seq {have[0]}, the journal up to the "
                                                       f"projected offset folds to seq {slot.state.seq}"))
            elif have[1] != state_hash(slot.state):
                self.problems.append(Break(a, have[0], "agent_state.state is not the state the journal folds to"))
        self.slots.clear()
        return self.problems


def verify_against_journal(
    conn: psycopg.Connection[Any],
    schema: str,
    reader: JournalReader,
    *,
    refold: bool = False,
    max_breaks: int = 100,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyResult:
    """Every journal record up to the stored offsets against its audit row (and with
    ``refold`` every stored state against the fold of the journal).
    ``progress(done, total)`` is called now and then (records read, records to read).
    ``result.rows`` counts the records checked; a missing row is a ``Break`` with seq 0."""
    # opens a reader of its own only when a record with an error is met
    with closing(reader.quarantines()) as quarantines:
        return _verify_against_journal(conn, schema, reader, quarantines, refold=refold, max_breaks=max_breaks,
                                       progress=progress)


def _verify_against_journal(conn: psycopg.Connection[Any], schema: str, reader: JournalReader,
                            quarantines: Quarantines, *, refold: bool, max_breaks: int,
                            progress: Callable[[int, int], None] | None) -> VerifyResult:
    res = VerifyResult()
    fresh = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction():
        if fresh:  # the offsets and the audit rows of one moment
            conn.execute("set transaction isolation level repeatable read, read only")
        stored = projected_offsets(conn, schema)
        partitions = reader.partitions()
        total = sum(stored.get(p, 0) for p in range(partitions))
        done = 0
        agents: set[str] = set()
        for p in range(partitions):
            stop = stored.get(p, 0)
            fold = _Refold(conn, schema, p) if refold else None
            rows = _audit_positions(conn, schema, p)
            row = next(rows, _END)
            for rec in reader.read(p, 0, stop):
                if fold is not None:
                    if rec.error is not None:  # a quarantined record folds as every reader folds it
                        rec = quarantines.resolve(rec)
                    fold.add(rec)
                while row[0] < rec.offset:
                    res.breaks.append(Break(row[1], row[2], f"audit row at {p}:{row[0]} has no journal record there"))
                    row = next(rows, _END)
                agent = _agent_of(rec)
                if row[0] > rec.offset:
                    res.breaks.append(Break(agent, 0, f"journal record {p}:{rec.offset} has no audit row (agent "
                                                      f"{agent}'s rows were deleted?)"))
                else:
                    agents.add(row[1])
                    if hashlib.sha256(rec.value).digest() != row[3]:
                        res.breaks.append(Break(row[1], row[2], f"audit row at {p}:{rec.offset} records another "
                                                                f"value_hash than the journal record there"))
                    row = next(rows, _END)
                res.rows += 1
                done += 1
                if progress is not None and done % 1000 == 0:
                    progress(done, total)
            if fold is not None:
                res.breaks.extend(fold.finish(conn, schema))
            end = reader.end_offset(p)
            if end < stop:
                res.breaks.append(Break(pseudo_key(p), 0, f"partition {p} of the journal ends at offset {end}, but "
                                                          f"projector_offsets says the projection is at {stop}"))
            while row is not _END:
                where = "past projector_offsets" if row[0] >= stop else "with no journal record there"
                res.breaks.append(Break(row[1], row[2], f"audit row at {p}:{row[0]} is {where}"))
                row = next(rows, _END)
            if len(res.breaks) >= max_breaks:
                break
        extra = conn.execute(sql.SQL("select agent_id, seq, journal_partition, journal_offset from {} where"
                                     " journal_partition >= %s or journal_partition < 0 order by 3, 4 limit %s").format(
            qualified(schema, "audit_log")), (partitions, max_breaks)).fetchall()
        for agent, seq, p, off in extra:
            res.breaks.append(Break(agent, seq, f"audit row at {p}:{off} is on a partition the journal does not have"))
        if progress is not None:
            progress(done, total)
    res.agents = len(agents)
    res.breaks.sort(key=lambda b: (b.agent_id, b.seq))
    del res.breaks[max_breaks:]
    return res
