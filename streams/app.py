"""The faust app of an AOSK worker, built by ``create_app(settings)`` (never at import:
a faust app binds to an event loop, and tests build one per process).

What the app wires together (the work itself is in ``streams.processor``):

* one agent over the journal, its partitions shared by every worker of the consumer
  group ``<topic prefix>-worker`` (so tests with their own prefix get their own group
  and changelog). faust's acks are OFF for the journal: the worker folds each
  partition strictly in offset order and commits an offset only after every record
  produced for the records before it was acknowledged (``streams.offsets`` says why);
* the table ``slots`` (agent key -> ``encode_slot`` bytes) with as many partitions as
  the journal, in memory, backed by its compacted changelog topic
  ``<topic prefix>-worker-slots-changelog``, which faust replays on every
  (re)assignment; the worker writes the changelog itself (``streams.slots``);
* raw bytes serializers everywhere (faust's json default would silently skip records
  it cannot parse; the worker decodes, and judges undecodable records, itself);
* ``processing_guarantee="at_least_once"``; redeliveries are answered from the slots
  (docs/workers.md says why not ``exactly_once``);
* timers: one commits every ``commit_interval_s`` and re-seeks a partition whose
  records stopped coming, one writes ``CallTimedOut`` for the partitions this worker
  actively owns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aosk.config import Settings
from aosk.endpoints import resolve_endpoints
from aosk.streams.commits import DEFAULT_CAP, CommitGate
from aosk.streams.forks import PastStates
from aosk.streams.offsets import Admit, Cursors, failed
from aosk.streams.processor import Outcome, Processor
from aosk.streams.records import Output, Sink, record_of
from aosk.streams.slots import SlotStore
from aosk.streams.timeouts import SentTimeouts, caught_up
from aosk.topics import JOURNAL_MAX_MESSAGE_BYTES

__all__ = ["WorkerOptions", "create_app", "worker_datadir", "app_id", "EXIT_DELIVERY_FAILED"]

log = logging.getLogger("aosk.streams")

_MAX_RECORD_BYTES = 2 * JOURNAL_MAX_MESSAGE_BYTES
"""Producer request / fetch / changelog record limit: a slot (state <= 768 KiB plus the
kept verdicts) and an ``AgentForked`` both stay well under it."""

EXIT_DELIVERY_FAILED = 75
"""Exit status (EX_TEMPFAIL) when the broker refused a record the worker produced: the
worker stops like a ``kill -9`` and its records are folded again from the last commit."""


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    """How one worker process runs (the cluster-wide settings are in ``Settings``)."""

    node_id: str | None = None
    """This worker's name (default: ``settings.node_id``): its consumer client id and its
    data directory ``<dev.state_dir>/worker/<node_id>``."""
    web_port: int | None = None
    """Port of faust's web server; None turns it off (several workers share a host)."""
    timeout_tick_s: float = 0.5
    """How often the timer looks for calls past their deadline."""
    commit_interval_s: float = 1.0
    """How often folded offsets are committed (after their outputs are acknowledged)."""
    commit_cap: int = DEFAULT_CAP
    """Commit before any agent has this many folded records past the committed offset
    (``streams.commits``)."""
    stall_after_s: float = 1.0
    """Seek a partition back to its next offset when records exist past it but the
    worker folded nothing at all for this long (``Cursors.stalled``)."""
    past_states: PastStates | None = None
    """Where fork sources older than the current state come from (``streams.forks``)."""


def app_id(settings: Settings) -> str:
    """The faust app id = consumer group id = changelog topic prefix."""
    return f"{settings.kafka.topic_prefix}-worker"


def worker_datadir(settings: Settings, node_id: str) -> Path:
    return Path(settings.dev.state_dir).expanduser().resolve() / "worker" / node_id


def create_app(settings: Settings, options: WorkerOptions | None = None) -> Any:
    """A faust ``App`` that folds the journal (see the module doc). ``app.aosk`` holds
    the ``Processor`` (its stops, deadline index, clock) for inspection."""
    import faust
    from faust.types import TP

    opts = options or WorkerOptions()
    node = opts.node_id or settings.node_id
    k = settings.kafka
    bootstrap = resolve_endpoints(settings).bootstrap
    datadir = worker_datadir(settings, node)
    datadir.mkdir(parents=True, exist_ok=True)
    session_s = k.session_timeout_ms / 1000

    app = faust.App(
        app_id(settings),
        broker=[f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip()],
        broker_client_id=f"aosk-worker-{node}",
        store="memory://",
        datadir=str(datadir),
        processing_guarantee="at_least_once",
        topic_partitions=k.journal_partitions,
        topic_replication_factor=k.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=opts.web_port is not None,
        web_port=opts.web_port or 6066,
        broker_session_timeout=session_s,
        broker_heartbeat_interval=min(3.0, session_s / 3),
        producer_max_request_size=_MAX_RECORD_BYTES,
        consumer_max_fetch_size=_MAX_RECORD_BYTES,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
    )

    def raw_topic(name: str, **kw: Any) -> Any:
        return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw", partitions=k.journal_partitions, **kw)

    journal = raw_topic(k.journal_topic, acks=False)  # offsets are ours: streams.offsets
    table = app.Table(
        "slots", default=None, partitions=k.journal_partitions, key_type=bytes, value_type=bytes,
        extra_topic_configs={"max.message.bytes": str(_MAX_RECORD_BYTES)},
    )
    sinks = {Sink.JOURNAL: journal, Sink.TRANSITIONS: raw_topic(k.transitions_topic),
             Sink.DEAD_LETTERS: raw_topic(k.dead_letters_topic), Sink.CHANGELOG: table.changelog_topic}
    # The store, not the table: writes must not go through faust's ProducerBuffer (streams.slots).
    processor = Processor(SlotStore(table.data), journal_topic=k.journal_topic,
                          journal_partitions=k.journal_partitions, past_states=opts.past_states)
    cursors = Cursors()
    commit_lock = asyncio.Lock()
    sent_timeouts = SentTimeouts()
    ready = asyncio.Event()
    app.aosk = processor  # type: ignore[attr-defined]

    def tp(p: int) -> Any:
        return TP(k.journal_topic, p)

    async def send(o: Output) -> Any:
        """Hands ``o`` to the producer; returns its delivery future."""
        return await sinks[o.sink].send(key=o.key, value=o.value, partition=o.partition,
                                        headers=list(o.headers) if o.headers else None)

    def owned() -> set[int]:
        return {t.partition for t in app.assignor.assigned_actives() if t.topic == k.journal_topic}

    async def commit() -> bool:
        """Commit every armed partition's next offset once the outputs of the records
        before it are acknowledged."""
        async with commit_lock:
            plan = cursors.commit_plan()
            if not plan.offsets:
                return True
            if plan.deliveries:
                await asyncio.wait(plan.deliveries)
            error = failed(plan.deliveries)
            if error is not None:
                log.critical("the broker refused a record this worker produced (%s: %s); exiting with status %d "
                             "so the uncommitted records are folded again from the last commit",
                             type(error).__name__, error, EXIT_DELIVERY_FAILED)
                logging.shutdown()
                os._exit(EXIT_DELIVERY_FAILED)
            armed = cursors.armed()
            offsets = {p: o for p, o in plan.offsets.items() if p in armed}
            if not offsets:
                return False
            ok = bool(await app.consumer._commit({tp(p): o for p, o in offsets.items()}))
            if ok:
                cursors.committed(offsets)
            return ok

    gate = CommitGate(commit, cap=opts.commit_cap)

    async def seek_back(p: int) -> None:
        offset = cursors.seek_due(p, time.monotonic())
        if offset is not None:
            await app.consumer.seek(tp(p), offset)

    def stop_partition(message: Any) -> None:
        app.consumer.pause_partitions({message.tp})

    @app.agent(journal, name=f"{app_id(settings)}.fold")
    async def fold(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            p, offset = message.partition, message.offset
            if processor.stops.stopped(p) is not None:
                continue  # already fetched records of a stopped partition: dropped, never committed
            admit = cursors.admit(p, offset)
            if admit is not Admit.FOLD:
                if admit is Admit.GAP:
                    await seek_back(p)
                continue
            record = record_of(message)
            await gate.before(record.agent_key)
            if cursors.admit(p, offset) is not Admit.FOLD:  # a rebalance while committing
                continue
            result = processor.process(record, raw_key=message.key)
            if not result.outcome.ack:
                if result.outcome is Outcome.STOPPED:
                    stop_partition(message)
                continue
            try:
                deliveries = [await send(o) for o in result.outputs]
            except Exception as e:  # noqa: BLE001 - the partition stops, the record is not skipped
                processor.stop_for(record, e)
                stop_partition(message)
                continue
            if cursors.folded(p, offset, deliveries, now=time.monotonic()):
                gate.folded(record.agent_key)

    @table.on_recover
    async def recovered() -> None:
        parts = owned()
        committed = {(t.topic, t.partition): o for t, o in (await app.consumer.seek_to_committed()).items()}
        fresh = [tp(p) for p in parts if committed.get((k.journal_topic, p)) is None]
        earliest = {(t.topic, t.partition): o for t, o in
                    ((await app.consumer.earliest_offsets(*fresh)) if fresh else {}).items()}
        now = time.monotonic()
        cursors.disarm()
        for p in sorted(parts):
            key = (k.journal_topic, p)
            start = committed.get(key)
            if start is None or start < 0:
                start = earliest.get(key) or 0
            cursors.arm(p, start, now=now)
        processor.on_assigned(parts)
        gate.reset()
        ready.set()
        log.info("aosk worker %s folds %s partitions %s from offsets %s (%d open calls watched)", node,
                 k.journal_topic, sorted(parts), {p: cursors.next_offset(p) for p in sorted(parts)},
                 len(processor.deadlines))

    @app.on_partitions_revoked.connect
    async def revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        ready.clear()
        try:
            await commit()
        except Exception as e:  # noqa: BLE001 - best effort: the next owner folds again from the last commit
            log.warning("commit on revocation failed: %r", e)
        parts = {t.partition for t in revoked if t.topic == k.journal_topic}
        cursors.disarm(parts)
        processor.on_revoked(parts)

    @app.on_before_shutdown.connect
    async def shutting_down(sender: Any, **kwargs: Any) -> None:
        try:
            await commit()
        except Exception as e:  # noqa: BLE001
            log.warning("final commit failed: %r", e)

    last_commit = [0.0]

    @app.timer(interval=0.5, name=f"{app_id(settings)}.commit")
    async def commit_and_watch() -> None:
        if not ready.is_set() or app.rebalancing:
            return
        now = time.monotonic()
        if now - last_commit[0] >= opts.commit_interval_s:
            last_commit[0] = now
            await commit()
        now = time.monotonic()
        if not cursors.idle(now, opts.stall_after_s):
            return
        live = [p for p in cursors.armed() if processor.stops.stopped(p) is None]
        for p, highwater in (await highwaters(live)).items():
            if cursors.stalled(p, highwater=highwater, now=now, after_s=opts.stall_after_s):
                log.info("%s[%d]: records up to %s exist but nothing is folded; seeking back to %s",
                         k.journal_topic, p, highwater, cursors.next_offset(p))
                await seek_back(p)

    async def highwaters(parts: list[int]) -> dict[int, int | None]:
        """The broker's high-water mark per partition: the consumer's last known one, or
        asked from the broker when it has none (a partition not fetched since assignment)."""
        out: dict[int, int | None] = {}
        for p in parts:
            try:
                out[p] = app.consumer.highwater(tp(p))
            except Exception:  # noqa: BLE001 - not assigned (any more)
                out[p] = None
        missing = [tp(p) for p, h in out.items() if h is None]
        if missing:
            try:
                for t, h in (await app.consumer.highwaters(*missing)).items():
                    out[t.partition] = h
            except Exception as e:  # noqa: BLE001 - asked again on the next tick
                log.debug("high-water marks unavailable: %r", e)
        return out

    @app.timer(interval=opts.timeout_tick_s, name=f"{app_id(settings)}.timeouts")
    async def write_timeouts() -> None:
        if not ready.is_set() or app.rebalancing:
            return
        now = time.time()
        parts = [p for p in sorted(cursors.armed())
                 if processor.stops.stopped(p) is None and processor.deadlines.earliest(p) is not None]
        if not parts:
            return
        marks = await highwaters(parts)
        for p in parts:
            done = caught_up(cursors.next_offset(p), marks.get(p))
            t = processor.clock.time_ms(p, caught_up=done, now_ms=int(now * 1000))
            if t is None:
                continue
            for event_id, o in processor.timeouts_due(p, t):
                if sent_timeouts.should_send(event_id, now):
                    await send(o)
        sent_timeouts.prune(now)

    return app
