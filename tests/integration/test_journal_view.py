"""The runtime's JournalView against the real broker and PostgreSQL: its folded states are
a fold of the whole journal, whether it folds from offset 0 or restores from the
projection; two views in one group split the partitions and hand them over; a partition is
caught up only once folded to the end offset read at assignment; an unknown fingerprint
halts its partition until a quarantine marker names it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from aosk.client import KernelClient
from aosk.events import AgentStarted, Budgets, ContextAppended
from aosk.journal import JournalReader
from aosk.kernel import AgentSlot, fold_journal, pseudo_key, state_hash
from aosk.projectors.runner import Projector, ProjectorOptions
from aosk.runtime.journal_view import (
    JournalView,
    JournalViewOptions,
    PartitionCaughtUp,
    PartitionHalted,
    PartitionResumed,
    PartitionsAssigned,
    PartitionsRevoked,
    RecordFolded,
    ViewEvent,
)
from aosk.topics import ensure_topics
from tests.support.projector_harness import run_cli, wait_caught_up

pytestmark = pytest.mark.integration

BUDGETS = Budgets(max_tokens=10_000, max_tool_calls=10, max_steps=100, context_window_tokens=4_000)


@pytest.fixture(scope="module")
def journal(settings):
    ensure_topics(settings.kafka.bootstrap_servers, settings.kafka, mark_new_journal=True)
    _produce_agents(settings, "a", 12, steps=3)
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "partitioner": "murmur2_random"})
    producer.produce(settings.kafka.journal_topic, key=b"garbled", value=b"not avro at all")
    assert producer.flush(30) == 0
    return settings


def _produce_agents(settings, prefix: str, n: int, *, steps: int) -> None:
    with KernelClient.from_settings(settings) as kernel:
        pending = []
        for i in range(n):
            a = f"{prefix}-{i}"
            pending.append(kernel.spawn(agent_id=a, tenant_id="acme", name=a, budgets=BUDGETS))
            pending.append(kernel.emit(AgentStarted, agent_id=a, tenant_id="acme"))
            for s in range(steps):
                pending.append(kernel.emit(ContextAppended, agent_id=a, tenant_id="acme", entry_id=f"{a}-{s}",
                                           role="user", content=f"step {s}", tokens=5, importance=0.5))
    for p in pending:
        p.result()


def _full_fold(settings) -> tuple[dict[str, AgentSlot], dict[int, int]]:
    """The whole journal read with the journal reader and folded from offset 0; the end offsets."""
    with JournalReader(settings.kafka.bootstrap_servers, settings.kafka.journal_topic) as reader:
        n = reader.partitions()
        ends = {p: reader.end_offset(p) for p in range(n)}
        records = [r for p in range(n) for r in reader.read(p, 0, ends[p])]
    return fold_journal(records), ends


def _drive(views: list[JournalView], until: Callable[[], bool], *, timeout: float, what: str) -> list[ViewEvent]:
    """Poll every view (rebalances need each member to poll) until ``until()``."""
    events: list[ViewEvent] = []
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; "
                               f"owned {[sorted(v.owned()) for v in views]}")
        for v in views:
            events.extend(v.poll(0.1))
    return events


def _all_caught_up(view: JournalView, partitions: int) -> Callable[[], bool]:
    return lambda: len(view.owned()) == partitions and all(view.caught_up(p) for p in view.owned())


def _assert_same_states(view: JournalView, full: dict[str, AgentSlot], partitions: int) -> None:
    keys = {s.agent_id for p in range(partitions) for s in view.agents(p)}
    keys |= {pseudo_key(p) for p in range(partitions) if view.state(pseudo_key(p)) is not None}
    assert keys == set(full)
    for key, slot in full.items():
        st = view.state(key)
        assert st is not None, key
        assert state_hash(st) == state_hash(slot.state), key
        assert st == slot.state


def _group() -> str:
    return f"view-{uuid.uuid4().hex[:8]}"


def test_view_folds_the_journal_from_offset_0(journal) -> None:
    full, ends = _full_fold(journal)
    n = len(ends)
    with JournalView(journal, group_id=_group()) as view:
        events = _drive([view], _all_caught_up(view, n), timeout=30, what="every partition caught up")
        assigned = [e for e in events if isinstance(e, PartitionsAssigned)]
        assert assigned and all(not e.restored for e in assigned)  # no projection schema yet
        assert all(e.starts[p] == 0 for e in assigned for p in e.partitions)
        _assert_same_states(view, full, n)
        folded = [e for e in events if isinstance(e, RecordFolded)]
        assert len(folded) == sum(ends.values())
        garbled = [e for e in folded if e.key == "garbled"]
        assert [(e.verdict.kind, e.verdict.reason) for e in garbled] == [("rejected", "undecodable")]
        assert view.state("a-3").status == "RUNNING"  # type: ignore[union-attr]
        assert view.state("nobody") is None


def test_view_restores_from_the_projection(journal) -> None:
    _, ends = _full_fold(journal)
    with Projector(journal, ProjectorOptions(poll_timeout_s=0.05)) as projector:
        thread = threading.Thread(target=projector.run, daemon=True)
        thread.start()
        try:
            wait_caught_up(journal.storage.postgresql.dsn, "aosk", ends, timeout=30)
        finally:
            projector.stop()
            thread.join(30)
    assert not thread.is_alive()
    _produce_agents(journal, "b", 6, steps=2)  # the projection lags behind these
    full, ends = _full_fold(journal)
    n = len(ends)
    with JournalView(journal, group_id=_group()) as view:
        events = _drive([view], _all_caught_up(view, n), timeout=30, what="every partition caught up")
        assigned = [e for e in events if isinstance(e, PartitionsAssigned)]
        restored = {p: c for e in assigned for p, c in e.restored.items()}
        starts = {p: o for e in assigned for p, o in e.starts.items()}
        assert set(restored) == set(range(n))  # every partition came from PostgreSQL ...
        assert sum(restored.values()) >= 12 + n  # ... with the a-* agents and the pseudo-agents
        assert all(starts[p] > 0 for p in range(n))
        folded = [e for e in events if isinstance(e, RecordFolded)]
        assert folded and all(e.offset >= starts[e.partition] for e in folded)  # only the rest from Kafka
        assert len(folded) == sum(ends[p] - starts[p] for p in range(n))
        _assert_same_states(view, full, n)


def test_two_views_split_the_partitions_and_hand_them_over(journal) -> None:
    full, ends = _full_fold(journal)
    n = len(ends)
    group = _group()
    one = JournalView(journal, group_id=group)
    two = JournalView(journal, group_id=group)
    try:
        def split() -> bool:
            a, b = one.owned(), two.owned()
            return (bool(a) and bool(b) and not a & b and len(a | b) == n
                    and all(v.caught_up(p) for v in (one, two) for p in v.owned()))

        _drive([one, two], split, timeout=30, what="the two views to split the partitions")
        held = [s.agent_id for p in one.owned() for s in one.agents(p)]
        assert held and all(two.state(a) is None for a in held)  # each agent is in one view only
        moving = one.owned()
        one.close()
        events = _drive([two], _all_caught_up(two, n), timeout=30, what="the second view to take every partition")
        assert any(isinstance(e, PartitionsAssigned) and e.partitions == moving for e in events)
        assert not any(isinstance(e, PartitionsRevoked) for e in events)  # cooperative: it kept its own
        _assert_same_states(two, full, n)
    finally:
        one.close()
        two.close()


def test_caught_up_only_at_the_end_offset_read_at_assignment(journal) -> None:
    _, ends = _full_fold(journal)
    n = len(ends)
    opts = JournalViewOptions(restore=False, max_records=1)
    with JournalView(journal, group_id=_group(), options=opts) as view:
        folded_to: dict[int, int] = {}
        seen_behind: set[int] = set()
        deadline = time.monotonic() + 30
        while not _all_caught_up(view, n)():
            assert time.monotonic() < deadline, "timed out folding the journal one record at a time"
            for e in view.poll(0.1):
                if isinstance(e, PartitionsAssigned):
                    assert e.ends == {p: ends[p] for p in e.partitions}
                elif isinstance(e, RecordFolded):
                    folded_to[e.partition] = e.offset + 1
                elif isinstance(e, PartitionCaughtUp):
                    assert folded_to.get(e.partition, 0) >= ends[e.partition] and e.offset >= ends[e.partition]
            for p in view.owned():
                if folded_to.get(p, 0) < ends[p]:
                    assert not view.caught_up(p)
                    seen_behind.add(p)
                else:
                    assert view.caught_up(p)
        # One record per poll: a partition with two or more records is seen behind after the
        # poll that folds its first one (a partition with a single record may be assigned and
        # folded in the same poll, so it need not be seen behind).
        assert seen_behind >= {p for p in range(n) if ends[p] >= 2}
        assert any(ends[p] >= 2 for p in range(n))


def test_unknown_fingerprint_halts_its_partition_until_quarantined(journal) -> None:
    full, _ = _full_fold(journal)  # before the record the fold cannot read
    producer = Producer({"bootstrap.servers": journal.kafka.bootstrap_servers, "partitioner": "murmur2_random"})
    producer.produce(journal.kafka.journal_topic, key=b"a-5", value=b"\xc3\x01" + b"\xee" * 8 + b"body")
    assert producer.flush(30) == 0
    n = journal.kafka.journal_partitions
    opts = JournalViewOptions(stop_recheck_s=0.2)
    with JournalView(journal, group_id=_group(), options=opts) as view:
        halts: list[PartitionHalted] = []

        def settled() -> bool:
            return len(view.owned()) == n and bool(halts) and all(
                view.caught_up(p) for p in view.owned() if p != halts[0].partition)

        deadline = time.monotonic() + 30
        while not settled():
            assert time.monotonic() < deadline, "timed out waiting for the halt"
            halts.extend(e for e in view.poll(0.1) if isinstance(e, PartitionHalted))
        (halt,) = halts
        assert halt.code == "unknown_fingerprint"
        assert f"aosk journal quarantine {halt.partition}:{halt.offset}" in halt.message
        assert view.halted(halt.partition) == halt and not view.caught_up(halt.partition)
        assert view.position(halt.partition) == halt.offset  # folded up to the record, not past it
        assert view.state("a-5") == full["a-5"].state

        q = run_cli(journal, "journal", "quarantine", f"{halt.partition}:{halt.offset}", "--reason", "garbage")
        assert q.returncode == 0, q.stderr
        events = _drive([view], lambda: view.caught_up(halt.partition), timeout=30, what="the partition to go on")
        resumed = [e for e in events if isinstance(e, PartitionResumed)]
        assert [(e.partition, e.offset) for e in resumed] == [(halt.partition, halt.offset)]
        (bad,) = [e for e in events if isinstance(e, RecordFolded) and e.offset == halt.offset]
        assert (bad.key, bad.verdict.kind, bad.verdict.reason) == ("a-5", "rejected", "quarantined")
        st = view.state("a-5")
        assert st is not None and st.seq == full["a-5"].state.seq + 1 and view.halted(halt.partition) is None
