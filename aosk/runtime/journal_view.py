"""The runtime's view of its journal partitions: their agents, folded by the kernel's ``apply``.

``aosk runtime`` processes share the journal topic in one consumer group, so each agent is
owned by the process its partition is assigned to. A ``JournalView`` folds the records of
its partitions with the same ``apply``, ``fold_args`` and ``route`` the workers and
projectors use (``aosk.kernel.folding``), so its states are those of a fold of the journal,
byte for byte. The runtime may act on an agent only once the view of its partition is
**caught up**: folded up to the end offset read when the partition was assigned. Only then
does the state include everything written before this process took over (the previous
owner's last steps, its open calls, the turns it took).

Assignment (the fastest correct start). For the assigned partitions, in one
repeatable-read snapshot, the view reads ``projector_offsets.next_offset`` and every
``agent_state`` row of the projection schema (``aosk.projectors.stored.read_partitions``):
the projector writes both in one transaction, so the rows are the fold of the partition
below ``next_offset``. The states decode as the projector's do
(``aosk.kernel.statecodec``); the partition's pseudo-agent ``~p<n>`` comes with them
(its fold version and recorded partition count). The consumer starts at ``next_offset``;
whatever the projection lags behind is folded from Kafka. A partition with nothing
projected (no schema, no row, offset 0) is folded from the beginning of the journal. So
is every partition of an assignment whose restore fails (PostgreSQL not answering within
``restore_timeout_s``, a state that does not decode, a row past its offset): one warning,
then the slow but correct start. A schema that projects another journal topic raises
``JournalMismatch`` from ``poll``: that is a configuration error, not an outage. An
exception from ``poll`` (that one, or the end offsets not readable for 30 s) leaves the
view unusable: close it.

End offsets: the high watermark of each partition, read at assignment. A partition is
caught up once the consumer's position reaches it (the position, not the last record's
offset + 1: a transactional producer's commit markers take offsets that no record
holds); an empty partition, or one restored up to its end, is caught up at once.

Stops, as projectors and workers stop: a record with an unknown schema fingerprint (not
named by a ``RecordQuarantined`` marker, ``aosk.journal.Quarantines``), a marker asking
for an unknown fold version, a partition count that is not the one recorded, or any other
failure of the fold stops its partition at that record, with one critical log line naming
the partition, the offset and what to do (``aosk journal quarantine``). The record is never
skipped; the partition is paused and stays not caught up, so its agents are not acted on;
the other partitions go on. Every ``stop_recheck_s`` a partition stopped at an unknown
fingerprint looks for a quarantine marker and goes on from that record once one names it.
Undecodable and quarantined records are no stops: the fold rejects them like any reader.

A key folds on the partition it is read from: each partition's agents are kept apart
(under fold version 2 and later a record off its key's partition folds into the
pseudo-agent, rejected ``wrong_partition``, in every reader alike; under version 1 a
projector also stops a partition on which a key stored under another one shows up, which
the view, holding only its own partitions, cannot know).

Consumer: ``aosk.journal.group_consumer_config`` (as projectors: ``read_committed``,
auto-commit and the offset store off, no automatic offset reset), with the
``cooperative-sticky`` assignor instead of ``range``: a process joining or leaving moves
only the partitions that change owner, so the others keep their folded agents and their
caught-up status. The view commits no offsets, not even as a hint: where it starts comes
from PostgreSQL or offset 0 every time, never from the group's committed offsets.
librdkafka's logs go through ``aosk._kafka.KafkaClientLog`` (an outage is a few lines).

Rebalances and everything else that happens come back from ``poll`` as events, in the
order they happened: ``PartitionsAssigned`` (after the restore, with where each partition
starts and ends), ``PartitionsRevoked`` (its agents are already dropped: stop acting on
them), ``RecordFolded`` (one per record), ``PartitionCaughtUp``, ``PartitionHalted`` and
``PartitionResumed``. Rebalance callbacks run inside ``poll``, on the calling thread.

Threads: the view is not thread-safe. One thread (the runtime's dedicated one) creates it
and calls every method; ``owned``, ``caught_up``, ``state`` and ``agents`` change only
during ``poll`` on that thread. What the methods and events hand out (states, slots,
records, verdicts) is immutable and may be passed to other threads. No asyncio here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aosk._kafka import KafkaClientLog, consume_ready, high_watermark, side_consumer
from aosk.config import Settings
from aosk.endpoints import resolve_endpoints
from aosk.errors import (
    Inconsistent,
    JournalMismatch,
    PartitionStopped,
    SchemaNotFound,
    UndecodableState,
    UnknownFingerprint,
    UnknownFoldVersion,
)
from aosk.journal import OFFSET_BEGINNING, Quarantines, group_consumer_config, live_partition_count, record_from_message
from aosk.kernel import AgentSlot, AgentState, Record, Verdict, apply, check_partition_count, fold_args, pseudo_key
from aosk.kernel import route as route_record
from aosk.projectors.batch import stop_code, stop_message
from aosk.projectors.db import DEFAULT_SCHEMA, require_schema
from aosk.projectors.stored import StoredPartition, read_partitions

__all__ = [
    "JournalView",
    "JournalViewOptions",
    "ViewEvent",
    "RecordFolded",
    "PartitionsAssigned",
    "PartitionsRevoked",
    "PartitionCaughtUp",
    "PartitionHalted",
    "PartitionResumed",
]

log = logging.getLogger("aosk.runtime.view")

@dataclass(frozen=True, kw_only=True)
class JournalViewOptions:
    """How a ``JournalView`` consumes and restores."""

    schema: str = DEFAULT_SCHEMA
    """The projection schema partitions are restored from (``agent_state``, ``projector_offsets``)."""
    restore: bool = True
    """Restore assigned partitions from the projection; False: always fold from offset 0."""
    restore_timeout_s: float = 10.0
    """How long an assignment waits for PostgreSQL before folding from offset 0 instead."""
    max_records: int = 1000
    """Most records one ``poll`` consumes."""
    hash_state: bool = False
    """Hash every state into its verdict (``Verdict.state_hash``); off, it is empty and
    ``aosk.kernel.state_hash(state)`` computes it when needed."""
    stop_recheck_s: float = 5.0
    """How often a partition stopped at an unknown schema fingerprint looks for a
    quarantine marker naming its record (``aosk journal quarantine``)."""
    client_id: str | None = None
    """The Kafka client id; default ``aosk-runtime-<node id>/<pid>``."""


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordFolded:
    """One record folded: its verdict and its agent's slot after it."""

    record: Record
    verdict: Verdict
    key: str
    """The key the record folded into (``route``): its agent, or the partition's pseudo-agent."""
    slot: AgentSlot

    @property
    def partition(self) -> int:
        return self.record.partition

    @property
    def offset(self) -> int:
        return self.record.offset

    @property
    def state(self) -> AgentState:
        return self.slot.state


@dataclass(frozen=True, slots=True)
class PartitionsAssigned:
    """Partitions this view owns now, restored; their agents are in ``state`` / ``agents``."""

    partitions: frozenset[int]
    starts: Mapping[int, int]
    """partition -> the offset folding starts at (the projection's ``next_offset``, or 0)."""
    ends: Mapping[int, int]
    """partition -> the end offset read at assignment (caught up once folded up to it)."""
    restored: Mapping[int, int]
    """partition -> agent states restored from PostgreSQL, for the partitions restored
    (the others fold from offset 0)."""


@dataclass(frozen=True, slots=True)
class PartitionsRevoked:
    """Partitions this view no longer owns; their agents are dropped already."""

    partitions: frozenset[int]
    lost: bool = False
    """Taken away without a rebalance handshake (the session timed out): another process
    may have acted on them already."""


@dataclass(frozen=True, slots=True)
class PartitionCaughtUp:
    """``partition`` is folded up to the end offset read at its assignment."""

    partition: int
    offset: int
    """The consumer's position then (at least that end offset)."""


@dataclass(frozen=True, slots=True)
class PartitionHalted:
    """``partition`` stopped at the record at ``offset``; nothing after it is folded."""

    partition: int
    offset: int
    code: str
    """``unknown_fingerprint`` | ``unknown_fold_version`` | ``partition_count_changed`` |
    ``offset_out_of_range`` | ``error``."""
    message: str
    """What happened and what to do, for people."""


@dataclass(frozen=True, slots=True)
class PartitionResumed:
    """A quarantine marker names the record ``partition`` halted at: it goes on from there."""

    partition: int
    offset: int
    marker_offset: int


ViewEvent = (RecordFolded | PartitionsAssigned | PartitionsRevoked | PartitionCaughtUp | PartitionHalted
             | PartitionResumed)
"""What ``JournalView.poll`` returns, in the order it happened."""


# -- per partition ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Partition:
    number: int
    slots: dict[str, AgentSlot]
    next_offset: int
    """The consumer position folded up to: every record below it is in ``slots``."""
    end: int
    """The end offset read at assignment."""
    caught_up: bool = False
    halted: PartitionHalted | None = None
    last_ms: int | None = None
    """Broker time of the last record folded (the lag in seconds)."""
    seek_pending: bool = False
    """A seek to ``next_offset`` is still to be made (resumed after a halt)."""

    @property
    def pkey(self) -> str:
        return pseudo_key(self.number)

    def fold(self, rec: Record, quarantines: Quarantines, *, live: int | None, hash_state: bool,
             topic: str) -> RecordFolded | PartitionHalted:
        """``rec`` through ``apply`` (the partition's rules in force, quarantines honoured),
        or the halt it causes (the slots are then unchanged)."""
        pkey = self.pkey
        pseudo = self.slots.get(pkey)
        try:
            version, partitions = fold_args(None if pseudo is None else pseudo.state)
            key = route_record(rec, version, partitions).key
            if rec.error is not None:
                rec = quarantines.resolve(rec)
            slot, verdict = apply(self.slots.get(key), rec, version=version, partitions=partitions,
                                  hash_state=hash_state)
            if key == pkey and live is not None:  # a marker may record the partition count
                check_partition_count(slot.state, live)
        except Exception as e:  # noqa: BLE001 - never skip a record: the partition stops at it
            return _halt(topic, self.number, rec.offset, e)
        self.slots[key] = slot
        self.next_offset = rec.offset + 1
        self.last_ms = rec.timestamp
        return RecordFolded(rec, verdict, key, slot)


def _halt(topic: str, partition: int, offset: int, error: BaseException) -> PartitionHalted:
    if isinstance(error, UnknownFingerprint | UnknownFoldVersion):
        message = str(PartitionStopped(topic, partition, offset, error))
    else:
        message = f"partition {partition} of {topic} is stopped at offset {offset}: {stop_message(offset, error)}"
    return PartitionHalted(partition, offset, stop_code(error), message)


# -- the view --------------------------------------------------------------------------------


class JournalView:
    """The agents of the journal partitions this process owns in consumer group
    ``group_id``, folded (the module doc has the semantics). Drive it from one thread:

        with JournalView(settings, group_id="aosk.runtime") as view:
            while running:
                for ev in view.poll(0.5):
                    ...  # RecordFolded, PartitionsAssigned, PartitionCaughtUp, ...
                for p in view.owned():
                    if view.caught_up(p):
                        for agent in view.agents(p): ...
    """

    def __init__(self, settings: Settings, *, group_id: str, options: JournalViewOptions | None = None) -> None:
        from confluent_kafka import Consumer

        self.settings = settings
        self.options = options or JournalViewOptions()
        self.group_id = group_id
        self.topic = settings.kafka.journal_topic
        ep = resolve_endpoints(settings)
        self._bootstrap = ep.bootstrap
        self._dsn = ep.dsn
        self._parts: dict[int, _Partition] = {}
        self._events: list[ViewEvent] = []
        """Events of the rebalance callbacks, handed out by the next ``poll``."""
        self._live: int | None = None
        """The journal's partition count, read at every assignment."""
        self._quarantines = Quarantines.from_journal(self._bootstrap, self.topic)
        self._last_recheck = 0.0
        self._closed = False
        self._quiet = KafkaClientLog(self._bootstrap, role="runtime")
        client_id = self.options.client_id or f"aosk-runtime-{settings.node_id}/{os.getpid()}"
        config = group_consumer_config(self._bootstrap, group_id=group_id, client_id=client_id,
                                       session_timeout_ms=settings.kafka.session_timeout_ms)
        config["partition.assignment.strategy"] = "cooperative-sticky"
        self._side = side_consumer(config)  # for the rebalance callbacks' blocking calls (aosk._kafka.side_consumer)
        self._consumer = Consumer(self._quiet.configure_consumer(config))
        self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)

    def __enter__(self) -> JournalView:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Leave the group (its partitions go to the other members) and drop every agent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close()
            self._side.close()
        finally:
            self._quarantines.close()
            self._parts.clear()
            self._events.clear()

    # -- what the owner reads -------------------------------------------------------------

    def owned(self) -> frozenset[int]:
        """The partitions assigned to this view now."""
        return frozenset(self._parts)

    def caught_up(self, partition: int) -> bool:
        """``partition`` is owned, not halted, and folded up to the end offset read at its
        assignment: its agents may be acted on."""
        part = self._parts.get(partition)
        return part is not None and part.caught_up and part.halted is None

    def halted(self, partition: int) -> PartitionHalted | None:
        """Why ``partition`` is halted (None: it is not, or not owned)."""
        part = self._parts.get(partition)
        return None if part is None else part.halted

    def position(self, partition: int) -> int | None:
        """The offset up to which ``partition`` is folded (None: not owned)."""
        part = self._parts.get(partition)
        return None if part is None else part.next_offset

    def lag(self) -> dict[int, tuple[int, int | None, int | None]]:
        """Partition -> (next offset folded, end offset from the consumer's cached
        watermarks or None, broker time of the last record folded or None)."""
        from confluent_kafka import TopicPartition

        out: dict[int, tuple[int, int | None, int | None]] = {}
        for p, part in self._parts.items():
            try:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), cached=True)
            except Exception:  # noqa: BLE001 - not fetched yet
                high = None
            out[p] = (part.next_offset, high if high is not None and high >= 0 else None, part.last_ms)
        return out

    def state(self, agent_id: str) -> AgentState | None:
        """The folded state of ``agent_id`` (a partition's pseudo-agent ``~p<n>`` too) if it
        lives on an owned partition; None otherwise."""
        slot = self.slot(agent_id)
        return None if slot is None else slot.state

    def slot(self, agent_id: str) -> AgentSlot | None:
        """``state`` with the last applied offset beside it."""
        for part in self._parts.values():
            slot = part.slots.get(agent_id)
            if slot is not None:
                return slot
        return None

    def agents(self, partition: int) -> list[AgentState]:
        """The states of the agent keys folded on ``partition`` (a list made now; the
        pseudo-agent ``~p<n>`` left out), in no particular order; empty if not owned."""
        part = self._parts.get(partition)
        if part is None:
            return []
        return [s.state for k, s in part.slots.items() if not k.startswith("~")]

    # -- consuming ------------------------------------------------------------------------

    def poll(self, timeout_s: float) -> list[ViewEvent]:
        """Consume what is there (waiting at most ``timeout_s`` for the first record), fold
        it, and return everything that happened since the last call, in order."""
        if self._closed:
            raise RuntimeError("the JournalView is closed")
        self._seek_pending()
        msgs = consume_ready(self._consumer, self.options.max_records, timeout=timeout_s)
        events, self._events = self._events, []
        if msgs and msgs[-1].error() is None:  # appended after an outage began: it is over
            self._quiet.reached(msgs[-1].timestamp()[1])
        parts = self._parts
        live, hash_state, topic, quarantines = self._live, self.options.hash_state, self.topic, self._quarantines
        for m in msgs:
            err = m.error()
            if err is not None:
                self._kafka_error(m, err, events)
                continue
            part = parts.get(m.partition())
            if part is None or part.halted is not None or part.seek_pending or m.offset() < part.next_offset:
                continue  # not ours (any more), halted, or fetched before a seek
            out = part.fold(record_from_message(m), quarantines, live=live, hash_state=hash_state, topic=topic)
            if isinstance(out, PartitionHalted):
                self._halt(part, out, events)
            else:
                events.append(out)
        self._check_caught_up(events)
        now = time.monotonic()
        if now - self._last_recheck >= self.options.stop_recheck_s:
            self._last_recheck = now
            self._recheck_halts(events)
        return events

    def _check_caught_up(self, events: list[ViewEvent]) -> None:
        from confluent_kafka import TopicPartition

        waiting = [p for p in self._parts.values() if not p.caught_up and p.halted is None and not p.seek_pending]
        if not waiting:
            return
        # The consumer's position passes commit markers, which no record stands for.
        positions = {tp.partition: tp.offset for tp in
                     self._consumer.position([TopicPartition(self.topic, p.number) for p in waiting])}
        for part in waiting:
            pos = max(part.next_offset, positions.get(part.number, -1))
            if pos >= part.end:
                part.caught_up = True
                events.append(PartitionCaughtUp(part.number, pos))

    def _kafka_error(self, m: Any, err: Any, events: list[ViewEvent]) -> None:
        from confluent_kafka import KafkaError

        part = self._parts.get(m.partition()) if m.partition() is not None else None
        if part is not None and err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
            self._halt(part, PartitionHalted(
                part.number, part.next_offset, "offset_out_of_range",
                f"partition {part.number} of {self.topic}: offset {part.next_offset} is out of the journal's range "
                f"({err.str()}); was the topic recreated? rebuild the projection (aosk replay)"), events)
        else:
            log.warning("kafka: %s", err.str())

    def _halt(self, part: _Partition, halt: PartitionHalted, events: list[ViewEvent]) -> None:
        from confluent_kafka import TopicPartition

        part.halted = halt
        part.caught_up = False
        log.critical("journal view: %s. Its agents are not acted on until it goes on; the other partitions go on.",
                     halt.message)
        try:
            self._consumer.pause([TopicPartition(self.topic, part.number)])
        except Exception as e:  # noqa: BLE001 - its records are dropped unfolded anyway
            log.debug("pausing partition %d failed: %s", part.number, e)
        events.append(halt)

    def _recheck_halts(self, events: list[ViewEvent]) -> None:
        """Resume the partitions whose halting record a quarantine marker now names."""
        from confluent_kafka import TopicPartition

        for part in self._parts.values():
            halt = part.halted
            if halt is None or halt.code != "unknown_fingerprint":
                continue
            try:
                marker = self._quarantines.marker_for(part.number, halt.offset)
            except Exception as e:  # noqa: BLE001 - looked for again at the next recheck
                log.warning("looking for a quarantine marker of %d:%d failed: %r", part.number, halt.offset, e)
                continue
            if marker is None:
                continue
            part.halted = None
            part.next_offset = halt.offset
            part.end = max(part.end, halt.offset + 1)  # caught up again once past the record
            part.caught_up = False
            part.seek_pending = True
            self._consumer.resume([TopicPartition(self.topic, part.number)])
            log.warning("%s[%d]: record %d is quarantined by the marker at offset %d (%s); the partition goes on",
                        self.topic, part.number, halt.offset, marker.offset, marker.reason)
            events.append(PartitionResumed(part.number, halt.offset, marker.offset))
        self._seek_pending()

    def _seek_pending(self) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        for part in self._parts.values():
            if not part.seek_pending:
                continue
            off = part.next_offset
            try:
                self._consumer.seek(TopicPartition(self.topic, part.number, off if off > 0 else OFFSET_BEGINNING))
                part.seek_pending = False
            except KafkaException as e:
                log.debug("seek of partition %d not possible yet (%s); retrying", part.number, e)

    # -- rebalancing (inside poll, on the caller's thread) ------------------------------------

    def _on_assign(self, consumer: Any, tps: list[Any]) -> None:
        if not tps:
            return
        self._quiet.reached()
        ps = sorted(tp.partition for tp in tps)
        live = live_partition_count(self._side, self.topic, logger=log)
        if live is not None:  # else keep the count read at the last assignment
            self._live = live
        ends = {p: high_watermark(self._side, self.topic, p) for p in ps}
        t0 = time.monotonic()
        stored = self._restore(ps)
        halts: list[PartitionHalted] = []
        for tp in tps:
            p = tp.partition
            sp = stored.get(p)
            slots = {} if sp is None else {k: e.slot for k, e in sp.entries.items()}
            start = 0 if sp is None else sp.next_offset
            part = _Partition(p, slots, start, ends[p])
            part.caught_up = start >= part.end
            self._parts[p] = part
            tp.offset = start if start > 0 else OFFSET_BEGINNING
            pseudo = slots.get(part.pkey)
            if self._live is not None:
                try:
                    check_partition_count(None if pseudo is None else pseudo.state, self._live)
                except Exception as e:  # noqa: BLE001 - PartitionCountChanged: halt, loudly
                    halts.append(_halt(self.topic, p, start, e))
        consumer.incremental_assign(tps)
        self._events.append(PartitionsAssigned(
            frozenset(ps), {p: self._parts[p].next_offset for p in ps}, ends,
            {p: len(sp.entries) for p, sp in stored.items()}))
        for h in halts:
            self._halt(self._parts[h.partition], h, self._events)
        for p in ps:
            part = self._parts[p]
            if part.caught_up and part.halted is None:
                self._events.append(PartitionCaughtUp(p, part.next_offset))
        log.info("journal view: assigned partitions %s of %s; restored %s from schema %s (%.2fs), folding from "
                 "offsets %s up to %s", ps, self.topic, {p: len(sp.entries) for p, sp in sorted(stored.items())},
                 self.options.schema, time.monotonic() - t0, [self._parts[p].next_offset for p in ps],
                 [ends[p] for p in ps])

    def _on_revoke(self, consumer: Any, tps: list[Any]) -> None:
        self._drop(tps, lost=False)

    def _on_lost(self, consumer: Any, tps: list[Any]) -> None:
        self._drop(tps, lost=True)

    def _drop(self, tps: list[Any], *, lost: bool) -> None:
        ps = frozenset(tp.partition for tp in tps) & frozenset(self._parts)
        if not ps:
            return
        for p in ps:
            del self._parts[p]
        self._events.append(PartitionsRevoked(ps, lost))
        log.info("journal view: partitions %s %s", sorted(ps), "lost" if lost else "revoked")

    def _restore(self, partitions: list[int]) -> dict[int, StoredPartition]:
        """What the projection holds of ``partitions`` (nothing: fold from offset 0)."""
        if not self.options.restore:
            return {}
        import psycopg

        try:
            with psycopg.connect(self._dsn, autocommit=True,
                                 connect_timeout=max(1, round(self.options.restore_timeout_s))) as conn:
                try:
                    require_schema(conn, self.options.schema, journal_topic=self.topic)
                except SchemaNotFound:
                    log.info("journal view: no projection schema %s; folding partitions %s from offset 0",
                             self.options.schema, partitions)
                    return {}
                return read_partitions(conn, self.options.schema, partitions)
        except JournalMismatch:
            raise
        except (psycopg.Error, UndecodableState, Inconsistent) as e:
            log.warning("journal view: restoring partitions %s from schema %s failed (%s); folding them from "
                        "offset 0 instead", partitions, self.options.schema, " ".join(str(e).split()))
            return {}
