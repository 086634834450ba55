"""``Worker`` on a fake consumer and producer (no broker): outputs acknowledged before
any commit, snapshots and floors only after the commit they cover, revocation, lost
partitions, stop, and the crash-recovery property (a takeover after a crash at any point
publishes exactly the plain fold's verdicts and ends with its states)."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import defaultdict

import pytest
from streams_support import Crash, FakeBroker, FakeConsumer, FakeProducer, Journal, settings

import aosk.streams.worker as worker_mod
from aosk.events import decode_transition, encode_transition
from aosk.journal import record_from_message
from aosk.kernel import Record, fold_with_verdicts
from aosk.streams.snapshots import SnapshotPolicy, restore
from aosk.streams.worker import EXIT_DELIVERY_FAILED, Worker, WorkerOptions
from aosk.workload import generate_workload

PARTS = 4
SETTINGS = settings(PARTS)
K = SETTINGS.kafka
JOURNAL, TRANSITIONS, DEAD, SNAPS = (K.journal_topic, K.transitions_topic, K.dead_letters_topic,
                                     K.worker_snapshots_topic)


@pytest.fixture(scope="module")
def journal() -> Journal:
    work = generate_workload(agents=30, events=3_000, seed=11, garbage_every=131)
    j = Journal(PARTS)
    for item in work.items:
        j.append(item)
    return j


def _broker(journal: Journal) -> FakeBroker:
    b = FakeBroker()
    b.load_journal(JOURNAL, journal.records)
    return b


def _worker(broker: FakeBroker, *, policy: SnapshotPolicy | None = None, crash_at: int | None = None,
            chunk: int = 7, **opts) -> tuple[Worker, FakeConsumer, FakeProducer]:
    producer = FakeProducer(broker, journal=JOURNAL, snapshots=SNAPS, crash_at=crash_at)
    consumer = FakeConsumer(broker, producer, journal=JOURNAL, chunk=chunk)
    w = Worker(SETTINGS, WorkerOptions(node_id="w", snapshots=policy or SnapshotPolicy(every_records=5, every_s=3600),
                                       stop_timeout_s=3600, **opts),
               consumer=consumer, producer=producer, read_snapshots=broker.read_snapshots(SNAPS))
    w._connect()
    return w, consumer, producer


def _drive(w: Worker, c: FakeConsumer, *, batch: int = 40, commit_every: int = 3, max_batches: int | None = None
           ) -> int:
    """Fold until nothing is left (derived events appended by the commits included);
    returns the number of batches."""
    n = 0
    while max_batches is None or n < max_batches:
        msgs = c.consume(batch, 0)
        if not msgs:
            w._commit(time.monotonic())
            if not _more(c):
                return n
            continue
        w._handle(msgs)
        n += 1
        if n % commit_every == 0:
            w._commit(time.monotonic())
    return n


def _more(c: FakeConsumer) -> bool:
    return any(pos < len(c.broker.topics[JOURNAL][p]) for p, pos in c.positions.items()
               if p not in c.paused and p not in c.stuck)


def _journal_records(broker: FakeBroker) -> list[Record]:
    return [record_from_message(m) for m in broker.messages(JOURNAL)]


def _check(broker: FakeBroker, final: Worker, journal: Journal) -> None:
    """Every journal record has transitions, all identical to the plain fold's verdict;
    the final worker holds the plain fold's states; every derived event and dead letter
    was written; no promise was broken."""
    assert broker.violations == []
    records = _journal_records(broker)
    slots, verdicts = fold_with_verdicts(records)
    got: dict[tuple[int, int], set[bytes]] = defaultdict(set)
    for m in broker.messages(TRANSITIONS):
        t = decode_transition(m.value())
        assert m.partition() == t.journal_partition and m.key() == t.agent_id.encode()
        got[(t.journal_partition, t.journal_offset)].add(m.value())
    want = {
        (r.partition, r.offset): encode_transition(v.to_transition()) for r, v in zip(records, verdicts, strict=True)
    }
    assert set(got) == set(want)
    wrong = [k for k in want if got[k] != {want[k]}]
    assert wrong == []
    assert {k: (s.state, s.last_offset) for k, s in final.processor.slots.items()} == \
        {k: (s.state, s.last_offset) for k, s in slots.items()}
    dead = {(m.partition(), m.value()) for m in broker.messages(DEAD)}
    assert dead == {(r.partition, r.value) for r in records if r.error is not None}
    derived = {e.event_id for v in verdicts for e in v.derived}
    original = {(r.partition, r.offset) for r in journal.records}
    written = {r.event.event_id for r in records if (r.partition, r.offset) not in original and r.event is not None}
    assert derived and written == derived


# --- commits wait for every acknowledgement ------------------------------------------------


def test_a_single_worker_folds_everything_and_commits_only_acknowledged_outputs(journal: Journal) -> None:
    broker = _broker(journal)
    w, c, _ = _worker(broker)
    c.rebalance("assign", range(PARTS))
    _drive(w, c)
    _check(broker, w, journal)
    assert len(broker.messages(TRANSITIONS)) == len(_journal_records(broker))  # nothing crashed: once each
    assert not w._unacked  # every verdict's latency observed once its acknowledgement was known
    assert broker.committed == {(JOURNAL, p): len(broker.topics[JOURNAL][p]) for p in range(PARTS)}
    assert len(broker.commits) > 5


def test_a_partition_whose_fetcher_sits_idle_is_sought_again(journal: Journal) -> None:
    broker = _broker(journal)
    w, c, _ = _worker(broker, stall_s=30.0)
    c.rebalance("assign", range(PARTS))
    c.stuck.add(3)  # librdkafka delivers nothing for it, though the broker has its records
    _drive(w, c)
    assert w.cursors.next_offset(3) == 0 and len(broker.topics[JOURNAL][3]) > 0
    t0 = time.monotonic()
    w._check_stalls(t0)
    assert c.seeks == []  # idle, but not for long yet
    w._check_stalls(t0 + 31)
    assert c.seeks == [(3, 0)]  # only the partition with records waiting; the others are caught up
    _drive(w, c)
    _check(broker, w, journal)
    w._check_stalls(t0 + 62)
    assert c.seeks == [(3, 0)]  # progress since: nothing to do


def test_nothing_is_committed_while_outputs_are_outstanding(journal: Journal) -> None:
    broker = _broker(journal)
    w, c, prod = _worker(broker)
    c.rebalance("assign", range(PARTS))
    w._handle(c.consume(50, 0))
    prod.stuck = True
    assert w._commit(time.monotonic()) is False
    assert c.commit_calls == 0 and broker.committed == {} and broker.messages(SNAPS) == []
    prod.stuck = False
    assert w._commit(time.monotonic()) is True
    assert c.commit_calls == 1 and sum(broker.commits[0].values()) == 50
    assert broker.violations == []


def test_a_refused_delivery_exits_without_committing(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    class Exited(BaseException):
        pass

    def fake_exit(status: int) -> None:
        raise Exited(status)

    monkeypatch.setattr(worker_mod.os, "_exit", fake_exit)
    broker = _broker(journal)
    w, c, prod = _worker(broker)
    c.rebalance("assign", range(PARTS))
    w._handle(c.consume(50, 0))
    prod.refuse = True
    with pytest.raises(Exited) as e:
        w._commit(time.monotonic())
    assert e.value.args == (EXIT_DELIVERY_FAILED,)
    assert c.commit_calls == 0 and broker.committed == {}
    assert os._exit is fake_exit


def test_snapshots_follow_the_commit_they_cover(journal: Journal) -> None:
    broker = _broker(journal)
    w, c, prod = _worker(broker, policy=SnapshotPolicy(every_records=3, every_s=3600))
    c.rebalance("assign", range(PARTS))
    w._handle(c.consume(200, 0))
    assert not [m for m, _ in prod.pending if m.topic() == SNAPS]  # nothing before a commit
    n = len(prod.pending)
    w._commit(time.monotonic())
    assert len(broker.commits) == 1
    snaps = [m for m, _ in prod.pending if m.topic() == SNAPS]
    assert snaps and len(prod.pending) == len(snaps) and broker.messages(SNAPS) == []  # produced after the commit
    assert n == len(broker.messages(TRANSITIONS)) + len(broker.messages(DEAD)) + \
        sum(len(v) for v in broker.topics[JOURNAL].values()) - len(journal.records)
    prod.flush()
    for p in range(PARTS):
        r = restore(p, broker.read_snapshots(SNAPS)([p])[p])
        committed = broker.committed[(JOURNAL, p)]
        assert r.floor is not None and r.floor <= committed
        assert all(s.last_offset < committed for s in r.slots.values())
    assert broker.violations == []


# --- rebalances and stop ----------------------------------------------------------------


def test_revoke_commits_and_snapshots_everything_of_the_revoked_partitions(journal: Journal) -> None:
    broker = _broker(journal)
    w, c, prod = _worker(broker, policy=SnapshotPolicy(every_records=10_000, every_s=3600))
    c.rebalance("assign", range(PARTS))
    for _ in range(10):
        w._handle(c.consume(60, 0))
    before = {k: (s.state, s.last_offset) for k, s in w.processor.slots.items()}
    nexts = {p: w.cursors.next_offset(p) for p in range(PARTS)}
    agents = sum(w._agents_by_status().values())  # aosk_agents, as a scrape counts it
    assert agents == sum(1 for k in before if not k.startswith("~")) > 0
    c.rebalance("revoke", [0, 1])
    after = sum(w._agents_by_status().values())  # the revoked partitions' agents are gone from it
    assert 0 < after < agents and after == sum(1 for k in w.processor.slots if not k.startswith("~"))
    assert c.unassigned == 1 and w.cursors.owned() == {2, 3} and w.processor.owned() <= {2, 3}
    assert prod.pending  # the snapshots, produced after the commit
    prod.flush()
    assert broker.committed == {(JOURNAL, 0): nexts[0], (JOURNAL, 1): nexts[1]}
    for p in (0, 1):
        r = restore(p, broker.read_snapshots(SNAPS)([p])[p])
        assert r.floor == nexts[p]  # everything snapshotted: nothing to re-fold
        assert {k: (s.state, s.last_offset) for k, s in r.slots.items()} == \
            {k: v for k, v in before.items() if any(rec.agent_key == k and rec.partition == p
                                                   for rec in journal.records)}
    assert broker.violations == []


def test_lost_partitions_are_dropped_uncommitted(journal: Journal) -> None:
    broker = _broker(journal)
    w, c, prod = _worker(broker)
    c.rebalance("assign", range(PARTS))
    w._handle(c.consume(100, 0))
    c.rebalance("lost", [0, 1, 2, 3])
    assert c.commit_calls == 0 and broker.committed == {} and c.unassigned == 1
    assert w.cursors.owned() == set() and w.processor.slots == {} and w.processor.dirty.count() == 0


def test_stop_ends_run_with_a_final_commit_and_snapshots(journal: Journal) -> None:
    broker = _broker(journal)
    producer = FakeProducer(broker, journal=JOURNAL, snapshots=SNAPS)
    consumer = FakeConsumer(broker, producer, journal=JOURNAL, assign_on_first_consume=list(range(PARTS)))
    w = Worker(SETTINGS, WorkerOptions(node_id="w", stop_timeout_s=3600, commit_interval_s=3600, batch_max=500,
                                       snapshots=SnapshotPolicy(every_records=10_000, every_s=3600)),
               consumer=consumer, producer=producer, read_snapshots=broker.read_snapshots(SNAPS))
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(w.run()), daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while sum(w.cursors.next_offset(p) or 0 for p in range(PARTS)) < len(journal.records):
        assert time.monotonic() < deadline and t.is_alive()
        time.sleep(0.01)
    w.stop()
    t.join(10)
    assert not t.is_alive() and result == [0] and consumer.closed
    assert producer.pending == [] and broker.violations == []
    for p in range(PARTS):
        committed = broker.committed[(JOURNAL, p)]
        assert committed == w.cursors.next_offset(p) >= journal.offsets[p]
        assert restore(p, broker.read_snapshots(SNAPS)([p])[p]).floor == committed


# --- crash recovery -----------------------------------------------------------------------

CRASHES = [
    # (how, when, snapshot policy every_records)
    ("after_commit_acked", 2, 5),  # right after a commit, its snapshots acknowledged
    ("after_commit_unacked", 2, 5),  # right after a commit, before its snapshots were acknowledged
    ("after_commit_unacked", 7, 40),
    ("produce", 41, 5),  # in the middle of the first batch: nothing committed yet
    ("produce", 200, 5),  # in the middle of a batch
    ("produce", 777, 5),
    ("produce", 2_345, 40),
    ("produce", 3_100, 1),
    ("commit_call", 4, 5),  # inside the commit, before the broker stored it
]


def _crash(broker: FakeBroker, how: str, when: int, every: int, seed: int) -> None:
    """Worker A folds until it dies as ``how``/``when`` says; what its producer had not
    acknowledged is partly delivered (a random prefix per topic partition) and the rest lost."""
    policy = SnapshotPolicy(every_records=every, every_s=3600)
    w, c, prod = _worker(broker, policy=policy, crash_at=when if how == "produce" else None)
    c.rebalance("assign", range(PARTS))
    if how == "commit_call":
        c.crash_on_commit = when
    try:
        n = 0
        while True:
            msgs = c.consume(40, 0)
            assert msgs, "the crash point is past the end of the journal"
            w._handle(msgs)
            n += 1
            if n % 3 == 0:
                w._commit(time.monotonic())
                if how.startswith("after_commit") and len(broker.commits) == when:
                    if how == "after_commit_acked":
                        prod.flush()
                    prod.pending = []  # lost with the process
                    return
    except Crash:
        prod.ack_some(random.Random(seed))


@pytest.mark.parametrize(("how", "when", "every"), CRASHES)
def test_a_takeover_after_a_crash_publishes_the_plain_folds_verdicts(journal: Journal, how: str, when: int,
                                                                     every: int) -> None:
    broker = _broker(journal)
    _crash(broker, how, when, every, seed=when)
    b, cb, _ = _worker(broker, policy=SnapshotPolicy(every_records=7, every_s=3600), chunk=5)
    cb.rebalance("assign", range(PARTS))
    _drive(b, cb, batch=33, commit_every=2)
    assert b.refolded + b.folded > 0
    _check(broker, b, journal)


def test_a_takeover_re_folds_silently_from_the_floor(journal: Journal) -> None:
    broker = _broker(journal)
    _crash(broker, "after_commit_acked", 5, 10_000, seed=0)  # snapshots never due: the floor stays low
    committed = {p: broker.committed[(JOURNAL, p)] for p in range(PARTS)}
    transitions = len(broker.messages(TRANSITIONS))
    b, cb, _ = _worker(broker)
    cb.rebalance("assign", range(PARTS))
    assert {p: b.cursors.next_offset(p) for p in range(PARTS)} == {p: 0 for p in range(PARTS)}
    assert all(b.cursors.silent(p) for p in range(PARTS))
    while any(b.cursors.silent(p) for p in range(PARTS)):
        b._handle(cb.consume(10, 0))
    assert len(broker.messages(TRANSITIONS)) == transitions  # nothing judged again below the commit
    assert b.refolded == sum(committed.values()) and cb.commit_calls == 0


def test_a_second_takeover_during_the_re_fold_loses_nothing(journal: Journal) -> None:
    """B takes over, commits (its loop commits on its first turn) and dies before
    re-folding up to the committed offset; C takes over from what B left behind."""
    broker = _broker(journal)
    _crash(broker, "after_commit_acked", 5, 10_000, seed=0)  # the floors stay at 0
    b, cb, pb = _worker(broker)
    cb.rebalance("assign", range(PARTS))
    assert {p: b.cursors.next_offset(p) for p in range(PARTS)} == {p: 0 for p in range(PARTS)}
    b._commit(time.monotonic())
    pb.flush()
    del b  # dies
    for p in range(PARTS):
        floor = restore(p, broker.read_snapshots(SNAPS)([p])[p]).floor
        assert floor == 0, f"partition {p}: floor {floor} is past what the dying worker had re-folded (0)"
    c, cc, _ = _worker(broker)
    cc.rebalance("assign", range(PARTS))
    _drive(c, cc)
    _check(broker, c, journal)


def test_revoked_during_the_re_fold_the_floor_stays_below_what_was_re_folded(journal: Journal) -> None:
    broker = _broker(journal)
    _crash(broker, "after_commit_acked", 5, 10_000, seed=0)
    b, cb, pb = _worker(broker)
    cb.rebalance("assign", range(PARTS))
    b._handle(cb.consume(30, 0))
    nexts = {p: b.cursors.next_offset(p) for p in range(PARTS)}
    cb.rebalance("revoke", range(PARTS))
    pb.flush()
    for p in range(PARTS):
        floor = restore(p, broker.read_snapshots(SNAPS)([p])[p]).floor
        assert floor is not None and floor <= nexts[p] < broker.committed[(JOURNAL, p)]
    c, cc, _ = _worker(broker)
    cc.rebalance("assign", range(PARTS))
    _drive(c, cc)
    _check(broker, c, journal)
