"""``aosk replay``: rebuild every projection from offset 0 into a shadow schema, swap it in.

1. The shadow (default ``<schema>_shadow``) is migrated like the live schema, with the
   live schema's ``checkpoint_every`` and journal topic.
2. Catch-up, without any lock: the journal is read with ``assign()`` (no consumer
   group, nothing committed) from the shadow's own ``projector_offsets``, folded with
   ``fold_batch`` and written by the same ``ProjectionWriter`` as a live projector
   (batches of 5,000 records by default; states are hashed only for the rows stored).
   ``processes`` (default 2) split the partitions between them, shares balanced by
   records to fold (helper processes do the catch-up of their share and exit; the first
   process then catches up every partition and swaps). Each process writes a batch from
   a thread on a second connection while it reads and folds the next one (one batch in
   flight; the fold needs only the previous batch's agent entries, kept in memory). The
   shadow's indexes and keys are dropped for the catch-up, all but the primary keys the
   writer's upserts and patches need (``KEPT_KEYS``: agent_state, memories, tasks and
   the bookkeeping tables), and built once at its end, in one transaction with parallel
   maintenance workers, the vector indexes first (the statements are kept in
   ``projection_meta`` for a resumed run).
   Every partition is folded up to the live schema's ``next_offset`` and no further
   (the live projectors keep moving it), so the shadow never gets ahead of the live
   schema.
3. The swap, in ONE transaction: ``pg_advisory_xact_lock(BATCH_LOCK_KEY)`` (every live
   batch holds it shared, so no live batch is half-way), fold the few records the live
   projectors wrote since the catch-up so the shadow stands at exactly the live offsets,
   then ``alter schema <schema> rename to <schema>_old_<n>`` (or drop it) and ``alter
   schema <shadow> rename to <schema>``. Tables, views, grants and ``projector_offsets``
   live inside the schema and move with it; live projectors carry on with their next
   batch in the new schema (their statements name ``"aosk"."table"``; PostgreSQL
   invalidates cached plans on a namespace change, so prepared statements are
   re-resolved -- tests/integration/test_replay.py runs a projector across the swap).
   Their cached agent states stay valid: the rebuilt rows at the same offsets are the
   same (the fold is deterministic).

Each catch-up batch commits its rows with the shadow's offsets, so a replay killed at
any moment is resumed (``resume=True``: from the shadow's offsets, agent states re-read
from the shadow) or discarded (``discard``); the live schema is only ever touched by
the swap transaction, which either commits entirely or not at all. When the live
schema does not exist (PostgreSQL lost), the shadow is built up to the journal's end and
the swap is just the rename.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Final

import psycopg
from psycopg import sql

from aosk._gc import tune_gc
from aosk._logging import configure_logging
from aosk._resources import ResourceHolder, Resources
from aosk.config import Settings
from aosk.endpoints import resolve_endpoints
from aosk.errors import JournalMismatch, ReplayError
from aosk.journal import OFFSET_BEGINNING, Quarantines, record_from_message
from aosk.kernel import Record
from aosk.projectors import memory_index
from aosk.projectors.batch import PartitionStop, fold_batch
from aosk.projectors.cache import AgentCache
from aosk.projectors.db import (
    BATCH_LOCK_KEY,
    DEFAULT_SCHEMA,
    check_schema_name,
    connect,
    ensure_offset_rows,
    get_meta,
    migrate,
    qualified,
    record_stop,
    set_meta,
)
from aosk.projectors.digest import schema_exists
from aosk.projectors.faults import Fault
from aosk.projectors.intake import PARTITION_EOF, Intake
from aosk.projectors.runner import checkpoint_every_of, ensure_journal
from aosk.projectors.stored import UndecodableState
from aosk.projectors.writer import Advance, Fenced, ProjectionWriter, notify_channel, prepare_connection
from aosk.reads.status import projected_offsets, projected_records

__all__ = [
    "ReplayError", "ReplayOptions", "ReplayResult", "Replay", "Progress", "replay", "discard_shadow", "shadow_name",
]

log = logging.getLogger("aosk.replay")

_DEFERRED: Final = "replay_deferred_indexes"
_MEMORY_INDEX_MARK: Final = "memory_index:"
"""A deferred build that is the memories' vector index of the kind that follows."""
_MEMORY_INDEX_KINDS: Final = {name: kind for kind, name in memory_index.INDEX_NAMES.items()}

KEPT_KEYS: Final = frozenset({"agent_state", "memories", "tasks", "projector_offsets", "projection_meta",
                              "schema_migrations"})
"""Tables whose primary key stays during the catch-up: the writer's upserts and patches
find their rows by it (and the bookkeeping tables are tiny). Every other index and key
of the shadow is dropped for the catch-up and built once at its end."""

Progress = Callable[[int, int], None]
"""``progress(done, total)``: records in the shadow so far and the records to get to (the
total grows while live projectors write); called after every batch and now and then."""


def shadow_name(schema: str) -> str:
    return check_schema_name(f"{schema}_shadow")


@dataclass(frozen=True, kw_only=True)
class ReplayOptions:
    schema: str = DEFAULT_SCHEMA
    """The live schema to rebuild."""
    shadow: str | None = None
    """Where to rebuild (default ``<schema>_shadow``)."""
    resume: bool = False
    """Continue the shadow an interrupted replay left (else it is an error to find one)."""
    batch_max: int = 5_000
    """Most records per catch-up transaction. Bigger is not faster: a batch keeps every
    record's outcome alive until it is written, and folding 20,000-record batches cost
    ~1.5x the CPU per event of 5,000-record ones here (memory traffic)."""
    swap_gap: int = 1_000
    """Most records left to fold when the exclusive lock is taken: it bounds the pause of
    the live projectors (about 0.1 s per 1,000 records here)."""
    defer_indexes: bool = True
    """Build the indexes (all but the keys in ``KEPT_KEYS``) once after the catch-up
    instead of row by row."""
    overlap: bool = True
    """Write each catch-up batch from a thread on a connection of its own while the next
    batch is read and folded (one batch in flight)."""
    drop_old: bool = False
    """Drop the replaced schema instead of keeping it as ``<schema>_old_<n>``."""
    processes: int = 2
    """Processes folding the catch-up (partitions split between them); the swap is done
    by the first."""
    partitions: tuple[int, ...] | None = None
    """Internal: a helper process's share of the partitions (catch-up only, no swap)."""
    lock_timeout_s: float = 120.0
    fault: str | None = None
    """Tests: ``sigstop:N`` stops this process (SIGSTOP) after N catch-up batches."""


@dataclass
class ReplayResult:
    schema: str
    shadow: str
    old: str | None
    """Where the replaced live schema went (None: it did not exist, or it was dropped)."""
    records: int
    """Records folded by this run (catch-up and swap)."""
    seconds: float
    """Catch-up and swap, from the first record read to the commit of the swap."""
    swap_records: int
    lock_ms: float
    """How long the exclusive lock was held."""
    live_existed: bool
    stopped: dict[int, tuple[int, str]] = field(default_factory=dict)
    """Partitions the rebuild stopped on: partition -> (offset, why). Their records from
    that offset on are not projected (nor were they in the replaced live schema)."""

    @property
    def events_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


def _replay_lock(conn: psycopg.Connection[Any], shadow: str) -> None:
    """A session lock per shadow: one replay (or discard) of a shadow at a time."""
    row = conn.execute("select pg_try_advisory_lock(hashtext('aosk-replay'), hashtext(%s))", (shadow,)).fetchone()
    conn.commit()
    if not row or not row[0]:
        raise ReplayError(f"another `aosk replay` is working on schema {shadow}")


def discard_shadow(settings: Settings, schema: str = DEFAULT_SCHEMA, shadow: str | None = None) -> bool:
    """Drop the shadow an interrupted replay left; False if there was none."""
    shadow = shadow or shadow_name(schema)
    check_schema_name(shadow)
    if shadow == schema:
        raise ReplayError("the shadow cannot be the live schema")
    with connect(resolve_endpoints(settings).dsn) as conn:
        _replay_lock(conn, shadow)
        if not schema_exists(conn, shadow):
            return False
        conn.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(shadow)))
        conn.commit()
    return True


class Replay(ResourceHolder):
    """One ``aosk replay`` process (the first, or a helper doing the catch-up of its share).

    A context manager: entering connects and takes the shadow's replay lock (one replay
    of a shadow at a time), leaving releases both; consumers and helper processes
    ``run()`` starts are closed and stopped when it returns or raises. An error that
    ended the block goes on unhidden by a failing clean-up (``aosk._resources``).
    ``run()`` outside a ``with`` block enters and leaves by itself. The library shows no
    progress bar: ``progress(done, total)`` is called instead (the CLI draws the bar).
    """

    def __init__(self, settings: Settings, options: ReplayOptions | None = None, *,
                 progress: Progress | None = None) -> None:
        self.settings = settings
        self.options = o = options or ReplayOptions()
        self.schema = check_schema_name(o.schema)
        self.shadow = check_schema_name(o.shadow or shadow_name(o.schema))
        if self.shadow == self.schema:
            raise ReplayError("the shadow cannot be the live schema")
        ep = resolve_endpoints(settings)
        self._dsn, self._bootstrap = ep.dsn, ep.bootstrap
        self.topic = settings.kafka.journal_topic
        self.owner = f"{settings.node_id}/replay/{os.getpid()}"
        self._cache = AgentCache(complete=True)
        """Complete while nothing is stored in the shadow that is not cached (a replay from 0)."""
        self._intake = Intake(self.topic, self._read_error)
        self._quarantines = Quarantines.from_journal(self._bootstrap, self.topic)
        self._in_swap = False
        self._admin: Any = None
        self.checkpoint_every = 0
        self.records = 0
        self._batches = 0
        self._fault = Fault.parse(o.fault, points=("after_batch",))
        self._progress = progress
        self._done = 0
        self._total = 0
        self._conn: psycopg.Connection[Any] | None = None
        """The session holding the shadow's replay lock (from entering the block)."""
        self._writing: _BackgroundWriter | None = None
        self._caps: dict[int, int] = {}
        """The first targets (records to fold per partition: how the helpers share them)."""

    def __enter__(self) -> Replay:
        ensure_journal(self._bootstrap, self.settings)
        with Resources() as resources:
            resources.callback(self._quarantines.close)
            conn = resources.enter_context(closing(connect(self._dsn)))
            if self.options.partitions is None:
                _replay_lock(conn, self.shadow)
                # a barrier: helper processes of an interrupted run (which exit when their parent is gone) are gone
                conn.execute("select pg_advisory_lock(hashtext('aosk-replay-helpers'), hashtext(%s))", (self.shadow,))
                conn.execute("select pg_advisory_unlock(hashtext('aosk-replay-helpers'), hashtext(%s))", (self.shadow,))
            else:
                conn.execute("select pg_advisory_lock_shared(hashtext('aosk-replay-helpers'), hashtext(%s))",
                             (self.shadow,))
            conn.execute("set synchronous_commit = off")
            conn.commit()
            self._conn = conn
            self._resources = resources.pop_all()
        return self

    # -- set-up ------------------------------------------------------------------------

    def _setup(self, conn: psycopg.Connection[Any]) -> None:
        live = schema_exists(conn, self.schema)
        every: str | None = None
        if live:
            try:
                every = str(checkpoint_every_of(conn, self.schema))  # what its projectors use
                topic = get_meta(conn, self.schema, "journal_topic")
            except psycopg.errors.UndefinedTable:
                conn.rollback()
                topic = None
            conn.commit()
            if topic is not None and topic != self.topic:
                raise JournalMismatch(self.schema, topic, self.topic)
        had_shadow = schema_exists(conn, self.shadow)
        conn.commit()
        if had_shadow and not self.options.resume:
            raise ReplayError(
                f"schema {self.shadow} exists: an earlier replay was interrupted. `aosk replay --resume` continues "
                f"it, `aosk replay --discard` drops it"
            )
        self._cache.complete = not had_shadow
        migrate(conn, schema=self.shadow, dimension=self.settings.memory.embedding_dimension,
                checkpoint_every=int(every) if every is not None else None, memory_index=self.settings.memory.index)
        with conn.transaction():
            have = get_meta(conn, self.shadow, "journal_topic")
            if have is None:
                set_meta(conn, self.shadow, "journal_topic", self.topic)
            elif have != self.topic:
                raise JournalMismatch(self.shadow, have, self.topic)
            self.checkpoint_every = checkpoint_every_of(conn, self.shadow)
            ensure_offset_rows(conn, self.shadow, self.settings.kafka.journal_partitions)
            positions = projected_offsets(conn, self.shadow)
        if self.options.partitions is not None:
            self._intake.reset({p: o for p, o in positions.items() if p in self.options.partitions})
            return
        self._intake.reset(positions)
        if not had_shadow and self.options.defer_indexes:
            self._defer_indexes(conn)
        if had_shadow:
            log.info("resuming %s at offsets %s", self.shadow, dict(sorted(positions.items())))

    def _defer_indexes(self, conn: psycopg.Connection[Any]) -> None:
        """Drop the shadow's indexes and keys for the catch-up, but the keys of
        ``KEPT_KEYS`` (one bulk build at the end is far cheaper than maintaining them row
        by row, a vector graph most of all); the statements that build them again are
        kept in ``projection_meta`` so a resumed replay builds them too. The vector
        indexes come first (the longest builds)."""
        with conn.transaction():
            rows = conn.execute(
                "select ic.relname, t.relname, pg_get_indexdef(ic.oid), c.conname, pg_get_constraintdef(c.oid), "
                "am.amname from pg_index x join pg_class ic on ic.oid = x.indexrelid "
                "join pg_class t on t.oid = x.indrelid join pg_namespace n on n.oid = t.relnamespace "
                "join pg_am am on am.oid = ic.relam "
                "left join pg_constraint c on c.conindid = ic.oid and c.conrelid = t.oid "
                "where n.nspname = %s order by am.amname <> 'hnsw', ic.relname",
                (self.shadow,),
            ).fetchall()
            builds: list[str] = []
            for index, table, indexdef, constraint, condef, _am in rows:
                if constraint is not None:
                    if table in KEPT_KEYS:
                        continue
                    conn.execute(sql.SQL("alter table {} drop constraint {}").format(
                        qualified(self.shadow, table), sql.Identifier(constraint)))
                    builds.append(sql.SQL("alter table {} add constraint {} ").format(
                        qualified(self.shadow, table), sql.Identifier(constraint)).as_string(conn) + condef)
                else:
                    conn.execute(sql.SQL("drop index {}").format(qualified(self.shadow, index)))
                    kind = _MEMORY_INDEX_KINDS.get(index)
                    # the memory index is sized to the rows there are at the end (IVFFlat's lists)
                    builds.append(indexdef if kind is None else _MEMORY_INDEX_MARK + kind)
            if builds:
                set_meta(conn, self.shadow, _DEFERRED, json.dumps(builds))

    def _build_deferred(self, conn: psycopg.Connection[Any]) -> bool:
        """Create the indexes ``_defer_indexes`` dropped (in one transaction, with
        parallel maintenance workers); False if there were none."""
        self._drain()
        raw = get_meta(conn, self.shadow, _DEFERRED)
        conn.commit()
        if raw is None:
            return False
        t = time.monotonic()
        with conn.transaction():
            conn.execute("set local maintenance_work_mem = '1GB'")
            conn.execute("set local max_parallel_maintenance_workers = 2")
            for d in json.loads(raw):
                if d.startswith(_MEMORY_INDEX_MARK):
                    memory_index.create(conn, self.shadow, d.removeprefix(_MEMORY_INDEX_MARK),
                                        self.settings.memory.embedding_dimension)
                else:
                    conn.execute(d.encode())
            conn.execute(sql.SQL("delete from {} where key = %s").format(qualified(self.shadow, "projection_meta")),
                         (_DEFERRED,))
        log.info("built the deferred indexes of %s in %.1fs", self.shadow, time.monotonic() - t)
        return True

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        """A consumer assigned the partitions at their positions (no group), closed at the end."""
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({
            "bootstrap.servers": self._bootstrap,
            "group.id": f"aosk-replay-{uuid.uuid4().hex[:8]}",  # assign() only; nothing committed
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "fetch.message.max.bytes": 8 * 1024 * 1024,
            "queued.max.messages.kbytes": 262144,
            "log_level": 3,
        })
        with closing(c):
            c.assign([TopicPartition(self.topic, p, o if o > 0 else OFFSET_BEGINNING)
                      for p, o in self._intake.pos.items()])
            yield c

    # -- targets ------------------------------------------------------------------------

    def _targets(
        self, conn: psycopg.Connection[Any], consumer: Any, *, fresh: bool = False
    ) -> tuple[dict[int, int], bool]:
        """Where each partition must get to: the live offsets, else the journal's end."""
        from confluent_kafka import TopicPartition

        live = schema_exists(conn, self.schema)
        caps: dict[int, int] = {}
        if live:
            try:
                caps = projected_offsets(conn, self.schema)
            except psycopg.errors.UndefinedTable:
                live = False
        conn.commit()
        if not live:
            ends = self._end_offsets() if fresh else {}
            for p in self._intake.pos:
                if p in ends:
                    caps[p] = ends[p]
                    continue
                _, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10, cached=True)
                if high is None or high < 0:
                    _, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
                caps[p] = int(high)
        return {p: caps.get(p, 0) for p in self._intake.pos}, live

    def _end_offsets(self) -> dict[int, int]:
        """The journal's end offsets (last stable offset), all partitions in one request."""
        from confluent_kafka import IsolationLevel, TopicPartition
        from confluent_kafka.admin import AdminClient, OffsetSpec

        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self._bootstrap, "log_level": 3})
        req = {TopicPartition(self.topic, p): OffsetSpec.latest() for p in self._intake.pos}
        res = self._admin.list_offsets(req, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=10)
        return {tp.partition: int(f.result(15).offset) for tp, f in res.items()}

    def _gap(self, caps: dict[int, int], live: bool) -> int:
        n = 0
        stopped, eof = self._intake.stopped, self._intake.eof
        for p, pos in self._intake.pos.items():
            if p in stopped or (not live and p in eof):
                continue
            n += max(0, caps[p] - pos)
        return n

    # -- folding ------------------------------------------------------------------------

    def _load(self, conn: psycopg.Connection[Any], parts: dict[int, list[Record]]) -> dict[str, int]:
        """Resume only: the stored shadow entries of the batch's uncached keys."""
        want = self._cache.wanted(parts)
        if not want:
            return {}
        try:
            moved = self._cache.load(conn, self.shadow, want)
        except UndecodableState as e:
            raise ReplayError(f"{e} (in {self.shadow}); --discard it") from e
        if not self._in_swap:
            conn.commit()  # else the writer's transaction would be a savepoint of this one
        return moved

    def _fold_write(self, conn: psycopg.Connection[Any], writer: ProjectionWriter,
                    parts: dict[int, list[Record]]) -> int:
        moved = self._load(conn, parts)
        batch = fold_batch(parts, self._cache.get, checkpoint_every=self.checkpoint_every,
                           owner_of=moved.get if moved else None,
                           live_partitions=self.settings.kafka.journal_partitions,  # checked by ensure_journal
                           quarantines=self._quarantines)
        pos = self._intake.pos
        advances = [Advance(p, pos[p], end, last_ms) for p, (end, last_ms) in batch.ends.items()]
        if advances:
            if self._writing is not None and not self._in_swap:
                # the fold of the next batch needs this one's entries and positions now, and
                # nothing but this process writes the shadow's partitions: what a failed
                # write leaves is what a killed replay leaves (resumed from the shadow)
                self._writing.submit(batch, advances)
            else:
                self._drain()
                try:
                    writer.write(conn, batch, advances)
                except Fenced as e:
                    raise ReplayError(f"{e}: another process writes {self.shadow}") from e
        self._cache.committed(batch)
        self._intake.advanced((a.partition, a.end) for a in advances)
        for s in batch.stops:
            self._intake.stopped[s.partition] = s
            log.critical("partition %d STOPPED at offset %d in the rebuild: %s", s.partition, s.offset, s.reason)
        return len(batch.outcomes)

    def _drain(self) -> None:
        """Wait for the batch being written in the background (raises its error)."""
        if self._writing is not None:
            self._writing.drain()

    def _read_error(self, m: Any, err: Any) -> None:
        raise ReplayError(f"reading {self.topic}[{m.partition()}]: {err.str()}")

    def _stopped_result(self) -> dict[int, tuple[int, str]]:
        return {p: (s.offset, s.reason) for p, s in self._intake.stopped.items()}

    def _adopt_live_stops(self, conn: psycopg.Connection[Any]) -> None:
        """Stops live projectors recorded at the offsets the rebuild was capped at: the
        rebuild never read those records, but the partitions are stopped all the same (and
        stay so after the swap, so the shadow carries the stop over)."""
        has = conn.execute(
            "select 1 from information_schema.columns where table_schema = %s and table_name = 'projector_offsets' "
            "and column_name = 'stopped_offset'", (self.schema,)).fetchone()
        if not has:  # a live schema migrated by an older AOSK records no stops
            return
        rows = conn.execute(
            sql.SQL("select partition, stopped_offset, stop_reason, stop_message from {} "
                    "where stopped_offset is not null and stopped_offset >= next_offset").format(
                qualified(self.schema, "projector_offsets"))).fetchall()
        for p, offset, code, message in rows:
            if int(p) not in self._intake.stopped:
                self._intake.stopped[int(p)] = PartitionStop(int(p), int(offset), message or code or "stopped",
                                                      code or "error")

    def _record_stops(self, conn: psycopg.Connection[Any]) -> None:
        """The rebuild's stops into the shadow's ``projector_offsets`` (as a live
        projector records its own), so ``aosk db status`` shows them after the swap."""
        for s in self._intake.stopped.values():
            record_stop(conn, self.shadow, s.partition, offset=s.offset, code=s.code, message=s.reason)

    # -- the run ------------------------------------------------------------------------

    def run(self) -> ReplayResult:
        """Catch up and swap (a helper process: catch up its partitions); outside a
        ``with`` block, enter and leave it around the run."""
        if self._resources is None:
            with self:
                return self.run()
        tune_gc()  # the projectors' measured setting: far fewer cyclic collections while folding
        conn = self._conn
        assert conn is not None  # connected on entering the block
        helper = self.options.partitions is not None
        self._setup(conn)
        start_total = self._shadow_total(conn)
        oid = prepare_connection(conn, self.shadow)
        writer = ProjectionWriter(self.shadow, vector_oid=oid, owner=self.owner)
        t0 = time.monotonic()
        self._done = self._total = start_total
        if not helper:
            with self._reading() as c:
                self._caps = self._targets(conn, c, fresh=True)[0]
                self._total = max(start_total, sum(self._caps.values()))
            self._report_progress()
        with Resources() as resources:
            if self.options.overlap:
                wconn = resources.enter_context(closing(connect(self._dsn)))
                wconn.execute("set synchronous_commit = off")
                wconn.commit()
                woid = prepare_connection(wconn, self.shadow)
                self._writing = _BackgroundWriter(
                    wconn, ProjectionWriter(self.shadow, vector_oid=woid, owner=self.owner), self.shadow)
                resources.callback(self._stop_writing)
            helpers = [] if helper else self._spawn_helpers()
            resources.callback(_stop_helpers, helpers)
            live, old, swapped, lock_ms = self._catch_up_and_swap(conn, writer, helpers, t0)
        if helper:
            return ReplayResult(self.schema, self.shadow, None, self.records, 0.0, 0, 0.0, live,
                                self._stopped_result())
        seconds = time.monotonic() - t0
        records = self._shadow_total_in(conn, self.schema) - start_total
        return ReplayResult(self.schema, self.shadow, old, records, seconds, swapped, lock_ms, live,
                            self._stopped_result())

    def _catch_up_and_swap(self, conn: psycopg.Connection[Any], writer: ProjectionWriter, helpers: list[Any],
                           t0: float) -> tuple[bool, str | None, int, float]:
        """Catch up (then, after the helpers, every partition once more) and swap; returns
        whether the live schema existed and ``_swap``'s (old, swapped, lock_ms). A helper
        process only catches up."""
        helper = self.options.partitions is not None
        with self._reading() as consumer:
            live = self._catch_up(conn, writer, consumer, final=not helper and not helpers)
            log.info("partitions %s caught up: %d records in %.1fs", sorted(self._intake.pos), self.records,
                     time.monotonic() - t0)
            if helper:
                return live, None, 0, 0.0
            if not helpers:
                return (live, *self._swap(conn, writer, consumer))
        self._join_helpers(helpers, conn)
        self._all_partitions(conn)
        with self._reading() as consumer:
            live = self._catch_up(conn, writer, consumer, final=True)
            return (live, *self._swap(conn, writer, consumer))

    def _stop_writing(self) -> None:
        w, self._writing = self._writing, None
        if w is not None:
            w.close()

    def _report_progress(self) -> None:
        if self._progress is not None:
            self._progress(self._done, self._total)

    def _shadow_total(self, conn: psycopg.Connection[Any]) -> int:
        return self._shadow_total_in(conn, self.shadow)

    @staticmethod
    def _shadow_total_in(conn: psycopg.Connection[Any], schema: str) -> int:
        total = projected_records(conn, schema)
        conn.commit()
        return total

    def _spawn_helpers(self) -> list[Any]:
        """Processes 2..N of the catch-up, each folding its own share of the partitions
        into the shadow (the fold is CPU-bound Python: one process per core)."""
        import multiprocessing

        pos = self._intake.pos
        n = min(self.options.processes, len(pos))
        if n <= 1:
            return []
        groups = share_partitions({p: max(0, self._caps.get(p, 0) - pos[p]) for p in pos}, n)
        self._intake.reset({p: pos[p] for p in groups[0]})
        ctx = multiprocessing.get_context("spawn")
        procs = []
        for g in groups[1:]:
            opts = replace(self.options, partitions=g, resume=True, fault=None)
            pr = ctx.Process(target=_helper_main, args=(self.settings, opts, os.getpid()), daemon=True,
                             name=f"aosk-replay-{g}")
            pr.start()
            procs.append(pr)
        return procs

    def _join_helpers(self, helpers: list[Any], conn: psycopg.Connection[Any]) -> None:
        while any(h.is_alive() for h in helpers):
            for h in helpers:
                h.join(0.5)
            if self._progress is not None:
                self._done = self._shadow_total(conn)
                self._report_progress()
        bad = [h.exitcode for h in helpers if h.exitcode != 0]
        if bad:
            raise ReplayError(f"a replay helper process failed (exit codes {bad}); `aosk replay --resume` continues")

    def _all_partitions(self, conn: psycopg.Connection[Any]) -> None:
        """After the helpers: every partition, positions from the shadow; agent states
        of the helpers' partitions are read from the shadow when they show up."""
        rows = conn.execute(
            sql.SQL("select partition, next_offset from {}").format(qualified(self.shadow, "projector_offsets"))
        ).fetchall()
        conn.commit()
        self._intake.reset({int(p): int(o) for p, o in rows})
        self._cache.forget_absent()

    def _catch_up(self, conn: psycopg.Connection[Any], writer: ProjectionWriter, consumer: Any, *,
                  final: bool) -> bool:
        """Fold up to (nearly) the targets; ``final``: build the deferred indexes first."""
        caps, live = self._targets(conn, consumer, fresh=True)
        refreshed = time.monotonic()
        intake = self._intake
        while True:
            over: set[int] = set()
            intake.park(consumer, caps, over)
            gap = self._gap(caps, live)
            if gap == 0 or (live and gap <= self.options.swap_gap and not intake.pending_seek):
                self._drain()
                if final and self._build_deferred(conn):
                    continue  # the live projectors moved on meanwhile
                return live
            # consume() waits out its timeout unless num_messages arrive: never ask for
            # more than is left (transaction markers can make the gap a few too many,
            # hence the short timeout too)
            msgs = consumer.consume(num_messages=min(self.options.batch_max, gap), timeout=0.1)
            parts = intake.take(msgs, caps, over)
            if parts:
                n = self._fold_write(conn, writer, parts)
                self.records += n
                self._done += n
                self._report_progress()
                self._batches += 1
                self._fault.maybe("after_batch", self._batches)
            intake.park(consumer, caps, over)
            now = time.monotonic()
            if over or now - refreshed > 1.0 or not parts:
                caps, live = self._targets(conn, consumer, fresh=not parts)
                if self._progress is not None:
                    if final:
                        self._total = max(sum(caps.values()), self._done)
                    elif self.options.partitions is None:
                        self._done = self._shadow_total(conn)  # with the helpers' records
                        self._total = max(self._total, self._done)
                    self._report_progress()
                refreshed = now

    def _read_ranges(self, consumer: Any, caps: dict[int, int]) -> dict[int, list[Record]]:
        """Every record from the shadow's position up to the target, per partition."""
        from confluent_kafka import TopicPartition

        intake = self._intake
        todo = {p for p, pos in intake.pos.items() if caps[p] > pos and p not in intake.stopped}
        parts: dict[int, list[Record]] = {}
        if not todo:
            return parts
        tps = [TopicPartition(self.topic, p, intake.pos[p] if intake.pos[p] > 0 else OFFSET_BEGINNING) for p in todo]
        consumer.resume(tps)
        intake.paused.difference_update(todo)
        for tp in tps:
            for attempt in range(50):
                try:
                    consumer.seek(tp)
                    break
                except Exception:  # noqa: BLE001 - the fetcher is not started yet
                    if attempt == 49:
                        raise
                    consumer.consume(num_messages=1, timeout=0.1)
        intake.pending_seek.difference_update(todo)
        deadline = time.monotonic() + 60
        while todo:
            if time.monotonic() > deadline:
                raise ReplayError(f"could not read partitions {sorted(todo)} up to the live offsets within 60s")
            for m in consumer.consume(num_messages=self.options.batch_max, timeout=0.5):
                err = m.error()
                p = m.partition()
                if err is not None:
                    if err.code() == PARTITION_EOF:
                        continue  # possibly from before the seek; the deadline catches a short journal
                    raise ReplayError(f"reading {self.topic}[{p}]: {err.str()}")
                if p not in todo:
                    continue
                o = m.offset()
                recs = parts.setdefault(p, [])
                if o < intake.pos[p] or (recs and o <= recs[-1].offset):
                    continue
                if o < caps[p]:
                    recs.append(record_from_message(m))
                if o + 1 >= caps[p]:
                    todo.discard(p)
                    intake.pause(consumer, p)
        return {p: r for p, r in parts.items() if r}

    def _swap(
        self, conn: psycopg.Connection[Any], writer: ProjectionWriter, consumer: Any
    ) -> tuple[str | None, int, float]:
        s, sh = sql.Identifier(self.schema), sql.Identifier(self.shadow)
        swapped = 0
        with conn.transaction():
            conn.execute(f"set local lock_timeout = {int(self.options.lock_timeout_s * 1000)}")
            conn.execute("select pg_advisory_xact_lock(%s)", (BATCH_LOCK_KEY,))
            t_lock = time.monotonic()
            live = schema_exists(conn, self.schema)
            old: str | None = None
            if live:
                caps = projected_offsets(conn, self.schema)
                pos = self._intake.pos
                for p in pos:
                    caps.setdefault(p, 0)
                ahead = {p: (pos[p], caps[p]) for p in pos if pos[p] > caps[p]}
                if ahead:
                    raise ReplayError(f"the rebuild is ahead of the live schema on partitions {ahead}; was the live "
                                      "schema reset meanwhile? nothing was changed")
                parts = self._read_ranges(consumer, caps)
                if parts:
                    self._in_swap = True
                    swapped = self._fold_write(conn, writer, parts)
                    self.records += swapped
                    self._done += swapped
                    self._report_progress()
                behind = {p: (pos[p], caps[p]) for p in pos if pos[p] != caps[p]}
                if behind:
                    stopped = self._intake.stopped
                    why = {p: stopped[p].reason for p in behind if p in stopped}
                    raise ReplayError(f"the rebuild cannot reach the live offsets on partitions {behind} ({why}); "
                                      "the live schema is unchanged")
                conn.execute(
                    sql.SQL(
                        "update {sh} s set high_watermark = l.high_watermark, last_record_at = l.last_record_at, "
                        "committed_at = l.committed_at, owner = l.owner from {lv} l where s.partition = l.partition"
                    ).format(
                        sh=qualified(self.shadow, "projector_offsets"), lv=qualified(self.schema, "projector_offsets")
                    )
                )
                self._adopt_live_stops(conn)
                self._record_stops(conn)
                if self.options.drop_old:
                    conn.execute(sql.SQL("drop schema {} cascade").format(s))
                else:
                    old = self._old_name(conn)
                    conn.execute(sql.SQL("alter schema {} rename to {}").format(s, sql.Identifier(old)))
            if not live:
                self._record_stops(conn)
            conn.execute(sql.SQL("alter schema {} rename to {}").format(sh, s))
            conn.execute("select pg_notify(%s, '')", (notify_channel(self.schema),))
        lock_ms = (time.monotonic() - t_lock) * 1000
        log.info("swapped %s in (%d records folded under the lock, %.0f ms)%s", self.schema, swapped, lock_ms,
                 f"; the replaced schema is {old}" if old else "")
        return old, swapped, lock_ms

    def _old_name(self, conn: psycopg.Connection[Any]) -> str:
        like = f"{self.schema}\\_old\\_%"
        rows = conn.execute("select nspname from pg_namespace where nspname like %s", (like,)).fetchall()
        prefix = f"{self.schema}_old_"
        ns = [int(r[0][len(prefix):]) for r in rows if r[0][len(prefix):].isdigit()]
        return check_schema_name(f"{prefix}{max(ns, default=0) + 1}")


def share_partitions(left: dict[int, int], n: int) -> list[tuple[int, ...]]:
    """``n`` shares of the partitions (``left``: partition -> records to fold), balanced
    by records (partitions differ in size): largest first onto the lightest share."""
    shares: list[list[int]] = [[] for _ in range(n)]
    loads = [0] * n
    for p in sorted(left, key=lambda p: (-left[p], p)):
        i = loads.index(min(loads))
        shares[i].append(p)
        loads[i] += left[p]
    return [tuple(sorted(s)) for s in shares]


class _BackgroundWriter:
    """Writes catch-up batches from one thread, on a connection of its own: one batch in
    flight while the caller reads and folds the next (psycopg releases the GIL while it
    waits on PostgreSQL)."""

    def __init__(self, conn: psycopg.Connection[Any], writer: ProjectionWriter, shadow: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._conn, self._writer, self._shadow = conn, writer, shadow
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="aosk-replay-writer")
        self._future: Any = None

    def submit(self, batch: Any, advances: list[Advance]) -> None:
        self.drain()
        self._future = self._pool.submit(self._writer.write, self._conn, batch, advances)

    def drain(self) -> None:
        f, self._future = self._future, None
        if f is None:
            return
        try:
            f.result()
        except Fenced as e:
            raise ReplayError(f"{e}: another process writes {self._shadow}") from e

    def close(self) -> None:
        """Wait for the write in flight (its error, if any, was or will not be reported
        here: the run already failed) and stop the thread."""
        self._future = None
        self._pool.shutdown(wait=True)


def _helper_main(settings: Settings, options: ReplayOptions, parent: int) -> None:
    """A helper process: catch up its partitions, exit when the parent is gone."""
    import threading

    configure_logging("warning")

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
    with Replay(settings, options) as r:
        r.run()


def _stop_helpers(helpers: list[Any]) -> None:
    """Kill the helper processes still running (the run failed, or was interrupted)."""
    for h in helpers:
        if h.is_alive():
            h.kill()
            h.join(10)


def replay(settings: Settings, options: ReplayOptions | None = None, *,
           progress: Progress | None = None) -> ReplayResult:
    """Rebuild ``options.schema`` from the journal and swap it in (``Replay``)."""
    with Replay(settings, options, progress=progress) as r:
        return r.run()
