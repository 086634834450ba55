"""``Processor``: the worker's batch folder without Kafka. Same verdicts as the plain
fold whatever the batch size, silent re-folds, records skipped under a restored
snapshot, partitions that stop instead of skipping, forks, timeouts and ownership."""

from __future__ import annotations

import uuid

import pytest
from streams_support import PARTITIONS, Journal

from aosk.events import (
    AgentForked,
    AgentSpawned,
    AgentStarted,
    Budgets,
    CallTimedOut,
    ForkRequested,
    LlmCallRequested,
    decode,
    encode_transition,
)
from aosk.kernel import AOSK_NAMESPACE, AgentSlot, Kind, fold_with_verdicts
from aosk.streams.processor import Processor
from aosk.streams.records import Sink
from aosk.workload import generate_workload

BUDGETS = Budgets(max_tokens=10_000, max_tool_calls=10, max_steps=100, context_window_tokens=1_000)
UNKNOWN = b"\xc3\x01" + b"\xfe" * 8 + b"body"


def _processor() -> Processor:
    return Processor(journal_topic="j", journal_partitions=PARTITIONS)


def _ev(cls, agent: str, **fields):
    return cls(event_id=str(uuid.uuid4()), agent_id=agent, tenant_id="t", occurred_at=0, origin="client",
               correlation_id=None, causation_id=None, **fields)


def _spawn(agent: str) -> AgentSpawned:
    return _ev(AgentSpawned, agent, parent_id=None, name=agent, priority=1, capabilities=("search",),
               budgets=BUDGETS, metadata={})


@pytest.fixture(scope="module")
def workload_journal() -> Journal:
    work = generate_workload(agents=16, events=1_500, seed=3, garbage_every=97, unfinished_calls=3)
    journal = Journal()
    for item in work.items:
        journal.append(item)
    assert sum(1 for r in journal.records if r.error is not None) == work.garbage > 0
    return journal


@pytest.mark.parametrize("batch", [1, 7, 250, 10_000])
def test_verdicts_equal_the_plain_fold_in_batches_of_any_size(workload_journal: Journal, batch: int) -> None:
    records = workload_journal.records
    proc = _processor()
    outs = []
    for i in range(0, len(records), batch):
        chunk = records[i:i + batch]
        b = proc.fold(chunk, now=0.0)
        assert b.folded == len(chunk) and b.refolded == 0 and not b.stops
        assert b.next_offsets == {p: max(r.offset for r in chunk if r.partition == p) + 1
                                  for p in {r.partition for r in chunk}}
        outs.extend(b.outputs)
    slots, verdicts = fold_with_verdicts(records)
    transitions = [o for o in outs if o.sink is Sink.TRANSITIONS]
    assert [o.value for o in transitions] == [encode_transition(v.to_transition()) for v in verdicts]
    assert [(o.key, o.partition) for o in transitions] == [(v.agent_id.encode(), r.partition)
                                                           for v, r in zip(verdicts, records, strict=True)]
    derived = [o for o in outs if o.sink is Sink.JOURNAL]
    want = [e for v in verdicts for e in v.derived]
    assert want and [decode(o.value) for o in derived] == want
    dead = [o for o in outs if o.sink is Sink.DEAD_LETTERS]
    garbage = [r for r in records if r.error is not None]
    assert [(o.key, o.partition, o.value) for o in dead] == [(r.key.encode(), r.partition, r.value) for r in garbage]
    assert all(dict(o.headers)["aosk-reason"] == b"undecodable" for o in dead)
    assert {k: (s.state, s.last_offset) for k, s in proc.slots.items()} == \
        {k: (s.state, s.last_offset) for k, s in slots.items()}


def test_raw_keys_are_kept_byte_for_byte_in_dead_letters() -> None:
    journal = Journal()
    r = journal.append(b"garbage", key="a")
    b = _processor().fold([r], now=0.0, raw_keys=[b"a\xff"])
    (dead,) = [o for o in b.outputs if o.sink is Sink.DEAD_LETTERS]
    assert dead.key == b"a\xff"


def test_records_below_silent_until_update_state_without_outputs(workload_journal: Journal) -> None:
    records = workload_journal.records
    p = records[0].partition
    mine = [r for r in records if r.partition == p]
    cut = len(mine) // 2
    proc = _processor()
    proc.assign(p, {}, silent_until=mine[cut].offset)
    b = proc.fold(mine, now=0.0)
    assert b.refolded == cut and b.folded == len(mine) - cut
    _, verdicts = fold_with_verdicts(mine)
    transitions = [o.value for o in b.outputs if o.sink is Sink.TRANSITIONS]
    assert transitions == [encode_transition(v.to_transition()) for v in verdicts[cut:]]
    slots, _ = fold_with_verdicts(mine)
    assert {k: s.state for k, s in proc.slots.items()} == {k: s.state for k, s in slots.items()}
    assert proc.dirty.floor(p, 10**9) == 0  # the silently re-folded agents are dirty too


def test_records_covered_by_a_restored_snapshot_are_skipped() -> None:
    journal = Journal()
    recs = [journal.append(e) for e in (_spawn("a"), _ev(AgentStarted, "a"), _ev(AgentStarted, "a"))]
    p = recs[0].partition
    slots, verdicts = fold_with_verdicts(recs[:2])
    restored = AgentSlot(slots["a"].state, slots["a"].last_offset)  # as in the snapshot topic
    proc = _processor()
    proc.assign(p, {"a": restored}, silent_until=recs[1].offset + 1)
    b = proc.fold(recs, now=0.0)
    assert b.folded == 1 and b.refolded == 0 and b.next_offsets == {p: recs[2].offset + 1}
    (t,) = [o for o in b.outputs if o.sink is Sink.TRANSITIONS]
    _, all_verdicts = fold_with_verdicts(recs)
    assert t.value == encode_transition(all_verdicts[2].to_transition())
    assert proc.slots["a"].state == fold_with_verdicts(recs)[0]["a"].state
    assert proc.dirty.floor(p, 99) == recs[2].offset  # skipped records are not dirty


def test_an_unknown_fingerprint_stops_its_partition_and_holds_later_records() -> None:
    journal = Journal()
    a = journal.append(_spawn("a"))
    bad = journal.append(UNKNOWN, key="a")
    later = journal.append(_ev(AgentStarted, "a"))
    others = [journal.append(_spawn(f"o{i}")) for i in range(40)]
    others = [r for r in others if r.partition != a.partition]
    proc = _processor()
    b = proc.fold([a, bad, *others[:5], later, *others[5:]], now=0.0)
    (stop,) = b.stops
    assert (stop.partition, stop.offset, stop.reason) == (a.partition, bad.offset, "unknown_fingerprint")
    assert "fefefefefefefefe" in stop.message
    assert b.next_offsets[a.partition] == bad.offset  # never past the stopped record
    assert b.folded == 1 + len(others)
    assert {o.partition for o in b.outputs if o.sink is Sink.TRANSITIONS} - {r.partition for r in others} == \
        {a.partition}
    assert proc.slots["a"].last_offset == a.offset and proc.stops.stopped(a.partition) == stop
    # Held: the partition folds nothing until it is assigned again.
    again = proc.fold([later], now=0.0)
    assert again.outputs == [] and again.next_offsets == {} and again.folded == 0
    # After a rebalance the partition is read again and stops at the same record.
    proc.revoke([a.partition])
    assert proc.stops.stopped(a.partition) is None
    proc.assign(a.partition, {}, silent_until=0)
    b = proc.fold([a, bad, later], now=0.0)
    assert [s.offset for s in b.stops] == [bad.offset] and b.next_offsets == {a.partition: bad.offset}


def test_any_other_error_stops_the_partition_as_a_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    import aosk.streams.processor as processor

    journal = Journal()
    r = journal.append(_spawn("a"))

    def boom(*_a, **_k):
        raise KeyError("x")

    monkeypatch.setattr(processor, "apply", boom)
    proc = _processor()
    b = proc.fold([r], now=0.0)
    assert [s.reason for s in b.stops] == ["error"] and b.outputs == [] and "a" not in proc.slots


def test_fork_at_the_current_seq_is_written_older_ones_are_pending() -> None:
    journal = Journal()
    proc = _processor()
    proc.fold([journal.append(e) for e in (_spawn("src"), _ev(AgentStarted, "src"))], now=0.0)
    req = journal.append(_ev(ForkRequested, "src", new_agent_id="copy", at_seq=2))
    b = proc.fold([req], now=0.0)
    (fork,) = [o for o in b.outputs if o.sink is Sink.JOURNAL]
    ev = decode(fork.value)
    assert isinstance(ev, AgentForked) and (ev.agent_id, ev.source_seq) == ("copy", 2)
    assert fork.key == b"copy" and fork.partition == Journal().append(_spawn("copy")).partition
    # A second worker folding the same records writes the same AgentForked.
    other = _processor()
    other.fold([r for r in journal.records if r is not req], now=0.0)
    assert [o for o in other.fold([req], now=0.0).outputs if o.sink is Sink.JOURNAL] == [fork]
    # An older seq needs checkpoints: nothing is written (a pending fork, logged).
    old = journal.append(_ev(ForkRequested, "src", new_agent_id="copy2", at_seq=1))
    assert not [o for o in proc.fold([old], now=0.0).outputs if o.sink is Sink.JOURNAL]


def test_timeouts_are_due_once_the_partition_time_passes_the_deadline_and_deadlines_rebuilt_on_assign() -> None:
    journal = Journal()
    proc = _processor()
    proc.fold([journal.append(e) for e in (_spawn("a"), _ev(AgentStarted, "a"))], now=0.0)
    req = journal.append(_ev(LlmCallRequested, "a", call_id="c1", model="m", prompt_hash="h", prompt_tokens=1,
                             timeout_ms=1_000))
    proc.fold([req], now=0.0)
    p = req.partition
    assert proc.timeouts_due(p, req.timestamp + 1_000) == []
    (event_id, out), = proc.timeouts_due(p, req.timestamp + 1_001)
    assert event_id == str(uuid.uuid5(AOSK_NAMESPACE, f"CallTimedOut/{req.event.event_id}/c1"))
    ev = decode(out.value)
    assert isinstance(ev, CallTimedOut) and ev.origin == "kernel" and (out.key, out.partition) == (b"a", p)

    # A new owner restoring the slot rebuilds the deadlines on assign.
    rebuilt = _processor()
    assert rebuilt.timeouts_due(p, req.timestamp + 5_000) == []  # nothing owned yet
    rebuilt.assign(p, {"a": AgentSlot(proc.slots["a"].state, proc.slots["a"].last_offset)}, silent_until=0)
    assert [e for e, _ in rebuilt.timeouts_due(p, req.timestamp + 5_000)] == [event_id]
    # Folding the CallTimedOut closes the call: nothing is due any more.
    done = rebuilt.fold([journal.append(ev, key="a")], now=0.0)
    (t,) = [o for o in done.outputs if o.sink is Sink.TRANSITIONS]
    from aosk.events import decode_transition
    assert decode_transition(t.value).verdict == Kind.ACCEPTED
    assert rebuilt.timeouts_due(p, req.timestamp + 9_000) == [] and rebuilt.deadlines.earliest(p) is None


def test_revoke_drops_the_partitions_slots_and_bookkeeping(workload_journal: Journal) -> None:
    records = workload_journal.records
    proc = _processor()
    proc.fold(records, now=0.0)
    owned = proc.owned()
    p = records[0].partition
    keys_p = {r.agent_key for r in records if r.partition == p}
    assert keys_p <= set(proc.slots) and p in owned and proc.clock.last_timestamp.get(p)
    proc.revoke([p])
    assert not keys_p & set(proc.slots) and proc.owned() == owned - {p}
    assert proc.snapshots_due(p, 1e9, everything=True) == [] and proc.clock.last_timestamp.get(p) is None
    assert proc.deadlines.earliest(p) is None
    q = next(iter(owned - {p}))
    assert {k for k, _ in proc.snapshots_due(q, 0.0, everything=True)} == \
        {r.agent_key for r in records if r.partition == q}


def test_the_batches_metric_counts_equal_the_plain_folds_verdicts(workload_journal: Journal) -> None:
    """What ``aosk_worker_*`` and ``aosk_agents_*`` count (``Batch.types`` ...), summed
    over batches, equals what the verdicts of one plain fold say; silent re-folds count
    as records, never as verdicts."""
    from collections import Counter

    records = workload_journal.records
    p = records[0].partition
    proc = _processor()
    silent_until = next(r.offset for r in records if r.partition == p) + 5
    proc.assign(p, {}, silent_until=silent_until)
    types: Counter[str] = Counter()
    verdicts: Counter[tuple[str, str, str]] = Counter()
    ended: Counter[str] = Counter()
    started = paged = 0
    stamps: list[int] = []
    for i in range(0, len(records), 97):
        b = proc.fold(records[i:i + 97], now=0.0)
        types.update(b.types)
        verdicts.update(b.verdicts)
        ended.update(b.ended)
        started += b.started
        paged += b.paged_out
        stamps += b.timestamps
    _, plain = fold_with_verdicts(records)
    assert sum(types.values()) == len(records)
    assert types == Counter(v.event_type or "undecodable" for v in plain)
    loud = [(r, v) for r, v in zip(records, plain, strict=True) if not (r.partition == p and r.offset < silent_until)]
    assert len(loud) == len(records) - 5
    assert verdicts == Counter((v.event_type or "undecodable", v.kind, v.reason) for _, v in loud)
    assert stamps == [r.timestamp for r, _ in loud]
    accepted = [v for _, v in loud if v.kind == Kind.ACCEPTED]
    assert started == sum(1 for v in accepted if v.event_type == "AgentSpawned") > 0
    assert paged == sum(len(v.paged_out) for v in accepted)
    before: dict[str, str] = {}
    want: Counter[str] = Counter()
    for r, v in zip(records, plain, strict=True):
        if v.status != before.get(v.agent_id) and v.status in ("TERMINATED", "ERROR") and v.kind == Kind.ACCEPTED \
                and not (r.partition == p and r.offset < silent_until):
            want[v.status] += 1
        before[v.agent_id] = v.status
    assert ended == want and sum(want.values()) > 0
