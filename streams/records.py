"""Between Kafka and the fold: a consumed message as a ``Record``, a verdict as the
records a worker produces. No faust here, so all of it is unit-tested.

What one journal record makes a worker produce (``outputs``), in this order:

1. its ``Transition`` on the verdict topic (key: the agent key; partition: the journal
   partition, so verdicts keep journal order per partition);
2. the verdict's derived events on the journal (key: their ``agent_id``; partition:
   murmur2 of the key, exactly what every other AOSK producer picks);
3. for an undecodable record, and for a record rejected ``wrong_partition`` (fold
   version 2: a producer put it off its key's murmur2 partition), a copy of its bytes on
   the dead-letter topic (original key, journal partition) with headers naming the reason
   (``aosk-reason: undecodable`` / ``wrong_partition``) and the source position.

A redelivered record's ORIGINAL verdict (kept in the slot) yields the same outputs
again, byte for byte: at-least-once delivery of all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from aosk.events import encode, encode_transition
from aosk.journal import record_from_message
from aosk.kernel import Kind, Reason, Record, Verdict
from aosk.partitioning import partition_for

__all__ = ["Sink", "Output", "record_of", "outputs", "dead_letter_headers"]


class Sink(Enum):
    """Which topic an output goes to."""

    TRANSITIONS = "transitions"
    JOURNAL = "journal"
    DEAD_LETTERS = "dead-letters"
    CHANGELOG = "changelog"
    """The worker's table changelog (``streams.slots``)."""


@dataclass(frozen=True, slots=True)
class Output:
    """One record to produce."""

    sink: Sink
    key: bytes | None
    partition: int
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


class _MessageView:
    """A faust ``ConsumerMessage`` with confluent-kafka's accessors, so the one shared
    conversion (``aosk.journal.record_from_message``) serves the worker too."""

    __slots__ = ("_m",)

    def __init__(self, message: Any) -> None:
        self._m = message

    def key(self) -> bytes | None:
        return self._m.key  # type: ignore[no-any-return]

    def value(self) -> bytes | None:
        return self._m.value  # type: ignore[no-any-return]

    def partition(self) -> int:
        return self._m.partition  # type: ignore[no-any-return]

    def offset(self) -> int:
        return self._m.offset  # type: ignore[no-any-return]

    def timestamp(self) -> tuple[int, int]:
        # faust turns aiokafka's milliseconds into float seconds; ms / 1000 is correctly
        # rounded, so rounding back recovers the exact integer.
        return (int(self._m.timestamp_type or 0), round(self._m.timestamp * 1000))


def record_of(message: Any) -> Record:
    """A consumed faust message as the fold's input (decoded, or with its decode error)."""
    return record_from_message(_MessageView(message))


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
    out = [
        Output(Sink.TRANSITIONS, verdict.agent_id.encode(), record.partition,
               encode_transition(verdict.to_transition()))
    ]
    for event in verdict.derived:
        key = event.agent_id.encode()
        out.append(Output(Sink.JOURNAL, key, partition_for(key, journal_partitions), encode(event)))
    if verdict.kind == Kind.REJECTED and (record.error is not None or verdict.reason == Reason.WRONG_PARTITION):
        out.append(Output(Sink.DEAD_LETTERS, raw_key, record.partition, record.value,
                          dead_letter_headers(record, topic=journal_topic, verdict=verdict)))
    return out
