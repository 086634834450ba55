"""Workers on the real broker under a SIGKILL: N workers share the journal's partitions,
one is killed mid-run (no flush, no commit, no goodbye to the group), its partitions move
to the others (which restore its table state from the changelog), then it is started
again and takes partitions back.

Afterwards, folding the journal read back from Kafka in a plain loop must agree with
everything the workers published:

* every journal record has a verdict, some have several (records processed twice), and
  every repeat is byte-identical to the first, which equals the plain fold's verdict;
* the rejected records are exactly the workload's illegal ones (plus its garbage, as
  ``undecodable``, copied to the dead-letter topic);
* every accepted ``MessageSent`` has exactly one applied delivery or one bounce; every
  derived event is in the journal with its deterministic id and applied once;
* calls that never complete were timed out; no call is left open past its deadline;
* each agent's last published state hash, and the table's state in the changelog,
  equal the plain fold's.

The issue's size (3 workers, 12 partitions, 100 agents, 20,000 events, one kill) runs in
``make test`` (about 50 s here); three kills plus one during a rebalance, over 40,000
events, are marked ``chaos`` (``make chaos``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import pytest

from aosk.events import MessageBounced, MessageDelivered, MessageSent
from aosk.kernel import Kind, expired_calls, fold_journal, state_hash
from aosk.streams.kafka import group_id
from aosk.topics import ensure_topics
from aosk.waiting import wait_for
from aosk.workload import generate_workload, produce_workload
from worker_harness import (
    Coverage,
    Workers,
    changelog_slots,
    check_run,
    committed_offsets,
    end_offsets,
    group_assignment,
    last_hash_by_agent,
    read_topic,
    wait_settled,
)

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Size:
    workers: int
    agents: int
    events: int
    unfinished: int
    kill_at: tuple[float, ...]
    """Fractions of the records with a verdict at which a worker is SIGKILLed (then restarted)."""
    kill_while_rejoining: bool = False
    """After the last restart, also SIGKILL another worker while the group rebalances."""
    timeout: float = 600


FULL = Size(workers=3, agents=100, events=20_000, unfinished=20, kill_at=(0.35,))
"""The issue's done-when: 3 workers over 12 partitions, 100 agents, 20,000 events, one
worker SIGKILLed mid-run and restarted (~50 s here, so it is the default)."""
STRESS = Size(workers=3, agents=100, events=20_000, unfinished=20, kill_at=(0.35,), kill_while_rejoining=True)
"""One run of the 20-run loop under ``stress-ng --cpu 2`` (``make chaos``): a kill mid-run,
its restart, and a second kill while the group rebalances for the restart."""
CHAOS = Size(workers=3, agents=150, events=40_000, unfinished=30, kill_at=(0.2, 0.45, 0.7),
             kill_while_rejoining=True, timeout=900)
"""Three kills of different workers, plus one during a rebalance (``make chaos``)."""


def _own_settings(settings, name: str):
    k = settings.kafka.model_copy(update={"topic_prefix": f"{settings.kafka.topic_prefix}-{name}"})
    return settings.model_copy(update={"kafka": k})


def run_kill_scenario(settings, state_dir, size: Size) -> dict[str, float]:
    timings: dict[str, float] = {}
    k = settings.kafka
    bootstrap = k.bootstrap_servers
    ensure_topics(bootstrap, k)
    work = generate_workload(agents=size.agents, events=size.events, seed=11, illegal_every=50,
                             garbage_every=333, unfinished_calls=size.unfinished,
                             unfinished_timeout_ms=2_000, terminate_fraction=0.03)
    assert work.illegal_event_ids and work.garbage and work.child_spawns
    nodes = [f"w{i}" for i in range(1, size.workers + 1)]
    group = group_id(settings.kafka.topic_prefix)
    coverage = Coverage(bootstrap, k.transitions_topic)
    t0 = time.monotonic()
    # Commits every 2 s: a kill then always leaves judged records past the last commit,
    # whose verdicts the next owner must send again, byte-identical.
    with Workers(settings, state_dir, args=("--commit-interval-ms", "2000")) as workers:
        running = set(nodes)

        def all_alive() -> None:
            dead = [n for n in running if not workers.procs[n].alive()]
            assert not dead, f"workers exited: {dead}"

        def joined(count: int) -> bool:
            all_alive()
            a = group_assignment(bootstrap, group, k.journal_topic)
            return a is not None and len(a) == count and sum(len(p) for p in a.values()) == k.journal_partitions

        def frozen_ahead_of_commit(node: str, parts: set[int]) -> bool:
            """Freezes ``node``; True (it stays frozen, for the kill) once it has published
            verdicts past its committed offsets, so the kill leaves records the next owner
            must judge again (or once its partitions have nothing left to judge); else
            thaws it."""
            workers.freeze(node)
            committed = committed_offsets(bootstrap, group, k.journal_topic)
            seen = coverage.last_offsets(parts)
            if any(o >= committed.get(p, 0) for p, o in seen.items()):
                return True
            if coverage.covers({p: e for p, e in _ends(bootstrap, k.journal_topic).items() if p in parts}):
                return True  # nothing left for it to judge: a kill now tests the takeover only
            workers.thaw(node)
            return False

        def kill(node: str) -> None:
            running.discard(node)
            workers.kill(node)

        def restart(node: str) -> None:
            workers.start(node)
            running.add(node)

        try:
            for n in nodes:
                workers.start(n)
            wait_for(lambda: joined(size.workers), timeout=120, what=f"{size.workers} workers in a stable group")
            timings["start"] = time.monotonic() - t0

            produced: list[int] = []
            producer = threading.Thread(
                target=lambda: produced.append(len(produce_workload(bootstrap, k.journal_topic, work.items))))
            t1 = time.monotonic()
            producer.start()

            for i, fraction in enumerate(size.kill_at):
                victim = nodes[-1 - i % len(nodes)]
                before = group_assignment(bootstrap, group, k.journal_topic) or {}
                victim_parts = before.get(f"aosk-worker-{victim}", set())
                wait_for(lambda: coverage.distinct() >= len(work.items) * fraction, timeout=size.timeout,  # noqa: B023 - wait_for calls it within this iteration
                         what=f"{fraction:.0%} of the verdicts")
                wait_for(lambda: frozen_ahead_of_commit(victim, victim_parts), timeout=size.timeout, interval=0.2,  # noqa: B023 - wait_for calls it within this iteration
                         what=f"{victim} to have published verdicts past its last commit")
                timings[f"kill{i + 1}_at_verdicts"] = coverage.distinct()
                kill(victim)
                t_kill = time.monotonic()
                wait_for(lambda: joined(len(running)), timeout=120, what="the survivors to take over")
                after = group_assignment(bootstrap, group, k.journal_topic) or {}
                assert set().union(*after.values()) >= victim_parts, after
                timings[f"kill{i + 1}_failover"] = time.monotonic() - t_kill
                # The survivors make progress on the victim's partitions (table restored from the changelog).
                mark = {p: len(coverage.offsets.get(p, ())) for p in victim_parts}
                wait_for(lambda: any(len(coverage.offsets.get(p, ())) > mark[p] for p in victim_parts) or  # noqa: B023 - wait_for calls it within this iteration
                         coverage.covers({p: e for p, e in _ends(bootstrap, k.journal_topic).items()
                                          if p in victim_parts}),  # noqa: B023 - wait_for calls it within this iteration
                         timeout=120, what="progress on the killed worker's partitions")
                restart(victim)
                if size.kill_while_rejoining and i == len(size.kill_at) - 1:
                    other = nodes[0] if victim != nodes[0] else nodes[1]
                    wait_for(lambda: "joins group" in workers.procs[victim].log(),  # noqa: B023 - wait_for calls it within this iteration
                             timeout=120, what="the restarted worker to start a rebalance")
                    kill(other)
                    wait_for(lambda: joined(len(running)), timeout=120, what="the group to settle without it")
                    restart(other)
                wait_for(lambda: joined(size.workers), timeout=120, what="the restarted worker to rejoin")

            producer.join(300)
            assert produced == [len(work.items)]
            timings["settle"] = wait_settled(bootstrap, k.journal_topic, coverage, quiet_s=4.0,
                                             timeout=size.timeout, alive=all_alive)
            timings["processing"] = time.monotonic() - t1
            for n in nodes:
                assert workers.stop(n) == 0, workers.procs[n].log()[-3000:]
        except BaseException:
            print(workers.logs())
            raise
        finally:
            coverage.close()

    t2 = time.monotonic()
    timings.update(_check(settings, work))
    timings["check"] = time.monotonic() - t2
    timings["total"] = time.monotonic() - t0
    return timings


def _ends(bootstrap: str, topic: str) -> dict[int, int]:
    from worker_harness import end_offsets

    return end_offsets(bootstrap, topic)


def _check(settings, work) -> dict[str, float]:
    k = settings.kafka
    report = check_run(settings)
    assert not report.problems, "\n".join(report.problems)
    assert report.repeated > 0, "no record was processed twice: the kill did not test redelivery"

    pairs = list(zip(report.records, report.verdicts, strict=True))
    # Rejections: exactly the illegal client events, the garbage, and bounced deliveries.
    rejected_client = {r.event.event_id for r, v in pairs
                       if v.kind == Kind.REJECTED and r.event is not None and r.event.origin == "client"}
    assert rejected_client == set(work.illegal_event_ids)
    undecodable = [r for r, v in pairs if r.error is not None]
    assert len(undecodable) == work.garbage
    assert all(v.kind == Kind.REJECTED and v.reason == "undecodable" for r, v in pairs if r.error is not None)
    kernel_rejected = Counter(v.event_type for r, v in pairs
                              if v.kind == Kind.REJECTED and r.event is not None and r.event.origin == "kernel")
    assert set(kernel_rejected) <= {"MessageDelivered", "MessageBounced", "CallTimedOut"}, kernel_rejected
    # A bounce or a timeout is rejected only when its agent exited between the worker's
    # decision and the record's place in the journal.
    assert all(v.status in ("TERMINATED", "ERROR") and v.reason == "illegal_transition" for r, v in pairs
               if type(r.event).__name__ in ("MessageBounced", "CallTimedOut") and v.kind == Kind.REJECTED)

    dead = read_topic(k.bootstrap_servers, k.dead_letters_topic)
    sources = {(int(dict(m.headers)["aosk-source-partition"]), int(dict(m.headers)["aosk-source-offset"]))
               for m in dead}
    assert sources == {(r.partition, r.offset) for r in undecodable}
    assert all(dict(m.headers)["aosk-reason"] == b"undecodable" for m in dead)

    # Every derived event is in the journal (deterministic id) and applied once.
    journal_ids: dict[str, list] = defaultdict(list)
    for r, v in pairs:
        if r.event is not None:
            journal_ids[r.event.event_id].append(v)
    derived = [d for _, v in pairs for d in v.derived]
    assert derived
    for d in derived:
        vs = journal_ids.get(d.event_id)
        assert vs, f"derived {type(d).__name__} {d.event_id} is not in the journal"
        assert sum(1 for v in vs if v.kind != Kind.DUPLICATE) == 1, (d, vs)

    # Messages: each accepted MessageSent has exactly one applied delivery or one bounce.
    judged: dict[tuple[int, int], list] = defaultdict(list)
    bounced: dict[tuple[int, int], list] = defaultdict(list)
    for r, v in pairs:
        if isinstance(r.event, MessageDelivered) and v.kind != Kind.DUPLICATE:
            judged[(r.event.source_partition, r.event.source_offset)].append((r, v))
        if isinstance(r.event, MessageBounced) and v.kind != Kind.DUPLICATE:
            bounced[(r.event.source_partition, r.event.source_offset)].append(v)
    sent = [(r, v) for r, v in pairs if isinstance(r.event, MessageSent) and v.kind == Kind.ACCEPTED]
    assert sent
    bounces = 0
    for r, _ in sent:
        deliveries = judged[(r.partition, r.offset)]
        assert len(deliveries) == 1, (r.event, deliveries)
        dr, dv = deliveries[0]
        if dv.kind == Kind.REJECTED:
            bounces += 1
            assert len(bounced[(dr.partition, dr.offset)]) == 1, (r.event, bounced[(dr.partition, dr.offset)])
        else:
            assert dv.kind == Kind.ACCEPTED and not bounced[(dr.partition, dr.offset)]
    assert bounces, "no message went to a terminated agent"

    # Timeouts: calls that never complete were timed out; none is left open past its deadline.
    slots = fold_journal(report.records)
    timed_out = {(r.event.agent_id, r.event.call_id) for r, v in pairs
                 if type(r.event).__name__ == "CallTimedOut" and v.kind == Kind.ACCEPTED}
    assert timed_out and timed_out <= set(work.unfinished_calls)
    end = max(r.timestamp for r in report.records)
    assert not [(a, c.call_id) for a, s in slots.items() for c in expired_calls(s.state, end - 1000)]

    # State: each agent's last published hash and the table's state equal the plain fold's.
    last = last_hash_by_agent(report)
    want = {a: state_hash(s.state) for a, s in slots.items()}
    assert last == want
    table = changelog_slots(k.bootstrap_servers, settings.kafka.worker_snapshots_topic)
    assert {a: state_hash(s.state) for a, s in table.items()} == want
    assert {a: s.last_offset for a, s in table.items()} == {a: s.last_offset for a, s in slots.items()}
    return {"journal_records": len(report.records), "repeated_verdicts": report.repeated,
            "illegal": len(work.illegal_event_ids), "garbage": work.garbage, "timed_out": len(timed_out),
            "bounces": bounces, "derived": len(derived)}


def test_kill_one_worker_mid_run(settings, tmp_path) -> None:
    timings = run_kill_scenario(_own_settings(settings, "kill"), tmp_path, FULL)
    print("timings", {k: round(v, 1) for k, v in timings.items()})


@pytest.fixture
def cpu_load():
    """Both cores busy (``stress-ng --cpu 2``) for the duration of a test."""
    import shutil
    import subprocess

    if shutil.which("stress-ng") is None:
        pytest.fail("stress-ng is not installed (`make chaos` installs it: apt-get install stress-ng)")
    proc = subprocess.Popen(["stress-ng", "--cpu", "2", "--timeout", "1800s", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


@pytest.mark.chaos
@pytest.mark.parametrize("run", range(1, 21))
def test_kills_and_rebalances_under_cpu_load(settings, tmp_path, cpu_load, run) -> None:
    """The worker fault scenario 20 times in a row with the machine's CPUs saturated."""
    timings = run_kill_scenario(_own_settings(settings, f"stress{run}"), tmp_path, STRESS)
    print("timings", {k: round(v, 1) for k, v in timings.items()})


@pytest.mark.chaos
def test_repeated_kills(settings, tmp_path) -> None:
    timings = run_kill_scenario(_own_settings(settings, "chaos"), tmp_path, CHAOS)
    print("timings", {k: round(v, 1) for k, v in timings.items()})


def test_sigterm_with_the_broker_down_stops_within_15s_and_nothing_is_lost(stack, settings, tmp_path) -> None:
    """The broker goes away mid-run; SIGTERM still ends the worker within 15 s, and after
    restarting everything every record has its verdict exactly as the plain fold says."""
    s = _own_settings(settings, "brokerdown")
    k = s.kafka
    bootstrap = k.bootstrap_servers
    ensure_topics(bootstrap, k)
    work = generate_workload(agents=40, events=4_000, seed=5, illegal_every=50, garbage_every=333)
    produce_workload(bootstrap, k.journal_topic, work.items)
    broker = stack.stack.kafka
    coverage = Coverage(bootstrap, k.transitions_topic)
    try:
        with Workers(s, tmp_path, args=("--commit-interval-ms", "1000")) as workers:
            w1 = workers.start("w1")
            wait_for(lambda: coverage.distinct() >= len(work.items) // 4, timeout=120, what="a quarter of the verdicts")
            broker.stop()
            try:
                t0 = time.monotonic()
                w1.proc.send_signal(signal.SIGTERM)
                w1.proc.wait(60)
                stopped_in = time.monotonic() - t0
            finally:
                broker.start()
            assert stopped_in < 15, f"the worker took {stopped_in:.1f}s to stop:\n{w1.log()[-3000:]}"
            workers.start("w2")
            try:
                wait_settled(bootstrap, k.journal_topic, coverage, quiet_s=3.0, timeout=300,
                             alive=lambda: workers.procs["w2"].alive() or pytest.fail(workers.logs()))
            except TimeoutError as e:  # say where each side stands, not only that it timed out
                raise TimeoutError(f"{e}\nends {end_offsets(bootstrap, k.journal_topic)}\ncommitted "
                                   f"{committed_offsets(bootstrap, group_id(k.topic_prefix), k.journal_topic)}\n"
                                   f"{workers.procs['w2'].log()[-4000:]}") from e
            assert workers.stop("w2") == 0
    finally:
        coverage.close()
    report = check_run(s)
    assert not report.problems, "\n".join(report.problems)
