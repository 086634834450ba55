"""Writing a folded batch: one transaction with the rows and the offsets.

The transaction, in order:

1. ``pg_advisory_xact_lock_shared(BATCH_LOCK_KEY)`` (``aosk replay`` takes it
   exclusively to swap a rebuilt schema in between two batches);
2. the fencing compare-and-set, partition by partition in ascending order (so two
   processes never deadlock on it): ``update projector_offsets set next_offset = end
   where partition = p and next_offset = start``. No row updated: the stored offset moved
   under this process; the transaction is rolled back (``Fenced``, which says whether
   another process advanced it -- it owns the partition now -- or the offset is behind what
   this process committed: PostgreSQL lost commits, ``synchronous_commit = off`` and a
   crash, and the partition is re-read from there). Doing it first means
   nothing below can collide with the new owner's rows: it holds the row lock until
   commit;
3. the rows, by binary COPY: audit rows, events rows and checkpoints straight into their tables,
   agent states, memories and tasks through temporary staging tables into an upsert (a
   task's patch, ``aosk.projectors.task_rows``, into an update keeping the columns it
   leaves unset). The audit
   row of each agent's last record in the batch records the hash of the state written
   to agent_state (``state_hash``), so ``aosk audit verify`` can tell a stored state
   edited together with ``agent_state.state_hash``;
4. ``pg_notify`` so ``wait_until_projected`` callers wake up.

After the commit, once the writer has rewritten ``VACUUM_SHARE`` of ``agent_state``'s rows
since it last did, it runs ``VACUUM (SKIP_LOCKED)`` on that table: every rewrite leaves the
agent's previous state dead in the TOAST table, which only VACUUM reclaims, and
autovacuum comes at most every ``autovacuum_naptime`` (a minute by default), by which
time a busy projection has rewritten every state, some several times.

A row PostgreSQL refuses (the fold should have rejected its record first) does not stall
the partition: the batch is bisected inside the transaction (savepoints) down to the
record whose rows are refused; that record's audit row is written with ``refused`` and
the error, without its other rows; the audit chain and the fold's state go on
unchanged. Every refusal is logged at ERROR level.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg.types.string import BytesBinaryDumper

from aosk.errors import Fenced, Inconsistent
from aosk.kernel import state_hash
from aosk.projectors.batch import FoldedBatch, FoldedRecord
from aosk.projectors.db import BATCH_LOCK_KEY, qualified, register_vector_dumper
from aosk.projectors.event_rows import EVENT_COLUMNS, EVENT_TYPES, refused_event_row
from aosk.projectors.memory import MemoryChanges, patch_statements
from aosk.projectors.rows import (
    AGENT_COLUMNS,
    AGENT_TYPES,
    AUDIT_COLUMNS,
    AUDIT_STATE_HASH,
    AUDIT_TYPES,
    CHECKPOINT_COLUMNS,
    CHECKPOINT_TYPES,
    MEMORY_COLUMNS,
    memory_types,
    refused_audit_row,
    ts,
)
from aosk.projectors.task_rows import KEY_COLUMNS as TASK_KEY
from aosk.projectors.task_rows import METADATA as TASK_METADATA
from aosk.projectors.task_rows import TASK_COLUMNS, TASK_TYPES, TaskChanges

__all__ = ["Fenced", "Advance", "Refusal", "IdleMaintenance", "ProjectionWriter", "prepare_connection",
           "notify_channel"]

log = logging.getLogger("aosk.projector")

REFUSALS: Final = (psycopg.errors.DataError, psycopg.errors.IntegrityError, psycopg.errors.ProgramLimitExceeded,
                   psycopg.errors.InvalidTextRepresentation)
"""Errors that mean "PostgreSQL will not store these rows", as opposed to errors of the
connection or the transaction (which abort the batch and are retried)."""

_META: Final = "metadata"

VACUUM_SHARE: Final = 0.1
"""The writer vacuums agent_state once it has rewritten this share of the table's rows
(as ``pg_class.reltuples`` last said) since its last vacuum, and at least
``VACUUM_MIN_ROWS``."""
VACUUM_MIN_ROWS: Final = 50
COMPACT_RATIO: Final = 1.5
"""``idle``: agent_state (heap, TOAST and indexes) larger than this multiple of its live
rows is compacted (``VACUUM FULL``)."""
COMPACT_MIN_EXCESS: Final = 2**20
"""``idle`` leaves alone a table less than this many bytes larger than its live rows
(a small table's pages and indexes alone are several times its rows)."""
COMPACT_MAX_BYTES: Final = 256 * 2**20
"""``idle`` compacts agent_state only below this size on disk: ``VACUUM FULL`` holds an
exclusive lock on the table while it rewrites it, for a time growing with its size;
larger tables are left to the operator (docs/operations.md)."""


@dataclass(frozen=True)
class IdleMaintenance:
    """What ``ProjectionWriter.idle`` did to agent_state."""

    rewritten: int
    """Rows this writer rewrote since its previous VACUUM of the table."""
    vacuum_s: float
    disk_before: int = 0
    """Compaction: the table on disk (heap, TOAST, indexes) and its live rows before,
    the table on disk after (0 when it was not compacted)."""
    live: int = 0
    disk_after: int = 0
    compact_s: float = 0.0

    def describe(self) -> str:
        parts = [f"VACUUM after {self.rewritten} rewritten rows ({self.vacuum_s:.2f}s)" if self.rewritten
                 else "no VACUUM due"]
        if self.live:
            mb = 1e6
            parts.append(f"{self.disk_before / mb:.1f} MB on disk for {self.live / mb:.1f} MB of live rows"
                         + (f", compacted to {self.disk_after / mb:.1f} MB ({self.compact_s:.2f}s)"
                            if self.disk_after else ", not compacted"))
        return "; ".join(parts)


@dataclass(frozen=True)
class Advance:
    """One partition's move in a batch: ``start`` (what the table must still say) to ``end``."""

    partition: int
    start: int
    end: int
    last_record_ms: int
    high_watermark: int | None = None


@dataclass(frozen=True)
class Refusal:
    partition: int
    offset: int
    agent_id: str
    seq: int
    error: str


def last_outcomes(outs: list[FoldedRecord]) -> dict[str, FoldedRecord]:
    """Each agent key's last record among ``outs``: its state is the agent_state row written."""
    return {o.key: o for o in outs}


def with_state_hash(o: FoldedRecord) -> tuple[Any, ...]:
    """``o``'s audit row recording the hash of the state after it, for a record whose
    state is stored in agent_state (``aosk audit verify`` compares the two)."""
    row = list(o.audit)
    row[AUDIT_STATE_HASH] = state_hash(o.entry.slot.state)
    return tuple(row)


def notify_channel(schema: str) -> str:
    return f"aosk_projected_{schema}"


def _stage(schema: str, what: str) -> sql.Identifier:
    return sql.Identifier(f"aosk_stage_{what}_{schema}")


def prepare_connection(conn: psycopg.Connection[Any], schema: str) -> int:
    """Per-connection set-up for writing into ``schema``: the vector dumper and the
    temporary staging tables. Returns the oid of ``vector``."""
    oid = register_vector_dumper(conn)
    # COPY looks its dumpers up by type oid, and for bytea that finds psycopg's dbapi20
    # ``Binary`` dumper (pure Python, registered after the bytes one). Registering the
    # bytes dumper again makes it bytea's: the C one where psycopg has it, same bytes on
    # the wire (three bytea columns per audit row: ~0.4 us per record).
    conn.adapters.register_dumper(bytes, BytesBinaryDumper)
    for what, table in (("agent", "agent_state"), ("memory", "memories")):
        conn.execute(
            # including compression: INSERT ... SELECT keeps a value compressed as the staging
            # table compressed it, so it must be the target column's method
            sql.SQL("create temp table if not exists {} (like {} including compression) on commit delete rows").format(
                _stage(schema, what), qualified(schema, table)
            )
        )
    # without the table's not-null constraints: a task's patch leaves columns unset
    conn.execute(
        sql.SQL("create temp table if not exists {} on commit delete rows as select * from {} with no data").format(
            _stage(schema, "task"), qualified(schema, "tasks")
        )
    )
    conn.commit()
    return oid


def _cols(names: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _upsert(schema: str, table: str, stage: sql.Identifier, columns: Sequence[str], key: Sequence[str]) -> sql.Composed:
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in columns if c not in key
    )
    return sql.SQL(
        "insert into {t} ({c}) select {c} from pg_temp.{s} on conflict ({k}) do update set {u}; delete from pg_temp.{s}"
    ).format(t=qualified(schema, table), c=_cols(columns), s=stage, k=_cols(key), u=updates)


def _patch(schema: str, table: str, stage: sql.Identifier, columns: Sequence[str], key: Sequence[str]) -> sql.Composed:
    """Update existing rows from the staged patches: a column staged as NULL keeps its value."""
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = coalesce(s.{0}, t.{0})").format(sql.Identifier(c)) for c in columns if c not in key
    )
    match = sql.SQL(" and ").join(sql.SQL("t.{0} = s.{0}").format(sql.Identifier(c)) for c in key)
    return sql.SQL("update {t} t set {u} from pg_temp.{s} s where {m}; delete from pg_temp.{s}").format(
        t=qualified(schema, table), u=updates, s=stage, m=match)


class ProjectionWriter:
    """Writes folded batches into one projection schema (live ``aosk`` or a shadow)."""

    def __init__(self, schema: str, *, vector_oid: int, owner: str = "") -> None:
        self.schema = schema
        self.owner = owner
        self._mem_types = memory_types(vector_oid)
        q = lambda t: qualified(schema, t)  # noqa: E731 - a one-line local shorthand
        self._copy_audit = sql.SQL("copy {} ({}) from stdin (format binary)").format(
            q("audit_log"), _cols(AUDIT_COLUMNS)
        )
        self._copy_events = sql.SQL("copy {} ({}) from stdin (format binary)").format(
            q("events"), _cols(EVENT_COLUMNS)
        )
        self._copy_cp = sql.SQL("copy {} ({}) from stdin (format binary)").format(
            q("checkpoints"), _cols(CHECKPOINT_COLUMNS)
        )
        self._copy_agent = sql.SQL("copy pg_temp.{} ({}) from stdin (format binary)").format(
            _stage(schema, "agent"), _cols(AGENT_COLUMNS)
        )
        self._copy_mem = sql.SQL("copy pg_temp.{} ({}) from stdin (format binary)").format(
            _stage(schema, "memory"), _cols(MEMORY_COLUMNS)
        )
        self._upsert_agent = _upsert(schema, "agent_state", _stage(schema, "agent"), AGENT_COLUMNS, ("agent_id",))
        self._upsert_mem = _upsert(schema, "memories", _stage(schema, "memory"), MEMORY_COLUMNS,
                                   ("agent_id", "memory_id"))
        self._embed, self._forget = patch_statements(schema)
        self._copy_task = sql.SQL("copy pg_temp.{} ({}) from stdin (format binary)").format(
            _stage(schema, "task"), _cols(TASK_COLUMNS)
        )
        self._upsert_task = _upsert(schema, "tasks", _stage(schema, "task"), TASK_COLUMNS, TASK_KEY)
        self._patch_task = _patch(schema, "tasks", _stage(schema, "task"), TASK_COLUMNS, TASK_KEY)
        self._cas = sql.SQL(
            "update {} set next_offset = %s, high_watermark = %s, last_record_at = %s, committed_at = %s, owner = %s"
            " where partition = %s and next_offset = %s"
        ).format(q("projector_offsets"))
        self._position = sql.SQL("select next_offset, owner from {} where partition = %s").format(
            q("projector_offsets"))
        self._notify = sql.SQL("select pg_notify({}, '')").format(sql.Literal(notify_channel(schema)))
        self.last_rows: dict[str, int] = {}
        """Rows the last committed ``write`` wrote, by table (``aosk_projector_rows_total``)."""
        self._vacuum = sql.SQL("vacuum (skip_locked) {}").format(q("agent_state"))
        self._vacuum_full = sql.SQL("vacuum (full, skip_locked) {}").format(q("agent_state"))
        self._disk = sql.SQL("select pg_total_relation_size(oid), reltuples from pg_class where oid = {}::regclass"
                             ).format(sql.Literal(f"{schema}.agent_state"))
        self._live = sql.SQL("select coalesce(sum(pg_column_size(a.*)), 0), count(*) from {} a").format(
            q("agent_state"))
        self._rewritten = 0
        self._since_compact = 0
        self._vacuum_after = VACUUM_MIN_ROWS
        self._reltuples_seen = 0.0
        self.vacuums = 0
        """How often this writer vacuumed agent_state."""

    # -- the transaction ------------------------------------------------------------------

    def write(
        self,
        conn: psycopg.Connection[Any],
        batch: FoldedBatch,
        advances: Sequence[Advance],
        *,
        after_cas: Callable[[], None] | None = None,
    ) -> list[Refusal]:
        """Commit ``batch`` and ``advances`` atomically; raises ``Fenced`` (rolled back)
        when another process moved one of the partitions. ``after_cas`` runs once the
        partitions are locked (fault injection in tests)."""
        refused: list[Refusal] = []
        self.last_rows = {}
        now = datetime.now(UTC)  # operational column only (committed_at), never a projection's time
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock_shared(%s)", (BATCH_LOCK_KEY,))
            with conn.cursor() as cur:
                for a in sorted(advances, key=lambda a: a.partition):
                    cur.execute(self._cas, (a.end, a.high_watermark, ts(a.last_record_ms), now, self.owner,
                                            a.partition, a.start))
                    if cur.rowcount != 1:
                        raise self._fenced(cur, a)
            if after_cas is not None:
                after_cas()
            if batch.outcomes:
                self._write_range(conn, batch.outcomes, refused)
            conn.execute(self._notify)
        rewritten = self.last_rows.get("agent_state", 0)
        self._rewritten += rewritten
        self._since_compact += rewritten
        if self._rewritten >= self._vacuum_after:
            self._vacuum_agent_state(conn)
        return refused

    @property
    def idle_due(self) -> bool:
        """Whether ``idle`` has something to do."""
        return self._rewritten >= VACUUM_MIN_ROWS or self._after_burst()

    def _after_burst(self) -> bool:
        """This writer rewrote as many agent_state rows as the table holds (at least
        ``VACUUM_MIN_ROWS``) since ``idle`` last measured the table."""
        return self._since_compact >= max(VACUUM_MIN_ROWS, self._reltuples_seen)

    def idle(self, conn: psycopg.Connection[Any], *, compact_ratio: float = COMPACT_RATIO) -> IdleMaintenance | None:
        """The projector has read everything there is.

        - VACUUM agent_state if this writer rewrote at least ``VACUUM_MIN_ROWS`` rows
          since it last did, so what its last batches left dead does not wait for the
          next burst or autovacuum;
        - after a burst (``_after_burst``: a catch-up, a rebuild's tail), measure the
          table, and compact it with ``VACUUM (FULL, SKIP_LOCKED)`` if it is larger on
          disk than ``compact_ratio`` times its live rows (0: never), by
          ``COMPACT_MIN_EXCESS`` at least, and smaller than ``COMPACT_MAX_BYTES``. VACUUM
          makes dead versions' room reusable but gives none back: the table keeps the
          size of its busiest moment, when the new states of each batch in flight needed
          room next to the old ones still visible (a batch that rewrites a share of the
          table needs that share more), which plain VACUUM cannot undo.

        Returns what was done, None when nothing was due."""
        if not self.idle_due:
            return None
        rewritten, vacuum_s = self._rewritten, 0.0
        if rewritten >= VACUUM_MIN_ROWS:
            t = time.perf_counter()
            if not self._vacuum_agent_state(conn):
                return None
            vacuum_s = time.perf_counter() - t
        else:
            rewritten = 0
        done = IdleMaintenance(rewritten, vacuum_s)
        if not self._after_burst():
            return done
        self._since_compact = 0
        try:
            disk, reltuples = self._row(conn, self._disk)
            self._reltuples_seen = max(self._reltuples_seen, float(reltuples))
            if compact_ratio <= 0 or disk > COMPACT_MAX_BYTES:
                return done
            live, rows = self._row(conn, self._live)  # reads the TOAST table: once per burst
            self._reltuples_seen = float(rows)
            measured = dataclasses.replace(done, disk_before=int(disk), live=int(live))
            if not live or disk <= compact_ratio * live or disk - live < COMPACT_MIN_EXCESS:
                return measured
            t = time.perf_counter()
            if not self._autocommit(conn, self._vacuum_full):
                return measured
            after, _ = self._row(conn, self._disk)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as e:
            log.warning("measuring or compacting %s.agent_state failed: %s", self.schema, e)
            if not conn.closed:
                conn.rollback()
            return done
        return dataclasses.replace(measured, disk_after=int(after), compact_s=time.perf_counter() - t)

    @staticmethod
    def _row(conn: psycopg.Connection[Any], query: sql.Composed) -> tuple[float, float]:
        row = conn.execute(query).fetchone()
        conn.commit()
        return (float(row[0] or 0), float(row[1] or 0)) if row else (0.0, 0.0)

    def _autocommit(self, conn: psycopg.Connection[Any], statement: sql.Composed) -> bool:
        """Run a VACUUM (not allowed in a transaction); False if it failed (logged)."""
        autocommit = conn.autocommit
        try:
            conn.autocommit = True
            conn.execute(statement)
            return True
        except psycopg.OperationalError:
            raise
        except psycopg.Error as e:
            log.warning("%s on %s failed (autovacuum will do it): %s", statement.as_string(conn), self.schema, e)
            return False
        finally:
            if not conn.closed:
                conn.autocommit = autocommit

    def _vacuum_agent_state(self, conn: psycopg.Connection[Any]) -> bool:
        """VACUUM agent_state (the module doc says why) and set when to do it next. Not
        inside a caller's transaction (left to autovacuum then); a VACUUM that fails is
        logged and the projection goes on. True if it ran."""
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            return False
        ok = self._autocommit(conn, self._vacuum)
        self._rewritten = 0
        if not ok:
            return False
        self.vacuums += 1
        try:
            self._reltuples_seen = max(0.0, self._row(conn, self._disk)[1])
        except psycopg.OperationalError:
            raise
        except psycopg.Error as e:
            log.warning("reading agent_state's row count failed: %s", e)
            if not conn.closed:
                conn.rollback()
            return True
        self._vacuum_after = max(VACUUM_MIN_ROWS, int(VACUUM_SHARE * self._reltuples_seen))
        return True

    def _fenced(self, cur: psycopg.Cursor[Any], a: Advance) -> Fenced:
        """What the table says instead of ``a.start``: ahead (another owner advanced it)
        or behind (commits lost, e.g. ``synchronous_commit = off`` and a crash)."""
        row = cur.execute(self._position, (a.partition,)).fetchone()
        if row is None:
            return Fenced(a.partition, a.start, me=self.owner)
        return Fenced(a.partition, a.start, stored=int(row[0]), owner=row[1], me=self.owner)

    def _write_range(self, conn: psycopg.Connection[Any], outs: list[FoldedRecord], refused: list[Refusal]) -> None:
        try:
            with conn.transaction():
                self._write_rows(conn, outs)
            return
        except REFUSALS as e:
            if len(outs) == 1:
                self._write_refused(conn, outs[0], e, refused)
                return
            log.debug("rows refused in a run of %d records, bisecting: %s", len(outs), e)
        mid = len(outs) // 2
        self._write_range(conn, outs[:mid], refused)
        self._write_range(conn, outs[mid:], refused)

    def _write_rows(self, conn: psycopg.Connection[Any], outs: list[FoldedRecord]) -> None:
        lasts = last_outcomes(outs)
        with conn.cursor() as cur:
            with cur.copy(self._copy_audit) as cp:
                cp.set_types(AUDIT_TYPES)
                for o in outs:
                    cp.write_row(o.audit if lasts[o.key] is not o else with_state_hash(o))
            with cur.copy(self._copy_events) as cp:
                cp.set_types(EVENT_TYPES)
                for o in outs:
                    cp.write_row(o.event)
            cps = [o.checkpoint for o in outs if o.checkpoint is not None]
            if cps:
                with cur.copy(self._copy_cp) as cp:
                    cp.set_types(CHECKPOINT_TYPES)
                    for r in cps:
                        cp.write_row(r)
            mem = MemoryChanges()
            for o in outs:
                if o.memory:
                    mem.add(o.memory)
            if mem:
                self._write_memories(cur, mem)
            tasks = TaskChanges()
            for o in outs:
                if o.tasks:
                    tasks.add(o.tasks)
            if tasks:
                self._write_tasks(cur, tasks)
            with cur.copy(self._copy_agent) as cp:
                cp.set_types(AGENT_TYPES)
                for o in lasts.values():
                    cp.write_row(o.entry.row())
            cur.execute(self._upsert_agent)
        rows = self.last_rows  # counted once every statement of the range went through
        for table, n in (("audit_log", len(outs)), ("events", len(outs)), ("checkpoints", len(cps)),
                         ("memories", len(mem.full) + len(mem.patches)),
                         ("tasks", len(tasks.full()) + len(tasks.patches())), ("agent_state", len(lasts))):
            if n:
                rows[table] = rows.get(table, 0) + n

    def _write_tasks(self, cur: psycopg.Cursor[Any], tasks: TaskChanges) -> None:
        for rows, statement in ((tasks.full(), self._upsert_task), (tasks.patches(), self._patch_task)):
            if not rows:
                continue
            with cur.copy(self._copy_task) as cp:
                cp.set_types(TASK_TYPES)
                for row in rows:
                    meta = row[TASK_METADATA]
                    cp.write_row(row if meta is None else (*row[:TASK_METADATA], Jsonb(meta),
                                                           *row[TASK_METADATA + 1:]))
            cur.execute(statement)

    def _write_memories(self, cur: psycopg.Cursor[Any], mem: MemoryChanges) -> None:
        if mem.full:
            meta = MEMORY_COLUMNS.index(_META)
            with cur.copy(self._copy_mem) as cp:
                cp.set_types(self._mem_types)
                for row in mem.full.values():
                    r = list(row)
                    r[meta] = Jsonb(r[meta])
                    cp.write_row(r)
            cur.execute(self._upsert_mem)
        embeds = []
        forgets = []
        for (agent, memory_id), (emb, emb_at, emb_off, gone_at, gone_off, gone_hash) in mem.patches.items():
            if gone_at is not None:
                forgets.append((gone_at, gone_off, gone_hash, agent, memory_id))
            elif emb is not None:
                embeds.append((emb, emb_at, emb_off, agent, memory_id))
        if embeds:
            cur.executemany(self._embed, embeds)
        if forgets:
            cur.executemany(self._forget, forgets)

    def _write_refused(
        self, conn: psycopg.Connection[Any], o: FoldedRecord, err: Exception, refused: list[Refusal],
    ) -> None:
        diag = getattr(err, "diag", None)
        sqlstate = getattr(diag, "sqlstate", None) or "client"
        error = f"{type(err).__name__} ({sqlstate}): {str(err).strip()}"
        agent, seq = o.audit[2], o.audit[3]
        log.error(
            "PostgreSQL refused the projection rows of record %d:%d (agent %s, seq %d): %s. The fold's verdict is "
            "kept in audit_log with refused = true; the partition goes on. The fold should have rejected this "
            "record: report it with the record's position.", o.partition, o.offset, agent, seq, error,
        )
        for hard in (False, True):
            try:
                with conn.transaction():
                    with conn.cursor() as cur:
                        with cur.copy(self._copy_audit) as cp:
                            cp.set_types(AUDIT_TYPES)
                            cp.write_row(refused_audit_row(with_state_hash(o), error, o.verdict_bytes, hard=hard))
                break
            except REFUSALS as e2:
                if hard:
                    raise Inconsistent(
                        f"even the reduced audit row of {o.partition}:{o.offset} was refused ({e2}); "
                        "the audit_log table does not have the expected shape"
                    ) from e2
        self._write_refused_event(conn, o, error)
        try:
            with conn.transaction():
                with conn.cursor() as cur:
                    with cur.copy(self._copy_agent) as cp:
                        cp.set_types(AGENT_TYPES)
                        cp.write_row(o.entry.row())
                    cur.execute(self._upsert_agent)
        except REFUSALS as e3:
            log.error("the agent_state row of %s after %d:%d was refused too: %s", agent, o.partition, o.offset, e3)
        refused.append(Refusal(o.partition, o.offset, agent, seq, error))

    def _write_refused_event(self, conn: psycopg.Connection[Any], o: FoldedRecord, error: str) -> None:
        """The ``events`` row of a refused record: as built if PostgreSQL takes it, else
        without its payload; every record keeps its row, so streams never wait on a gap."""
        for row in (o.event, refused_event_row(o.event, error)):
            try:
                with conn.transaction():
                    with conn.cursor() as cur:
                        with cur.copy(self._copy_events) as cp:
                            cp.set_types(EVENT_TYPES)
                            cp.write_row(row)
                return
            except REFUSALS as e:
                log.error("the events row of %d:%d was refused: %s", o.partition, o.offset, e)
