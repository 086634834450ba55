"""The worker's per-record logic without faust: same verdicts as the plain loop, the
original outputs again for a redelivery, partitions that stop instead of skipping,
forks, timeouts and the deadline index rebuilt from the table."""

from __future__ import annotations

import uuid

from aosk.events import (
    AgentForked,
    AgentSpawned,
    AgentStarted,
    Budgets,
    CallTimedOut,
    ForkRequested,
    LlmCallRequested,
    decode,
    decode_transition,
    encode_transition,
)
from aosk.kernel import AOSK_NAMESPACE, Kind, fold_with_verdicts
from aosk.streams.processor import Outcome, Processor
from aosk.streams.records import Sink
from aosk.streams.slots import SlotStore
from aosk.workload import generate_workload
from streams_support import PARTITIONS, Journal

BUDGETS = Budgets(max_tokens=10_000, max_tool_calls=10, max_steps=100, context_window_tokens=1_000)
UNKNOWN = b"\xc3\x01" + b"\xfe" * 8 + b"body"


def _processor(table: dict | None = None) -> Processor:
    return Processor(SlotStore({} if table is None else table), journal_topic="j", journal_partitions=PARTITIONS)


def _ev(cls, agent: str, **fields):
    return cls(event_id=str(uuid.uuid4()), agent_id=agent, tenant_id="t", occurred_at=0, origin="client",
               correlation_id=None, causation_id=None, **fields)


def _spawn(agent: str) -> AgentSpawned:
    return _ev(AgentSpawned, agent, parent_id=None, name=agent, priority=1, capabilities=("search",),
               budgets=BUDGETS, metadata={})


def test_verdicts_equal_the_plain_fold_and_derived_events_are_emitted() -> None:
    work = generate_workload(agents=12, events=1_500, seed=3, garbage_every=97, unfinished_calls=3)
    journal = Journal()
    for item in work.items:
        journal.append(item)
    proc = _processor()
    outs = [proc.process(r, raw_key=r.key.encode()) for r in journal.records]
    _, verdicts = fold_with_verdicts(journal.records)
    assert [o.outcome for o in outs] == [Outcome.APPLIED] * len(outs)
    for res, want, r in zip(outs, verdicts, journal.records):
        (t,) = [o for o in res.outputs if o.sink is Sink.TRANSITIONS]
        assert t.value == encode_transition(want.to_transition())
        assert (t.key, t.partition) == (want.agent_id.encode(), r.partition)
        journal_outs = [o for o in res.outputs if o.sink is Sink.JOURNAL]
        assert [decode(o.value) for o in journal_outs] == list(want.derived)
        changelog = [o for o in res.outputs if o.sink is Sink.CHANGELOG]
        assert [(o.key, o.partition) for o in changelog] == [(r.agent_key.encode(), r.partition)]
        dead = [o for o in res.outputs if o.sink is Sink.DEAD_LETTERS]
        assert len(dead) == (r.error is not None)
    assert sum(1 for r in journal.records if r.error is not None) == work.garbage > 0


def test_a_redelivered_record_gets_its_original_outputs_byte_for_byte() -> None:
    journal = Journal()
    table: dict = {}
    proc = _processor(table)
    recs = [journal.append(_spawn("a")), journal.append(_ev(AgentStarted, "a")),
            journal.append(_ev(AgentStarted, "a"))]
    first = [proc.process(r, raw_key=b"a") for r in recs]
    # A new worker restoring the same table (bytes) gets the same outputs again.
    again = _processor(dict(table))
    second = [again.process(r, raw_key=b"a") for r in recs]
    assert [s.outcome for s in second] == [Outcome.REDELIVERED] * 3
    for f, s in zip(first, second):
        assert [o for o in s.outputs] == [o for o in f.outputs if o.sink is not Sink.CHANGELOG]
    assert decode_transition(second[2].outputs[0].value).reason == "illegal_transition"


def test_an_unknown_fingerprint_stops_its_partition_and_holds_later_records() -> None:
    journal = Journal()
    proc = _processor()
    a = journal.append(_spawn("a"))
    bad = journal.append(UNKNOWN, key="a")
    later = journal.append(_ev(AgentStarted, "a"))
    others = [journal.append(_spawn(f"o{i}")) for i in range(30)]
    others = [r for r in others if r.partition != a.partition]
    assert proc.process(a, raw_key=b"a").outcome is Outcome.APPLIED
    res = proc.process(bad, raw_key=b"a")
    assert res.outcome is Outcome.STOPPED and not res.outcome.ack
    assert res.stop.reason == "unknown_fingerprint" and "fefefefefefefefe" in res.stop.message
    assert proc.process(later, raw_key=b"a").outcome is Outcome.HELD
    assert {proc.process(r, raw_key=r.key.encode()).outcome for r in others} == {Outcome.APPLIED}
    # After a rebalance the partition is read again and stops at the same record.
    proc.on_revoked({a.partition})
    assert proc.process(bad, raw_key=b"a").outcome is Outcome.STOPPED


def test_fork_at_the_current_seq_is_written_and_re_sent_on_redelivery() -> None:
    journal = Journal()
    table: dict = {}
    proc = _processor(table)
    for e in (_spawn("src"), _ev(AgentStarted, "src")):
        proc.process(journal.append(e), raw_key=b"src")
    req = journal.append(_ev(ForkRequested, "src", new_agent_id="copy", at_seq=2))
    res = proc.process(req, raw_key=b"src")
    (fork,) = [decode(o.value) for o in res.outputs if o.sink is Sink.JOURNAL]
    assert isinstance(fork, AgentForked) and (fork.agent_id, fork.source_seq) == ("copy", 2)
    again = _processor(dict(table)).process(req, raw_key=b"src")
    assert [o for o in again.outputs if o.sink is Sink.JOURNAL] == [o for o in res.outputs if o.sink is Sink.JOURNAL]
    # An older seq needs checkpoints: nothing is written (a pending fork, logged).
    old = journal.append(_ev(ForkRequested, "src", new_agent_id="copy2", at_seq=1))
    assert not [o for o in proc.process(old, raw_key=b"src").outputs if o.sink is Sink.JOURNAL]


def test_timeouts_are_due_once_the_partition_time_passes_the_deadline_and_survive_a_rebuild() -> None:
    journal = Journal()
    table: dict = {}
    proc = _processor(table)
    for e in (_spawn("a"), _ev(AgentStarted, "a")):
        proc.process(journal.append(e), raw_key=b"a")
    req = journal.append(_ev(LlmCallRequested, "a", call_id="c1", model="m", prompt_hash="h", prompt_tokens=1,
                             timeout_ms=1_000))
    proc.process(req, raw_key=b"a")
    p = req.partition
    assert proc.timeouts_due(p, req.timestamp + 1_000) == []
    (event_id, out), = proc.timeouts_due(p, req.timestamp + 1_001)
    assert event_id == str(uuid.uuid5(AOSK_NAMESPACE, f"CallTimedOut/{req.event.event_id}/c1"))
    ev = decode(out.value)
    assert isinstance(ev, CallTimedOut) and ev.origin == "kernel" and out.partition == p

    rebuilt = _processor(table)
    assert rebuilt.timeouts_due(p, req.timestamp + 5_000) == []  # nothing owned yet
    rebuilt.on_assigned({p})
    assert [e for e, _ in rebuilt.timeouts_due(p, req.timestamp + 5_000)] == [event_id]
    # Folding the CallTimedOut closes the call: nothing is due any more.
    v = rebuilt.process(journal.append(ev, key="a"), raw_key=b"a").verdict
    assert v.kind == Kind.ACCEPTED and rebuilt.timeouts_due(p, req.timestamp + 9_000) == []
