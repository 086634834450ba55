"""Journal records through the worker, a batch at a time: ``apply``, and the records to
produce. Synchronous and free of Kafka: the worker loop (``streams.worker``) feeds it
decoded records in offset order per partition, produces its outputs and commits.

Per record, in order:

1. its partition is stopped -> not folded (``HELD``: its offset is never committed);
2. its agent's slot already covers the offset (a snapshot restored ahead of the record,
   while a takeover re-folds from the snapshot floor) -> skipped (``SKIPPED``);
3. a record with an unknown schema fingerprint is looked up in ``quarantines``
   (``aosk.journal.Quarantines``: a later ``RecordQuarantined`` marker naming it makes it
   fold as rejected ``quarantined``); then
   ``apply(slot, record, version=<the partition's fold version>)``:
   * ``UnknownFingerprint`` / ``UnknownFoldVersion`` / any other error -> the partition
     stops (``streams.pausing``), the record is not folded (``STOPPED``);
   * otherwise the agent's slot is replaced, marked dirty for its next snapshot
     (``streams.snapshots``) and its deadlines updated (``FOLDED``);
4. outputs, unless the record is below the partition's ``silent_until`` (a takeover
   re-folding records whose outputs were acknowledged before the offsets were
   committed): the ``Transition``, the derived events, the dead letter, the fork
   (``streams.records``, ``streams.forks``).

A record folded again after a crash (at or past the committed offset) is folded from
the same state as the first time, so its outputs are byte-identical: the fold is
deterministic, nothing is answered from kept verdicts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from aosk.events import ForkRequested, KernelUpgraded, encode
from aosk.journal import Quarantines
from aosk.kernel import (
    AgentSlot,
    Kind,
    Record,
    Status,
    Verdict,
    apply,
    check_partition_count,
    fold_args,
    pseudo_key,
    route,
    timeout_events,
)
from aosk.partitioning import partition_for
from aosk.streams.forks import NoPastStates, PastStates, build_fork
from aosk.streams.pausing import PartitionStops, Stop, describe_stop
from aosk.streams.records import Output, Sink, outputs
from aosk.streams.snapshots import DirtyAgents, SnapshotPolicy
from aosk.streams.timeouts import DeadlineIndex, PartitionClock

__all__ = ["RecordFate", "Batch", "Processor"]

log = logging.getLogger("aosk.streams")

_UNDECODABLE = "undecodable"
_SPAWNED = "AgentSpawned"
_ENDED = frozenset({Status.TERMINATED, Status.ERROR})


class RecordFate(Enum):
    """What the processor did with one record."""

    FOLDED = "folded"
    SKIPPED = "skipped"
    """Already in its agent's restored snapshot."""
    STOPPED = "stopped"
    """This record stopped its partition."""
    HELD = "held"
    """Its partition is stopped."""


@dataclass
class Batch:
    """What folding a batch produced."""

    outputs: list[Output] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)
    """partition -> the offset after the last record folded or skipped (what may be
    committed once ``outputs`` are acknowledged)."""
    folded: int = 0
    """Records folded with outputs."""
    refolded: int = 0
    """Records folded silently (re-fold of a takeover)."""
    stops: list[Stop] = field(default_factory=list)
    """Partitions this batch stopped."""
    types: dict[str, int] = field(default_factory=dict)
    """Records folded (silently or not) by event type (``undecodable``: no event)."""
    verdicts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    """Verdicts written, by (event type, kind, reason)."""
    timestamps: list[int] = field(default_factory=list)
    """Broker timestamps of the records whose verdicts are written (verdict latency)."""
    started: int = 0
    """Accepted spawns among the verdicts written."""
    ended: dict[str, int] = field(default_factory=dict)
    """Agents that reached TERMINATED or ERROR in this batch, by that status."""
    paged_out: int = 0
    """Context entries paged out by the verdicts written."""


class Processor:
    """Agent slots of the partitions a worker owns, folded a batch at a time."""

    def __init__(self, *, journal_topic: str, journal_partitions: int, past_states: PastStates | None = None,
                 snapshot_policy: SnapshotPolicy | None = None, quarantines: Quarantines | None = None) -> None:
        self.journal_topic = journal_topic
        self.quarantines = quarantines
        """Where quarantine markers are looked up (None: nowhere, every unknown
        fingerprint stops its partition)."""
        self.partitions = journal_partitions
        self.past_states = past_states or NoPastStates()
        self.slots: dict[str, AgentSlot] = {}
        self._keys: dict[int, set[str]] = {}
        """partition -> keys folded on it (so a revoked partition's slots can be dropped)."""
        self._silent_until: dict[int, int] = {}
        self.dirty = DirtyAgents(snapshot_policy or SnapshotPolicy())
        self.stops = PartitionStops()
        self.deadlines = DeadlineIndex()
        self.clock = PartitionClock()

    # -- ownership ----------------------------------------------------------------------

    def assign(self, partition: int, slots: dict[str, AgentSlot], *, silent_until: int) -> None:
        """Take ``partition`` over with its restored ``slots``; records below
        ``silent_until`` are re-folded without outputs."""
        self.revoke([partition])
        self.slots.update(slots)
        self._keys[partition] = set(slots)
        self._silent_until[partition] = silent_until
        self.deadlines.rebuild(partition, ((k, s.state) for k, s in slots.items()))

    def revoke(self, partitions: Iterable[int]) -> None:
        ps = list(partitions)
        for p in ps:
            for key in self._keys.pop(p, ()):
                self.slots.pop(key, None)
            self._silent_until.pop(p, None)
        self.dirty.drop(ps)
        self.deadlines.drop(ps)
        self.clock.drop(ps)
        self.stops.clear(ps)

    def owned(self) -> set[int]:
        return set(self._keys)

    def check_partition_count(self, partition: int, live_count: int) -> Stop | None:
        """Stop ``partition`` (loudly) if its marker recorded another partition count than
        the journal's ``live_count`` (``PartitionCountChanged``)."""
        pseudo = self.slots.get(pseudo_key(partition))
        try:
            check_partition_count(None if pseudo is None else pseudo.state, live_count)
        except Exception as e:  # noqa: BLE001 - PartitionCountChanged
            return self._stop_at(partition, -1 if pseudo is None else pseudo.last_offset + 1, e)
        return None

    # -- records ------------------------------------------------------------------------

    def fold(self, records: Sequence[Record], *, now: float, raw_keys: Sequence[bytes | None] | None = None) -> Batch:
        """Fold ``records`` (offset order within each partition); ``raw_keys``: each
        record's key bytes as consumed (dead letters keep them byte for byte)."""
        batch = Batch()
        for i, record in enumerate(records):
            raw_key = raw_keys[i] if raw_keys is not None else (None if record.key is None else record.key.encode())
            self._one(record, raw_key, now, batch)
        return batch

    def _one(self, record: Record, raw_key: bytes | None, now: float, batch: Batch) -> RecordFate:
        p = record.partition
        if self.stops.stopped(p) is not None:
            return RecordFate.HELD
        pseudo = self.slots.get(pseudo_key(p))
        try:
            # The fold's routing (fold version 2): a record off its key's murmur2 partition
            # belongs to the partition's pseudo-agent, in every reader alike.
            version, partitions = fold_args(None if pseudo is None else pseudo.state)
            key = route(record, version, partitions).key
        except Exception as e:  # noqa: BLE001 - an unknown fold version: stop, never skip
            batch.stops.append(self.stop_for(record, e))
            return RecordFate.STOPPED
        slot = self.slots.get(key)
        if slot is not None and record.offset <= slot.last_offset:
            batch.next_offsets[p] = record.offset + 1
            return RecordFate.SKIPPED
        try:
            if record.error is not None and self.quarantines is not None:
                record = self.quarantines.resolve(record)
            new, verdict = apply(slot, record, version=version, partitions=partitions)
            if record.key is None and isinstance(record.event, KernelUpgraded):
                check_partition_count(new.state, self.partitions)
            silent = record.offset < self._silent_until.get(p, 0)
            outs: list[Output] = []
            if not silent:
                outs = outputs(record, verdict, raw_key=raw_key, journal_topic=self.journal_topic,
                               journal_partitions=self.partitions)
                if verdict.kind == Kind.ACCEPTED and isinstance(record.event, ForkRequested) and slot is not None:
                    outs += self._fork(record, slot)
        except Exception as e:  # noqa: BLE001 - every failure stops the partition, loudly
            batch.stops.append(self.stop_for(record, e))
            return RecordFate.STOPPED
        self.slots[key] = new
        self._keys.setdefault(p, set()).add(key)
        self.dirty.folded(p, key, record.offset, now)
        self.deadlines.update(p, key, new.state)
        self.clock.observe(p, record.timestamp)
        batch.next_offsets[p] = record.offset + 1
        etype = verdict.event_type or _UNDECODABLE
        batch.types[etype] = batch.types.get(etype, 0) + 1
        if silent:
            batch.refolded += 1
        else:
            batch.outputs.extend(outs)
            batch.folded += 1
            self._count(batch, record, etype, verdict, None if slot is None else slot.state.status)
        return RecordFate.FOLDED

    @staticmethod
    def _count(batch: Batch, record: Record, etype: str, verdict: Verdict, before: str | None) -> None:
        """The metrics' counts of one verdict written (``aosk.metrics``; summed per batch)."""
        vkey = (etype, verdict.kind, verdict.reason)
        batch.verdicts[vkey] = batch.verdicts.get(vkey, 0) + 1
        batch.timestamps.append(record.timestamp)
        if verdict.kind == Kind.ACCEPTED:
            if etype == _SPAWNED:
                batch.started += 1
            if verdict.paged_out:
                batch.paged_out += len(verdict.paged_out)
            status = verdict.status
            if status != before and status in _ENDED:
                batch.ended[status] = batch.ended.get(status, 0) + 1

    def stop_for(self, record: Record, error: BaseException) -> Stop:
        """Stop ``record``'s partition because of ``error`` (logged once, loudly)."""
        return self._stop_at(record.partition, record.offset, error)

    def _stop_at(self, partition: int, offset: int, error: BaseException) -> Stop:
        stop = describe_stop(self.journal_topic, partition, offset, error)
        if self.stops.stop(stop):
            log.error("%s", stop.message, exc_info=(type(error), error, error.__traceback__)
                      if stop.reason == "error" else None)
        return stop

    def _fork(self, record: Record, before: AgentSlot) -> list[Output]:
        req = record.event
        assert isinstance(req, ForkRequested)
        value = build_fork(record, before.state, self.past_states)
        if value is None:
            return []
        k = req.new_agent_id.encode()
        return [Output(Sink.JOURNAL, k, partition_for(k, self.partitions), value)]

    # -- snapshots ----------------------------------------------------------------------

    def snapshots_due(self, partition: int, now: float, *, everything: bool = False) -> list[tuple[str, AgentSlot]]:
        """The (key, slot) pairs of ``partition`` whose snapshot is due."""
        return [(k, self.slots[k]) for k in self.dirty.due(partition, now, everything=everything) if k in self.slots]

    # -- timeouts -----------------------------------------------------------------------

    def timeouts_due(self, partition: int, time_ms: int) -> list[tuple[str, Output]]:
        """``CallTimedOut`` records due on ``partition`` at ``time_ms``: (event id, output)."""
        out = []
        for key in self.deadlines.due(partition, time_ms):
            slot = self.slots.get(key)
            if slot is None:
                continue
            for ev in timeout_events(slot.state, time_ms):
                out.append((ev.event_id, Output(Sink.JOURNAL, key.encode(), partition, encode(ev))))
        return out
