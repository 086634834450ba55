"""One journal record through the worker: decode (done by ``records.record_of``),
``apply``, and the records to produce. Synchronous and free of faust: the faust app
(``streams.app``) feeds it records, produces its outputs and acknowledges offsets.

Per record, in this order:

1. its partition is stopped -> ``HELD`` (not folded, not acknowledged);
2. ``apply(slot, record, version=<the partition's fold version>)``:
   * ``UnknownFingerprint`` / ``UnknownFoldVersion`` / any other error -> the
     partition stops (``streams.pausing``) -> ``STOPPED``;
   * an offset already applied to this key (a redelivery after a crash or a
     rebalance) -> the fold hands back the ORIGINAL verdict from the slot; its outputs
     are produced again, byte for byte -> ``REDELIVERED``. The table may be ahead of
     what was produced before a crash (faust flushes the changelog and the other sends
     independently until the offset commit), which is exactly the case this covers;
   * otherwise the new slot goes into the table (after a fork's ``AgentForked``, see
     ``streams.forks``), the deadline index is updated -> ``APPLIED``;
3. outputs: the table's changelog records (``streams.slots``), the ``Transition``, the
   derived events, the dead letter, the fork.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from aosk.events import ForkRequested, encode
from aosk.kernel import AgentSlot, Kind, Reason, Record, Verdict, apply, timeout_events
from aosk.partitioning import partition_for
from aosk.streams.forks import NoPastStates, PastStates, build_fork, fork_key
from aosk.streams.pausing import PartitionStops, Stop, describe_stop
from aosk.streams.records import Output, Sink, outputs
from aosk.streams.slots import SlotStore, partition_of_key
from aosk.streams.timeouts import DeadlineIndex, PartitionClock

__all__ = ["Outcome", "Result", "Processor"]

log = logging.getLogger("aosk.streams")


class Outcome(Enum):
    APPLIED = "applied"
    """Folded for the first time; the table holds the new slot."""
    REDELIVERED = "redelivered"
    """Folded before: the original verdict's outputs, again."""
    STOPPED = "stopped"
    """This record stopped its partition (not acknowledged)."""
    HELD = "held"
    """Its partition is stopped: not folded, not acknowledged."""

    @property
    def ack(self) -> bool:
        """Whether the record's offset may be committed."""
        return self in (Outcome.APPLIED, Outcome.REDELIVERED)


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    outputs: list[Output] = field(default_factory=list)
    verdict: Verdict | None = None
    stop: Stop | None = None


class Processor:
    """Folds records into a ``SlotStore`` and says what to produce."""

    def __init__(self, slots: SlotStore, *, journal_topic: str, journal_partitions: int,
                 past_states: PastStates | None = None) -> None:
        self.slots = slots
        self.journal_topic = journal_topic
        self.partitions = journal_partitions
        self.past_states = past_states or NoPastStates()
        self.stops = PartitionStops()
        self.deadlines = DeadlineIndex()
        self.clock = PartitionClock()

    # -- one record ---------------------------------------------------------------------

    def process(self, record: Record, *, raw_key: bytes | None) -> Result:
        p = record.partition
        if self.stops.stopped(p) is not None:
            return Result(Outcome.HELD)
        try:
            return self._process(record, raw_key)
        except Exception as e:  # noqa: BLE001 - every failure stops the partition, loudly
            return Result(Outcome.STOPPED, stop=self.stop_for(record, e))

    def stop_for(self, record: Record, error: BaseException) -> Stop:
        """Stop ``record``'s partition because of ``error`` (logged once, loudly)."""
        stop = describe_stop(self.journal_topic, record.partition, record.offset, error)
        if self.stops.stop(stop):
            log.error("%s", stop.message, exc_info=(type(error), error, error.__traceback__)
                      if stop.reason == "error" else None)
        return stop

    def _process(self, record: Record, raw_key: bytes | None) -> Result:
        key = record.agent_key
        p = record.partition
        slot = self.slots.get(key)
        redelivered = slot is not None and record.offset <= slot.last_offset
        new, verdict = apply(slot, record, version=self.slots.version(p))
        outs = outputs(record, verdict, raw_key=raw_key, journal_topic=self.journal_topic,
                       journal_partitions=self.partitions)
        forked = verdict.kind == Kind.ACCEPTED and isinstance(record.event, ForkRequested)
        if redelivered:
            self.clock.observe(p, record.timestamp)
            if verdict.kind == Kind.DUPLICATE and verdict.reason == Reason.REDELIVERED:
                # The original verdict is no longer kept (the commit lagged more than the
                # fold keeps): never publish a second, different verdict for the record.
                log.warning("record %s[%d]@%d was applied before and its verdict is no longer kept; "
                            "nothing re-sent", self.journal_topic, p, record.offset)
                return Result(Outcome.REDELIVERED, [], verdict)
            if forked:
                outs += self._fork_output(record, self.slots.get_raw(fork_key(record.event.event_id)))  # type: ignore[union-attr]
            return Result(Outcome.REDELIVERED, outs, verdict)

        writes: list[Output] = []
        if forked:
            before = slot.state if slot is not None else None
            fork = build_fork(record, before, self.past_states) if before is not None else None
            if fork is not None:
                writes.append(self.slots.put_raw(fork_key(record.event.event_id), fork, partition=p))  # type: ignore[union-attr]
                outs += self._fork_output(record, fork)
        writes.append(self.slots.put(key, new, partition=p))
        self.deadlines.update(p, key, new.state)
        self.clock.observe(p, record.timestamp)
        return Result(Outcome.APPLIED, writes + outs, verdict)

    def _fork_output(self, record: Record, value: bytes | None) -> list[Output]:
        if value is None:
            return []
        req = record.event
        assert isinstance(req, ForkRequested)
        k = req.new_agent_id.encode()
        return [Output(Sink.JOURNAL, k, partition_for(k, self.partitions), value)]

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

    # -- ownership ----------------------------------------------------------------------

    def on_assigned(self, partitions: Iterable[int]) -> None:
        """Rebuild the deadline index of ``partitions`` from the (recovered) table."""
        wanted = set(partitions)
        states: dict[int, list[tuple[str, AgentSlot]]] = {p: [] for p in wanted}
        for key in self.slots.keys():
            p = partition_of_key(key, self.partitions)
            if p in wanted:
                slot = self.slots.get(key)
                if slot is not None:
                    states[p].append((key, slot))
        for p, items in states.items():
            self.deadlines.rebuild(p, ((k, s.state) for k, s in items))

    def on_revoked(self, partitions: Iterable[int]) -> None:
        ps = set(partitions)
        self.deadlines.drop(ps)
        self.clock.drop(ps)
        self.stops.clear(ps)
        self.slots.forget()
