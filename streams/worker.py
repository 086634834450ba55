"""``Worker``: one kernel worker process, folding the journal in batches.

The loop, per batch (``docs/workers.md`` has the why of each step):

1. take up to ``batch_max`` records, waiting at most ``batch_wait_s`` once the first has
   arrived (so a lone record is judged at once and a burst is judged in bulk);
2. fold them per partition in offset order with the one ``apply``
   (``streams.processor``) and hand every output to the producer;
3. every ``commit_interval_s``: wait until the broker acknowledged every output so far,
   then commit the next offsets, then write the snapshots that are due and the floor
   markers (``streams.snapshots``: a snapshot is never ahead of the committed offset);
4. every ``timeout_tick_s``: write ``CallTimedOut`` for calls past their deadline;
5. every ``stop_recheck_s``: look for quarantine markers naming the records that stopped
   partitions (``aosk journal quarantine``); a partition released so resumes at that record;
   and a partition that fetched nothing for ``stall_s`` although the broker has records
   beyond it is sought again at its next offset (``streams.stalls``).

Rebalances are librdkafka callbacks that run inside ``consume``: on revocation the
worker commits and snapshots everything of the revoked partitions (best effort within
its timeouts; the next owner re-folds from the floor anyway); on assignment it restores
the partitions' snapshots and seeks to their floor, re-folding silently up to the
committed offset. A lost assignment (session expired) drops the partitions' state.

Stop: ``stop()`` (SIGTERM / SIGINT) ends the loop; the final commit and snapshots run
with what is left of ``stop_timeout_s``, and a watchdog ends the process when that is
spent (e.g. the broker is gone): nothing was committed that was not acknowledged, so
the next owner simply folds from the last commit.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aosk._gc import tune_gc
from aosk._kafka import KafkaClientLog, consume_ready, side_consumer
from aosk.config import Settings
from aosk.endpoints import resolve_endpoints
from aosk.journal import Quarantines, record_from_message
from aosk.metrics import METRICS
from aosk.streams.forks import PastStates
from aosk.streams.kafka import (
    OFFSET_BEGINNING,
    consumer_config,
    group_id,
    read_partitions,
    worker_producer_config,
)
from aosk.streams.offsets import Cursors
from aosk.streams.processor import Batch, Processor
from aosk.streams.records import Output, Sink
from aosk.streams.snapshots import SnapshotPolicy, encode_floor, encode_snapshot, floor_key, restore
from aosk.streams.stalls import StallWatch
from aosk.streams.timeouts import SentTimeouts, caught_up

__all__ = ["WorkerOptions", "Worker", "EXIT_DELIVERY_FAILED", "EXIT_STOP_TIMEOUT"]

log = logging.getLogger("aosk.streams")

EXIT_DELIVERY_FAILED = 75
"""Exit status (EX_TEMPFAIL) when the broker refused a record the worker produced: the
worker stops like a ``kill -9`` and its uncommitted records are folded again."""
EXIT_STOP_TIMEOUT = 70
"""Exit status when a stop could not finish its final commit within ``stop_timeout_s``."""

_NO_OFFSET = -1001  # librdkafka: no committed offset


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    """How one worker process runs (the cluster-wide settings are in ``Settings``)."""

    node_id: str | None = None
    """This worker's name (default ``settings.node_id``): its consumer client id."""
    batch_max: int = 2_000
    """Most records folded in one batch."""
    batch_wait_s: float = 0.002
    """How long a batch keeps filling once its first record arrived (bounds the latency
    a batch adds to a verdict)."""
    commit_interval_s: float = 0.5
    """How often outputs are awaited, offsets committed and due snapshots written."""
    snapshots: SnapshotPolicy = field(default_factory=SnapshotPolicy)
    """When agent snapshots are written (``streams.snapshots``)."""
    timeout_tick_s: float = 0.5
    """How often calls past their deadline are looked for."""
    stop_timeout_s: float = 12.0
    """A stop ends the process within this, whatever the broker does."""
    stop_recheck_s: float = 5.0
    """How often a partition stopped at an unknown schema fingerprint looks for a
    quarantine marker naming its record (``aosk journal quarantine``)."""
    stall_s: float = 30.0
    """A partition that fetched nothing this long while the broker's end offset is past its
    next offset is sought again there (librdkafka's fetcher was seen to sit idle after a
    broker restart, with records waiting)."""
    flush_timeout_s: float = 30.0
    """Longest wait for acknowledgements before a commit (the commit is skipped, not
    forced, when they do not come)."""
    past_states: PastStates | None = None
    """Where fork sources older than the current state come from (``streams.forks``)."""


class Worker:
    """One worker process's loop (see the module doc). ``consumer``/``producer`` are
    built from the settings unless given (unit tests pass fakes with the same methods)."""

    def __init__(self, settings: Settings, options: WorkerOptions | None = None, *,
                 consumer: Any = None, producer: Any = None,
                 read_snapshots: Callable[[list[int]], dict[int, list[tuple[bytes | None, bytes | None]]]] | None = None
                 ) -> None:
        self.settings = settings
        self.options = opts = options or WorkerOptions()
        k = settings.kafka
        self.node = opts.node_id or settings.node_id
        self.journal = k.journal_topic
        self.snapshots_topic = k.worker_snapshots_topic
        self._topics = {Sink.TRANSITIONS: k.transitions_topic, Sink.JOURNAL: k.journal_topic,
                        Sink.DEAD_LETTERS: k.dead_letters_topic, Sink.SNAPSHOTS: self.snapshots_topic}
        self._bootstrap = resolve_endpoints(settings).bootstrap if consumer is None or producer is None else ""
        self._quarantines = Quarantines.from_journal(self._bootstrap, k.journal_topic) if self._bootstrap else None
        self.processor = Processor(journal_topic=k.journal_topic, journal_partitions=k.journal_partitions,
                                   past_states=opts.past_states, snapshot_policy=opts.snapshots,
                                   quarantines=self._quarantines)
        self.cursors = Cursors()
        self._floors: dict[int, int] = {}
        self._sent_timeouts = SentTimeouts()
        self._stop = threading.Event()
        self._watchdog: threading.Timer | None = None
        self._consumer = consumer
        self._producer = producer
        self._read_snapshots = read_snapshots or (
            lambda ps: read_partitions(self._bootstrap, self.snapshots_topic, ps))
        self._delivery_error: str | None = None
        self._quiet: KafkaClientLog | None = None
        self._side: Any = None
        """A consumer of the same group that never subscribes, for the blocking calls of
        ``_on_assign`` (None with a consumer passed in: that one is used)."""
        self._last_commit = 0.0
        self._last_tick = 0.0
        self._last_recheck = 0.0
        self._stalls = StallWatch(opts.stall_s)
        self.folded = 0
        self.refolded = 0
        self._refolded_reported = 0
        self._busy = {"wait": 0.0, "fold": 0.0, "commit": 0.0}
        """Seconds the loop spent waiting for records, folding and sending, committing."""
        self._group = group_id(k.topic_prefix)
        self._produced = 0
        """Outputs handed to the producer so far."""
        self._unacked: deque[tuple[int, list[int]]] = deque()
        """Per batch whose verdicts are not known to be acknowledged yet: the number of
        outputs produced up to its last, and its records' broker timestamps
        (``aosk_worker_verdict_latency_seconds``)."""
        self._last_lag = 0.0
        METRICS.agents.source(self._agents_by_status)

    # -- set-up --------------------------------------------------------------------------

    def _connect(self) -> None:
        from confluent_kafka import Consumer, Producer

        k = self.settings.kafka
        self._quiet = quiet = KafkaClientLog(self._bootstrap, role="worker")  # an outage: a few lines, not hundreds
        if self._producer is None:
            self._producer = Producer(quiet.configure(
                worker_producer_config(self._bootstrap, client_id=f"aosk-worker-{self.node}")))
        if self._consumer is None:
            config = consumer_config(self._bootstrap, group=group_id(k.topic_prefix),
                                     client_id=f"aosk-worker-{self.node}", session_timeout_ms=k.session_timeout_ms)
            # The rebalance callbacks' blocking calls go to another client (aosk._kafka.side_consumer).
            self._side = side_consumer(config)
            self._consumer = Consumer(quiet.configure_consumer(config))
        self._consumer.subscribe([self.journal], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)
        log.info("aosk worker %s joins group %s on %s", self.node, group_id(k.topic_prefix), self.journal)

    # -- the loop ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler); see the module doc."""
        if not self._stop.is_set():
            self._stop.set()
            self._watchdog = threading.Timer(self.options.stop_timeout_s, self._stop_timed_out)
            self._watchdog.daemon = True
            self._watchdog.start()

    def _stop_timed_out(self) -> None:
        log.error("worker %s: the stop did not finish within %.0fs (broker unreachable?); exiting with status %d. "
                  "Nothing unacknowledged was committed: the next owner folds from the last commit.",
                  self.node, self.options.stop_timeout_s, EXIT_STOP_TIMEOUT)
        logging.shutdown()
        os._exit(EXIT_STOP_TIMEOUT)

    def run(self) -> int:
        """Fold until ``stop()``; returns the exit status."""
        self._connect()
        tune_gc()
        c = self._consumer
        opts = self.options
        last_report = time.monotonic()
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                # While verdicts wait for their acknowledgement, look again within 10 ms.
                msgs = consume_ready(c, opts.batch_max, timeout=0.01 if self._unacked else 0.1,
                                     linger=opts.batch_wait_s)
                t1 = time.monotonic()
                self._busy["wait"] += t1 - t0
                if msgs:
                    self._handle(msgs)
                self._producer.poll(0)
                self._check_deliveries()
                if self._unacked:
                    self._acknowledged(self._produced - len(self._producer))
                now = time.monotonic()
                self._busy["fold"] += now - t1
                if now - self._last_commit >= opts.commit_interval_s:
                    self._commit(now)
                    self._busy["commit"] += time.monotonic() - now
                if now - self._last_tick >= opts.timeout_tick_s:
                    self._last_tick = now
                    self._timeouts()
                    self._lag()
                if now - self._last_recheck >= opts.stop_recheck_s:
                    self._last_recheck = now
                    self._recheck_stops()
                    self._check_stalls(now)
                # Every 5 s while records are judged; an idle (or cut-off) worker once a minute,
                # so an outage is a few lines, not a report every 5 s.
                if now - last_report >= (5 if self.folded or self.refolded != self._refolded_reported else 60):
                    self._report(now - last_report)
                    last_report = now
        finally:
            self._shutdown()
            if self._watchdog is not None:  # stopped in time: the process may go on
                self._watchdog.cancel()
        return 0

    def _handle(self, msgs: list[Any]) -> None:
        records = []
        raw_keys = []
        cursors = self.cursors
        for m in msgs:
            err = m.error()
            if err is not None:
                self._kafka_error(err)
                continue
            if not cursors.admit(m.partition(), m.offset()):
                continue
            records.append(record_from_message(m))
            raw_keys.append(m.key())
        if not records:
            return
        t0 = time.monotonic()
        batch = self.processor.fold(records, now=t0, raw_keys=raw_keys)
        for o in batch.outputs:
            self._send(o)
        self._count(batch, len(records), time.monotonic() - t0)
        for p, offset in batch.next_offsets.items():
            cursors.advance(p, offset)
            self._stalls.progressed(p, time.monotonic())
        for stop in batch.stops:
            self._pause(stop.partition)
            METRICS.stopped("worker", stop.partition, stop.reason)
        self.folded += batch.folded
        self.refolded += batch.refolded

    def _count(self, batch: Batch, n: int, seconds: float) -> None:
        """The batch's metrics (docs/operations.md "Metrics"): a few calls per batch."""
        m = METRICS
        m.worker_batch_records.observe(n)
        m.worker_fold_seconds.observe(seconds)
        m.folded(batch.types, batch.verdicts)
        if batch.timestamps:
            self._unacked.append((self._produced, batch.timestamps))
        if batch.started:
            m.agents_started.inc(batch.started)
        for status, k in batch.ended.items():
            m.agents_ended.labels(status).inc(k)
        if batch.paged_out:
            m.context_page_outs.inc(batch.paged_out)

    def _acknowledged(self, done: int) -> None:
        """``done`` outputs are acknowledged (produced minus those the producer still
        holds): observe the verdict latency of the records of every batch whose outputs
        end within them. librdkafka acknowledges per partition, not strictly in produce
        order, so a batch counts as acknowledged when as many outputs are as it and
        everything before it produced: off by what is in flight on other partitions (a
        few ms at the producer's 5 ms linger). Looked at every turn of the loop (within
        10 ms while verdicts wait) and after every commit's flush (``done`` = all)."""
        unacked = self._unacked
        if not unacked or unacked[0][0] > done:
            return
        now_ms = time.time() * 1000
        observe = METRICS.worker_verdict_latency.observe
        while unacked and unacked[0][0] <= done:
            for ts in unacked.popleft()[1]:
                observe(max(0.0, now_ms - ts) / 1000)

    def _agents_by_status(self) -> dict[str, int]:
        """``aosk_agents``: the owned agents by status, counted at scrape time (from a copy:
        the loop goes on meanwhile)."""
        counts: dict[str, int] = {}
        for key, slot in list(self.processor.slots.items()):
            if not key.startswith("~"):  # partitions' pseudo-agents are not agents
                status = slot.state.status
                counts[status] = counts.get(status, 0) + 1
        return counts

    def _lag(self) -> None:
        """``aosk_consumer_lag_*`` of the owned partitions, from the cached end offsets."""
        from confluent_kafka import TopicPartition

        now_ms = int(time.time() * 1000)
        clock = self.processor.clock.last_timestamp
        for p in self.cursors.owned():
            try:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(self.journal, p), cached=True)
            except Exception:  # noqa: BLE001 - not fetched yet
                continue
            METRICS.lag(self._group, p, next_offset=self.cursors.next_offset(p), end=high,
                        last_timestamp_ms=clock.get(p), now_ms=now_ms)

    def _send(self, o: Output) -> None:
        p = self._producer
        topic = self._topics[o.sink]
        while True:
            try:
                p.produce(topic, value=o.value, key=o.key, partition=o.partition,
                          headers=list(o.headers) if o.headers else None, on_delivery=self._delivered)
                self._produced += 1
                return
            except BufferError:  # the local queue is full: let librdkafka send some first
                p.poll(0.05)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None and self._delivery_error is None:
            self._delivery_error = f"{msg.topic()}[{msg.partition()}]: {err.str()}"

    def _check_deliveries(self) -> None:
        if self._delivery_error is not None:
            log.critical("the broker refused a record this worker produced (%s); exiting with status %d so the "
                         "uncommitted records are folded again from the last commit",
                         self._delivery_error, EXIT_DELIVERY_FAILED)
            logging.shutdown()
            os._exit(EXIT_DELIVERY_FAILED)

    def _kafka_error(self, err: Any) -> None:
        if err.fatal():
            log.critical("fatal Kafka client error: %s; exiting", err.str())
            logging.shutdown()
            os._exit(EXIT_DELIVERY_FAILED)
        log.warning("Kafka: %s", err.str())

    # -- commits and snapshots -----------------------------------------------------------

    def _commit(self, now: float, partitions: set[int] | None = None, *, everything: bool = False,
                flush_timeout: float | None = None) -> bool:
        """Await every output, commit the next offsets, then write the due snapshots and
        floors (of ``partitions``, default all owned). False if nothing could be committed."""
        from confluent_kafka import KafkaException, TopicPartition

        self._last_commit = now
        parts = self.cursors.owned() if partitions is None else partitions & self.cursors.owned()
        timeout = self.options.flush_timeout_s if flush_timeout is None else flush_timeout
        left = self._producer.flush(timeout)
        self._check_deliveries()
        if left:
            log.warning("%d outputs not acknowledged within %.1fs; offsets not committed", left, timeout)
            return False
        if self._unacked:
            self._acknowledged(self._produced)
        plan = self.cursors.commit_plan(parts)
        if plan:
            try:
                self._consumer.commit(offsets=[TopicPartition(self.journal, p, o) for p, o in plan.items()],
                                      asynchronous=False)
            except KafkaException as e:
                log.warning("offset commit failed (%s); the partitions' snapshots wait for the next commit",
                            e.args[0].str() if e.args else e)
                return False
            self.cursors.committed(plan)
        self._write_snapshots(parts, now, everything=everything)
        return True

    def _write_snapshots(self, parts: set[int], now: float, *, everything: bool) -> None:
        proc = self.processor
        for p in sorted(parts):
            due = proc.snapshots_due(p, now, everything=everything)
            for key, slot in due:
                self._send(Output(Sink.SNAPSHOTS, key.encode(), p, encode_snapshot(slot)))
            proc.dirty.written(p, (k for k, _ in due))
            committed = self.cursors.committed_offset(p)
            if committed is None:
                continue
            # While a takeover re-folds below the commit, agents whose records lie between
            # the re-fold position and the commit are not dirty yet: the floor must not
            # pass that position, or the next owner would never re-fold those records.
            nxt = self.cursors.next_offset(p)
            floor = proc.dirty.floor(p, committed if nxt is None else min(committed, nxt))
            if self._floors.get(p) != floor:
                self._send(Output(Sink.SNAPSHOTS, floor_key(p), p, encode_floor(floor)))
                self._floors[p] = floor

    # -- rebalancing (librdkafka calls these inside consume) -----------------------------

    def _on_assign(self, consumer: Any, tps: list[Any]) -> None:
        from confluent_kafka import TopicPartition

        ps = sorted(tp.partition for tp in tps)
        if self._quiet is not None:
            self._quiet.reached()
        side = self._side if self._side is not None else consumer
        committed = self._committed_offsets(side, ps)
        t0 = time.monotonic()
        snapshots = self._read_snapshots([p for p in ps if committed.get(p) is not None])
        starts = {}
        for p in ps:
            c = committed.get(p)
            if c is None:
                # Never committed: fold from the beginning with outputs (snapshots, if any,
                # cannot be placed against a commit that is not there).
                self.processor.assign(p, {}, silent_until=0)
                self.cursors.arm(p, next_offset=0, committed=None)
                starts[p] = OFFSET_BEGINNING
                self._floors.pop(p, None)
                continue
            restored = restore(p, snapshots.get(p, []))
            # No floor marker (none written yet, or a snapshot unreadable): re-fold from
            # the beginning; the snapshots still say which records each agent has.
            start = 0 if restored.floor is None else min(restored.floor, c)
            ahead = [k for k, s in restored.slots.items() if s.last_offset >= c]
            if ahead:
                log.error("%s[%d]: snapshots of %s are ahead of the committed offset %d (a zombie worker wrote "
                          "after a rebalance); their records from %d are not judged again", self.journal, p,
                          ahead[:5], c, c)
            self.processor.assign(p, restored.slots, silent_until=c)
            self.cursors.arm(p, next_offset=start, committed=c)
            self._floors[p] = start
            starts[p] = start if start > 0 else OFFSET_BEGINNING
        live = self._live_partitions(side)
        for p in ps:
            stop = self.processor.check_partition_count(p, live) if live else None
            if stop is not None:
                self.cursors.stop(p)
                METRICS.stopped("worker", p, stop.reason)
        consumer.assign([TopicPartition(self.journal, p, starts[p]) for p in ps])
        for p in ps:
            if self.processor.stops.stopped(p) is not None:
                self._pause(p)
        log.info("aosk worker %s folds %s partitions %s: committed %s, re-folding from %s (%.2fs to restore)",
                 self.node, self.journal, ps, {p: committed.get(p) for p in ps},
                 {p: self.cursors.next_offset(p) for p in ps}, time.monotonic() - t0)

    def _live_partitions(self, consumer: Any) -> int | None:
        """The journal's partition count now (None if the metadata cannot be had)."""
        try:
            md = consumer.list_topics(self.journal, timeout=10).topics.get(self.journal)
            return len(md.partitions) if md is not None and md.error is None else None
        except Exception as e:  # noqa: BLE001 - checked again at the next assignment
            log.warning("journal metadata unavailable (%r); partition count not checked", e)
            return None

    def _committed_offsets(self, consumer: Any, ps: list[int]) -> dict[int, int | None]:
        from confluent_kafka import KafkaException, TopicPartition

        delay = 0.2
        while True:
            try:
                got = consumer.committed([TopicPartition(self.journal, p) for p in ps], timeout=10)
                return {tp.partition: (None if tp.offset == _NO_OFFSET or tp.offset < 0 else tp.offset) for tp in got}
            except KafkaException as e:
                if self._stop.is_set():
                    raise
                why = f"committed offsets unavailable ({e.args[0].str() if e.args else e})"
                if self._quiet is not None:  # part of an outage's few lines
                    self._quiet.failure(why)
                else:
                    log.warning("%s; retrying", why)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _on_revoke(self, consumer: Any, tps: list[Any]) -> None:
        ps = {tp.partition for tp in tps if tp.topic == self.journal}
        if ps:
            try:
                flush_timeout = min(10.0, self.options.flush_timeout_s)
                self._commit(time.monotonic(), ps, everything=True, flush_timeout=flush_timeout)
            except Exception as e:  # noqa: BLE001 - best effort: the next owner re-folds from the floor
                log.warning("commit on revocation failed: %r", e)
            self._drop(ps)
            log.info("partitions %s revoked", sorted(ps))
        consumer.unassign()

    def _on_lost(self, consumer: Any, tps: list[Any]) -> None:
        ps = {tp.partition for tp in tps if tp.topic == self.journal}
        self._drop(ps)
        log.warning("partitions %s lost (session expired); their state is dropped uncommitted", sorted(ps))
        consumer.unassign()

    def _drop(self, ps: set[int]) -> None:
        self.processor.revoke(ps)
        self._stalls.forget(ps)
        for p in ps:
            METRICS.going_on("worker", p)
        METRICS.forget_lag(self._group, ps)
        self.cursors.disarm(ps)
        for p in ps:
            self._floors.pop(p, None)

    def _pause(self, p: int) -> None:
        from confluent_kafka import TopicPartition

        self.cursors.stop(p)
        try:
            self._consumer.pause([TopicPartition(self.journal, p)])
        except Exception as e:  # noqa: BLE001 - already-fetched records are held by the processor anyway
            log.warning("pausing partition %d failed: %r", p, e)

    def _recheck_stops(self) -> None:
        """Resume partitions whose stopping record a quarantine marker now names."""
        from confluent_kafka import TopicPartition

        q = self._quarantines
        if q is None:
            return
        for stop in list(self.processor.stops):
            if stop.reason != "unknown_fingerprint" or stop.partition not in self.cursors.owned():
                continue
            try:
                marker = q.marker_for(stop.partition, stop.offset)
            except Exception as e:  # noqa: BLE001 - looked for again at the next recheck
                log.warning("looking for a quarantine marker of %d:%d failed: %r", stop.partition, stop.offset, e)
                continue
            if marker is None:
                continue
            p = stop.partition
            self.processor.stops.clear([p])
            METRICS.going_on("worker", p)
            self.cursors.release(p, stop.offset)
            tp = TopicPartition(self.journal, p, stop.offset)
            self._consumer.seek(tp)
            self._consumer.resume([tp])
            log.warning("%s[%d]: record %d is quarantined by the marker at offset %d (%s); the partition resumes",
                        self.journal, p, stop.offset, marker.offset, marker.reason)

    def _check_stalls(self, now: float) -> None:
        """Seek partitions that fetch nothing while the broker has records for them."""
        from confluent_kafka import TopicPartition

        if self._quiet is not None and self._quiet.down:
            # An outage: nothing can be fetched anyway, and each question would block. Idle
            # time is counted from its end, so a partition is not "stalled" by the outage.
            for p in self.cursors.owned():
                self._stalls.progressed(p, now)
            return
        for p in sorted(self.cursors.owned()):
            nxt = self.cursors.next_offset(p)
            if nxt is None or self.processor.stops.stopped(p) is not None or not self._stalls.due(p, now):
                continue
            tp = TopicPartition(self.journal, p)
            try:
                _, high = self._consumer.get_watermark_offsets(tp, timeout=2, cached=False)
                (pos,) = self._consumer.position([tp])
            except Exception:  # noqa: BLE001 - the broker is away: looked at again next round
                return
            fetched = max(nxt, pos.offset if pos.offset is not None and pos.offset >= 0 else 0)
            if high is None or high <= fetched:
                self._stalls.progressed(p, now)  # caught up: nothing to fetch
                continue
            loud = self._stalls.reseek(p, now)
            (log.warning if loud else log.debug)(
                "%s[%d]: nothing fetched for %.0fs while the broker's end offset is %d and this worker is at %d; "
                "seeking again", self.journal, p, self._stalls.idle(p, now), high, nxt)
            try:
                self._consumer.seek(TopicPartition(self.journal, p, nxt))
            except Exception as e:  # noqa: BLE001 - tried again after the next interval
                log.debug("seek of %d to %d failed: %r", p, nxt, e)

    # -- timeouts ------------------------------------------------------------------------

    def _timeouts(self) -> None:
        from confluent_kafka import TopicPartition

        proc = self.processor
        now = time.time()
        for p in sorted(self.cursors.owned()):
            if proc.stops.stopped(p) is not None or proc.deadlines.earliest(p) is None or self.cursors.silent(p):
                continue
            try:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(self.journal, p), cached=True)
            except Exception:  # noqa: BLE001 - not fetched yet
                high = None
            done = caught_up(self.cursors.next_offset(p), high if high is not None and high >= 0 else None)
            t = proc.clock.time_ms(p, caught_up=done, now_ms=int(now * 1000))
            if t is None:
                continue
            for event_id, o in proc.timeouts_due(p, t):
                if self._sent_timeouts.should_send(event_id, now):
                    self._send(o)
        self._sent_timeouts.prune(now)

    # -- stop ----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        if self._consumer is None:
            return
        left = max(1.0, self.options.stop_timeout_s - 3.0)
        try:
            if self.cursors.owned():
                self._commit(time.monotonic(), everything=True, flush_timeout=min(left, self.options.flush_timeout_s))
                self._producer.flush(min(left, 5.0))
        except Exception as e:  # noqa: BLE001 - the next owner folds from the last commit
            log.warning("final commit failed: %r", e)
        try:
            self._consumer.close()
            if self._side is not None:
                self._side.close()
        except Exception as e:  # noqa: BLE001 - closing is best effort: the group evicts a silent member anyway
            log.warning("closing the consumer failed: %r", e)
        if self._quarantines is not None:
            self._quarantines.close()
        self._report(None)

    def _report(self, interval: float | None) -> None:
        rate = "" if not interval else f" ({self.folded / interval:.0f}/s)"
        busy = ", ".join(f"{k} {v:.1f}s" for k, v in self._busy.items())
        log.info("aosk worker %s: %d records judged%s, %d re-folded, %d agents, %d partitions, %d stopped (%s)",
                 self.node, self.folded, rate, self.refolded, len(self.processor.slots),
                 len(self.cursors.owned()), len(self.processor.stops), busy)
        self._refolded_reported = self.refolded
        if interval:
            self.folded = 0
            self._busy = dict.fromkeys(self._busy, 0.0)
