"""``aosk project``: one projector process. Start it N times to scale.

All projectors of a schema share one consumer group on the journal (auto-commit off,
``read_committed``). On assignment a projector seeks each partition to the offset stored
in ``projector_offsets`` (0: the beginning) -- Kafka's committed offsets are only a hint
for lag tools. Per batch it decodes and folds with the shared ``apply``, then writes
every row and advances the offsets in one transaction with a compare-and-set
(``aosk.projectors.writer``). When the compare-and-set fails another process owns the
partition: the transaction is rolled back, the cached agent states of the batch's
partitions are dropped, and they are re-read and re-sought from the database. So a
crash, a restart or a paused process resuming after a rebalance ("zombie") neither
loses nor duplicates a row.

The journal's live partition count is read on every assignment; if it differs from the
count a partition's fold version 2 marker recorded, ``PartitionCountChanged`` ends the
process (docs/recovery.md, "A changed partition count"): keys no longer live where the
fold routes them, and no partition may be projected under the wrong count.

Sessions run with ``synchronous_commit = off``: a commit PostgreSQL loses in a crash
takes its offsets with it, and the journal is re-read from there (nothing is lost, the
journal is the source of truth). ``transaction_timeout`` (PostgreSQL 17+) and
``idle_in_transaction_session_timeout`` end the transaction of a process paused while
holding the partition's row lock, so the new owner is not blocked by it for long.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg import sql

from aosk._gc import tune_gc
from aosk._kafka import KafkaClientLog, side_consumer
from aosk._resources import ResourceHolder, Resources
from aosk.config import Settings
from aosk.endpoints import resolve_endpoints
from aosk.errors import PartitionCountChanged, PostgresUnavailable
from aosk.journal import OFFSET_BEGINNING, Quarantines, group_consumer_config, live_partition_count
from aosk.kernel import LATEST_VERSION, Record, params_for
from aosk.metrics import METRICS
from aosk.projectors.batch import FoldedBatch, Inconsistent, PartitionStop, fold_batch
from aosk.projectors.cache import AgentCache
from aosk.projectors.db import (
    DEFAULT_SCHEMA,
    PostgresOutage,
    ProjectionConfigError,
    check_journal_topic,
    connect,
    ensure_offset_rows,
    get_meta,
    migrate,
    open_pool,
    record_stop,
    set_meta,
)
from aosk.projectors.faults import Fault
from aosk.projectors.index_upkeep import CHECK_EVERY_S, MemoryIndexUpkeep
from aosk.projectors.intake import Intake
from aosk.projectors.stored import UndecodableState, read_stored_offsets
from aosk.projectors.writer import COMPACT_RATIO, Advance, Fenced, ProjectionWriter, prepare_connection

__all__ = ["ProjectorOptions", "Projector", "checkpoint_every_of", "next_batch_limit"]

log = logging.getLogger("aosk.projector")

MIN_BATCH: Final = 50
"""The fewest records a batch is cut down to after failed writes."""
IDLE_RETRY_S: Final = 30.0
"""After a failed upkeep of agent_state when idle, how long before the next try."""


@dataclass(frozen=True, kw_only=True)
class ProjectorOptions:
    """How one projector process runs."""

    schema: str = DEFAULT_SCHEMA
    """The projection schema written (the live ``aosk`` or a shadow)."""
    group_id: str | None = None
    """Consumer group; default ``<topic prefix>.projectors.<schema>``."""
    batch_max: int = 5000
    """Most records folded and written in one transaction."""
    poll_timeout_s: float = 0.1
    """How long a batch waits to fill up (bounds the projection latency when idle)."""
    transaction_timeout_s: float = 30.0
    """PostgreSQL ends a batch transaction older than this (a paused process's)."""
    max_cached_agents: int = 50_000
    """Agent states kept in memory between batches (least recently written evicted;
    re-read from agent_state when their agent shows up again)."""
    stop_recheck_s: float = 5.0
    """How often a partition stopped at an unknown schema fingerprint looks for a
    quarantine marker naming its record (``aosk journal quarantine``)."""
    compact_ratio: float = COMPACT_RATIO
    """When idle after a burst, agent_state larger on disk than this multiple of its live
    rows is compacted (``ProjectionWriter.idle``; 0: never)."""
    memory_index_check_s: float = CHECK_EVERY_S
    """How often the memories' IVFFlat index is checked for being outgrown by its table
    and built again if so (``aosk.projectors.index_upkeep``; 0: never)."""
    fault: str | None = None
    """Fault injection for tests: ``sigstop:<before_write|in_transaction>:<after N batches>``."""


def next_batch_limit(limit: int, written: bool, batch_max: int) -> int:
    """Records to ask for next: halved (down to ``MIN_BATCH``) after a batch that was not
    written, doubled (up to ``batch_max``) after one that was."""
    if written:
        return min(limit * 2, batch_max)
    return max(limit // 2, min(MIN_BATCH, batch_max))


def checkpoint_every_of(conn: psycopg.Connection[Any], schema: str) -> int:
    """The schema's checkpoint interval (``projection_meta``), else the fold's."""
    v = get_meta(conn, schema, "checkpoint_every")
    return int(v) if v is not None else params_for(LATEST_VERSION).checkpoint_interval


@dataclass
class _Stats:
    records: int = 0
    batches: int = 0
    fenced: int = 0
    refused: int = 0
    decode_s: float = 0.0
    fold_s: float = 0.0
    write_s: float = 0.0
    since: float = field(default_factory=time.monotonic)


class Projector(ResourceHolder):
    """One projector process: consume, fold, write, repeat.

    A context manager: ``with Projector(settings, options) as p: p.run()`` migrates the
    schema and opens the pool on entry and closes everything it opened on exit, an error
    that ended the block going on unhidden (``aosk._resources``). ``run()`` outside a
    ``with`` block opens and closes by itself.
    """

    def __init__(self, settings: Settings, options: ProjectorOptions | None = None) -> None:
        self.settings = settings
        self.options = options or ProjectorOptions()
        self.schema = self.options.schema
        self.topic = settings.kafka.journal_topic
        ep = resolve_endpoints(settings)
        self._bootstrap = ep.bootstrap
        self._dsn = ep.dsn
        self._stop = threading.Event()
        self._cache = AgentCache(max_entries=self.options.max_cached_agents)
        self._intake = Intake(self.topic, self._kafka_error)
        """Owned partitions: ``pos`` is the next_offset this process believes is stored
        (the CAS start); stops, pauses and pending seeks."""
        self._quarantines = Quarantines.from_journal(self._bootstrap, self.topic)
        self._last_recheck = 0.0
        self._batch_limit = self.options.batch_max
        """Records asked of Kafka per batch: halved after a batch that could not be written
        (one too big to commit within ``transaction_timeout_s`` on a loaded server would
        otherwise be retried whole forever), doubled back after each written one."""
        self._live_partitions: int | None = None
        """The journal's partition count, read on every assignment (a changed count
        raises ``PartitionCountChanged`` from the fold)."""
        self._stats = _Stats()
        self._batches_done = 0
        self._fault = Fault.parse(self.options.fault, points=("before_write", "in_transaction"))
        self.owner = f"{settings.node_id}/{os.getpid()}"
        self._pool: Any = None
        self._consumer: Any = None
        self._writer: ProjectionWriter | None = None
        self.checkpoint_every = 0
        self._quiet = KafkaClientLog(self._bootstrap, role="projector")
        """A broker outage: a few lines with backoff, not one per reconnect."""
        self._pg = PostgresOutage(self._dsn, role="projector", pool_name=self._pool_name(), logger=log)
        """PostgreSQL going away: a few lines with backoff, not one per retry."""
        self._group = ""
        self._last_ms: dict[int, int] = {}
        """Partition -> broker time of the last record committed (``aosk_consumer_lag_seconds``)."""
        self._last_lag = 0.0
        self._idle_retry_at = 0.0
        """No upkeep when idle before then (it failed: PostgreSQL may be away)."""
        self._index_upkeep: MemoryIndexUpkeep | None = None

    # -- set-up ------------------------------------------------------------------------

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("set synchronous_commit = off")
        conn.execute(sql.SQL("set application_name = {}").format(sql.Literal(f"aosk-projector {self.owner}")))
        ms = int(self.options.transaction_timeout_s * 1000)
        conn.execute(f"set idle_in_transaction_session_timeout = {ms}")
        if conn.info.server_version >= 170000:
            conn.execute(f"set transaction_timeout = {ms}")
        conn.commit()
        prepare_connection(conn, self.schema)

    def __enter__(self) -> Projector:
        self.setup()
        return self

    def setup(self) -> None:
        """Check the configuration, migrate the schema and open the pool (on entering the
        ``with`` block; leaving it or ``close()`` closes the pool; ``run`` closes the
        consumer when it returns)."""
        dim = self.settings.memory.embedding_dimension
        fold_dim = params_for(LATEST_VERSION).embedding_dim
        if dim != fold_dim:
            raise ProjectionConfigError(
                f"memory.embedding_dimension is {dim} but fold version {LATEST_VERSION} accepts embeddings of "
                f"dimension {fold_dim}; they must agree (the fold rejects every other dimension)"
            )
        ensure_journal(self._bootstrap, self.settings)
        pg = self.settings.storage.postgresql
        with connect(self._dsn) as conn:
            applied = migrate(conn, schema=self.schema, dimension=dim, memory_index=self.settings.memory.index)
            if applied:
                log.info("applied migrations %s to schema %s", applied, self.schema)
            with conn.transaction():
                if check_journal_topic(conn, self.schema, self.topic) is None:
                    set_meta(conn, self.schema, "journal_topic", self.topic)
                self.checkpoint_every = checkpoint_every_of(conn, self.schema)
                ensure_offset_rows(conn, self.schema, self.settings.kafka.journal_partitions)
        with Resources() as resources:
            resources.callback(self._quarantines.close)
            pool_log = logging.getLogger("psycopg.pool")
            pool_log.addFilter(self._pg.pool_filter)
            resources.callback(pool_log.removeFilter, self._pg.pool_filter)
            self._pool = open_pool(self._dsn, pg, name=self._pool_name(), min_size=1,
                                   max_size=max(2, min(4, pg.pool_size)), configure=self._configure)
            resources.callback(self._pool.close)
            with self._pool.connection() as conn:
                row = conn.execute("select 'vector'::regtype::oid").fetchone()
                assert row is not None  # regtype resolves or raises
                oid = int(row[0])
            self._writer = ProjectionWriter(self.schema, vector_oid=oid, owner=self.owner)
            self._resources = resources.pop_all()

    def _pool_name(self) -> str:
        return f"aosk-projector-{self.schema}"

    def _subscribe(self, resources: Resources) -> Any:
        """The group's consumer, subscribed; ``resources`` closes it and its side consumer."""
        from confluent_kafka import Consumer

        group = self._group = self.options.group_id or f"{self.settings.kafka.topic_prefix}.projectors.{self.schema}"
        config = group_consumer_config(self._bootstrap, group_id=group, client_id=f"aosk-projector-{self.owner}",
                                       session_timeout_ms=self.settings.kafka.session_timeout_ms)
        self._side = side_consumer(config)  # for the rebalance callbacks' blocking calls (aosk._kafka.side_consumer)
        resources.callback(self._side.close)
        consumer = Consumer(self._quiet.configure_consumer(config))
        resources.callback(consumer.close)
        consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_revoke)
        return consumer

    # -- rebalancing --------------------------------------------------------------------

    def _read_offsets(self, partitions: list[int]) -> dict[int, int]:
        delay = 0.5
        deadline = time.monotonic() + 120
        while True:
            try:
                with self._pool.connection() as conn:
                    stored = read_stored_offsets(conn, self.schema, partitions)
                self._pg.answered()
                return stored
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(self._dsn, f"cannot read projector_offsets: {e}") from e
                self._pg.failed(e)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _on_assign(self, consumer: Any, parts: list[Any]) -> None:
        ps = [tp.partition for tp in parts]
        self._quiet.reached()
        live = live_partition_count(self._side, self.topic, logger=log)
        if live is not None:  # else keep the count read at the last assignment
            self._live_partitions = live
        stored = self._read_offsets(ps)
        for tp in parts:
            off = stored[tp.partition]
            tp.offset = off if off > 0 else OFFSET_BEGINNING
            self._intake.assigned(tp.partition, off)
            METRICS.going_on("projector", tp.partition)
            self._cache.drop(tp.partition)
        consumer.assign(parts)
        log.info("assigned partitions %s of %s at stored offsets %s", sorted(ps), self.topic,
                 [stored[p] for p in sorted(ps)])

    def _on_revoke(self, consumer: Any, parts: list[Any]) -> None:
        ps = sorted(tp.partition for tp in parts)
        for p in ps:
            self._intake.revoked(p)
            METRICS.going_on("projector", p)
            self._cache.drop(p)
        METRICS.forget_lag(self._group, ps)
        if ps:
            log.info("partitions %s revoked", ps)

    def _resync(self, partitions: list[int], why: str) -> None:
        """Drop what we cached for ``partitions`` and re-seek them to the stored offsets."""
        pos = self._intake.pos
        owned = [p for p in partitions if p in pos]
        for p in partitions:
            self._cache.drop(p)
        if not owned:
            return
        stored = self._read_offsets(owned)
        self._intake.advanced((p, stored[p]) for p in owned)
        self._intake.seek(self._consumer, owned)
        log.warning("%s; partitions %s re-read from PostgreSQL at offsets %s", why, owned, [stored[p] for p in owned])

    # -- the loop -----------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Project until ``stop()`` (or SIGTERM / SIGINT from the CLI); outside a ``with``
        block, set up first and close at the end."""
        if self._resources is None:
            with self:
                return self.run()
        tune_gc()
        with Resources() as resources:
            self._consumer = self._subscribe(resources)
            resources.callback(lambda: self._report(time.monotonic()))
            if self.options.memory_index_check_s > 0:
                self._index_upkeep = MemoryIndexUpkeep(
                    self._dsn, self.schema, self.settings.memory.embedding_dimension, owner=self.owner,
                    check_every_s=self.options.memory_index_check_s)
                resources.callback(self._index_upkeep.close)
            try:
                self._loop()
            except PartitionCountChanged as e:
                log.critical("projector STOPPED: %s", e)
                raise

    def _loop(self) -> None:
        last_report = time.monotonic()
        backoff = 0.0
        intake = self._intake
        while not self._stop.is_set():
            intake.seek_pending(self._consumer)
            msgs = self._consumer.consume(num_messages=self._batch_limit, timeout=self.options.poll_timeout_s)
            if msgs:
                if msgs[-1].error() is None:  # appended after an outage began: it is over
                    self._quiet.reached(msgs[-1].timestamp()[1])
                t = time.perf_counter()
                parts = intake.take(msgs)
                self._stats.decode_s += time.perf_counter() - t
                if parts:
                    ok = self._project(parts)
                    self._adapt_batch(ok)
                    backoff = 0.0 if ok else min(max(backoff * 2, 0.2), 5.0)
                    if backoff:
                        self._stop.wait(backoff)
            else:
                self._idle()
            if self._index_upkeep is not None:
                self._index_upkeep.poll()
            now = time.monotonic()
            if intake.stopped and now - self._last_recheck >= self.options.stop_recheck_s:
                self._last_recheck = now
                self._recheck_stops()
            if now - last_report >= 10:
                self._report(now)
                last_report = now
            if now - self._last_lag >= 1.0:
                self._last_lag = now
                self._lag()

    def _adapt_batch(self, written: bool) -> None:
        limit = next_batch_limit(self._batch_limit, written, self.options.batch_max)
        if limit < self._batch_limit:
            log.warning("a batch was not written: the next ones take at most %d records", limit)
        self._batch_limit = limit

    def _idle(self) -> None:
        """Nothing to read: agent_state's upkeep (``ProjectionWriter.idle``)."""
        assert self._writer is not None
        now = time.monotonic()
        if not self._writer.idle_due or now < self._idle_retry_at:
            return
        try:
            with self._pool.connection() as conn:
                done = self._writer.idle(conn, compact_ratio=self.options.compact_ratio)
        except psycopg.Error as e:
            self._idle_retry_at = now + IDLE_RETRY_S
            log.warning("agent_state upkeep when idle failed (tried again in %.0fs): %s", IDLE_RETRY_S, e)
            return
        if done is not None:
            log.info("idle: agent_state %s", done.describe())

    def _kafka_error(self, m: Any, err: Any) -> None:
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._AUTO_OFFSET_RESET or err.code() == KafkaError.OFFSET_OUT_OF_RANGE:
            p = m.partition()
            self._stop_partition(PartitionStop(
                p, self._intake.pos.get(p, -1), f"stored offset is out of the journal's range ({err.str()}); "
                "was the topic recreated? rebuild the projection (aosk replay)", "offset_out_of_range"))
            self._intake.pause(self._consumer, p)
        else:
            log.warning("kafka: %s", err.str())

    def _stop_partition(self, stop: PartitionStop) -> None:
        p = stop.partition
        self._intake.stopped[p] = stop
        METRICS.stopped("projector", p, stop.code)
        log.critical("partition %d of %s STOPPED at offset %d: %s. It is not projected any further until this is "
                     "fixed; the other partitions go on.", p, self.topic, stop.offset, stop.reason)
        self._record_stop(stop)

    def _record_stop(self, stop: PartitionStop | None, partition: int | None = None) -> None:
        """Show the stop (None: that the partition goes on) in ``projector_offsets``, for
        ``aosk db status`` and health checks; best effort (the log has it anyway)."""
        p = stop.partition if stop is not None else partition
        assert p is not None  # a stop, or the partition that goes on
        try:
            with self._pool.connection() as conn:
                if stop is None:
                    record_stop(conn, self.schema, p)
                else:
                    record_stop(conn, self.schema, p, offset=stop.offset, code=stop.code, message=stop.reason)
        except psycopg.Error as e:
            log.warning("could not record the stop of partition %s in projector_offsets: %s", p, e)

    def _recheck_stops(self) -> None:
        """Resume partitions whose stopping record a quarantine marker now names."""
        for p, stop in list(self._intake.stopped.items()):
            if stop.code != "unknown_fingerprint" or p not in self._intake.pos:
                continue
            try:
                marker = self._quarantines.marker_for(p, stop.offset)
            except Exception as e:  # noqa: BLE001 - looked for again at the next recheck
                log.warning("looking for a quarantine marker of %d:%d failed: %r", p, stop.offset, e)
                continue
            if marker is None:
                continue
            self._resume(p)
            log.warning("%s[%d]: record %d is quarantined by the marker at offset %d (%s); the partition resumes",
                        self.topic, p, stop.offset, marker.offset, marker.reason)

    def _resume(self, p: int) -> None:
        del self._intake.stopped[p]
        METRICS.going_on("projector", p)
        self._record_stop(None, p)
        self._cache.drop(p)
        self._intake.resume(self._consumer, p)
        self._intake.seek(self._consumer, [p])

    def _load(self, parts: dict[int, list[Record]]) -> dict[str, int]:
        """Put the stored entries of the batch's uncached keys into the cache; returns
        keys stored under another partition than the one they now appear on."""
        want = self._cache.wanted(parts)
        if not want:
            return {}
        with self._pool.connection() as conn:
            try:
                return self._cache.load(conn, self.schema, want)
            except UndecodableState as e:
                raise Inconsistent(str(e)) from e

    def _project(self, parts: dict[int, list[Record]]) -> bool:
        """Fold and write one batch; False when it had to be retried."""
        assert self._writer is not None
        t0 = time.perf_counter()
        try:
            moved = self._load(parts)
            batch = fold_batch(parts, self._cache.get, checkpoint_every=self.checkpoint_every, owner_of=moved.get,
                               live_partitions=self._live_partitions, quarantines=self._quarantines)
        except Inconsistent as e:
            log.error("cache inconsistent with the journal: %s", e)
            self._resync(list(parts), "inconsistent cache")
            return False
        except psycopg.Error as e:
            if isinstance(e, psycopg.OperationalError):
                self._pg.failed(e)
            else:
                log.warning("PostgreSQL error while loading agent states: %s", e)
            self._resync(list(parts), "load failed")
            return False
        t1 = time.perf_counter()
        advances = []
        pos = self._intake.pos
        for p, (end, last_ms) in batch.ends.items():
            advances.append(Advance(p, pos[p], end, last_ms, self._high_watermark(p)))
        if not advances:  # every partition of the batch stopped at its first record
            self._apply_stops(batch)
            return True
        self._fault.maybe("before_write", self._batches_done)
        try:
            with self._pool.connection() as conn:
                refused = self._writer.write(
                    conn, batch, advances,
                    after_cas=lambda: self._fault.maybe("in_transaction", self._batches_done),
                )
        except Fenced as e:
            self._stats.fenced += 1
            METRICS.projector_fenced_batches.inc()
            self._resync(list(parts), f"offsets rolled back: {e}" if e.rolled_back else f"fenced: {e}")
            return True
        except Inconsistent as e:
            log.error("batch could not be written: %s", e)
            self._resync(list(parts), "write inconsistent")
            return False
        except psycopg.Error as e:
            if isinstance(e, psycopg.OperationalError):
                self._pg.failed(e)
            else:
                log.warning("batch not written (%s: %s); it will be re-read", type(e).__name__, e)
            self._resync(list(parts), "write failed")
            return False
        self._pg.answered()
        t2 = time.perf_counter()
        METRICS.projected(self._writer.last_rows, (r.timestamp for recs in parts.values() for r in recs), t2 - t1)
        self._last_ms.update((a.partition, a.last_record_ms) for a in advances)
        self._committed(batch, advances)
        self._apply_stops(batch)
        st = self._stats
        st.records += len(batch.outcomes)
        st.batches += 1
        st.refused += len(refused)
        st.fold_s += t1 - t0
        st.write_s += t2 - t1
        self._batches_done += 1
        return True

    def _apply_stops(self, batch: FoldedBatch) -> None:
        for s in batch.stops:
            self._stop_partition(s)
            self._intake.pause(self._consumer, s.partition)

    def _committed(self, batch: FoldedBatch, advances: list[Advance]) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        self._cache.committed(batch)
        self._intake.advanced((a.partition, a.end) for a in advances)
        try:  # a hint for lag tools only; the truth is projector_offsets
            self._consumer.commit(offsets=[TopicPartition(self.topic, a.partition, a.end) for a in advances],
                                  asynchronous=True)
        except KafkaException as e:
            log.debug("kafka offset commit (hint) failed: %s", e)

    def _high_watermark(self, p: int) -> int | None:
        from confluent_kafka import TopicPartition

        try:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
        except Exception:  # noqa: BLE001 - informational only
            return None
        return int(high) if high is not None and high >= 0 else None

    def _lag(self) -> None:
        """``aosk_consumer_lag_*`` of the owned partitions: cached end offsets against the
        offsets this process committed to PostgreSQL."""
        now_ms = int(time.time() * 1000)
        for p, pos in list(self._intake.pos.items()):
            METRICS.lag(self._group, p, next_offset=pos, end=self._high_watermark(p),
                        last_timestamp_ms=self._last_ms.get(p), now_ms=now_ms)

    def _report(self, now: float) -> None:
        st = self._stats
        dt = max(now - st.since, 1e-9)
        if st.batches:
            log.info(
                "%d records in %d batches (%.0f records/s; decode %.1fs, fold %.1fs, write %.1fs); fenced %d, "
                "refused %d; partitions %s%s", st.records, st.batches, st.records / dt, st.decode_s, st.fold_s,
                st.write_s, st.fenced,
                st.refused, sorted(self._intake.pos),
                f"; STOPPED {sorted(self._intake.stopped)}" if self._intake.stopped else "",
            )
        self._stats = _Stats()


def ensure_journal(bootstrap: str, settings: Settings, *, attempts: int = 5) -> None:
    """``ensure_topics``, retried while freshly created topics are not yet in the
    broker's metadata (it reports them as "missing after create" for a moment)."""
    from aosk.topics import TopicMismatch, ensure_topics

    for i in range(attempts):
        try:
            ensure_topics(bootstrap, settings.kafka)
            return
        except TopicMismatch as e:
            if "missing after create" not in str(e) or i == attempts - 1:
                raise
            time.sleep(0.5 * (i + 1))


def install_signal_handlers(projector: Projector) -> Callable[[], None]:
    """SIGTERM / SIGINT stop the loop after the current batch."""

    def handler(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping after the current batch", signum)
        projector.stop()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    return restore
