"""Between the fold and Kafka: a verdict as the records a worker produces. No Kafka
client here, so all of it is unit-tested.

What one journal record makes a worker produce (``outputs``), in this order:

1. its ``Transition`` on the verdict topic (key: the agent key; partition: the journal
   partition, so verdicts keep journal order per partition);
2. the verdict's derived events on the journal (key: their ``agent_id``; partition:
   murmur2 of the key, exactly what every other AOSK producer picks);
3. for an undecodable record, and for a record rejected ``wrong_partition`` (fold
   version 2: a producer put it off its key's murmur2 partition), a copy of its bytes on
   the dead-letter topic (original key, journal partition) with headers naming the reason
   (``aosk-reason: undecodable`` / ``wrong_partition``) and the source position.

A record judged again after a crash is folded from the same state, so it yields the
same outputs again, byte for byte: at-least-once delivery of all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from aosk.events import encode, encode_transition_fields
from aosk.kernel import Kind, Reason, Record, Verdict
from aosk.partitioning import partition_for

__all__ = ["Sink", "Output", "outputs", "dead_letter_headers"]


class Sink(Enum):
    """Which topic an output goes to."""

    TRANSITIONS = "transitions"
    JOURNAL = "journal"
    DEAD_LETTERS = "dead-letters"
    SNAPSHOTS = "snapshots"
    """The workers' snapshot topic (``streams.snapshots``)."""


@dataclass(frozen=True, slots=True)
class Output:
    """One record to produce."""

    sink: Sink
    key: bytes | None
    partition: int
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def dead_letter_headers(record: Record, *, topic: str, verdict: Verdict | None = None) -> tuple[tuple[str, bytes], ...]:
    """Headers of a dead letter: why, and where the original sits in the journal.
    ``aosk-reason`` is ``wrong_partition`` when ``verdict`` rejected the record so (its
    message is the detail), ``undecodable`` otherwise."""
    if verdict is not None and verdict.reason == Reason.WRONG_PARTITION:
        reason, detail = Reason.WRONG_PARTITION, verdict.message
    else:
        reason, detail = Reason.UNDECODABLE, getattr(record.error, "reason", None) or str(record.error)
    return (
        ("aosk-reason", reason.encode()),
        ("aosk-detail", detail.encode("utf-8", "replace")),
        ("aosk-source-topic", topic.encode()),
        ("aosk-source-partition", str(record.partition).encode()),
        ("aosk-source-offset", str(record.offset).encode()),
        ("aosk-source-timestamp", str(record.timestamp).encode()),
    )


def outputs(record: Record, verdict: Verdict, *, raw_key: bytes | None, journal_topic: str,
            journal_partitions: int) -> list[Output]:
    """Everything the worker produces for ``record`` judged by ``verdict`` (see module doc);
    ``raw_key`` is the record's key as consumed (the dead letter keeps it byte for byte)."""
    v = verdict
    out = [
        Output(Sink.TRANSITIONS, v.agent_id.encode(), record.partition, encode_transition_fields(
            v.partition, v.offset, v.agent_id, v.event_id, v.event_type, v.kind, v.reason, v.message, v.status,
            v.seq, v.state_hash, v.fold_version, v.timestamp))
    ]
    for event in verdict.derived:
        key = event.agent_id.encode()
        out.append(Output(Sink.JOURNAL, key, partition_for(key, journal_partitions), encode(event)))
    if verdict.kind == Kind.REJECTED and (record.error is not None or verdict.reason == Reason.WRONG_PARTITION):
        out.append(Output(Sink.DEAD_LETTERS, raw_key, record.partition, record.value,
                          dead_letter_headers(record, topic=journal_topic, verdict=verdict)))
    return out
