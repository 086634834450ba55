"""Quarantine markers (``aosk journal quarantine``) in the worker's processor and the
projectors' batch fold, without Kafka: a record with an unknown fingerprint stops its
partition until a later ``RecordQuarantined`` marker names it; then every reader folds it
as rejected ``quarantined``, with the same verdict, and the partition goes on."""

from __future__ import annotations

import uuid

from streams_support import Journal

from aosk.events import AgentSpawned, AgentStarted, Budgets, RecordQuarantined, decode_transition, encode
from aosk.journal import QuarantineMarker, Quarantines
from aosk.kernel import Kind, Reason, Record, fold_with_verdicts
from aosk.projectors.batch import fold_batch
from aosk.streams.processor import Processor
from aosk.streams.records import Sink

BUDGETS = Budgets(max_tokens=10_000, max_tool_calls=10, max_steps=100, context_window_tokens=1_000)
UNKNOWN = b"\xc3\x01" + b"\xfe" * 8 + b"body"


def _ev(cls, agent: str, origin: str = "client", **fields):
    return cls(event_id=str(uuid.uuid4()), agent_id=agent, tenant_id="t", occurred_at=0, origin=origin,
               correlation_id=None, causation_id=None, **fields)


def _spawn(agent: str) -> AgentSpawned:
    return _ev(AgentSpawned, agent, parent_id=None, name=agent, priority=1, capabilities=(), budgets=BUDGETS,
               metadata={})


def _marker(partition: int, offset: int, *, origin: str = "kernel") -> bytes:
    """A marker's bytes: appended as bytes, it has no key (append an event and it gets one)."""
    return encode(_ev(RecordQuarantined, f"~p{partition}", origin=origin, quarantined_offset=offset,
                      fingerprint="fe" * 8, reason="garbage from a test"))


def _quarantines(journal: Journal) -> Quarantines:
    """Quarantines that look ahead in ``journal`` as it stands when asked."""
    scans: list[tuple[int, int]] = []

    def scan(partition: int, start: int) -> tuple[list[QuarantineMarker], int]:
        scans.append((partition, start))
        recs = [r for r in journal.records if r.partition == partition and r.offset >= start]
        found = [m for m in (QuarantineMarker.of(r) for r in recs) if m is not None]
        return found, journal.offsets[partition]

    q = Quarantines(scan)
    q.scans = scans  # type: ignore[attr-defined]  # for the assertions below
    return q


def _journal_with_garbage() -> tuple[Journal, Record, Record, Record]:
    journal = Journal()
    a = journal.append(_spawn("a"))
    bad = journal.append(UNKNOWN, key="a")
    later = journal.append(_ev(AgentStarted, "a"))
    return journal, a, bad, later


def test_without_a_marker_the_partition_stops_and_the_message_names_the_command() -> None:
    journal, a, bad, later = _journal_with_garbage()
    proc = Processor(journal_topic="j", journal_partitions=journal.partitions, quarantines=_quarantines(journal))
    b = proc.fold([a, bad, later], now=0.0)
    (stop,) = b.stops
    assert (stop.reason, stop.offset) == ("unknown_fingerprint", bad.offset)
    assert f"aosk journal quarantine {bad.partition}:{bad.offset} --reason" in stop.message


def test_a_marker_after_the_record_makes_it_rejected_quarantined_in_worker_and_projector() -> None:
    journal, a, bad, later = _journal_with_garbage()
    m = journal.append(_marker(bad.partition, bad.offset), partition=bad.partition)
    records = [a, bad, later, m]

    proc = Processor(journal_topic="j", journal_partitions=journal.partitions, quarantines=_quarantines(journal))
    b = proc.fold(records, now=0.0)
    assert b.stops == [] and b.next_offsets[a.partition] == m.offset + 1
    verdicts = [decode_transition(o.value) for o in b.outputs if o.sink is Sink.TRANSITIONS]
    assert [(v.journal_offset, v.verdict, v.reason) for v in verdicts] == [
        (a.offset, Kind.ACCEPTED, Reason.OK),
        (bad.offset, Kind.REJECTED, Reason.QUARANTINED),
        (later.offset, Kind.ACCEPTED, Reason.OK),
        (m.offset, Kind.ACCEPTED, Reason.OK),
    ]
    assert "garbage from a test" in verdicts[1].message
    # the quarantined record is copied to the dead letters, like an undecodable one
    assert [o.value for o in b.outputs if o.sink is Sink.DEAD_LETTERS] == [UNKNOWN]

    batch = fold_batch({a.partition: records}, lambda k: None, checkpoint_every=100,
                       quarantines=_quarantines(journal))
    assert batch.stops == []
    assert [(o.offset, o.audit[batch_cols().index("reason")]) for o in batch.outcomes][1] == (bad.offset, "quarantined")

    # the plain fold given the resolved record agrees (state hashes included)
    q = _quarantines(journal)
    plain = fold_with_verdicts([q.resolve(r) for r in records])[1]
    assert [(v.offset, v.kind, v.reason, v.state_hash) for v in plain] == [
        (v.journal_offset, v.verdict, v.reason, v.state_hash) for v in verdicts]


def batch_cols() -> list[str]:
    from aosk.projectors.rows import AUDIT_COLUMNS

    return list(AUDIT_COLUMNS)


def test_a_marker_written_after_the_stop_is_found_by_looking_again() -> None:
    journal, a, bad, later = _journal_with_garbage()
    q = _quarantines(journal)
    assert q.marker_for(bad.partition, bad.offset) is None
    filler = journal.append(_ev(AgentStarted, "a"), partition=bad.partition)
    m = journal.append(_marker(bad.partition, bad.offset), partition=bad.partition)
    found = q.marker_for(bad.partition, bad.offset)
    assert found is not None and found.offset == m.offset
    # the second look read only what the first had not
    assert q.scans == [(bad.partition, bad.offset + 1), (bad.partition, filler.offset)]  # type: ignore[attr-defined]
    assert q.marker_for(bad.partition, bad.offset) == found  # known now: no third look
    assert len(q.scans) == 2  # type: ignore[attr-defined]


def test_markers_that_do_not_count() -> None:
    journal, a, bad, later = _journal_with_garbage()
    p = bad.partition
    journal.append(_marker(p, bad.offset, origin="client"), partition=p)  # a client cannot quarantine
    journal.append(_marker(p, bad.offset), key="~p" + str(p), partition=p)  # keyed: not a partition marker
    journal.append(_marker(p, later.offset + 50), partition=p)  # names a later offset than itself
    q = _quarantines(journal)
    assert q.marker_for(p, bad.offset) is None
    assert q.resolve(bad) is bad
    # a decodable record is never looked up, marker or not
    journal.append(_marker(p, later.offset), partition=p)
    assert q.resolve(later) is later


def test_a_client_marker_is_rejected_kernel_only_and_a_keyed_one_not_partition_marker() -> None:
    journal = Journal()
    client = journal.append(_marker(0, 0, origin="client"), partition=0)
    keyed = journal.append(_marker(0, 0), key="~p0", partition=0)
    verdicts = fold_with_verdicts([client, keyed])[1]
    assert [v.reason for v in verdicts] == [Reason.KERNEL_ONLY, Reason.NOT_PARTITION_MARKER]


def test_a_key_on_a_second_partition_stops_the_projector_under_version_1() -> None:
    journal = Journal()
    first = journal.append(_spawn("a"))
    other = (first.partition + 1) % journal.partitions
    moved = journal.append(_ev(AgentStarted, "a"), partition=other)
    batch = fold_batch({first.partition: [first], other: [moved]}, lambda k: None, checkpoint_every=100)
    (stop,) = batch.stops
    assert (stop.partition, stop.offset, stop.code) == (other, moved.offset, "moved_key")
    assert "lives on partition" in stop.reason
